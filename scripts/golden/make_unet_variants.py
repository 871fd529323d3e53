"""Golden outputs of diffusers' UNet2DModel for config variants the shared goldens do not cover.

Each variant is a tiny random-weight UNet2DModel saved in diffusers layout, with one forward on
seeded inputs. Run with torch + diffusers 0.42.1 (CPU, fp32, deterministic):
    python make_unet_variants.py OUT_DIR
Writes OUT_DIR/<variant>/unet/{config.json, diffusion_pytorch_model.safetensors} and
OUT_DIR/<variant>/golden.safetensors (x, timesteps, [class_labels], eps).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel

torch.set_num_threads(4)
torch.use_deterministic_algorithms(True)
torch.set_grad_enabled(False)

BASE = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
)
VARIANTS = {
    "multihead_pad1_flip": dict(attention_head_dim=8, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0),
    "scale_shift_mid_scale": dict(resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.4142135623730951,
                                  attention_head_dim=None, attn_norm_num_groups=4),
    "fourier_centered": dict(time_embedding_type="fourier", center_input_sample=True, attention_head_dim=None),
    "learned_time": dict(time_embedding_type="learned", num_train_timesteps=1000, attention_head_dim=None),
    "class_table": dict(num_class_embeds=10, attention_head_dim=None, time_embedding_dim=96),
    "class_timestep": dict(class_embed_type="timestep", attention_head_dim=None),
    "no_mid_attention": dict(add_attention=False, attention_head_dim=None, norm_eps=1e-5),
}

out = sys.argv[1]
for name, extra in VARIANTS.items():
    torch.manual_seed(0)
    model = UNet2DModel(**{**BASE, **extra}).eval()
    # Random init leaves some layers at zero in diffusers; perturb everything so they matter.
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    d = os.path.join(out, name)
    model.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 3, 16, 16), generator=g)
    if extra.get("time_embedding_type") == "fourier":
        t = torch.tensor([0.5, 20.0])
    else:
        t = torch.tensor([3, 777])
    kwargs = {}
    tensors = {"x": x, "timesteps": t.to(torch.float32)}
    if "num_class_embeds" in extra or extra.get("class_embed_type") == "timestep":
        labels = torch.tensor([1, 7])
        kwargs["class_labels"] = labels
        tensors["class_labels"] = labels.to(torch.int64)
    tensors["eps"] = model(x, t, **kwargs).sample.contiguous()
    save_file(tensors, os.path.join(d, "golden.safetensors"))
    print(name, tuple(tensors["eps"].shape), float(tensors["eps"].abs().max()))
json.dump({"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
          open(os.path.join(out, "versions.json"), "w"))
