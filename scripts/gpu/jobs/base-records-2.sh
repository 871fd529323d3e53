# Issue #5 records, second machine: the FID-10k evaluations that did not fit the first (six jobs
# sharing one GPU slowed every one of them): base-w4a8/base-w8a8 artifacts from the first machine
# (staged as base-*.tar.xz), rtn-w8a8/rtn-w4a8 quantized again; evaluations one at a time.
source scripts/gpu/jobs/common.sh
qn() { local n=$1 r=$2; t "q $n"; dmq quantize --model $M --recipe $r --device cuda --capture-batch 256 --capture-mib 24000 \
  --overwrite --preview 0 --out $W/q-$n > $W/q-$n.log 2>&1; cp $W/q-$n/report.json $W/out/report-$n.json 2>/dev/null; t "q $n done"; }
( stats ) &
( qn rtn-w4a8 rtn-w4a8; qn rtn-w8a8 rtn-w8a8 ) &
tar xJf $F/base-w4a8.tar.xz -C $W; tar xJf $F/base-w8a8.tar.xz -C $W
wait
e base-w4a8 $W/q-base-w4a8; e rtn-w4a8 $W/q-rtn-w4a8; e base-w8a8 $W/q-base-w8a8; e rtn-w8a8 $W/q-rtn-w8a8
p base-w4a8 $W/q-base-w4a8; p base-w8a8 $W/q-base-w8a8
