//! Reconstruction units of the latent denoisers (BRECQ's blocks): SD's ResNet blocks and
//! spatial transformers, DiT's and PixArt's transformer blocks, every other conv/linear alone.
//! A unit's layers are the model's layers under its path, so the list can never drift from
//! `layers_mut`.

use candle_core::Tensor;

use crate::ctx::Ctx;
use crate::dit::DiTTransformer2DModel;
use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, Linear};
use crate::pixart::PixArtTransformer2DModel;
use crate::transformer::block::BlockNorm;
use crate::transformer::{BasicTransformerBlock, BlockCond, SpatialTransformer};
use crate::unet2d::resnet::ResnetBlock2D;
use crate::unet2d::units::{Unit, UnitKind};
use crate::unet2d_condition::blocks::{CondDownBlock, CondUpBlock};
use crate::unet2d_condition::UNet2DConditionModel;

pub(crate) enum UnitRef<'a> {
    Resnet(&'a ResnetBlock2D),
    Spatial(&'a SpatialTransformer),
    Block(&'a BasicTransformerBlock),
    Conv(&'a Conv2d),
    Linear(&'a Linear),
}

impl UnitRef<'_> {
    pub(crate) fn path(&self) -> &str {
        match self {
            UnitRef::Resnet(r) => &r.path,
            UnitRef::Spatial(s) => &s.path,
            UnitRef::Block(b) => &b.path,
            UnitRef::Conv(c) => &c.path,
            UnitRef::Linear(l) => &l.path,
        }
    }

    /// The unit, its layers taken from `layer_paths` (the model's, in forward order).
    pub(crate) fn describe(&self, layer_paths: &[String]) -> Unit {
        let path = self.path().to_string();
        let (kind, layers) = match self {
            UnitRef::Conv(_) | UnitRef::Linear(_) => (UnitKind::Layer, vec![path.clone()]),
            _ => {
                let prefix = format!("{path}.");
                let kind = match self {
                    UnitRef::Resnet(_) => UnitKind::Resnet,
                    _ => UnitKind::Transformer,
                };
                let layers = layer_paths
                    .iter()
                    .filter(|p| p.starts_with(&prefix))
                    .cloned()
                    .collect();
                (kind, layers)
            }
        };
        Unit { path, kind, layers }
    }

    /// Runs the unit on inputs as it offered them to a capturing forward.
    pub(crate) fn run(&self, inputs: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        let path = self.path();
        let want = |n: &[usize]| -> Result<()> {
            if n.contains(&inputs.len()) {
                Ok(())
            } else {
                Err(ModelError::Source(format!(
                    "unit `{path}` takes {n:?} input tensor(s), got {}",
                    inputs.len()
                )))
            }
        };
        match self {
            UnitRef::Resnet(r) => {
                want(&[if r.time_emb_proj.is_some() { 2 } else { 1 }])?;
                r.forward(&inputs[0], inputs.get(1), ctx)
            }
            UnitRef::Spatial(s) => {
                want(&[2])?;
                s.forward(&inputs[0], &inputs[1], ctx)
            }
            UnitRef::Conv(c) => {
                want(&[1])?;
                c.forward(&inputs[0], ctx)
            }
            UnitRef::Linear(l) => {
                want(&[1])?;
                l.forward(&inputs[0], ctx)
            }
            // Inputs in the order `BasicTransformerBlock::forward` offers them: x, then the
            // context and its bias when given, then the conditioning tensors.
            UnitRef::Block(b) => match &b.norm {
                BlockNorm::AdaZero { .. } => {
                    want(&[3])?;
                    let cond = BlockCond::TimestepLabels {
                        t_proj: &inputs[1],
                        labels: &inputs[2],
                    };
                    b.forward(&inputs[0], None, None, &cond, ctx)
                }
                BlockNorm::AdaSingle { .. } => {
                    let n = if b.attn2.is_some() { [3, 4] } else { [2, 2] };
                    want(&n)?;
                    let m = &inputs[inputs.len() - 1];
                    let context = b.attn2.as_ref().map(|_| &inputs[1]);
                    let bias = (inputs.len() == 4).then(|| &inputs[2]);
                    b.forward(&inputs[0], context, bias, &BlockCond::Modulation(m), ctx)
                }
                BlockNorm::LayerNorm { .. } => {
                    want(&[if b.attn2.is_some() { 2 } else { 1 }])?;
                    b.forward(&inputs[0], inputs.get(1), None, &BlockCond::None, ctx)
                }
            },
        }
    }
}

/// SD: time embedding, `conv_in`, then per block its resnets each followed by its spatial
/// transformer, the samplers, `conv_out`.
pub(crate) fn unet_condition_units(m: &UNet2DConditionModel) -> Vec<UnitRef<'_>> {
    let mut out = vec![
        UnitRef::Linear(&m.time_embedding.linear_1),
        UnitRef::Linear(&m.time_embedding.linear_2),
        UnitRef::Conv(&m.conv_in),
    ];
    for b in &m.down_blocks {
        match b {
            CondDownBlock::Plain(b) => {
                out.extend(b.resnets.iter().map(UnitRef::Resnet));
                out.extend(b.downsampler.as_ref().map(|d| UnitRef::Conv(&d.conv)));
            }
            CondDownBlock::CrossAttn(b) => {
                for (i, r) in b.resnets.iter().enumerate() {
                    out.push(UnitRef::Resnet(r));
                    out.extend(b.attentions.get(i).map(UnitRef::Spatial));
                }
                out.extend(b.downsampler.as_ref().map(|d| UnitRef::Conv(&d.conv)));
            }
        }
    }
    if let Some(mid) = &m.mid_block {
        out.push(UnitRef::Resnet(&mid.resnets[0]));
        out.push(UnitRef::Spatial(&mid.attention));
        out.extend(mid.resnets[1..].iter().map(UnitRef::Resnet));
    }
    for b in &m.up_blocks {
        match b {
            CondUpBlock::Plain(b) => {
                out.extend(b.resnets.iter().map(UnitRef::Resnet));
                out.extend(b.upsampler.as_ref().map(|u| UnitRef::Conv(&u.conv)));
            }
            CondUpBlock::CrossAttn(b) => {
                for (i, r) in b.resnets.iter().enumerate() {
                    out.push(UnitRef::Resnet(r));
                    out.extend(b.attentions.get(i).map(UnitRef::Spatial));
                }
                out.extend(b.upsampler.as_ref().map(|u| UnitRef::Conv(&u.conv)));
            }
        }
    }
    out.push(UnitRef::Conv(&m.conv_out));
    out
}

/// DiT: the patch embedding, each transformer block whole (its adaLN-Zero embedding
/// included), the final layer's two linears.
pub(crate) fn dit_units(m: &DiTTransformer2DModel) -> Vec<UnitRef<'_>> {
    let mut out = vec![UnitRef::Conv(&m.pos_embed.proj)];
    out.extend(m.transformer_blocks.iter().map(UnitRef::Block));
    out.push(UnitRef::Linear(&m.proj_out_1));
    out.push(UnitRef::Linear(&m.proj_out_2));
    out
}

/// PixArt: the patch embedding, adaLN-single's and the caption projection's linears, each
/// transformer block whole, `proj_out`.
pub(crate) fn pixart_units(m: &PixArtTransformer2DModel) -> Vec<UnitRef<'_>> {
    let mut out = vec![
        UnitRef::Conv(&m.pos_embed.proj),
        UnitRef::Linear(&m.adaln_single.timestep_embedder.linear_1),
        UnitRef::Linear(&m.adaln_single.timestep_embedder.linear_2),
        UnitRef::Linear(&m.adaln_single.linear),
    ];
    if let Some(c) = &m.caption_projection {
        out.push(UnitRef::Linear(&c.linear_1));
        out.push(UnitRef::Linear(&c.linear_2));
    }
    out.extend(m.transformer_blocks.iter().map(UnitRef::Block));
    out.push(UnitRef::Linear(&m.proj_out));
    out
}
