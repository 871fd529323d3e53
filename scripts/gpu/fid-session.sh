#!/usr/bin/env bash
# FID-10k / sFID of quantized ddpm-cifar10-small models on the GPU (issue #5 records), in phases:
#   stage CALL_DIR : stage-in a call folder of scripts/gpu/stage.py
#   start CALL_DIR : stage-in the last folder, then start the job graph in the background:
#                    train statistics ‖ rtn-w8a8, rtn-w4a8 quantized; then base-w4a8 (--iters 1000)
#                    ‖ eval rtn-w4a8; then eval base-w4a8 ‖ eval rtn-w8a8 (10 000 samples each,
#                    DDIM 100, eta 0, seed 0, against CIFAR-10 train statistics)
#   poll           : progress, results to $OUT
set -uo pipefail
PHASE=$1; CALL=${2:-}
[ -n "$CALL" ] && { bash scripts/gpu/stage-in.sh "$CALL" || exit 1; }
source scripts/gpu/env.sh
F=/tmp/dmq/files; W=/tmp/dmq/fid; mkdir -p $W; M=$F/ddpm
INC="--inception $F/inception.safetensors --fid-device cuda --fid-batch 250"
Q="--device cuda --capture-batch 256 --capture-mib 24000 --overwrite --preview 8"
E="--num 10000 --steps 100 --eta 0 --seed 0 --batch 256 --device cuda --fid-ref $W/train.npz $INC"
case $PHASE in
stage) ;;
start)
  cat > $W/jobs.sh <<JOBS
source scripts/gpu/env.sh; export DMQ_CACHE_DIR=$W/cache
t() { echo "[\$(date +%T)] \$*"; }
( t stats; dmq fid-stats --images $F/cifar10-train.zip --out $W/train.npz $INC > $W/stats.log 2>&1; t stats done ) &
( t q-rtn; dmq quantize --model $M --recipe rtn-w8a8 $Q --out $W/q-rtn-w8a8 > $W/q-rtn-w8a8.log 2>&1
  dmq quantize --model $M --recipe rtn-w4a8 $Q --out $W/q-rtn-w4a8 > $W/q-rtn-w4a8.log 2>&1; t q-rtn done ) &
wait
( t q-base; dmq quantize --model $M --recipe base-w4a8 --iters 1000 $Q --out $W/q-base-w4a8 > $W/q-base-w4a8.log 2>&1; t q-base done
  dmq eval --model $W/q-base-w4a8 $E --out $W/e-base-w4a8 > $W/e-base-w4a8.log 2>&1; t e-base done ) &
( t e-rtn4; dmq eval --model $W/q-rtn-w4a8 $E --out $W/e-rtn-w4a8 > $W/e-rtn-w4a8.log 2>&1; t e-rtn4 done
  dmq eval --model $W/q-rtn-w8a8 $E --out $W/e-rtn-w8a8 > $W/e-rtn-w8a8.log 2>&1; t e-rtn8 done ) &
wait; t all done
JOBS
  setsid nohup bash $W/jobs.sh > $W/jobs.log 2>&1 < /dev/null &
  sleep 30; cat $W/jobs.log ;;
poll)
  cat $W/jobs.log; for f in $W/*.log; do echo "== $f"; tail -c 300 $f | tr '\r' '\n' | tail -2; done
  for n in rtn-w8a8 rtn-w4a8 base-w4a8; do
    [ -f $W/e-$n/eval.json ] && python3 -c "import json,sys; d=json.load(open('$W/e-$n/eval.json')); d.pop('protocol',None); json.dump(d,open('$OUT/eval-$n.json','w'),indent=1)"
    [ -f $W/q-$n/report.json ] && cp $W/q-$n/report.json $OUT/report-$n.json
  done
  [ -f $W/q-base-w4a8/preview.png ] && cp $W/q-base-w4a8/preview.png $OUT/preview-base-w4a8.png; ls $OUT ;;
esac
