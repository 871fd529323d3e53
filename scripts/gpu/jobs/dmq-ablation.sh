# Issue #6 ablation at one bit setting (BITS=w4a6 or w4a8 in the environment of the job, default
# w4a6): +LES without weighting, +LES with adaptive weighting (no PTS), +PTS alone, each quantized
# and evaluated (FID-10k, PSNR vs FP). Base and full DMQ come from dmq-records-1.sh. Same reduced
# budgets as there.
source scripts/gpu/jobs/common.sh
BITS=${BITS:-w4a6}; B="--iters 1000"; L="--les-iters 1000"
( stats ) &
( q les-uniform-$BITS dmq-$BITS $B $L --no-pts --les-weighting uniform
  q les-adaptive-$BITS dmq-$BITS $B $L --no-pts
  q pts-$BITS dmq-$BITS $B --no-les ) &
( for n in les-uniform-$BITS les-adaptive-$BITS pts-$BITS; do
    while [ ! -f $W/q-$n/manifest.json ]; do sleep 10; done; e $n $W/q-$n; p $n $W/q-$n; done ) &
wait
