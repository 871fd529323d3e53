//! The layers a diffusion model is built of. Convolutions and linear layers carry their
//! checkpoint path (`down_blocks.1.resnets.0.conv1`): that path is their identity everywhere in
//! dmq (quantization configs, reports, artifacts), exactly as in diffusers.

use std::sync::Arc;

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

/// What a quantizable layer is, for code that replaces how it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Conv2d { stride: usize, padding: usize },
    Linear,
}

/// A replacement for how one conv or linear layer computes: fake quantization during
/// calibration and simulated inference, integer kernels later. The model's `forward` never knows
/// which: it calls the layer, the layer calls its exec if it has one.
pub trait LayerExec: Send + Sync {
    /// Computes the layer on `x`. `float_op(input, weight)` is the layer's own float computation
    /// (bias included) for any input and weight of the right shapes, so an exec that only
    /// transforms operands (fake quantization, equivalent scaling) needs nothing else.
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor>;
}

/// A quantizable layer of a model, borrowed mutably (to install or remove an exec).
pub enum LayerMut<'a> {
    Conv(&'a mut Conv2d),
    Linear(&'a mut Linear),
}

impl LayerMut<'_> {
    pub fn path(&self) -> &str {
        match self {
            LayerMut::Conv(c) => &c.path,
            LayerMut::Linear(l) => &l.path,
        }
    }

    pub fn layer_ref(&self) -> LayerRef<'_> {
        match self {
            LayerMut::Conv(c) => c.layer_ref(),
            LayerMut::Linear(l) => l.layer_ref(),
        }
    }

    pub fn set_exec(&mut self, exec: Option<Arc<dyn LayerExec>>) {
        match self {
            LayerMut::Conv(c) => c.exec = exec,
            LayerMut::Linear(l) => l.exec = exec,
        }
    }
}

/// A read-only view of a quantizable layer, handed to its exec.
pub struct LayerRef<'a> {
    pub path: &'a str,
    pub kind: LayerKind,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// A 2-D convolution (square kernel, symmetric padding, no groups or dilation: what UNets use).
pub struct Conv2d {
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    /// How it computes when not in float (set by quantization passes).
    pub exec: Option<Arc<dyn LayerExec>>,
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
            exec: None,
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

    /// The float convolution of `x` with `weight` (and this layer's bias).
    pub fn float_op(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(weight, self.padding, self.stride, 1, 1)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dims()[0], 1, 1))?)?,
            None => y,
        })
    }

    pub fn layer_ref(&self) -> LayerRef<'_> {
        LayerRef {
            path: &self.path,
            kind: LayerKind::Conv2d {
                stride: self.stride,
                padding: self.padding,
            },
            weight: &self.weight,
            bias: self.bias.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x])?;
        let y = match &self.exec {
            Some(exec) => exec.forward(&self.layer_ref(), x, &|x, w| self.float_op(x, w), ctx)?,
            None => self.float_op(x, &self.weight)?,
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
    /// How it computes when not in float (set by quantization passes).
    pub exec: Option<Arc<dyn LayerExec>>,
}

impl Linear {
    pub fn load(w: &WeightStore, path: &str, in_f: usize, out_f: usize) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            weight: w.get(&join(path, "weight"), &[out_f, in_f])?,
            bias: Some(w.get(&join(path, "bias"), &[out_f])?),
            exec: None,
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

    /// The float product of `x` with `weight` (and this layer's bias) over the last axis.
    pub fn float_op(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_f.max(1);
        let x2 = x.reshape((rows, in_f))?;
        let mut y = x2.matmul(&weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims
            .last_mut()
            .expect("linear input has at least one axis") = weight.dims()[0];
        Ok(y.reshape(out_dims)?)
    }

    pub fn layer_ref(&self) -> LayerRef<'_> {
        LayerRef {
            path: &self.path,
            kind: LayerKind::Linear,
            weight: &self.weight,
            bias: self.bias.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x])?;
        let y = match &self.exec {
            Some(exec) => exec.forward(&self.layer_ref(), x, &|x, w| self.float_op(x, w), ctx)?,
            None => self.float_op(x, &self.weight)?,
        };
        if ctx.tracing_on() {
            let in_f = self.in_features();
            let rows = x.elem_count() / in_f.max(1);
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
