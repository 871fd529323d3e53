//! diffusers' `Transformer2DModel` in its continuous-input form, the spatial transformer of
//! `UNet2DConditionModel`'s cross-attention blocks: GroupNorm (eps 1e-6), `proj_in`, transformer
//! blocks over the `H·W` positions (row-major tokens), `proj_out`, plus the input (residual).

use candle_core::Tensor;

use super::block::{BasicTransformerBlock, BlockCond, BlockSpec};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{Conv2d, GroupNorm, LayerMut, Linear};
use crate::weights::WeightStore;

/// `proj_in`/`proj_out`: a 1x1 conv on the feature map, or (`use_linear_projection`) a linear
/// layer on the tokens.
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(w: &WeightStore, path: &str, in_c: usize, out_c: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(w, path, in_c, out_c)?)
        } else {
            Projection::Conv(Conv2d::load(w, path, in_c, out_c, 1, 1, 0)?)
        })
    }

    fn layer_mut(&mut self) -> LayerMut<'_> {
        match self {
            Projection::Conv(c) => LayerMut::Conv(c),
            Projection::Linear(l) => LayerMut::Linear(l),
        }
    }
}

pub struct SpatialTransformer {
    pub path: String,
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl SpatialTransformer {
    /// `spec.dim` is the inner width `heads · head_dim`; `channels` the feature-map width.
    pub fn load(
        w: &WeightStore,
        path: &str,
        channels: usize,
        groups: usize,
        layers: usize,
        linear_projection: bool,
        spec: BlockSpec,
    ) -> Result<Self> {
        let p = |n: &str| format!("{path}.{n}");
        let inner = spec.dim;
        Ok(Self {
            path: path.to_string(),
            norm: GroupNorm::load(w, &p("norm"), groups, channels, 1e-6)?,
            proj_in: Projection::load(w, &p("proj_in"), channels, inner, linear_projection)?,
            transformer_blocks: (0..layers)
                .map(|i| {
                    BasicTransformerBlock::load(w, &p(&format!("transformer_blocks.{i}")), spec)
                })
                .collect::<Result<Vec<_>>>()?,
            proj_out: Projection::load(w, &p("proj_out"), inner, channels, linear_projection)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(self.proj_in.layer_mut());
        for b in self.transformer_blocks.iter_mut() {
            b.layers_mut(out);
        }
        out.push(self.proj_out.layer_mut());
    }

    /// `x`: `[B, C, H, W]`; `context`: `[B, S, cross_attention_dim]`. Offered inputs `[x, context]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x, context])?;
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dims()[1];
            Ok(t.reshape((b, ch, h * w))?.transpose(1, 2)?.contiguous()?)
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed, ctx)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?, ctx)?,
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, Some(context), None, &BlockCond::None, ctx)?;
        }
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dims()[2];
            Ok(t.transpose(1, 2)?.contiguous()?.reshape((b, ch, h, w))?)
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens)?, ctx)?,
            Projection::Linear(lin) => to_map(&lin.forward(&tokens, ctx)?)?,
        };
        debug_assert_eq!(out.dims()[1], c);
        let out = (out + x)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}
