//! The VAE decoder: `conv_in`, mid block, `UpDecoderBlock2D`s (`layers_per_block + 1` resnets
//! without skip connections, then a nearest-2x upsampler except in the last), norm, SiLU,
//! `conv_out`.

use candle_core::Tensor;

use crate::config_latent::AutoencoderKLConfig;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{join, silu, Conv2d, GroupNorm, LayerMut};
use crate::unet2d::blocks::{AttnSpec, MidBlock, Upsample};
use crate::unet2d::resnet::{ResnetBlock2D, ResnetSpec};
use crate::weights::WeightStore;

/// `UpDecoderBlock2D`.
pub struct UpDecoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample>,
}

impl UpDecoderBlock {
    fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        for r in self.resnets.iter_mut() {
            r.layers_mut(out);
        }
        if let Some(u) = &mut self.upsampler {
            out.push(LayerMut::Conv(&mut u.conv));
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None, ctx)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&h, ctx),
            None => Ok(h),
        }
    }
}

pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpDecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(
        w: &WeightStore,
        path: &str,
        cfg: &AutoencoderKLConfig,
        res: ResnetSpec,
        attn: AttnSpec,
    ) -> Result<Self> {
        let p = |n: &str| join(path, n);
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev = out_c;
            out_c = c;
            let bp = p(&format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let cin = if j == 0 { prev } else { out_c };
                    ResnetBlock2D::load(w, &format!("{bp}.resnets.{j}"), cin, out_c, res)
                })
                .collect::<Result<Vec<_>>>()?;
            up_blocks.push(UpDecoderBlock {
                resnets,
                upsampler: if i + 1 < n {
                    Some(Upsample::load(w, &bp, out_c)?)
                } else {
                    None
                },
            });
        }
        Ok(Self {
            conv_in: Conv2d::load(w, &p("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid_block: MidBlock::load(
                w,
                &p("mid_block"),
                rev[0],
                cfg.mid_block_add_attention,
                res,
                attn,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                w,
                &p("conv_norm_out"),
                res.groups,
                rev[n - 1],
                res.eps,
            )?,
            conv_out: Conv2d::load(w, &p("conv_out"), rev[n - 1], cfg.out_channels, 3, 1, 1)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Conv(&mut self.conv_in));
        self.mid_block.layers_mut(out);
        for b in self.up_blocks.iter_mut() {
            b.layers_mut(out);
        }
        out.push(LayerMut::Conv(&mut self.conv_out));
    }

    pub fn forward(&self, z: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z, ctx)?;
        h = self.mid_block.forward(&h, None, ctx)?;
        for b in &self.up_blocks {
            h = b.forward(&h, ctx)?;
        }
        let h = silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h, ctx)
    }
}
