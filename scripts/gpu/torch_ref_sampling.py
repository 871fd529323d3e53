"""Reference point for `dmq bench` on the GPU: DDIM sampling with PyTorch + diffusers on the same
GPU in the same call (issue #3). Prints one JSON object; nothing of dmq is imported.

usage: python3 torch_ref_sampling.py MODEL_DIR [--batch 256] [--steps 100] [--out FILE]
MODEL_DIR is a diffusers pipeline folder (unet/, scheduler/)."""
import argparse
import json
import time

import torch
from diffusers import DDIMScheduler, UNet2DModel


def sample(unet, sched, batch, steps, res, ch, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, ch, res, res, generator=g, device=device)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            eps = unet(x, t).sample
        x = sched.step(eps.float(), t, x, eta=0.0).prev_sample
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # PyTorch's default for convs is True
    torch.backends.cudnn.benchmark = True
    unet = UNet2DModel.from_pretrained(f"{a.model}/unet").to(dev).eval()
    sched = DDIMScheduler.from_pretrained(f"{a.model}/scheduler")
    res, ch = unet.config.sample_size, unet.config.in_channels
    rows = []
    with torch.no_grad():
        for name, dtype in [("fp32", torch.float32), ("bf16-autocast", torch.bfloat16)]:
            for batch in [1, a.batch]:
                steps = a.steps if batch > 1 else 20
                sample(unet, sched, batch, 3, res, ch, dtype, dev)  # warm-up (cudnn autotune)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                x = sample(unet, sched, batch, steps, res, ch, dtype, dev)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                rows.append({"precision": name, "batch": batch, "steps": steps, "wall_s": wall,
                             # per image of a full --steps trajectory (batch 1 runs fewer steps)
                             "images_per_s": batch / (wall * a.steps / steps),
                             "ms_per_unet_call": wall * 1e3 / steps,
                             "finite": bool(torch.isfinite(x).all())})
                print(json.dumps(rows[-1]), flush=True)
    rep = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
           "sampler": "ddim", "eta": 0.0, "steps": a.steps, "tf32": False,
           "cudnn_benchmark": True, "rows": rows}
    text = json.dumps(rep, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
