//! diffusers' `FeedForward`: `net.0` (a projection with its activation), `net.2` (a linear).

use candle_core::{Tensor, D};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{gelu_erf, gelu_tanh, LayerMut, Linear};
use crate::weights::WeightStore;

/// `activation_fn` of a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `"geglu"`: the projection gives `[h, gate]` (twice the inner width); `h · gelu(gate)`
    /// with the exact GELU.
    Geglu,
    /// `"gelu"`: exact (erf) GELU.
    Gelu,
    /// `"gelu-approximate"`: tanh-approximated GELU.
    GeluTanh,
}

impl Activation {
    /// The config spelling; `None` for one dmq does not implement.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "geglu" => Some(Activation::Geglu),
            "gelu" => Some(Activation::Gelu),
            "gelu-approximate" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    pub const SUPPORTED: &'static [&'static str] = &["geglu", "gelu", "gelu-approximate"];
}

pub struct FeedForward {
    pub act: Activation,
    /// `net.0.proj`
    pub proj: Linear,
    /// `net.2`
    pub out: Linear,
}

impl FeedForward {
    /// Inner width `4·dim`, as diffusers' default `mult=4`.
    pub fn load(w: &WeightStore, path: &str, dim: usize, act: Activation) -> Result<Self> {
        let inner = 4 * dim;
        let proj_out = match act {
            Activation::Geglu => 2 * inner,
            Activation::Gelu | Activation::GeluTanh => inner,
        };
        Ok(Self {
            act,
            proj: Linear::load(w, &format!("{path}.net.0.proj"), dim, proj_out)?,
            out: Linear::load(w, &format!("{path}.net.2"), inner, dim)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Linear(&mut self.proj));
        out.push(LayerMut::Linear(&mut self.out));
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = self.proj.forward(x, ctx)?;
        let h = match self.act {
            Activation::Geglu => {
                let half = h.dim(D::Minus1)? / 2;
                let value = h.narrow(D::Minus1, 0, half)?;
                let gate = h.narrow(D::Minus1, half, half)?;
                (value * gelu_erf(&gate)?)?
            }
            Activation::Gelu => gelu_erf(&h)?,
            Activation::GeluTanh => gelu_tanh(&h)?,
        };
        self.out.forward(&h, ctx)
    }
}
