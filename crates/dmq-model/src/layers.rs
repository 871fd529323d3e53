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

    /// Replaces the float weight (same shape), e.g. by `W·γ` under equivalent scaling.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        let (path, slot) = match self {
            LayerMut::Conv(c) => (c.path.clone(), &mut c.weight),
            LayerMut::Linear(l) => (l.path.clone(), &mut l.weight),
        };
        check_same_shape(&path, slot, &weight, "weight")?;
        *slot = weight;
        Ok(())
    }

    /// Replaces the bias (same shape), e.g. when a consumer's scale is folded into it.
    pub fn set_bias(&mut self, bias: Tensor) -> Result<()> {
        let (path, slot) = match self {
            LayerMut::Conv(c) => (c.path.clone(), &mut c.bias),
            LayerMut::Linear(l) => (l.path.clone(), &mut l.bias),
        };
        match slot {
            Some(b) => {
                check_same_shape(&path, b, &bias, "bias")?;
                *b = bias;
                Ok(())
            }
            None => Err(crate::ModelError::Source(format!("{path}: has no bias"))),
        }
    }

    /// Sets the per-input-channel equivalent scale `γ` (`[C_in]`): the layer then computes on
    /// `x / γ` (its weight is expected to hold `W·γ`, see [`LayerMut::set_weight`]). `None`
    /// removes it.
    pub fn set_input_scale(&mut self, gamma: Option<Tensor>) -> Result<()> {
        let (path, c_in, slot) = match self {
            LayerMut::Conv(c) => (c.path.clone(), c.in_channels(), &mut c.input_scale),
            LayerMut::Linear(l) => (l.path.clone(), l.in_features(), &mut l.input_scale),
        };
        if let Some(g) = &gamma {
            if g.dims() != [c_in] {
                return Err(crate::ModelError::Source(format!(
                    "{path}: input scale of shape {:?}, the layer has {c_in} input channels",
                    g.dims()
                )));
            }
        }
        *slot = gamma;
        Ok(())
    }
}

fn check_same_shape(path: &str, old: &Tensor, new: &Tensor, what: &str) -> Result<()> {
    if old.dims() != new.dims() {
        return Err(crate::ModelError::Source(format!(
            "{path}: new {what} of shape {:?}, expected {:?}",
            new.dims(),
            old.dims()
        )));
    }
    Ok(())
}

/// A read-only view of a quantizable layer, handed to its exec.
pub struct LayerRef<'a> {
    pub path: &'a str,
    pub kind: LayerKind,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    /// Equivalent scale `γ` per input channel (`[C_in]`), already applied to the input an exec
    /// receives and to `weight` (which holds `W·γ`).
    pub input_scale: Option<&'a Tensor>,
}

impl LayerRef<'_> {
    /// The layer's float computation of `x` with `weight` (bias included): a convolution with
    /// the layer's stride and padding, or a product over the last axis.
    pub fn float_op(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        match self.kind {
            LayerKind::Conv2d { stride, padding } => {
                // Same values as `x.conv2d`; a faster backward when gradients are tracked.
                let y = crate::conv_grad::conv2d(x, weight, padding, stride)?;
                Ok(match self.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.dims()[0], 1, 1))?)?,
                    None => y,
                })
            }
            LayerKind::Linear => {
                let dims = x.dims().to_vec();
                let in_f = *dims.last().unwrap_or(&0);
                let rows = x.elem_count() / in_f.max(1);
                let x2 = x.reshape((rows, in_f))?;
                let mut y = x2.matmul(&weight.t()?)?;
                if let Some(b) = self.bias {
                    y = y.broadcast_add(b)?;
                }
                let mut out_dims = dims;
                *out_dims
                    .last_mut()
                    .expect("linear input has at least one axis") = weight.dims()[0];
                Ok(y.reshape(out_dims)?)
            }
        }
    }

    /// `x / γ` on the input-channel axis (axis 1 of a conv input, the last of a linear one).
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        match self.input_scale {
            None => Ok(x.clone()),
            Some(g) => Ok(x.broadcast_div(&self.channel_shaped(g, x.rank())?)?),
        }
    }

    /// A per-input-channel vector `[C]` shaped to broadcast against an input of rank `rank`.
    pub fn channel_shaped(&self, v: &Tensor, rank: usize) -> Result<Tensor> {
        let c = v.elem_count();
        Ok(match self.kind {
            LayerKind::Conv2d { .. } => v.reshape((1, c, 1, 1))?,
            LayerKind::Linear => {
                let mut shape = vec![1; rank.max(1)];
                shape[rank.max(1) - 1] = c;
                v.reshape(shape)?
            }
        })
    }
}

/// A 2-D convolution (square kernel, symmetric padding, no groups or dilation: what UNets use).
pub struct Conv2d {
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    /// Equivalent scale `γ` (`[C_in]`): the layer computes on `x / γ` with `weight` = `W·γ`.
    pub input_scale: Option<Tensor>,
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
            input_scale: None,
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
        self.layer_ref().float_op(x, weight)
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
            input_scale: self.input_scale.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x])?;
        let lr = self.layer_ref();
        let xs = lr.scale_input(x)?;
        let y = match &self.exec {
            Some(exec) => exec.forward(&lr, &xs, &|x, w| self.float_op(x, w), ctx)?,
            None => self.float_op(&xs, &self.weight)?,
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
        ctx.tap(&self.path, &y);
        Ok(y)
    }
}

/// A fully connected layer, `y = x Wᵀ + b`, over the last axis of a 2-D or 3-D input.
pub struct Linear {
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Equivalent scale `γ` (`[C_in]`): the layer computes on `x / γ` with `weight` = `W·γ`.
    pub input_scale: Option<Tensor>,
    /// How it computes when not in float (set by quantization passes).
    pub exec: Option<Arc<dyn LayerExec>>,
}

impl Linear {
    pub fn load(w: &WeightStore, path: &str, in_f: usize, out_f: usize) -> Result<Self> {
        Self::load_with_bias(w, path, in_f, out_f, true)
    }

    /// Like [`Linear::load`]; `bias: false` builds a layer without bias (diffusers'
    /// `attention_bias=False` q/k/v projections), whose checkpoint then has no `bias` tensor.
    pub fn load_with_bias(
        w: &WeightStore,
        path: &str,
        in_f: usize,
        out_f: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            weight: w.get(&join(path, "weight"), &[out_f, in_f])?,
            bias: if bias {
                Some(w.get(&join(path, "bias"), &[out_f])?)
            } else {
                None
            },
            input_scale: None,
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
        self.layer_ref().float_op(x, weight)
    }

    pub fn layer_ref(&self) -> LayerRef<'_> {
        LayerRef {
            path: &self.path,
            kind: LayerKind::Linear,
            weight: &self.weight,
            bias: self.bias.as_ref(),
            input_scale: self.input_scale.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ctx.offer(&self.path, &[x])?;
        let lr = self.layer_ref();
        let xs = lr.scale_input(x)?;
        let y = match &self.exec {
            Some(exec) => exec.forward(&lr, &xs, &|x, w| self.float_op(x, w), ctx)?,
            None => self.float_op(&xs, &self.weight)?,
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
        ctx.tap(&self.path, &y);
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

/// Layer normalisation over the last axis, with or without affine parameters (diffusers'
/// transformers use both: `norm_elementwise_affine`).
pub struct LayerNorm {
    pub path: String,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    /// `affine: false` reads nothing from the checkpoint.
    pub fn load(w: &WeightStore, path: &str, dim: usize, eps: f64, affine: bool) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(w.get(&join(path, "weight"), &[dim])?),
                Some(w.get(&join(path, "bias"), &[dim])?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            path: path.to_string(),
            weight,
            bias,
            eps,
        })
    }

    /// candle 0.11's fused `layer_norm` has no backward pass, so calibration contexts (and
    /// layers without affine parameters) get the composed form; both compute in f32 for
    /// half-precision inputs.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let (false, Some(w), Some(b)) = (ctx.differentiable, &self.weight, &self.bias) {
            return Ok(candle_nn::ops::layer_norm(
                &x.contiguous()?,
                w,
                b,
                self.eps as f32,
            )?);
        }
        let dtype = x.dtype();
        let internal = match dtype {
            candle_core::DType::F16 | candle_core::DType::BF16 => candle_core::DType::F32,
            d => d,
        };
        let x = x.to_dtype(internal)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = xc
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// GELU with the exact error function (PyTorch's default `approximate="none"`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
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
