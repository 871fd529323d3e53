# Issue #6 at W4A6, second machine: the dmq-w4a6 calibration alone (on the first machine it shared
# the GPU with base-w4a6 and the train statistics and did not finish in 30 minutes: LES ~600 s,
# reconstruction past 1600 s), beside the FID of the base-w4a6 artifact that machine returned
# (staged as base-w4a6.tar.xz). Same budgets as w4a6-dmq-ptqd.sh. The calibration's checkpoints
# are packed to out/ every minute, so a run cut by the machine's limit resumes on the next one.
source scripts/gpu/jobs/common.sh
B="--iters 1000"; L="--les-iters 1000"
( stats ) &
( q dmq-w4a6 dmq-w4a6 $B $L --ptqd; pack dmq-w4a6 ) &
( while [ ! -f $W/q-dmq-w4a6/manifest.json ]; do sleep 60
    [ -d $W/q-dmq-w4a6.ckpt ] && tar cJf $W/ckpt.tmp -C $W q-dmq-w4a6.ckpt && mv $W/ckpt.tmp $W/out/ckpt-dmq-w4a6.tar.xz
  done; rm -f $W/out/ckpt-dmq-w4a6.tar.xz ) &
( while [ ! -f $F/base-w4a6.tar.xz ]; do sleep 5; done; tar xJf $F/base-w4a6.tar.xz -C $W
  e base-w4a6 $W/q-base-w4a6 --ptqd-parts none; e base-w4a6-ptqd $W/q-base-w4a6 ) &
wait
