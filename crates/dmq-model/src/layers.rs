//! The layers a diffusion model is built of. Convolutions and linear layers carry their
//! checkpoint path (`down_blocks.1.resnets.0.conv1`): that path is their identity everywhere in
//! dmq (quantization configs, reports, artifacts), exactly as in diffusers.

use candle_core::{Module, Tensor, D};

use crate::ctx::{Ctx, OpKind};
use crate::error::Result;
use crate::weights::WeightStore;

/// Joins checkpoint path segments: `join("a.b", "c")` is `a.b.c`; an empty prefix adds no dot.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A 2-D convolution (square kernel, symmetric padding, no groups or dilation: what UNets use).
pub struct Conv2d {
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            weight: w.get(&join(path, "weight"), &[out_c, in_c, kernel, kernel])?,
            bias: Some(w.get(&join(path, "bias"), &[out_c])?),
            stride,
            padding,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dims()[0], 1, 1))?)?,
            None => y,
        };
        if ctx.tracing_on() {
            let (_, _, h, wd) = y.dims4()?;
            let k = self.kernel();
            let macs = x.dims()[0] * h * wd * self.out_channels() * self.in_channels() * k * k;
            ctx.record(
                (&self.path, OpKind::Conv2d, self.weight.dims()),
                x.dims(),
                y.dims(),
                macs as u64,
            );
        }
        Ok(y)
    }
}

/// A fully connected layer, `y = x Wᵀ + b`, over the last axis of a 2-D or 3-D input.
pub struct Linear {
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &WeightStore, path: &str, in_f: usize, out_f: usize) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            weight: w.get(&join(path, "weight"), &[out_f, in_f])?,
            bias: Some(w.get(&join(path, "bias"), &[out_f])?),
        })
    }

    /// Like [`Linear::load`] but accepts the older diffusers name of the same tensors
    /// (`query` for `to_q`, ...), as diffusers' own loader does.
    pub fn load_aliased(
        w: &WeightStore,
        path: &str,
        legacy_path: &str,
        in_f: usize,
        out_f: usize,
    ) -> Result<Self> {
        if !w.contains(&join(path, "weight")) && w.contains(&join(legacy_path, "weight")) {
            let mut l = Self::load(w, legacy_path, in_f, out_f)?;
            l.path = path.to_string();
            Ok(l)
        } else {
            Self::load(w, path, in_f, out_f)
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_f.max(1);
        let x2 = x.reshape((rows, in_f))?;
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims.clone();
        *out_dims
            .last_mut()
            .expect("linear input has at least one axis") = self.out_features();
        let y = y.reshape(out_dims)?;
        if ctx.tracing_on() {
            let macs = rows * in_f * self.out_features();
            ctx.record(
                (&self.path, OpKind::Linear, self.weight.dims()),
                x.dims(),
                y.dims(),
                macs as u64,
            );
        }
        Ok(y)
    }
}

/// Group normalisation with affine parameters (candle-nn's, which is composed of differentiable
/// ops and computes in f32 for half-precision inputs).
pub struct GroupNorm {
    pub path: String,
    inner: candle_nn::GroupNorm,
}

impl GroupNorm {
    pub fn load(
        w: &WeightStore,
        path: &str,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Result<Self> {
        let weight = w.get(&join(path, "weight"), &[channels])?;
        let bias = w.get(&join(path, "bias"), &[channels])?;
        Ok(Self {
            path: path.to_string(),
            inner: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }
}

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}

/// Softmax over the last axis. The fused kernel has no backward pass in candle 0.11 (it would
/// silently cut gradients), so calibration contexts get the composed, differentiable form.
pub fn softmax_last(x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    if ctx.differentiable {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}
