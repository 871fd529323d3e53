#!/usr/bin/env bash
# Packs the cuda build of dmq for the GPU machine: strip + xz (the binary is mostly an
# uncompressed CUDA fatbin; 55 MB -> ~7 MB), so it fits the 64 MiB a device call may carry.
#   usage: scripts/gpu/pack.sh [BINARY] [OUT]   defaults: target/cuda/release/dmq .gpu/dmq.xz
set -euo pipefail
BIN=${1:-target/cuda/release/dmq}
OUT=${2:-.gpu/dmq.xz}
[ -x "$BIN" ] || { echo "pack.sh: no binary at $BIN (build it: see docs/gpu.md)" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
strip -o "$OUT.stripped" "$BIN"
xz -T2 -6 -c "$OUT.stripped" > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
rm -f "$OUT.stripped"
ls -la "$OUT"
