#!/usr/bin/env bash
# On the GPU machine: takes one carried call folder of scripts/gpu/stage.py, keeps its parts in
# /tmp/dmq/parts (kept while the machine stays warm) and reassembles every file whose parts have
# all arrived into /tmp/dmq/files/DEST, checking its sha256.  usage: stage-in.sh CALL_DIR
set -euo pipefail
SRC=$1; ROOT=/tmp/dmq
mkdir -p "$ROOT/parts" "$ROOT/files"
cp "$SRC"/*.part-* "$ROOT/parts/" 2>/dev/null || true
cat "$SRC/MANIFEST" >> "$ROOT/MANIFEST"; sort -u -o "$ROOT/MANIFEST" "$ROOT/MANIFEST"
while read -r dest sum n; do
  out="$ROOT/files/$dest"; [ -f "$out" ] && continue
  base=$(echo "$dest" | tr '/' '%')
  have=$(ls "$ROOT/parts" | grep -c -F "$base.part-" || true)
  if [ "$have" -lt "$n" ]; then echo "stage-in: $dest $have/$n parts"; continue; fi
  mkdir -p "$(dirname "$out")"
  for k in $(seq 1 "$n"); do cat "$ROOT/parts/$base.part-$k-of-$n"; done > "$out.tmp"
  got=$(sha256sum "$out.tmp" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || { echo "stage-in: $dest sha256 mismatch" >&2; exit 1; }
  mv "$out.tmp" "$out"; rm -f "$ROOT/parts/$base".part-*
  echo "stage-in: $dest complete"
done < "$ROOT/MANIFEST"
