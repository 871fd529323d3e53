//! The spatial self-attention of diffusers' `AttnDownBlock2D`/`AttnUpBlock2D`/`UNetMidBlock2D`
//! (`Attention` with `residual_connection=True`, group norm on the input, bias on q/k/v/out).

use candle_core::Tensor;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{GroupNorm, LayerMut, Linear};
use crate::transformer::attention::scaled_dot_product;
use crate::weights::WeightStore;

pub struct SpatialAttention {
    pub path: String,
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub rescale_output_factor: f64,
}

impl SpatialAttention {
    /// `groups: None` builds no input norm (diffusers' `norm_num_groups=None`).
    pub fn load(
        w: &WeightStore,
        path: &str,
        channels: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let p = |n: &str| format!("{path}.{n}");
        Ok(Self {
            path: path.to_string(),
            group_norm: match groups {
                Some(g) => Some(GroupNorm::load(w, &p("group_norm"), g, channels, eps)?),
                None => None,
            },
            to_q: Linear::load_aliased(w, &p("to_q"), &p("query"), channels, channels)?,
            to_k: Linear::load_aliased(w, &p("to_k"), &p("key"), channels, channels)?,
            to_v: Linear::load_aliased(w, &p("to_v"), &p("value"), channels, channels)?,
            to_out: Linear::load_aliased(w, &p("to_out.0"), &p("proj_attn"), channels, channels)?,
            heads: channels / head_dim,
            rescale_output_factor,
        })
    }

    /// Its linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Linear(&mut self.to_q));
        out.push(LayerMut::Linear(&mut self.to_k));
        out.push(LayerMut::Linear(&mut self.to_v));
        out.push(LayerMut::Linear(&mut self.to_out));
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x])?;
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let normed = match &self.group_norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        // [B, C, H, W] -> [B, HW, C]
        let tokens = normed.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?;
        let head_dim = c / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.to_q.forward(&tokens, ctx)?)?;
        let k = split(self.to_k.forward(&tokens, ctx)?)?;
        let v = split(self.to_v.forward(&tokens, ctx)?)?;
        let attn = scaled_dot_product(&self.path, &q, &k, &v, None, ctx)?;
        let attn = attn.transpose(1, 2)?.reshape((b, n, c))?;
        let out = self.to_out.forward(&attn, ctx)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (out + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.rescale_output_factor)?)
        }
    }
}
