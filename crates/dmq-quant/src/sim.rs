//! Simulated ("fake") quantized execution of one layer, installed on the model as its
//! [`LayerExec`]: the weight is quantized once (its dequantized values are kept), and the layer's
//! input is quantized per tensor with the activation parameters of the current sampling step
//! (per part for split layers). This is what calibration optimises and what `--exec sim`
//! samples with.

use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerKind, LayerRef};
use dmq_model::ModelError;

use crate::fused::FakeQuantPerTensor;
use crate::uniform::{QuantError, UniformParams};

/// Activation parameters of one layer input, one set per calibrated sampling step.
#[derive(Debug, Clone)]
pub struct PerStepActivation {
    /// Sampling-step index of each parameter set, increasing.
    pub steps: Vec<usize>,
    pub params: Vec<UniformParams>,
    /// Power-of-two step factors (DMQ's PTS, spec §6): for parameter set `i`, channel `c` of
    /// this part is quantized with step `Δ_i·2^(−shifts[i][c])` (same zero point). `None`: the
    /// per-tensor step for every channel.
    pub shifts: Option<Vec<Vec<u8>>>,
}

impl PerStepActivation {
    /// One parameter set for every step.
    pub fn shared(params: UniformParams) -> Self {
        Self::new(vec![0], vec![params])
    }

    /// Per-tensor parameter sets for `steps`, without PTS.
    pub fn new(steps: Vec<usize>, params: Vec<UniformParams>) -> Self {
        Self {
            steps,
            params,
            shifts: None,
        }
    }

    /// The PTS shifts of parameter set `set`, if any channel has a non-zero one.
    pub fn shifts_of(&self, set: usize) -> Option<&[u8]> {
        self.shifts
            .as_ref()
            .and_then(|s| s.get(set))
            .map(|v| v.as_slice())
            .filter(|v| v.iter().any(|&s| s > 0))
    }

    /// The set for sampling step `step`: the calibrated step nearest to it (ties: the earlier).
    pub fn for_step(&self, step: usize) -> &UniformParams {
        &self.params[self.index_for(step)]
    }

    /// Index of the set for sampling step `step` (see [`PerStepActivation::for_step`]).
    pub fn index_for(&self, step: usize) -> usize {
        let mut best = 0;
        for (i, &s) in self.steps.iter().enumerate() {
            if s.abs_diff(step) < self.steps[best].abs_diff(step) {
                best = i;
            }
        }
        best
    }

    /// Index of the set to use for a forward at `ctx`: needs the step index unless there is
    /// one set.
    fn index_for_ctx(&self, ctx: &Ctx, path: &str) -> dmq_model::Result<usize> {
        match (ctx.step, self.steps.len()) {
            (Some(s), _) => Ok(self.index_for(s)),
            (None, 1) => Ok(0),
            (None, _) => Err(ModelError::Source(format!(
                "{path}: per-step activation parameters need the sampling-step index; call the model inside a sampler"
            ))),
        }
    }
}

/// `(Δ, z)` of each (part, parameter set, dtype, rank, device) as device tensors, made once:
/// building them from host values on every call costs two host-to-device copies per layer and
/// step, which dominated simulated sampling on the GPU.
#[derive(Debug, Default)]
struct StepTensors(Mutex<HashMap<StepKey, (Tensor, Tensor)>>);

/// (part, parameter set, compute dtype, rank of the input, channel axis of PTS steps, device).
type StepKey = (usize, usize, DType, usize, Option<usize>, String);

impl Clone for StepTensors {
    fn clone(&self) -> Self {
        Self::default()
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
    cache: StepTensors,
}

impl LayerActivation {
    pub fn new(split: Option<usize>, parts: Vec<PerStepActivation>) -> Self {
        Self {
            split,
            parts,
            cache: StepTensors::default(),
        }
    }

    pub fn single(act: PerStepActivation) -> Self {
        Self::new(None, vec![act])
    }

    /// Fake quantization of one part: fused in f32 ([`FakeQuantPerTensor`]), else composed with
    /// the step's `(Δ, z)` cached on `x`'s device. Equal to [`UniformParams::fake_quant`] either
    /// way (same IEEE ops, same compute dtype).
    fn quantize_part(
        &self,
        part: usize,
        x: &Tensor,
        axis: usize,
        ctx: &Ctx,
        path: &str,
    ) -> dmq_model::Result<Tensor> {
        let act = &self.parts[part];
        let set = act.index_for_ctx(ctx, path)?;
        let params = &act.params[set];
        let dt = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let err = |e: QuantError| ModelError::Source(format!("{path}: {e}"));
        if let Some(shifts) = act.shifts_of(set) {
            return self.quantize_shifted(part, set, x, axis, params, shifts, dt, path);
        }
        if dt == DType::F32 && params.scale.len() == 1 {
            // One fused pass (bit-identical to the composed version below).
            let op = FakeQuantPerTensor::new(params).map_err(err)?;
            let xc = x.detach().to_dtype(dt)?;
            return Ok(op.forward(&xc).map_err(err)?.to_dtype(x.dtype())?);
        }
        let key = (
            part,
            set,
            dt,
            x.rank(),
            None,
            format!("{:?}", x.device().location()),
        );
        let (d, z) = {
            let mut cache = self.cache.0.lock().expect("activation cache lock");
            match cache.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let dims = x.dims();
                    let d = params.scale_tensor(dims, dt, x.device()).map_err(err)?;
                    let z = params
                        .zero_point_tensor(dims, dt, x.device())
                        .map_err(err)?;
                    cache.insert(key, (d.clone(), z.clone()));
                    (d, z)
                }
            }
        };
        let xc = x.detach().to_dtype(dt)?;
        Ok(crate::uniform::fake_quant_ste(&xc, &d, &z, params.bits)
            .map_err(err)?
            .detach()
            .to_dtype(x.dtype())?)
    }

    /// PTS: channel `c` quantized with step `Δ_c = Δ·2^(−shift_c)`, i.e.
    /// `Δ_c·(clamp(round(x/Δ_c) + z, 0, 2^b − 1) − z)`, as `x/Δ_c` (exact per-channel steps),
    /// one unit-step pass, and `·Δ_c`.
    #[allow(clippy::too_many_arguments)]
    fn quantize_shifted(
        &self,
        part: usize,
        set: usize,
        x: &Tensor,
        axis: usize,
        params: &UniformParams,
        shifts: &[u8],
        dt: DType,
        path: &str,
    ) -> dmq_model::Result<Tensor> {
        let err = |e: QuantError| ModelError::Source(format!("{path}: {e}"));
        let c = x.dims()[axis];
        if shifts.len() != c {
            return Err(ModelError::Source(format!(
                "{path}: {} PTS shifts for an input part of {c} channels",
                shifts.len()
            )));
        }
        let key = (
            part,
            set,
            dt,
            x.rank(),
            Some(axis),
            format!("{:?}", x.device().location()),
        );
        let steps = {
            let mut cache = self.cache.0.lock().expect("activation cache lock");
            match cache.get(&key) {
                Some((t, _)) => t.clone(),
                None => {
                    let d = params.scale[0];
                    let v: Vec<f32> = shifts.iter().map(|&s| d / (1u32 << s) as f32).collect();
                    let mut shape = vec![1; x.rank()];
                    shape[axis] = c;
                    let t = Tensor::from_vec(v, shape, x.device())?.to_dtype(dt)?;
                    cache.insert(key, (t.clone(), t.clone()));
                    t
                }
            }
        };
        let xc = x.detach().to_dtype(dt)?.broadcast_div(&steps)?;
        let q = if dt == DType::F32 {
            FakeQuantPerTensor::from_parts(1.0, params.zero_point[0], params.bits)
                .and_then(|op| op.forward(&xc))
                .map_err(err)?
        } else {
            let one =
                UniformParams::per_tensor(1.0, params.zero_point[0], params.bits).map_err(err)?;
            one.fake_quant(&xc).map_err(err)?
        };
        Ok(q.broadcast_mul(&steps)?.to_dtype(x.dtype())?)
    }

    /// Fake-quantizes `x`, the input of `layer`, at the step of `ctx`.
    pub fn fake_quant(&self, layer: &LayerRef, x: &Tensor, ctx: &Ctx) -> dmq_model::Result<Tensor> {
        let axis = input_channel_axis(layer.kind, x);
        match self.split {
            None => self.quantize_part(0, x, axis, ctx, layer.path),
            Some(s) => {
                let c = x.dims()[axis];
                let qa = self.quantize_part(0, &x.narrow(axis, 0, s)?, axis, ctx, layer.path)?;
                let qb =
                    self.quantize_part(1, &x.narrow(axis, s, c - s)?, axis, ctx, layer.path)?;
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
