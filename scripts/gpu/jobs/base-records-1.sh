# Issue #5 records, first machine: train statistics; FP, rtn-w8a8, rtn-w4a8 FID-10k; base-w8a8
# and base-w4a8 quantized (returned as artifacts for the second machine); simulated-sampling speed.
source scripts/gpu/jobs/common.sh
( stats; e fp $M; e rtn-w8a8 $W/q-rtn-w8a8 ) &
( q rtn-w8a8 rtn-w8a8; q rtn-w4a8 rtn-w4a8
  dmq bench --model $W/q-rtn-w8a8 --device cuda --batch-sizes 256 --sample-batch 256 --json $W/out/bench-rtn-w8a8.json > $W/bench.log 2>&1
  p rtn-w8a8 $W/q-rtn-w8a8; p rtn-w4a8 $W/q-rtn-w4a8; e rtn-w4a8 $W/q-rtn-w4a8 ) &
( q base-w8a8 base-w8a8 --iters 1000; pack base-w8a8; p base-w8a8 $W/q-base-w8a8 ) &
( q base-w4a8 base-w4a8 --iters 1000; pack base-w4a8; p base-w4a8 $W/q-base-w4a8 ) &
wait
