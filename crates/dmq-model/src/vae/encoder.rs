//! The VAE encoder: `DownEncoderBlock2D`s (resnets, then a downsampler that pads right/bottom
//! by one and convolves 3x3 stride 2 without padding), mid block, norm, SiLU, `conv_out` to
//! `2·latent_channels` (`[mean | logvar]`).

use candle_core::Tensor;

use crate::config_latent::AutoencoderKLConfig;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{join, silu, Conv2d, GroupNorm, LayerMut};
use crate::unet2d::blocks::{AttnSpec, DownBlock, MidBlock};
use crate::unet2d::resnet::ResnetSpec;
use crate::weights::WeightStore;

pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(
        w: &WeightStore,
        path: &str,
        cfg: &AutoencoderKLConfig,
        res: ResnetSpec,
        attn: AttnSpec,
    ) -> Result<Self> {
        let p = |n: &str| join(path, n);
        let c = &cfg.block_out_channels;
        let n = c.len();
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = c[0];
        for (i, &ci) in c.iter().enumerate() {
            let in_c = out_c;
            out_c = ci;
            down_blocks.push(DownBlock::load(
                w,
                &p(&format!("down_blocks.{i}")),
                in_c,
                out_c,
                cfg.layers_per_block,
                false,
                i + 1 < n,
                0,
                res,
                attn,
            )?);
        }
        Ok(Self {
            conv_in: Conv2d::load(w, &p("conv_in"), cfg.in_channels, c[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::load(
                w,
                &p("mid_block"),
                c[n - 1],
                cfg.mid_block_add_attention,
                res,
                attn,
            )?,
            conv_norm_out: GroupNorm::load(w, &p("conv_norm_out"), res.groups, c[n - 1], res.eps)?,
            conv_out: Conv2d::load(
                w,
                &p("conv_out"),
                c[n - 1],
                2 * cfg.latent_channels,
                3,
                1,
                1,
            )?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Conv(&mut self.conv_in));
        for b in self.down_blocks.iter_mut() {
            b.layers_mut(out);
        }
        self.mid_block.layers_mut(out);
        out.push(LayerMut::Conv(&mut self.conv_out));
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x, ctx)?;
        for b in &self.down_blocks {
            h = b.forward(&h, None, ctx)?.0;
        }
        let h = self.mid_block.forward(&h, None, ctx)?;
        let h = silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h, ctx)
    }
}
