# Issue #6 at W4A6, second machine: the dmq-w4a6 calibration alone (on the first machine it shared
# the GPU with base-w4a6 and the train statistics and did not finish in 30 minutes: LES ~600 s,
# reconstruction past 1600 s), beside the FID of the base-w4a6 artifact that machine returned
# (staged as base-w4a6.tar.xz). Same budgets as w4a6-dmq-ptqd.sh. The calibration's checkpoints
# are packed to out/ every minute, so a run cut by the machine's limit resumes on the next one.
# Staging (six calls; base-w4a6.tar.xz is the artifact the first machine returned):
#   S=../shared; python3 scripts/gpu/stage.py .gpu/stage-b 40000000 dmq.xz=.gpu/dmq.xz \
#     base-w4a6.tar.xz=PATH/base-w4a6.tar.xz ddpm/model_index.json=$S/models/ddpm-cifar10-small/model_index.json \
#     ddpm/scheduler/scheduler_config.json=$S/models/ddpm-cifar10-small/scheduler/scheduler_config.json \
#     ddpm/unet/config.json=$S/models/ddpm-cifar10-small/unet/config.json \
#     ddpm/unet/diffusion_pytorch_model.safetensors=$S/models/ddpm-cifar10-small/unet/diffusion_pytorch_model.safetensors \
#     inception.safetensors=$S/models/fid-inception/fid_inception_2015_12_05.safetensors \
#     cifar10-train.zip=$S/data/cifar10/cifar10-train.zip
# then `session.sh stage .gpu/stage-b/call1`, `session.sh start dmq-w4a6-alone .gpu/stage-b/call2`,
# stage calls 3-6, and poll at once (a machine idle for 30 s is taken back).
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
