//! Simulated ("fake") quantized execution of one layer, installed on the model as its
//! [`LayerExec`]: the weight is quantized once (its dequantized values are kept), and the layer's
//! input is quantized per tensor with the activation parameters of the current sampling step
//! (per part for split layers). This is what calibration optimises and what `--exec sim`
//! samples with.

use std::sync::Arc;

use candle_core::Tensor;
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerKind, LayerRef};
use dmq_model::ModelError;

use crate::uniform::{QuantError, UniformParams};

/// Activation parameters of one layer input, one set per calibrated sampling step.
#[derive(Debug, Clone)]
pub struct PerStepActivation {
    /// Sampling-step index of each parameter set, increasing.
    pub steps: Vec<usize>,
    pub params: Vec<UniformParams>,
}

impl PerStepActivation {
    /// One parameter set for every step.
    pub fn shared(params: UniformParams) -> Self {
        Self {
            steps: vec![0],
            params: vec![params],
        }
    }

    /// The set for sampling step `step`: the calibrated step nearest to it (ties: the earlier).
    pub fn for_step(&self, step: usize) -> &UniformParams {
        let mut best = 0;
        for (i, &s) in self.steps.iter().enumerate() {
            if s.abs_diff(step) < self.steps[best].abs_diff(step) {
                best = i;
            }
        }
        &self.params[best]
    }

    /// The set to use for a forward at `ctx`: needs the step index unless there is one set.
    fn for_ctx(&self, ctx: &Ctx, path: &str) -> dmq_model::Result<&UniformParams> {
        match (ctx.step, self.steps.len()) {
            (Some(s), _) => Ok(self.for_step(s)),
            (None, 1) => Ok(&self.params[0]),
            (None, _) => Err(ModelError::Source(format!(
                "{path}: per-step activation parameters need the sampling-step index; call the model inside a sampler"
            ))),
        }
    }
}

/// The channel axis of a layer's input: 1 for convs (`[B, C, H, W]`), the last for linears.
pub fn input_channel_axis(kind: LayerKind, x: &Tensor) -> usize {
    match kind {
        LayerKind::Conv2d { .. } => 1,
        LayerKind::Linear => x.rank().saturating_sub(1),
    }
}

/// The input quantizer of one layer: one per-tensor quantizer, or two for a split layer whose
/// input channels `[0, split)` and `[split, C)` come from different tensors (spec §5.2).
#[derive(Debug, Clone)]
pub struct LayerActivation {
    pub split: Option<usize>,
    /// One entry per part (1, or 2 when `split` is set).
    pub parts: Vec<PerStepActivation>,
}

impl LayerActivation {
    pub fn single(act: PerStepActivation) -> Self {
        Self {
            split: None,
            parts: vec![act],
        }
    }

    /// Fake-quantizes `x`, the input of `layer`, at the step of `ctx`.
    pub fn fake_quant(&self, layer: &LayerRef, x: &Tensor, ctx: &Ctx) -> dmq_model::Result<Tensor> {
        let err = |e: QuantError| ModelError::Source(format!("{}: {e}", layer.path));
        match self.split {
            None => self.parts[0]
                .for_ctx(ctx, layer.path)?
                .fake_quant(x)
                .map_err(err),
            Some(s) => {
                let axis = input_channel_axis(layer.kind, x);
                let c = x.dims()[axis];
                let a = x.narrow(axis, 0, s)?;
                let b = x.narrow(axis, s, c - s)?;
                let qa = self.parts[0]
                    .for_ctx(ctx, layer.path)?
                    .fake_quant(&a)
                    .map_err(err)?;
                let qb = self.parts[1]
                    .for_ctx(ctx, layer.path)?
                    .fake_quant(&b)
                    .map_err(err)?;
                Ok(Tensor::cat(&[&qa, &qb], axis)?)
            }
        }
    }
}

/// Fake-quantized execution: `float_op(Q_a(x), Q_w(W))`.
pub struct SimQuantExec {
    /// The dequantized quantized weight, in the layer's dtype; `None` keeps the float weight.
    pub weight: Option<Tensor>,
    /// `None` keeps the input in float.
    pub activation: Option<LayerActivation>,
}

impl SimQuantExec {
    /// Quantizes `weight` with `params` (round to nearest) now, so each forward only multiplies.
    pub fn new(
        weight: &Tensor,
        weight_params: Option<&UniformParams>,
        activation: Option<PerStepActivation>,
    ) -> crate::uniform::Result<Arc<Self>> {
        let weight = match weight_params {
            Some(p) => Some(p.fake_quant(weight)?),
            None => None,
        };
        Ok(Arc::new(Self {
            weight,
            activation: activation.map(LayerActivation::single),
        }))
    }

    /// An exec with an already dequantized weight (e.g. from AdaRound codes), cast to `like`'s
    /// dtype and device.
    pub fn with_weight(
        dequantized: Option<&Tensor>,
        like: &Tensor,
        activation: Option<LayerActivation>,
    ) -> crate::uniform::Result<Arc<Self>> {
        let weight = match dequantized {
            Some(w) => Some(w.to_dtype(like.dtype())?.to_device(like.device())?),
            None => None,
        };
        Ok(Arc::new(Self { weight, activation }))
    }
}

impl LayerExec for SimQuantExec {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        let x = match &self.activation {
            None => x.clone(),
            Some(act) => act.fake_quant(layer, x, ctx)?,
        };
        float_op(&x, self.weight.as_ref().unwrap_or(layer.weight))
    }
}
