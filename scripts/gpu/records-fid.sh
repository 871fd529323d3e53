#!/usr/bin/env bash
# The GPU runs behind docs/results/fid-references.md and gpu-speed.md (issues #3, #4), in phases,
# one per device call of a staged session (scripts/gpu/stage.py splits the inputs: binary,
# ddpm-cifar10-small, FID Inception weights, CIFAR-10 zips, diffusers wheels):
#   phase 1: dmq bench (fp32, bf16) on ddpm-cifar10-small and the embedded model
#   phase 2: the same sampling with PyTorch + diffusers, then 10k DDIM-100 samples in background
#   phase 3: (staging only) report progress
#   phase 4: Inception statistics of CIFAR-10 test; Inception speed
#   phase 5: train statistics, train halves, FIDs, then FID-10k/sFID of the 10k samples
# usage (on the GPU machine, repo root): bash scripts/gpu/records-fid.sh PHASE CALL_DIR
set -uo pipefail
PHASE=$1; CALL=$2
bash scripts/gpu/stage-in.sh "$CALL" || exit 1
source scripts/gpu/env.sh
F=/tmp/dmq/files; W=/tmp/dmq/work; mkdir -p $W
M=$F/ddpm; INC="--inception $F/inception.safetensors --fid-device cuda --fid-batch 250"
log() { echo "[$(date +%T)] $*"; }
case $PHASE in
1)
  nvidia-smi -L; log start
  for dt in f32 bf16; do
    dmq bench --model $M --device cuda --dtype $dt --batch-sizes 1,256 --iters 5 --steps 100 \
      --sample-batch 256 --json $OUT/bench-ddpm-$dt.json 2>&1 | grep -v '^ '
  done
  dmq bench --device cuda --dtype f32 --batch-sizes 1,256 --iters 5 --steps 100 \
    --sample-batch 256 --json $OUT/bench-embedded-f32.json 2>&1 | grep -v '^ '
  log done ;;
2)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $F/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  log torch; python3 scripts/gpu/torch_ref_sampling.py $M --batch 256 --steps 100 --out $OUT/torch-ref.json 2>&1 | grep -v Warning
  log "10k samples in background"
  setsid nohup bash -c "source scripts/gpu/env.sh; dmq eval --model $M --num 10000 --steps 100 --eta 0 --seed 0 --batch 256 --device cuda --out $W/eval-fp > $W/eval-fp.log 2>&1; echo exit \$? >> $W/eval-fp.log" > /dev/null 2>&1 < /dev/null &
  sleep 20; tail -c 400 $W/eval-fp.log; log done ;;
3|4|5)
  ls $W/eval-fp/samples 2>/dev/null | wc -l; tail -c 300 $W/eval-fp.log; echo
  if [ "$PHASE" -ge 4 ] && [ -f $F/inception.safetensors ] && [ ! -f $W/test.npz ]; then
    log "test stats"; /usr/bin/time -f "wall %e s" dmq fid-stats --images $F/cifar10-test.zip --out $W/test.npz $INC 2>&1 | tail -3
  fi
  if [ "$PHASE" -ge 5 ]; then
    log "train stats"; /usr/bin/time -f "wall %e s" dmq fid-stats --images $F/cifar10-train.zip --out $W/train.npz $INC 2>&1 | tail -3
    python3 - "$F/cifar10-train.zip" "$W" <<'PY'
import sys, zipfile
src = zipfile.ZipFile(sys.argv[1]); names = sorted(n for n in src.namelist() if not n.endswith('/'))
half = len(names) // 2
for tag, part in (("a", names[:half]), ("b", names[half:])):
    with zipfile.ZipFile(f"{sys.argv[2]}/train-{tag}.zip", "w", zipfile.ZIP_STORED) as z:
        for n in part: z.writestr(n, src.read(n))
print("halves", half, len(names) - half)
PY
    dmq fid-stats --images $W/train-a.zip --out $W/train-a.npz $INC 2>&1 | tail -1
    dmq fid-stats --images $W/train-b.zip --out $W/train-b.npz $INC 2>&1 | tail -1
    log "FIDs"
    dmq fid $W/test.npz $W/train.npz --json | tee $OUT/fid-test-vs-train.json
    dmq fid $W/train-a.npz $W/train-b.npz --json | tee $OUT/fid-train-halves.json
    while ! grep -q '^exit' $W/eval-fp.log; do sleep 5; done; tail -c 300 $W/eval-fp.log
    log "eval"; dmq eval --model $M --num 10000 --steps 100 --eta 0 --seed 0 --batch 256 --device cuda \
      --fid-ref $W/train.npz $INC --out $W/eval-fp 2>&1 | grep -v '^ ' | tail -20
    cp $W/eval-fp/eval.json $OUT/eval-ddpm-fp-10k.json; cp $W/eval-fp/side-by-side.png $OUT/ 2>/dev/null
    cp $W/eval-fp/samples/grid.png $OUT/ddpm-10k-grid.png 2>/dev/null
    log done
  fi ;;
esac
