# Session 6, first machine: the binary with the conv backward of calibration (conv_grad), checked
# against the CPU first (`dmq gpu-check`, gradients included), then issue #6's missing row: the
# dmq-w4a6 calibration alone on the GPU (1000 AdaRound iterations per unit, 1000 LES iterations
# per layer, PTQD statistics), its checkpoints packed to out/ every minute so that a run cut by
# the machine's limit resumes on the next machine, then its FID-10k/sFID with and without PTQD and
# PSNR against FP. Staging: as dmq-w4a6-alone.sh without base-w4a6.tar.xz; the binary and the
# model come in call1, so the job starts while inception and CIFAR-10 arrive in the next calls.
source scripts/gpu/jobs/common.sh
t gpu-check; dmq gpu-check --device cuda --inception none --out $W/out/gpu-check.json > $W/gpu-check.log 2>&1; t "gpu-check rc=$?"
( stats ) &
( [ -f $F/ckpt-dmq-w4a6.tar.xz ] && tar xJf $F/ckpt-dmq-w4a6.tar.xz -C $W
  q dmq-w4a6 dmq-w4a6 --iters 1000 --les-iters 1000 --ptqd; pack dmq-w4a6
  e dmq-w4a6 $W/q-dmq-w4a6 --ptqd-parts none; p dmq-w4a6 $W/q-dmq-w4a6 --ptqd-parts none
  e dmq-w4a6-ptqd $W/q-dmq-w4a6; p dmq-w4a6-ptqd $W/q-dmq-w4a6 ) &
( while [ ! -f $W/q-dmq-w4a6/manifest.json ]; do sleep 60
    [ -d $W/q-dmq-w4a6.ckpt ] && tar cJf $W/ckpt.tmp -C $W q-dmq-w4a6.ckpt && mv $W/ckpt.tmp $W/out/ckpt-dmq-w4a6.tar.xz
  done; rm -f $W/out/ckpt-dmq-w4a6.tar.xz ) &
wait
