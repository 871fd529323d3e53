#!/usr/bin/env python3
"""Collects the W4A6 records of issues #6/#7 from the raw GPU files into
docs/results/w4a6-gpu.json (the markdown beside it quotes these numbers).
Raw inputs: docs/results/raw/gpu-h100-2026-11-22/ (base-w4a6, machines 1-3 of session 5) and
docs/results/raw/gpu-h100-2026-11-22-s6/ (dmq-w4a6, the PTS-only ablation, DMQ+PTQD, the
diagnostics: PTQD statistics of both artifacts, appearance of 1000 samples per model).
usage: python3 scripts/results/w4a6_records.py"""
import json
import os

RAW5 = "docs/results/raw/gpu-h100-2026-11-22"
RAW6 = "docs/results/raw/gpu-h100-2026-11-22-s6"


def load(raw, name):
    path = os.path.join(raw, name)
    return json.load(open(path)) if os.path.exists(path) else None


def psnr(raw, name):
    j = load(raw, name)
    if j is None:
        return None
    a = j["against"]
    return {k: a[k] for k in ("psnr_mean_db", "psnr_min_db", "ssim_mean", "ssim_min")} | {
        "command": j["command"]}


def fid(raw, name):
    j = load(raw, name)
    if j is None:
        return None
    return {"fid": j["fid"]["fid"], "sfid": j["fid"]["sfid"], "samples": j["fid"]["samples"],
            "reference_count": j["fid"]["reference_count"],
            "sampling_wall_s": j["sampling_wall_s"], "command": j["command"]}


def calib(raw, name):
    r = load(raw, name)
    if r is None:
        return {}
    return {"recipe": r["recipe"], "quantize_command": r["command"],
            "quantize_seconds": r["total_seconds"], "stage_seconds": r["stage_seconds"],
            "artifact_bytes": r["artifact_bytes"]}


def unit_losses(raw, name):
    r = load(raw, name)
    return {u["path"]: u["loss_learned"] for u in r["units"]} if r else {}


def ptqd_summary():
    s = load(RAW6, "ptqd-stats-w4a6.json")
    out = {}
    for name, m in s["models"].items():
        bias = m["bias"]
        steps = len(bias)
        mean = [sum(b[c] for b in bias) / steps for c in range(3)]
        worst = max(range(3), key=lambda c: abs(mean[c]))
        out[name] = {
            "eps_bias_mean_over_steps_rgb": mean,
            "eps_bias_largest_channel": "RGB"[worst],
            "steps_with_that_sign": sum(1 for b in bias if (b[worst] > 0) == (mean[worst] > 0)),
            "err_mse_mean": sum(m["err_mse"]) / steps,
            "corrected_mse_mean": sum(m["corrected_mse"]) / steps,
            "k_max": max(m["k"]),
        }
    return out


base = unit_losses(RAW5, "report-base-w4a6.json")
dmq = unit_losses(RAW6, "report-dmq-w4a6.json")
shared = [p for p in dmq if p in base]
out = {
    "machine": "NVIDIA H100 80GB HBM3 (nvidia-h100-x1)",
    "date": "2026-11-22",
    "protocol": "DDIM 100 steps, eta 0, seed 0; FID-10k against the 50 000 CIFAR-10 training images; "
                "PSNR/SSIM on 512 images against ddpm-cifar10-small with the same seeds; "
                "calibration 5120 samples, 1000 AdaRound iterations per unit, 1000 LES iterations per layer",
    "rows": {
        "base-w4a6": calib(RAW5, "report-base-w4a6.json") | {
            "psnr": psnr(RAW5, "psnr-base-w4a6.json"), "fid10k": fid(RAW5, "eval-base-w4a6.json")},
        "base-w4a6+ptqd": {"psnr": psnr(RAW5, "psnr-base-w4a6-ptqd.json"), "fid10k": None},
        "pts-w4a6 (base + PTS)": calib(RAW6, "report-pts-w4a6.json") | {
            "psnr": psnr(RAW6, "psnr-pts-w4a6.json"), "fid10k": fid(RAW6, "eval-pts-w4a6.json")},
        "dmq-w4a6": calib(RAW6, "report-dmq-w4a6.json") | {
            "psnr": psnr(RAW6, "psnr-dmq-w4a6.json"), "fid10k": fid(RAW6, "eval-dmq-w4a6.json")},
        "dmq-w4a6+ptqd": {"psnr": psnr(RAW6, "psnr-dmq-w4a6-ptqd.json"),
                          "fid10k": fid(RAW6, "eval-dmq-w4a6-ptqd.json")},
    },
    "diagnostics": {
        "unit_loss_dmq_over_base": {
            "units": len(shared),
            "units_lower_with_dmq": sum(1 for p in shared if dmq[p] < base[p]),
            "geometric_mean_ratio": (lambda r: __import__("math").exp(
                sum(__import__("math").log(x) for x in r) / len(r)))([dmq[p] / base[p] for p in shared]),
        },
        "ptqd_statistics": ptqd_summary(),
        "appearance_1000_samples": load(RAW6, "appearance-1000.json"),
    },
}
tmp = "docs/results/w4a6-gpu.json.tmp"
with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
os.replace(tmp, "docs/results/w4a6-gpu.json")
print(json.dumps({k: (v and {kk: vv for kk, vv in v.items() if kk in ("psnr", "fid10k")})
                  for k, v in out["rows"].items()}, indent=1))
print(json.dumps({k: v for k, v in out["diagnostics"].items() if k != "appearance_1000_samples"}, indent=1))
