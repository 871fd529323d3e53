//! The UNet seen as a chain of reconstruction units (BRECQ): every ResNet block and attention
//! block whole, every other conv/linear alone. Block reconstruction captures a unit's inputs
//! with a capturing forward (`Ctx::capturing`, which stops there) and then runs the unit alone.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::attention::SpatialAttention;
use super::embeddings::ClassEmbed;
use super::resnet::ResnetBlock2D;
use super::{Timesteps, UNet2DModel};
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, Linear};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// Inputs `[x, silu(time embedding)]`.
    Resnet,
    /// Inputs `[x]`.
    Attention,
    /// One conv or linear layer; inputs `[x]` as the layer sees it (after padding/upsampling).
    Layer,
    /// A spatial transformer (SD: inputs `[x, context]`) or a DiT/PixArt transformer block
    /// (inputs as `BasicTransformerBlock::forward` offers them).
    Transformer,
}

/// One reconstruction unit: its checkpoint path and the paths of its conv/linear layers.
#[derive(Debug, Clone)]
pub struct Unit {
    pub path: String,
    pub kind: UnitKind,
    pub layers: Vec<String>,
}

enum UnitRef<'a> {
    Resnet(&'a ResnetBlock2D),
    Attention(&'a SpatialAttention),
    Conv(&'a Conv2d),
    Linear(&'a Linear),
}

impl UnitRef<'_> {
    fn describe(&self) -> Unit {
        match self {
            UnitRef::Resnet(r) => {
                let mut layers = vec![r.conv1.path.clone()];
                if let Some(t) = &r.time_emb_proj {
                    layers.push(t.path.clone());
                }
                layers.push(r.conv2.path.clone());
                if let Some(s) = &r.conv_shortcut {
                    layers.push(s.path.clone());
                }
                Unit {
                    path: r.path.clone(),
                    kind: UnitKind::Resnet,
                    layers,
                }
            }
            UnitRef::Attention(a) => Unit {
                path: a.path.clone(),
                kind: UnitKind::Attention,
                layers: [&a.to_q, &a.to_k, &a.to_v, &a.to_out]
                    .iter()
                    .map(|l| l.path.clone())
                    .collect(),
            },
            UnitRef::Conv(c) => Unit {
                path: c.path.clone(),
                kind: UnitKind::Layer,
                layers: vec![c.path.clone()],
            },
            UnitRef::Linear(l) => Unit {
                path: l.path.clone(),
                kind: UnitKind::Layer,
                layers: vec![l.path.clone()],
            },
        }
    }
}

impl UNet2DModel {
    /// Every unit in forward order; together they cover every conv/linear layer exactly once.
    fn unit_refs(&self) -> Vec<UnitRef<'_>> {
        let mut out = vec![
            UnitRef::Linear(&self.time_embedding.linear_1),
            UnitRef::Linear(&self.time_embedding.linear_2),
        ];
        if let Some(ClassEmbed::Timestep(e)) = &self.class_embedding {
            out.push(UnitRef::Linear(&e.linear_1));
            out.push(UnitRef::Linear(&e.linear_2));
        }
        out.push(UnitRef::Conv(&self.conv_in));
        for b in &self.down_blocks {
            for (i, r) in b.resnets.iter().enumerate() {
                out.push(UnitRef::Resnet(r));
                if let Some(a) = b.attentions.get(i) {
                    out.push(UnitRef::Attention(a));
                }
            }
            if let Some(d) = &b.downsampler {
                out.push(UnitRef::Conv(&d.conv));
            }
        }
        if let Some(m) = &self.mid_block {
            out.push(UnitRef::Resnet(&m.resnets[0]));
            if let Some(a) = &m.attention {
                out.push(UnitRef::Attention(a));
            }
            out.push(UnitRef::Resnet(&m.resnets[1]));
        }
        for b in &self.up_blocks {
            for (i, r) in b.resnets.iter().enumerate() {
                out.push(UnitRef::Resnet(r));
                if let Some(a) = b.attentions.get(i) {
                    out.push(UnitRef::Attention(a));
                }
            }
            if let Some(u) = &b.upsampler {
                out.push(UnitRef::Conv(&u.conv));
            }
        }
        out.push(UnitRef::Conv(&self.conv_out));
        out
    }

    /// The reconstruction units in forward order.
    pub fn units(&self) -> Vec<Unit> {
        self.unit_refs().iter().map(UnitRef::describe).collect()
    }

    /// Runs one unit alone on inputs captured by a `Ctx::capturing` forward.
    pub fn unit_forward(&self, unit: &str, inputs: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        let found = self
            .unit_refs()
            .into_iter()
            .find(|u| u.describe().path == unit)
            .ok_or_else(|| ModelError::Source(format!("the model has no unit `{unit}`")))?;
        let want = match found {
            UnitRef::Resnet(r) if r.time_emb_proj.is_some() => 2,
            _ => 1,
        };
        if inputs.len() != want {
            return Err(ModelError::Source(format!(
                "unit `{unit}` takes {want} input tensor(s), got {}",
                inputs.len()
            )));
        }
        match found {
            UnitRef::Resnet(r) => r.forward(&inputs[0], inputs.get(1), ctx),
            UnitRef::Attention(a) => a.forward(&inputs[0], ctx),
            UnitRef::Conv(c) => c.forward(&inputs[0], ctx),
            UnitRef::Linear(l) => l.forward(&inputs[0], ctx),
        }
    }

    /// The inputs of `unit` when the model runs on `x` at `timesteps`: the forward stops there.
    /// `step` is the sampling-step index quantized layers before the unit may need.
    pub fn capture_inputs(
        &self,
        unit: &str,
        x: &Tensor,
        timesteps: Timesteps,
        step: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let ctx = Ctx::capturing(unit, step);
        match self.forward(x, timesteps, None, &ctx) {
            Err(ModelError::Captured(_)) => ctx.take_captured().ok_or_else(|| {
                ModelError::Source(format!("capture of `{unit}` stopped without inputs"))
            }),
            Err(e) => Err(e),
            Ok(_) => Err(ModelError::Source(format!(
                "the forward pass never reached unit `{unit}`"
            ))),
        }
    }

    /// The inputs of each of `units` in one forward, stopping at the last of them in forward
    /// order (a unit the forward never reaches is an error).
    pub fn capture_inputs_many(
        &self,
        units: &[String],
        x: &Tensor,
        timesteps: Timesteps,
        step: Option<usize>,
    ) -> Result<BTreeMap<String, Vec<Tensor>>> {
        crate::denoiser::capture_many(self.units(), units, step, |ctx| {
            self.forward(x, timesteps, None, ctx)
        })
    }

    /// Layers whose input is a raw skip concatenation `cat([h, skip])`, with the channels of `h`:
    /// the decoder ResNet shortcuts (spec §5.2).
    pub fn split_points(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for b in &self.up_blocks {
            for r in &b.resnets {
                if let (Some(s), Some(split)) = (&r.conv_shortcut, r.input_split) {
                    out.insert(s.path.clone(), split);
                }
            }
        }
        out
    }
}
