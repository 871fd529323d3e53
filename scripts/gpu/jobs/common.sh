# Shared helpers of the job files (sourced by scripts/gpu/session.sh's job graph).
M=$F/ddpm
INC="--inception $F/inception.safetensors --fid-device cuda --fid-batch 250"
QOPT="--device cuda --capture-batch 256 --capture-mib 24000 --overwrite --preview 8"
export DMQ_CACHE_DIR=$W/cache
t() { echo "[$(date +%T)] $*"; }
# stats: CIFAR-10 train statistics (50k images) for FID/sFID.
stats() { while [ ! -f $F/cifar10-train.zip ] || [ ! -f $F/inception.safetensors ]; do sleep 5; done; t stats; dmq fid-stats --images $F/cifar10-train.zip --out $W/train.npz.tmp $INC > $W/stats.log 2>&1 \
  && mv $W/train.npz.tmp $W/train.npz; t stats done; }
wait_stats() { while [ ! -f $W/train.npz ]; do sleep 5; done; }
# q NAME RECIPE [ARGS...]: quantize ddpm-cifar10-small; report and preview to out/.
q() { local n=$1 r=$2; shift 2; t "q $n"; dmq quantize --model $M --recipe $r $QOPT --out $W/q-$n "$@" > $W/q-$n.log 2>&1
  cp $W/q-$n/report.json $W/out/report-$n.json 2>/dev/null; cp $W/q-$n/preview.png $W/out/preview-$n.png 2>/dev/null; t "q $n done"; }
# e NAME MODEL [ARGS...]: FID-10k/sFID, DDIM 100, eta 0, seed 0 (ARGS: e.g. --ptqd-parts none).
e() { local n=$1 m=$2; shift 2; wait_stats; t "e $n"; dmq eval --model $m --num 10000 --steps 100 --eta 0 --seed 0 --batch 256 \
  --device cuda --fid-ref $W/train.npz $INC --out $W/e-$n "$@" > $W/e-$n.log 2>&1; cp $W/e-$n/eval.json $W/out/eval-$n.json 2>/dev/null; t "e $n done"; }
# p NAME MODEL [ARGS...]: PSNR/SSIM against FP on 512 images (same seeds), per-step noise error.
p() { local n=$1 m=$2; shift 2; t "p $n"; dmq eval --model $m --num 512 --steps 100 --eta 0 --seed 0 --batch 256 --device cuda \
  --against $M --out $W/p-$n "$@" > $W/p-$n.log 2>&1; cp $W/p-$n/eval.json $W/out/psnr-$n.json 2>/dev/null; t "p $n done"; }
# pack NAME: the artifact as out/NAME.tar.xz (comes back when under 16 MiB).
pack() { tar cJf $W/out/$1.tar.xz -C $W q-$1; }
