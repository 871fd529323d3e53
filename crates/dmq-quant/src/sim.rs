//! Simulated ("fake") quantized execution of one layer, installed on the model as its
//! [`LayerExec`]: the weight is quantized once (its dequantized values are kept), and the layer's
//! input is quantized per tensor with the activation parameters of the current sampling step.
//! This is what calibration optimises and what `--exec sim` samples with.

use std::sync::Arc;

use candle_core::Tensor;
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerRef};
use dmq_model::ModelError;

use crate::uniform::UniformParams;

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
}

/// Fake-quantized execution: `float_op(Q_a(x), Q_w(W))`.
pub struct SimQuantExec {
    /// The dequantized quantized weight; `None` keeps the float weight.
    pub weight: Option<Tensor>,
    /// `None` keeps the input in float.
    pub activation: Option<PerStepActivation>,
}

impl SimQuantExec {
    /// Quantizes `weight` with `params` now, so each forward only multiplies.
    pub fn new(
        weight: &Tensor,
        weight_params: Option<&UniformParams>,
        activation: Option<PerStepActivation>,
    ) -> crate::uniform::Result<Arc<Self>> {
        let weight = match weight_params {
            Some(p) => Some(p.fake_quant(weight)?),
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
            Some(act) => {
                let step = match (ctx.step, act.steps.len()) {
                    (Some(s), _) => s,
                    (None, 1) => act.steps[0],
                    (None, _) => {
                        return Err(ModelError::Source(format!(
                            "{}: per-step activation parameters need the sampling-step index; call the model inside a sampler",
                            layer.path
                        )))
                    }
                };
                act.for_step(step)
                    .fake_quant(x)
                    .map_err(|e| ModelError::Source(format!("{}: {e}", layer.path)))?
            }
        };
        float_op(&x, self.weight.as_ref().unwrap_or(layer.weight))
    }
}
