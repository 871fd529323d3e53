//! diffusers' `BasicTransformerBlock` in its three norm variants: `layer_norm` (the UNet's
//! spatial transformer), `ada_norm_zero` (DiT) and `ada_norm_single` (PixArt).

use candle_core::Tensor;

use super::attention::Attention;
use super::feed_forward::{Activation, FeedForward};
use super::norms::{chunks, modulate, AdaLayerNormZero};
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{LayerMut, LayerNorm};
use crate::weights::WeightStore;

/// How a block normalises (and modulates) the inputs of its three sub-layers.
pub enum BlockNorm {
    /// `norm1` before self-attention, `norm2` before cross-attention (when there is one),
    /// `norm3` before the feed-forward.
    LayerNorm {
        norm1: LayerNorm,
        norm2: Option<LayerNorm>,
        norm3: LayerNorm,
    },
    /// adaLN-Zero: `norm1` carries its own timestep+class embedding; `norm3` before the
    /// feed-forward (eps `norm_eps`), modulated too; attention and feed-forward outputs gated.
    AdaZero {
        norm1: AdaLayerNormZero,
        norm3: LayerNorm,
    },
    /// adaLN-single: the model's shared modulation plus this block's `scale_shift_table`
    /// `[6, D]`; the cross-attention input is not normalised; `norm2` before the feed-forward.
    AdaSingle {
        norm1: LayerNorm,
        norm2: LayerNorm,
        scale_shift_table: Tensor,
    },
}

/// Which variant to build, with what the variant needs.
#[derive(Debug, Clone, Copy)]
pub enum NormKind {
    LayerNorm,
    AdaZero { classes: usize },
    AdaSingle,
}

/// The per-forward conditioning a block's norm takes.
pub enum BlockCond<'a> {
    /// `layer_norm` blocks.
    None,
    /// adaLN-Zero: `[B, 256]` timestep features and `[B]` integer class labels.
    TimestepLabels {
        t_proj: &'a Tensor,
        labels: &'a Tensor,
    },
    /// adaLN-single: the shared `[B, 6D]` modulation (`adaln_single`'s `timestep`).
    Modulation(&'a Tensor),
}

/// Construction settings of one block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Width of the cross-attention context; `None`: no cross-attention.
    pub cross_attention_dim: Option<usize>,
    /// Bias on q/k/v (`attention_bias`).
    pub attention_bias: bool,
    pub activation: Activation,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub norm_affine: bool,
}

pub struct BasicTransformerBlock {
    pub path: String,
    pub norm: BlockNorm,
    pub attn1: Attention,
    pub attn2: Option<Attention>,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &WeightStore, path: &str, s: BlockSpec) -> Result<Self> {
        let p = |n: &str| format!("{path}.{n}");
        let ln = |n: &str| LayerNorm::load(w, &p(n), s.dim, s.norm_eps, s.norm_affine);
        let norm = match s.norm {
            NormKind::LayerNorm => BlockNorm::LayerNorm {
                norm1: ln("norm1")?,
                norm2: match s.cross_attention_dim {
                    Some(_) => Some(ln("norm2")?),
                    None => None,
                },
                norm3: ln("norm3")?,
            },
            NormKind::AdaZero { classes } => {
                if s.cross_attention_dim.is_some() {
                    return Err(ModelError::Source(format!(
                        "{path}: ada_norm_zero blocks with cross-attention are not supported"
                    )));
                }
                BlockNorm::AdaZero {
                    norm1: AdaLayerNormZero::load(w, &p("norm1"), s.dim, classes)?,
                    norm3: ln("norm3")?,
                }
            }
            NormKind::AdaSingle => BlockNorm::AdaSingle {
                norm1: ln("norm1")?,
                norm2: ln("norm2")?,
                scale_shift_table: w.get(&p("scale_shift_table"), &[6, s.dim])?,
            },
        };
        Ok(Self {
            path: path.to_string(),
            attn1: Attention::load(
                w,
                &p("attn1"),
                s.dim,
                None,
                s.heads,
                s.head_dim,
                s.attention_bias,
            )?,
            attn2: match s.cross_attention_dim {
                Some(c) => Some(Attention::load(
                    w,
                    &p("attn2"),
                    s.dim,
                    Some(c),
                    s.heads,
                    s.head_dim,
                    s.attention_bias,
                )?),
                None => None,
            },
            ff: FeedForward::load(w, &p("ff"), s.dim, s.activation)?,
            norm,
        })
    }

    /// Its linear layers in forward order (adaLN-Zero's embedding and modulation first).
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        if let BlockNorm::AdaZero { norm1, .. } = &mut self.norm {
            norm1.layers_mut(out);
        }
        self.attn1.layers_mut(out);
        if let Some(a) = &mut self.attn2 {
            a.layers_mut(out);
        }
        self.ff.layers_mut(out);
    }

    /// `x`: `[B, N, D]` tokens; `context`: `[B, S, C]` cross-attention input; `context_bias`:
    /// additive bias on the cross-attention scores. Offered inputs: `x`, then the context and
    /// bias when given, then the conditioning tensors.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        context_bias: Option<&Tensor>,
        cond: &BlockCond,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut offered = vec![x];
        offered.extend(context);
        offered.extend(context_bias);
        match cond {
            BlockCond::None => {}
            BlockCond::TimestepLabels { t_proj, labels } => offered.extend([*t_proj, *labels]),
            BlockCond::Modulation(m) => offered.push(m),
        }
        ctx.offer(&self.path, &offered)?;
        let wrong = || {
            ModelError::Source(format!(
                "{}: the conditioning given does not fit this block's norm",
                self.path
            ))
        };
        // Modulation vectors [B, 1, D]: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        let m: Option<Vec<Tensor>> = match (&self.norm, cond) {
            (BlockNorm::LayerNorm { .. }, BlockCond::None) => None,
            (BlockNorm::AdaZero { norm1, .. }, BlockCond::TimestepLabels { t_proj, labels }) => {
                Some(norm1.modulation(t_proj, labels, ctx)?)
            }
            (
                BlockNorm::AdaSingle {
                    scale_shift_table, ..
                },
                BlockCond::Modulation(t),
            ) => {
                let b = t.dims()[0];
                let d = scale_shift_table.dims()[1];
                let t = t
                    .reshape((b, 6, d))?
                    .broadcast_add(&scale_shift_table.unsqueeze(0)?)?;
                Some(chunks(&t, 6)?)
            }
            _ => return Err(wrong()),
        };

        // Self-attention.
        let normed = match &self.norm {
            BlockNorm::LayerNorm { norm1, .. } | BlockNorm::AdaSingle { norm1, .. } => {
                norm1.forward(x, ctx)?
            }
            BlockNorm::AdaZero { norm1, .. } => norm1.norm.forward(x, ctx)?,
        };
        let normed = match &m {
            Some(m) => modulate(&normed, &m[0], &m[1])?,
            None => normed,
        };
        let mut a = self.attn1.forward(&normed, None, None, ctx)?;
        if let Some(m) = &m {
            a = a.broadcast_mul(&m[2])?;
        }
        let mut h = (a + x)?;

        // Cross-attention.
        if let Some(attn2) = &self.attn2 {
            let context = context.ok_or_else(|| {
                ModelError::Source(format!(
                    "{}: this block cross-attends: pass encoder hidden states",
                    self.path
                ))
            })?;
            let input = match &self.norm {
                BlockNorm::LayerNorm {
                    norm2: Some(norm2), ..
                } => norm2.forward(&h, ctx)?,
                _ => h.clone(),
            };
            h = (attn2.forward(&input, Some(context), context_bias, ctx)? + h)?;
        }

        // Feed-forward.
        let normed = match &self.norm {
            BlockNorm::LayerNorm { norm3, .. } | BlockNorm::AdaZero { norm3, .. } => {
                norm3.forward(&h, ctx)?
            }
            BlockNorm::AdaSingle { norm2, .. } => norm2.forward(&h, ctx)?,
        };
        let normed = match &m {
            Some(m) => modulate(&normed, &m[3], &m[4])?,
            None => normed,
        };
        let mut f = self.ff.forward(&normed, ctx)?;
        if let Some(m) = &m {
            f = f.broadcast_mul(&m[5])?;
        }
        let out = (f + h)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}
