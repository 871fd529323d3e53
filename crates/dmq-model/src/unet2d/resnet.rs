//! `ResnetBlock2D` (pre-norm, with time conditioning) as diffusers computes it. The VAE's blocks
//! are the same without time conditioning (`temb_channels=None`: no `time_emb_proj`).

use candle_core::Tensor;

use crate::config::TimeScaleShift;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{silu, Conv2d, GroupNorm, LayerMut, Linear};
use crate::weights::WeightStore;

pub struct ResnetBlock2D {
    pub path: String,
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    /// Absent in blocks without time conditioning (the VAE's).
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 projection of the input when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    pub time_scale_shift: TimeScaleShift,
    pub output_scale_factor: f64,
    /// For decoder blocks, whose input is `cat([h, skip])`: the channels of `h`. The shortcut
    /// conv sees this raw concatenation, whose halves have different ranges (split quantization).
    pub input_split: Option<usize>,
}

/// What a residual block is built from; gathered here because the blocks pass them through.
#[derive(Clone, Copy)]
pub struct ResnetSpec {
    pub groups: usize,
    pub eps: f64,
    /// `None`: no time conditioning (diffusers' `temb_channels=None`).
    pub temb_channels: Option<usize>,
    pub time_scale_shift: TimeScaleShift,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        out_c: usize,
        s: ResnetSpec,
    ) -> Result<Self> {
        let p = |n: &str| format!("{path}.{n}");
        let proj_out = match s.time_scale_shift {
            TimeScaleShift::Default => out_c,
            TimeScaleShift::ScaleShift => 2 * out_c,
        };
        Ok(Self {
            path: path.to_string(),
            norm1: GroupNorm::load(w, &p("norm1"), s.groups, in_c, s.eps)?,
            conv1: Conv2d::load(w, &p("conv1"), in_c, out_c, 3, 1, 1)?,
            time_emb_proj: match s.temb_channels {
                Some(t) => Some(Linear::load(w, &p("time_emb_proj"), t, proj_out)?),
                None => None,
            },
            norm2: GroupNorm::load(w, &p("norm2"), s.groups, out_c, s.eps)?,
            conv2: Conv2d::load(w, &p("conv2"), out_c, out_c, 3, 1, 1)?,
            conv_shortcut: if in_c != out_c {
                Some(Conv2d::load(w, &p("conv_shortcut"), in_c, out_c, 1, 1, 0)?)
            } else {
                None
            },
            time_scale_shift: s.time_scale_shift,
            output_scale_factor: s.output_scale_factor,
            input_split: None,
        })
    }

    /// Its conv and linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Conv(&mut self.conv1));
        if let Some(t) = &mut self.time_emb_proj {
            out.push(LayerMut::Linear(t));
        }
        out.push(LayerMut::Conv(&mut self.conv2));
        if let Some(s) = &mut self.conv_shortcut {
            out.push(LayerMut::Conv(s));
        }
    }

    /// `temb_act` is `silu(temb)`, computed once per forward by the model and shared by all
    /// blocks; `None` for blocks without time conditioning (an error for one that has it). The
    /// unit's offered inputs are `[x, temb_act]`, or `[x]` without time conditioning.
    pub fn forward(&self, x: &Tensor, temb_act: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        match temb_act {
            Some(t) => ctx.offer(&self.path, &[x, t])?,
            None => ctx.offer(&self.path, &[x])?,
        }
        let h = silu(&self.norm1.forward(x)?)?;
        let h = self.conv1.forward(&h, ctx)?;
        let t = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(temb)) => Some(proj.forward(temb, ctx)?),
            (None, _) => None,
            (Some(_), None) => {
                return Err(crate::ModelError::Source(format!(
                    "{}: this block is time-conditioned but got no time embedding",
                    self.path
                )))
            }
        };
        let h = match (t, self.time_scale_shift) {
            (None, _) => self.norm2.forward(&h)?,
            (Some(t), TimeScaleShift::Default) => {
                let (b, c) = t.dims2()?;
                self.norm2
                    .forward(&h.broadcast_add(&t.reshape((b, c, 1, 1))?)?)?
            }
            (Some(t), TimeScaleShift::ScaleShift) => {
                let (b, c) = t.dims2()?;
                let t = t.reshape((b, c, 1, 1))?;
                let half = c / 2;
                let scale = t.narrow(1, 0, half)?;
                let shift = t.narrow(1, half, half)?;
                self.norm2
                    .forward(&h)?
                    .broadcast_mul(&(scale + 1.0)?)?
                    .broadcast_add(&shift)?
            }
        };
        let h = self.conv2.forward(&silu(&h)?, ctx)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, ctx)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale_factor)?)
        }
    }
}
