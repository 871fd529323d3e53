"""Train dmq's embedded default model: a half-width CIFAR-10 DDPM in diffusers layout.

Runs on one NVIDIA GPU (see run-on-gpu.sh). The architecture is the same family as
`ddpm-cifar10-small` (same block types, two resnets per block, attention at 16x16) at half the
width, so every code path of the big model is exercised by the small one, and the weights are
stored in float16 so the folder stays under 8 MB.

Outputs (all under --out):
  model.tar        the diffusers folder (model_index.json, unet/, scheduler/), samples-ddim100.png,
                   golden/embedded_golden.safetensors, train_state.json
  ckpt_*.safetensors  raw weights, EMA and Adam moments, to resume with --resume DIR
  train.log        the loss curve as text

Everything is seeded; the training wall-clock budget (--budget-s) bounds one call.
"""
import argparse
import io
import json
import math
import os
import shutil
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    time_embedding_type="positional",
    flip_sin_to_cos=False,
    freq_shift=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=2,
    downsample_padding=0,
    norm_num_groups=16,
    norm_eps=1e-6,
    attention_head_dim=None,
    dropout=0.1,
)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=True,
    prediction_type="epsilon",
    variance_type="fixed_small",
)

# DDIMScheduler has no variance_type argument; same schedule otherwise.
DDIM_SCHEDULER = {k: v for k, v in SCHEDULER.items() if k != "variance_type"}

def log(msg, fh=None):
    print(msg, flush=True)
    if fh:
        fh.write(msg + "\n")
        fh.flush()


def decode_zip(path):
    """All JPEGs of the CIFAR zip as a uint8 NCHW tensor (decoded with PIL, 16 threads)."""
    z = zipfile.ZipFile(path)
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
    blobs = [z.read(n) for n in names]

    def one(b):
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(16) as pool:
        arr = np.stack(list(pool.map(one, blobs, chunksize=1000)))
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def lr_at(step, base, warmup):
    return base * min(1.0, (step + 1) / warmup)


def export_model(ema_state, out_dir):
    """Write the diffusers folder with float16 weights; returns the float32 model built from them."""
    unet = UNet2DModel(**UNET)
    unet.load_state_dict(ema_state)
    unet = unet.to(torch.float16)
    unet.save_pretrained(os.path.join(out_dir, "unet"), safe_serialization=True)
    DDPMScheduler(**SCHEDULER).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": __import__("diffusers").__version__,
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            },
            f,
            indent=2,
        )
    # Reload exactly what a user gets: f16 on disk, computed in f32.
    return UNet2DModel.from_pretrained(out_dir, subfolder="unet", torch_dtype=torch.float32).eval()


@torch.no_grad()
def ddim_grid(unet, device, path, n=64, steps=100, seed=0):
    sched = DDIMScheduler(**DDIM_SCHEDULER)
    sched.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((n, 3, 32, 32), generator=g).to(device)
    for t in sched.timesteps:
        eps = unet(x, t.to(device)).sample
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    rows = int(math.sqrt(n))
    grid = img.view(rows, rows, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(rows * 32, rows * 32, 3)
    Image.fromarray(grid.numpy()).save(path)
    return img.float().div(255).mean(dim=(0, 2, 3)).tolist(), img.float().div(255).std(dim=(0, 2, 3)).tolist()


@torch.no_grad()
def golden(unet_cpu, path):
    """Parity tensors from diffusers on CPU fp32: one UNet call and a 20-step DDIM run."""
    torch.set_num_threads(8)
    g = torch.Generator("cpu").manual_seed(1234)
    x_t = torch.randn((4, 3, 32, 32), generator=g)
    ts = torch.tensor([0, 10, 500, 999], dtype=torch.int64)
    eps = unet_cpu(x_t, ts).sample
    sched = DDIMScheduler(**DDIM_SCHEDULER)
    sched.set_timesteps(20)
    g = torch.Generator("cpu").manual_seed(42)
    x_T = torch.randn((4, 3, 32, 32), generator=g)
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(unet_cpu(x, t).sample, t, x, eta=0.0).prev_sample
    save_file(
        {"x_t": x_t, "timesteps": ts, "eps": eps.contiguous(), "ddim20_x_T": x_T, "ddim20_x_0": x.contiguous()},
        path,
        metadata={"generator": "scripts/train-default-model/train.py", "torch": torch.__version__},
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="cifar10-train.zip")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--resume", default=None, help="folder with ckpt_*.safetensors of an earlier call")
    ap.add_argument("--init-from", default=None,
                    help="diffusers folder of an earlier export: continue from its (EMA) weights with a "
                         "fresh optimiser; its train_state.json gives the step count (smaller to carry "
                         "than --resume's full checkpoint)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="training wall-clock seconds (default 420)")
    ap.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (default 3e-4)")
    ap.add_argument("--warmup", type=int, default=500, help="linear warm-up steps (default 500)")
    ap.add_argument("--ema", type=float, default=0.9995, help="EMA decay of the stored weights (default 0.9995)")
    ap.add_argument("--seed", type=int, default=0, help="seed of init, batches and noise (default 0)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    fh = open(os.path.join(args.out, "train.log"), "a")
    t0 = time.time()
    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    data = decode_zip(args.data).to(dev)
    log(f"decoded {data.shape[0]} images in {time.time() - t0:.1f}s", fh)

    model = UNet2DModel(**UNET).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"params {n_params} ({n_params * 2 / 1e6:.2f} MB as float16)", fh)
    assert n_params * 2 < 8e6, "the embedded model must stay under 8 MB"
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    step = 0
    if args.resume:
        model.load_state_dict(load_file(os.path.join(args.resume, "ckpt_model.safetensors")))
        ema = {k: v.to(dev) for k, v in load_file(os.path.join(args.resume, "ckpt_ema.safetensors")).items()}
        m = load_file(os.path.join(args.resume, "ckpt_adam_m.safetensors"))
        v = load_file(os.path.join(args.resume, "ckpt_adam_v.safetensors"))
        step = int(json.load(open(os.path.join(args.resume, "ckpt_step.json")))["step"])
        names = dict(model.named_parameters())
        for p in names.values():  # materialise Adam's state with a zero-lr step, then overwrite it
            p.grad = torch.zeros_like(p)
        for grp in opt.param_groups:
            grp["lr"] = 0.0
        opt.step()
        for k, p in names.items():
            st = opt.state[p]
            st["exp_avg"].copy_(m[k])
            st["exp_avg_sq"].copy_(v[k])
            st["step"] = torch.tensor(float(step))
        log(f"resumed at step {step}", fh)

    if args.init_from:
        start = UNet2DModel.from_pretrained(args.init_from, subfolder="unet", torch_dtype=torch.float32)
        model.load_state_dict(start.state_dict())
        ema = {k: v.detach().clone().float().to(dev) for k, v in model.state_dict().items()}
        step = int(json.load(open(os.path.join(args.init_from, "train_state.json")))["step"])
        log(f"continuing from the weights of {args.init_from} at step {step} (fresh AdamW, warm-up again)", fh)
        warmup_start = step
    else:
        warmup_start = 0

    sched = DDPMScheduler(**SCHEDULER)
    acp = sched.alphas_cumprod.to(dev)
    compiled = torch.compile(model)
    gen = torch.Generator(device=dev).manual_seed(args.seed + step)
    train_start = time.time()
    losses = []
    while time.time() - train_start < args.budget_s:
        idx = torch.randint(0, data.shape[0], (args.batch,), device=dev, generator=gen)
        x0 = data[idx].float().div(127.5).sub(1.0)
        flip = torch.rand(args.batch, device=dev, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, 1000, (args.batch,), device=dev, generator=gen)
        noise = torch.randn(x0.shape, device=dev, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step - warmup_start, args.lr, args.warmup)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = compiled(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(args.ema).add_(v.float(), alpha=1 - args.ema)
                else:
                    ema[k].copy_(v)
        losses.append(loss.detach())
        step += 1
        if step % 500 == 0:
            mean = torch.stack(losses).mean().item()
            losses = []
            log(f"step {step} loss {mean:.4f} elapsed {time.time() - train_start:.0f}s", fh)
    train_s = time.time() - train_start
    log(f"trained to step {step} ({train_s:.0f}s this call)", fh)

    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              os.path.join(args.out, "ckpt_model.safetensors"))
    save_file({k: v.cpu().contiguous() for k, v in ema.items()}, os.path.join(args.out, "ckpt_ema.safetensors"))
    names = dict(model.named_parameters())
    save_file({k: opt.state[p]["exp_avg"].cpu().contiguous() for k, p in names.items()},
              os.path.join(args.out, "ckpt_adam_m.safetensors"))
    save_file({k: opt.state[p]["exp_avg_sq"].cpu().contiguous() for k, p in names.items()},
              os.path.join(args.out, "ckpt_adam_v.safetensors"))
    json.dump({"step": step}, open(os.path.join(args.out, "ckpt_step.json"), "w"))

    folder = os.path.join("/tmp", "dmq-default-ddpm")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    unet = export_model({k: v.cpu() for k, v in ema.items()}, folder)
    mean, std = ddim_grid(unet.to(dev), dev, os.path.join(folder, "samples-ddim100.png"))
    log(f"sample channel mean {mean} std {std}", fh)
    os.makedirs(os.path.join(folder, "golden"))
    golden(unet.cpu(), os.path.join(folder, "golden", "embedded_golden.safetensors"))
    json.dump(
        {
            "step": step, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "ema": args.ema,
            "seed": args.seed, "params": n_params, "train_wall_s_last_call": train_s,
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__, "sample_mean": mean, "sample_std": std,
        },
        open(os.path.join(folder, "train_state.json"), "w"),
        indent=1,
    )
    with tarfile.open(os.path.join(args.out, "model.tar"), "w") as tar:
        tar.add(folder, arcname="dmq-default-ddpm")
    log(f"done in {time.time() - t0:.0f}s", fh)


if __name__ == "__main__":
    main()
