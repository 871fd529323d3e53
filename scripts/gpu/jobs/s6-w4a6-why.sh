# Session 6, second machine: why dmq-w4a6 (FID 45.2) does worse than base-w4a6 (FID 40.0) while
# its PSNR against FP is higher. Staged: both artifacts the earlier machines returned
# (base-w4a6.tar.xz, dmq-w4a6.tar.xz). Runs: PSNR/SSIM and the per-step noise-prediction error
# against FP on 512 images for both (and DMQ + PTQD); 1000 samples each of FP, base and DMQ as PNGs
# (returned for image statistics on the CPU); the PTS-only ablation (base + PTS, no LES) with its
# FID; and the FID-10k of DMQ + PTQD (issue #7's row).
source scripts/gpu/jobs/common.sh
B="--iters 1000"
# s NAME MODEL [ARGS...]: 1000 samples (DDIM 100, eta 0, seed 0) as PNGs, packed to out/.
s() { local n=$1 m=$2; shift 2; t "s $n"; dmq sample --model $m --num 1000 --steps 100 --eta 0 --seed 0 --batch 250 --device cuda \
  --out $W/s-$n "$@" > $W/s-$n.log 2>&1; tar cJf $W/out/samples-$n.tar.xz -C $W s-$n; t "s $n done"; }
( stats ) &
( q pts-w4a6 dmq-w4a6 $B --no-les; e pts-w4a6 $W/q-pts-w4a6; p pts-w4a6 $W/q-pts-w4a6 ) &
( for a in base-w4a6 dmq-w4a6; do while [ ! -f $F/$a.tar.xz ]; do sleep 5; done; tar xJf $F/$a.tar.xz -C $W; done
  p base-w4a6 $W/q-base-w4a6 --ptqd-parts none; p dmq-w4a6 $W/q-dmq-w4a6 --ptqd-parts none; p dmq-w4a6-ptqd $W/q-dmq-w4a6
  s fp $M; s base-w4a6 $W/q-base-w4a6 --ptqd-parts none; s dmq-w4a6 $W/q-dmq-w4a6 --ptqd-parts none
  e dmq-w4a6-ptqd $W/q-dmq-w4a6 ) &
wait
