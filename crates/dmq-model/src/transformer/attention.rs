//! diffusers' `Attention` as transformer blocks use it: no input norm, no residual inside,
//! optional cross-attention context and an optional additive bias on the scores.

use candle_core::Tensor;

use crate::ctx::{Ctx, OpKind};
use crate::error::Result;
use crate::layers::{softmax_last, LayerMut, Linear};
use crate::weights::WeightStore;

pub struct Attention {
    pub path: String,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    /// `context_dim`: width of the cross-attention context (`None`: self-attention).
    /// `qkv_bias` is diffusers' `attention_bias`; `to_out.0` always has a bias.
    pub fn load(
        w: &WeightStore,
        path: &str,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let p = |n: &str| format!("{path}.{n}");
        let inner = heads * head_dim;
        let kv_in = context_dim.unwrap_or(query_dim);
        Ok(Self {
            path: path.to_string(),
            to_q: Linear::load_with_bias(w, &p("to_q"), query_dim, inner, qkv_bias)?,
            to_k: Linear::load_with_bias(w, &p("to_k"), kv_in, inner, qkv_bias)?,
            to_v: Linear::load_with_bias(w, &p("to_v"), kv_in, inner, qkv_bias)?,
            to_out: Linear::load(w, &p("to_out.0"), inner, query_dim)?,
            heads,
        })
    }

    /// Its linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Linear(&mut self.to_q));
        out.push(LayerMut::Linear(&mut self.to_k));
        out.push(LayerMut::Linear(&mut self.to_v));
        out.push(LayerMut::Linear(&mut self.to_out));
    }

    /// `x`: `[B, N, C]` queries; `context`: `[B, S, C_ctx]` keys/values source (`None`: `x`);
    /// `bias`: added to the scaled scores, broadcastable to `[B, heads, N, S]` (an attention
    /// mask turned into `(1 − mask)·(−10000)` by the model). Offered inputs: `x`, then the
    /// context and the bias when given.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        bias: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut offered = vec![x];
        offered.extend(context);
        offered.extend(bias);
        ctx.offer(&self.path, &offered)?;
        let (b, n, _) = x.dims3()?;
        let kv_src = context.unwrap_or(x);
        let s = kv_src.dims()[1];
        let inner = self.to_q.out_features();
        let head_dim = inner / self.heads;
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.to_q.forward(x, ctx)?, n)?;
        let k = split(self.to_k.forward(kv_src, ctx)?, s)?;
        let v = split(self.to_v.forward(kv_src, ctx)?, s)?;
        let attn = scaled_dot_product(&self.path, &q, &k, &v, bias, ctx)?;
        let attn = attn.transpose(1, 2)?.reshape((b, n, inner))?;
        let out = self.to_out.forward(&attn, ctx)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}

/// `softmax(q·kᵀ/√d + bias)·v` over heads (`q` [B, H, N, d], `k`/`v` [B, H, S, d]), recording
/// both activation matmuls as `{path}.attn_scores` / `{path}.attn_values` when tracing. Shared by
/// the spatial self-attention of `UNet2DModel` and the transformers' attention.
pub(crate) fn scaled_dot_product(
    path: &str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    ctx: &Ctx,
) -> Result<Tensor> {
    let (b, heads, n, head_dim) = q.dims4()?;
    let s = k.dims()[2];
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
    }
    let probs = softmax_last(&scores, ctx)?;
    let attn = probs.matmul(v)?;
    if ctx.tracing_on() {
        let macs = (b * heads * n * s * head_dim) as u64;
        let scores_path = format!("{path}.attn_scores");
        let values_path = format!("{path}.attn_values");
        ctx.record(
            (&scores_path, OpKind::ActMatmul, &[]),
            q.dims(),
            scores.dims(),
            macs,
        );
        ctx.record(
            (&values_path, OpKind::ActMatmul, &[]),
            probs.dims(),
            attn.dims(),
            macs,
        );
    }
    Ok(attn)
}
