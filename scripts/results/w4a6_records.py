#!/usr/bin/env python3
"""Collects the W4A6 records of issues #6/#7 from the raw GPU files into
docs/results/w4a6-gpu.json (the markdown beside it quotes these numbers).
usage: python3 scripts/results/w4a6_records.py"""
import json
import os

RAW = "docs/results/raw/gpu-h100-2026-11-22"


def load(name):
    path = os.path.join(RAW, name)
    return json.load(open(path)) if os.path.exists(path) else None


def psnr(name):
    j = load(name)
    if j is None:
        return None
    a = j["against"]
    return {k: a[k] for k in ("psnr_mean_db", "psnr_min_db", "ssim_mean", "ssim_min")} | {
        "command": j["command"]}


def fid(name):
    j = load(name)
    if j is None:
        return None
    return {"fid": j["fid"]["fid"], "sfid": j["fid"]["sfid"], "samples": j["fid"]["samples"],
            "reference_count": j["fid"]["reference_count"],
            "sampling_wall_s": j["sampling_wall_s"], "command": j["command"]}


rep = load("report-base-w4a6.json")
out = {
    "machine": "NVIDIA H100 80GB HBM3 (nvidia-h100-x1)",
    "date": "2026-11-22",
    "protocol": "DDIM 100 steps, eta 0, seed 0; FID-10k against the 50 000 CIFAR-10 training images; "
                "PSNR/SSIM on 512 images against ddpm-cifar10-small with the same seeds",
    "rows": {
        "base-w4a6": {
            "recipe": rep["recipe"], "quantize_command": rep["command"],
            "quantize_seconds": rep["total_seconds"], "stage_seconds": rep["stage_seconds"],
            "artifact_bytes": rep["artifact_bytes"],
            "psnr": psnr("psnr-base-w4a6.json"), "fid10k": fid("eval-base-w4a6.json")},
        "base-w4a6+ptqd": {"psnr": psnr("psnr-base-w4a6-ptqd.json"), "fid10k": None},
        "dmq-w4a6": None,
        "dmq-w4a6+ptqd": None,
    },
}
tmp = "docs/results/w4a6-gpu.json.tmp"
with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
os.replace(tmp, "docs/results/w4a6-gpu.json")
print(json.dumps({k: (v and {kk: vv for kk, vv in v.items() if kk in ("psnr", "fid10k")})
                  for k, v in out["rows"].items()}, indent=1))
