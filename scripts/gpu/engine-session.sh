#!/usr/bin/env bash
# GPU runs of the quantization engine (issues #3, #5): gpu-check, then a queue of recipes on
# ddpm-cifar10-small, each quantized on the GPU (timed) and evaluated against the FP model
# (PSNR/SSIM of 512 images from the same seeds, noise-prediction error per step).
#   phase stage:  stage-in a call folder (scripts/gpu/stage.py), print queue progress
#   phase start:  gpu-check, then start the queue in the background
#   phase poll:   progress; copies a compact summary to $OUT
# usage (GPU machine, repo root): bash scripts/gpu/engine-session.sh PHASE [CALL_DIR]
set -uo pipefail
PHASE=$1; CALL=${2:-}
[ -n "$CALL" ] && { bash scripts/gpu/stage-in.sh "$CALL" || exit 1; }
source scripts/gpu/env.sh
F=/tmp/dmq/files; W=/tmp/dmq/engine; mkdir -p $W; M=$F/ddpm
export DMQ_CACHE_DIR=$W/cache
queue() {
  for spec in "rtn-w8a8::" "rtn-w4a8::" "mse-nearest-w4a8:scripts/gpu/recipes/mse-nearest-w4a8.toml:" \
              "base-w4a8::--iters 1000" "minmax-adaround-w4a8:scripts/gpu/recipes/minmax-adaround-w4a8.toml:--iters 1000" \
              "base-w8a8::--iters 1000"; do
    name=${spec%%:*}; rest=${spec#*:}; file=${rest%%:*}; extra=${rest#*:}
    recipe=${file:-$name}
    echo "[$(date +%T)] quantize $name $extra"
    /usr/bin/time -f "quantize-wall $name %e" dmq quantize --model $M --recipe $recipe $extra --device cuda \
      --capture-batch 256 --capture-mib 24000 --out $W/q-$name --overwrite > $W/q-$name.log 2>&1
    tail -2 $W/q-$name.log
    echo "[$(date +%T)] eval $name"
    dmq eval --model $W/q-$name --num 512 --batch 256 --device cuda --against $M --out $W/e-$name --overwrite > $W/e-$name.log 2>&1
    tail -3 $W/e-$name.log
  done
  echo "[$(date +%T)] queue done"
}
case $PHASE in
stage) ls $W 2>/dev/null | head -40 ;;
start)
  nvidia-smi -L
  dmq gpu-check --device cuda --inception none --out $OUT/gpu-check.json 2>&1 | tail -25
  NVIDIA_TF32_OVERRIDE=0 dmq gpu-check --device cuda --inception none --out $OUT/gpu-check-notf32.json 2>&1 | tail -16
  export -f queue; export F W M
  setsid nohup bash -c "source scripts/gpu/env.sh; export DMQ_CACHE_DIR=$W/cache; queue" > $W/queue.log 2>&1 < /dev/null &
  sleep 45; cat $W/queue.log; tail -c 600 $W/q-rtn-w8a8.log ;;
poll)
  cat $W/queue.log; for f in $W/q-*.log; do echo "== $f"; tail -c 400 $f; echo; done
  python3 - $W $OUT <<'PY'
import json, os, sys, glob
w, out = sys.argv[1], sys.argv[2]
summary = {}
for q in sorted(glob.glob(f"{w}/q-*")):
    if not os.path.isdir(q): continue
    name = os.path.basename(q)[2:]
    s = summary.setdefault(name, {})
    try:
        r = json.load(open(f"{q}/report.json"))
        s["quantize"] = {k: r[k] for k in ("stage_seconds", "total_seconds", "artifact_bytes", "command")}
        s["units"] = [{k: u[k] for k in ("path", "loss_nearest", "loss_learned", "seconds")} for u in r["units"]]
        s["layers"] = [{k: l[k] for k in ("path", "weight_bits", "act_bits", "weight_rel_error")} for l in r["layers"]]
    except Exception as e: s["quantize_error"] = str(e)
    try:
        e = json.load(open(f"{w}/e-{name}/eval.json"))
        s["eval"] = {k: v for k, v in e.items() if k not in ("protocol",)}
    except Exception as e: s["eval_error"] = str(e)
json.dump(summary, open(f"{out}/engine-summary.json", "w"), indent=1)
print("summary", {k: list(v) for k, v in summary.items()})
PY
  for n in base-w4a8 rtn-w4a8; do [ -f $W/e-$n/side-by-side.png ] && cp $W/e-$n/side-by-side.png $OUT/side-by-side-$n.png; done
  [ -f $W/q-base-w4a8/report-units.png ] && cp $W/q-base-w4a8/report-units.png $OUT/ ;;
esac
