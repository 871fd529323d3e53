"""Reference values of diffusers' DPMSolverMultistepScheduler for dmq-sched's DPM-Solver++ tests.

Writes, next to this script:
  dpm_golden.safetensors       timesteps and sampling trajectories (see below)
  dpm_scheduler_config.json    the config diffusers saves for DPMSolverMultistepScheduler with its
                               defaults (the PixArt settings; it holds `"lambda_min_clipped":
                               -Infinity`, which the Rust test parses)

Run (needs torch, diffusers, safetensors; CPU is enough):
  python3 crates/dmq-sched/tests/data/make_dpm_golden.py \
      --shared /work/shared/models

The "model" is analytic so the Rust test can evaluate it identically:
  model(x, t) = 0.3 * x + 0.1 * sin(t / 100)
(used as the epsilon or the v prediction, per case). Every case starts from the same x_T
(seeded, stored) and records, for a sampling loop of `steps` steps through
`scheduler.step(model(x, t), t, x)`:
  <case>/timesteps  int64 [steps]
  <case>/xs         f32   [steps + 1, 2, 3, 4, 4]   x_T, then every prev_sample
  <case>/model_out  f32   [steps, 2, 3, 4, 4]       the model output at each step
and, for step counts without a trajectory, only <case>/timesteps.
"""

import argparse
import json
import math
import os

import diffusers
import numpy as np
import safetensors
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (2, 3, 4, 4)


def model(x, t):
    return 0.3 * x + 0.1 * math.sin(float(t) / 100.0)


def load_config(path, **overrides):
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(overrides)
    return cfg


def trajectory(sched, steps, x_t):
    sched.set_timesteps(steps)
    xs, outs = [x_t], []
    x = x_t
    for t in sched.timesteps:
        out = model(x, int(t))
        outs.append(out)
        x = sched.step(out, t, x).prev_sample
        xs.append(x)
    return sched.timesteps.clone(), torch.stack(xs), torch.stack(outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="/work/shared/models")
    args = ap.parse_args()

    configs = {
        "cifar": os.path.join(args.shared, "ddpm-cifar10-small/scheduler/scheduler_config.json"),
        "sd": os.path.join(args.shared, "tiny-latent/sd/scheduler/scheduler_config.json"),
    }

    # A DPMSolverMultistepScheduler config as diffusers writes it (PixArt's settings are the
    # defaults). The trajectory case "pixart" below is built from this very file.
    default = DPMSolverMultistepScheduler()
    default.save_config(HERE)
    os.replace(os.path.join(HERE, "scheduler_config.json"),
               os.path.join(HERE, "dpm_scheduler_config.json"))
    configs["pixart"] = os.path.join(HERE, "dpm_scheduler_config.json")

    gen = torch.Generator().manual_seed(20240611)
    x_t = torch.randn(SHAPE, generator=gen, dtype=torch.float32)

    tensors = {"x_T": x_t}
    # (case name, config, overrides, trajectory step counts, timestep-only step counts)
    cases = [
        ("cifar-eps", "cifar", {}, [10, 25], [1, 2, 3, 7, 50, 100]),
        ("cifar-v", "cifar", {"prediction_type": "v_prediction"}, [10, 25], []),
        ("sd-eps", "sd", {}, [10, 25], [1, 2, 3, 7, 50, 100]),
        ("sd-v", "sd", {"prediction_type": "v_prediction"}, [10, 25], []),
        ("sd-linspace", "sd", {"timestep_spacing": "linspace"}, [10], [1, 3, 7, 20, 25, 50, 999]),
        ("sd-trailing", "sd", {"timestep_spacing": "trailing"}, [10], [1, 3, 7, 25, 50]),
        ("sd-zsnr-v", "sd", {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
                             "prediction_type": "v_prediction"}, [10], []),
        ("pixart", "pixart", {}, [10, 20], [1, 2, 3, 25, 50]),
    ]
    for name, cfg_name, overrides, traj_steps, ts_steps in cases:
        cfg = load_config(configs[cfg_name], **overrides)
        sched = DPMSolverMultistepScheduler.from_config(cfg)
        for steps in traj_steps:
            ts, xs, outs = trajectory(sched, steps, x_t)
            tensors[f"{name}/{steps}/timesteps"] = ts.to(torch.int64)
            tensors[f"{name}/{steps}/xs"] = xs.contiguous()
            tensors[f"{name}/{steps}/model_out"] = outs.contiguous()
        for steps in ts_steps:
            sched.set_timesteps(steps)
            tensors[f"{name}/{steps}/timesteps"] = sched.timesteps.clone().to(torch.int64)

    meta = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "model": "0.3 * x + 0.1 * sin(t / 100)",
        "shape": json.dumps(SHAPE),
        "cases": json.dumps([[c[0], c[1], c[2]] for c in cases]),
        "script": "crates/dmq-sched/tests/data/make_dpm_golden.py",
    }
    out = os.path.join(HERE, "dpm_golden.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {len(tensors)} tensors)", meta)


if __name__ == "__main__":
    main()
