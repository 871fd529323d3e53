#!/usr/bin/env bash
# PTQD records (issue #7) on the GPU: ddpm-cifar10-small at W4A8 and W4A6, DDIM 100 at eta 0 and
# eta 1, base vs base+PTQD vs DMQ vs DMQ+PTQD, FID-10k and sFID against the CIFAR-10 train
# statistics, with the ablation of PTQD's parts (CNC, CNC+BC, CNC+BC+VSC, VSC alone). Modelled on
# scripts/gpu/fid-session.sh: staged inputs (scripts/gpu/stage.py: the cuda binary as dmq.xz,
# ddpm-cifar10-small as ddpm/, the FID Inception weights, cifar10-train.zip), then phases, one per
# device call:
#   stage CALL_DIR : stage-in a call folder
#   quantize       : in the background: train statistics; every recipe of $RECIPES quantized
#                    with --ptqd (statistics for DDIM 100 eta 0), then `dmq ptqd --eta 1` adds the
#                    eta-1 statistics; each finished artifact is packed to q-NAME.tar, which
#                    poll copies to $OUT
#   eval           : in the background, resumable: for every recipe, eta in $ETAS and PTQD parts
#                    in $PARTS_ETA0 / $PARTS_ETA1 (none = the base without PTQD):
#                    dmq eval --ptqd-parts P (10k images, seed 0); plus the FP model at each eta
#   poll           : progress; results to $OUT (ptqd-records.json, ptqd-records.md)
#   restore TAR... : unpack artifacts packed by an earlier session (the machine is fresh after
#                    30 minutes: carry $OUT/q-*.tar back in and restore before `eval`)
# Environment (defaults in brackets):
#   RECIPES [base-w4a8 base-w4a6 dmq-w4a8 dmq-w4a6]: a recipe unknown to the binary fails its
#           quantize (logged) and is skipped (DMQ's recipes land with issue #6);  ITERS [1000]: --iters of recipes
#           that reconstruct (the recipes say 20000: about 2 h each on an H200);
#   NUM [10000]; ETAS [0 1]; PARTS_ETA0 [none cnc cnc,bc]; PARTS_ETA1 [none cnc cnc,bc
#           cnc,bc,vsc vsc]; PTQD_SAMPLES [64]: FP trajectories of the statistics.
# At eta 0, VSC is a no-op (docs/methods-ptqd.md), so cnc,bc,vsc equals cnc,bc there.
# usage (GPU machine, repo root): bash scripts/gpu/ptqd-records.sh PHASE [ARGS]
set -uo pipefail
PHASE=$1; shift || true
if [ "$PHASE" = stage ]; then bash scripts/gpu/stage-in.sh "$1" || exit 1; fi
source scripts/gpu/env.sh
F=/tmp/dmq/files; W=/tmp/dmq/ptqd; mkdir -p $W; M=$F/ddpm
RECIPES=${RECIPES:-"base-w4a8 base-w4a6 dmq-w4a8 dmq-w4a6"}
ITERS=${ITERS:-1000}; NUM=${NUM:-10000}; ETAS=${ETAS:-"0 1"}
PARTS_ETA0=${PARTS_ETA0:-"none cnc cnc,bc"}
PARTS_ETA1=${PARTS_ETA1:-"none cnc cnc,bc cnc,bc,vsc vsc"}
PTQD_SAMPLES=${PTQD_SAMPLES:-64}
INC="--inception $F/inception.safetensors --fid-device cuda --fid-batch 250"
Q="--device cuda --capture-batch 256 --capture-mib 24000 --overwrite --preview 8"
E="--num $NUM --steps 100 --seed 0 --batch 256 --device cuda --fid-ref $W/train.npz $INC"
case $PHASE in
stage) ls $W 2>/dev/null ;;
quantize)
  cat > $W/quantize.sh <<JOBS
source scripts/gpu/env.sh; export DMQ_CACHE_DIR=$W/cache
t() { echo "[\$(date +%T)] \$*"; }
( [ -f $W/train.npz ] || { t stats; dmq fid-stats --images $F/cifar10-train.zip --out $W/train.npz $INC > $W/stats.log 2>&1; t stats done; } ) &
( for r in $RECIPES; do
    t "quantize \$r"
    dmq quantize --model $M --recipe \$r --iters $ITERS --ptqd --ptqd-samples $PTQD_SAMPLES $Q --out $W/q-\$r > $W/q-\$r.log 2>&1 || { t "quantize \$r FAILED (unknown recipe? see q-\$r.log)"; continue; }
    t "ptqd eta 1 \$r"
    dmq ptqd --model $W/q-\$r --fp $M --steps 100 --eta 1 --samples $PTQD_SAMPLES --device cuda > $W/p-\$r.log 2>&1 || t "ptqd \$r FAILED"
    tar -C $W -cf $W/q-\$r.tar q-\$r; t "done \$r"
  done ) &
wait; t quantize all done
JOBS
  setsid nohup bash $W/quantize.sh > $W/quantize.log 2>&1 < /dev/null &
  sleep 30; cat $W/quantize.log ;;
restore)
  for tarball in "$@"; do tar -C $W -xf "$tarball" && echo "restored $tarball"; done ;;
eval)
  [ -f $W/train.npz ] || { echo "no $W/train.npz: run the quantize phase (or fid-stats) first"; exit 1; }
  {
    echo "source scripts/gpu/env.sh; t() { echo \"[\$(date +%T)] \$*\"; }"
    for eta in $ETAS; do
      echo "t fp eta $eta; dmq eval --model $M --eta $eta $E --out $W/e-fp-eta$eta > $W/e-fp-eta$eta.log 2>&1"
      for r in $RECIPES; do
        [ -f $W/q-$r/manifest.json ] || { echo "t skip $r: no artifact"; continue; }
        parts=$PARTS_ETA0; [ "$eta" != 0 ] && parts=$PARTS_ETA1
        for p in $parts; do
          tag=$(echo "$p" | tr ',' '+')
          echo "t eval $r eta $eta $p; dmq eval --model $W/q-$r --ptqd-parts $p --eta $eta $E --out $W/e-$r-eta$eta-$tag > $W/e-$r-eta$eta-$tag.log 2>&1 || t FAILED"
        done
      done
    done
    echo "t eval all done"
  } > $W/eval.sh
  setsid nohup bash $W/eval.sh > $W/eval.log 2>&1 < /dev/null &
  sleep 20; cat $W/eval.log ;;
poll)
  cat $W/quantize.log $W/eval.log 2>/dev/null
  for f in $W/*.log; do echo "== $f"; tail -c 300 $f | tr '\r' '\n' | tail -2; done
  for r in $RECIPES; do
    [ -f $W/q-$r.tar ] && cp $W/q-$r.tar $OUT/
    [ -f $W/q-$r/report.json ] && cp $W/q-$r/report.json $OUT/report-$r.json
    [ -f $W/q-$r/report-ptqd.png ] && cp $W/q-$r/report-ptqd.png $OUT/report-ptqd-$r-eta0.png
    [ -f $W/q-$r/report-ptqd-ddim-100-eta1-leading.png ] && cp $W/q-$r/report-ptqd-ddim-100-eta1-leading.png $OUT/report-ptqd-$r-eta1.png
  done
  python3 - $W $OUT <<'PY'
import glob, json, os, sys
w, out = sys.argv[1], sys.argv[2]
rows = []
for d in sorted(glob.glob(f"{w}/e-*")):
    f = f"{d}/eval.json"
    if not os.path.isfile(f):
        continue
    e = json.load(open(f))
    p = e.get("protocol", {})
    rows.append({"run": os.path.basename(d)[2:], "eta": p.get("eta"),
                 "ptqd": (p.get("ptqd") or {}).get("parts", "none"),
                 "fid": e.get("fid", {}).get("fid"), "sfid": e.get("fid", {}).get("sfid"),
                 "num": e.get("num"), "sampling_wall_s": e.get("sampling_wall_s")})
json.dump(rows, open(f"{out}/ptqd-records.json", "w"), indent=1)
with open(f"{out}/ptqd-records.md", "w") as m:
    m.write("| run | eta | PTQD parts | FID | sFID | images |\n|---|---|---|---|---|---|\n")
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.2f}"
        m.write(f"| {r['run']} | {r['eta']} | {r['ptqd']} | {fmt(r['fid'])} | {fmt(r['sfid'])} | {r['num']} |\n")
print(open(f"{out}/ptqd-records.md").read())
PY
  ;;
*) echo "usage: $0 stage CALL_DIR | quantize | restore TAR... | eval | poll"; exit 2 ;;
esac
