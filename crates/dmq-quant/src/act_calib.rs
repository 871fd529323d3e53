//! Per-step activation calibration (spec §1.5, DMQ/TFMQ style): for each calibrated sampling
//! step, run that step's calibration samples through the model with weights quantized; every
//! quantized layer tracks the range of its input with an EMA (momentum 0.95), and quantizes its
//! input with the range seen so far, so later layers see the quantized network's activations.
//! Ranges are reset between steps (the reference code leaks them across steps, spec §8).
//!
//! Layers planned with power-of-two scaling (DMQ's PTS, spec §6) then get per-channel step
//! factors for the step: one more forward over all of the step's samples with every range frozen
//! at its final value, in which each PTS layer asks a [`ShiftVoter`] for its factors on its input
//! and applies them at once, so later layers see inputs computed with the earlier layers' factors
//! (the reference's block-by-block pass, §6.4, without its EMA updates between voting and saving,
//! pitfall §8.4).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerRef};
use dmq_model::{DenoiserModel, ModelError, Timesteps};

use crate::calib::CalibSet;
use crate::sim::{input_channel_axis, LayerActivation, PerStepActivation, SimQuantExec};
use crate::uniform::{ActRangeObserver, UniformParams};

/// What to do with one layer during activation calibration.
pub struct LayerQuantPlan {
    /// The dequantized quantized weight (`None`: float weight).
    pub weight: Option<Tensor>,
    /// Bits of the input activation (`None`: float input; the layer is then not observed).
    pub act_bits: Option<u8>,
    /// Split point of the input channels (two quantizers, spec §5.2).
    pub split: Option<usize>,
    /// Power-of-two step factors per channel and step, chosen by the voter (DMQ's PTS).
    pub pts: bool,
}

/// Chooses the power-of-two step factors of one quantizer input (DMQ's voting lives in
/// `dmq-methods`; the engine only applies what it returns).
pub trait ShiftVoter: Send + Sync {
    /// One shift per channel (on `axis`) of `x`, every calibration sample of one sampling step,
    /// whose per-tensor parameters are `params`: channel `c` is then quantized with step
    /// `Δ·2^(−shift_c)`.
    fn vote(&self, x: &Tensor, axis: usize, params: &UniformParams) -> dmq_model::Result<Vec<u8>>;
}

impl LayerQuantPlan {
    /// Round-to-nearest weight quantization with `params` (baselines, tests).
    pub fn rtn(
        weight: &Tensor,
        params: Option<&UniformParams>,
        act_bits: Option<u8>,
    ) -> crate::uniform::Result<Self> {
        Ok(Self {
            weight: match params {
                Some(p) => Some(p.fake_quant(weight)?),
                None => None,
            },
            act_bits,
            split: None,
            pts: false,
        })
    }
}

/// What an [`ObservingExec`] does with its input.
enum Mode {
    /// Update the EMA ranges and quantize with the range seen so far.
    Observe,
    /// Quantize with these fixed parameters (and shifts).
    Frozen(LayerActivation),
    /// Ask the voter for each part's shifts on this input, keep them, quantize with them.
    Vote(Vec<UniformParams>, Arc<dyn ShiftVoter>),
}

/// Observes and quantizes a layer's input while calibration runs.
struct ObservingExec {
    weight: Option<Tensor>,
    bits: u8,
    split: Option<usize>,
    /// One observer per input part.
    observers: Vec<Mutex<ActRangeObserver>>,
    mode: Mutex<Mode>,
    /// Shifts found by the last voting forward, per part.
    voted: Mutex<Option<Vec<Vec<u8>>>>,
}

impl ObservingExec {
    fn params(&self) -> crate::uniform::Result<Vec<UniformParams>> {
        self.observers
            .iter()
            .map(|o| o.lock().expect("observer lock").params(self.bits))
            .collect()
    }
}

/// A one-set activation quantizer with `params` per part and optional shifts.
fn fixed_activation(
    split: Option<usize>,
    params: &[UniformParams],
    shifts: Option<&[Vec<u8>]>,
) -> LayerActivation {
    let parts = params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut a = PerStepActivation::shared(p.clone());
            a.shifts = shifts.map(|s| vec![s[k].clone()]);
            a
        })
        .collect();
    LayerActivation::new(split, parts)
}

impl LayerExec for ObservingExec {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        let weight = self.weight.as_ref().unwrap_or(layer.weight);
        // The frozen quantizers hold one parameter set, whatever the step of `ctx`.
        let _ = ctx;
        let single = Ctx::at_step(0);
        match &*self.mode.lock().expect("mode lock") {
            Mode::Observe => {}
            Mode::Frozen(act) => return float_op(&act.fake_quant(layer, x, &single)?, weight),
            Mode::Vote(params, voter) => {
                let axis = input_channel_axis(layer.kind, x);
                let c = x.dims()[axis];
                let pieces = match self.split {
                    None => vec![x.clone()],
                    Some(s) => vec![x.narrow(axis, 0, s)?, x.narrow(axis, s, c - s)?],
                };
                let mut shifts = Vec::new();
                for (piece, p) in pieces.iter().zip(params) {
                    shifts.push(voter.vote(piece, axis, p)?);
                }
                let act = fixed_activation(self.split, params, Some(&shifts));
                *self.voted.lock().expect("voted lock") = Some(shifts);
                return float_op(&act.fake_quant(layer, x, &single)?, weight);
            }
        }
        let err =
            |e: crate::uniform::QuantError| ModelError::Source(format!("{}: {e}", layer.path));
        let axis = input_channel_axis(layer.kind, x);
        let c = x.dims()[axis];
        let pieces = match self.split {
            None => vec![x.clone()],
            Some(s) => vec![x.narrow(axis, 0, s)?, x.narrow(axis, s, c - s)?],
        };
        let mut quantized = Vec::with_capacity(pieces.len());
        for (piece, obs) in pieces.iter().zip(&self.observers) {
            let params = {
                let mut obs = obs.lock().expect("observer lock");
                obs.observe(piece).map_err(err)?;
                obs.params(self.bits).map_err(err)?
            };
            quantized.push(params.fake_quant(piece).map_err(err)?);
        }
        let xq = if quantized.len() == 1 {
            quantized.pop().expect("one part")
        } else {
            Tensor::cat(&quantized, axis)?
        };
        float_op(&xq, weight)
    }
}

/// Calibrates the input activation of every layer in `plans` at every calibrated step of `set`,
/// `batch` samples per forward, EMA `momentum`. Leaves each planned layer with a
/// [`SimQuantExec`] holding its quantized weight and per-step activation parameters, and
/// returns those parameters by layer path (layers with float inputs are not in the result).
pub fn calibrate_activations(
    unet: &mut dyn DenoiserModel,
    set: &CalibSet,
    plans: &BTreeMap<String, LayerQuantPlan>,
    batch: usize,
    momentum: f64,
    voter: Option<Arc<dyn ShiftVoter>>,
    mut on_forward: impl FnMut(),
) -> dmq_model::Result<BTreeMap<String, LayerActivation>> {
    let pts_layers: Vec<&String> = plans
        .iter()
        .filter(|(_, p)| p.pts && p.act_bits.is_some())
        .map(|(k, _)| k)
        .collect();
    if !pts_layers.is_empty() && voter.is_none() {
        return Err(ModelError::Source(format!(
            "{} layers are planned with power-of-two scaling but no voter was given",
            pts_layers.len()
        )));
    }
    let to_model = |e: crate::uniform::QuantError| ModelError::Source(e.to_string());
    let mut observers: BTreeMap<String, Arc<ObservingExec>> = BTreeMap::new();
    for mut layer in unet.layers_mut() {
        let Some(plan) = plans.get(layer.path()) else {
            layer.set_exec(None);
            continue;
        };
        let like = layer.layer_ref().weight.clone();
        let Some(bits) = plan.act_bits else {
            let exec =
                SimQuantExec::with_weight(plan.weight.as_ref(), &like, None).map_err(to_model)?;
            layer.set_exec(Some(exec));
            continue;
        };
        let parts = if plan.split.is_some() { 2 } else { 1 };
        let exec = Arc::new(ObservingExec {
            weight: match &plan.weight {
                Some(w) => Some(w.to_dtype(like.dtype())?.to_device(like.device())?),
                None => None,
            },
            bits,
            split: plan.split,
            observers: (0..parts)
                .map(|_| {
                    ActRangeObserver::with_momentum(momentum)
                        .map(Mutex::new)
                        .map_err(to_model)
                })
                .collect::<dmq_model::Result<_>>()?,
            mode: Mutex::new(Mode::Observe),
            voted: Mutex::new(None),
        });
        observers.insert(layer.path().to_string(), exec.clone());
        layer.set_exec(Some(exec));
    }
    let mut steps: Vec<usize> = set.step_index.iter().map(|&s| s as usize).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut found: BTreeMap<String, Vec<PerStepActivation>> = BTreeMap::new();
    let batch_of = |rows: &[usize],
                    unet: &dyn DenoiserModel|
     -> dmq_model::Result<(Tensor, dmq_model::Conditioning)> {
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            set.x.device(),
        )?;
        let x = set
            .x
            .index_select(&idx, 0)?
            .to_dtype(unet.dtype())?
            .to_device(unet.device())?;
        let cond = set.cond.index_select(&idx)?.to_device(unet.device())?;
        Ok((x, cond))
    };
    for &step in &steps {
        for exec in observers.values() {
            for obs in &exec.observers {
                obs.lock().expect("observer lock").reset();
            }
            *exec.mode.lock().expect("mode lock") = Mode::Observe;
            *exec.voted.lock().expect("voted lock") = None;
        }
        let rows = set.rows_of_step(step);
        for chunk in rows.chunks(batch.max(1)) {
            let (x, cond) = batch_of(chunk, unet)?;
            let t = set.timesteps[chunk[0]] as f64;
            unet.forward_cond(&x, Timesteps::Shared(t), &cond, &Ctx::at_step(step))?;
            on_forward();
        }
        if let (false, Some(voter)) = (pts_layers.is_empty(), &voter) {
            // Voting forward over all of the step's samples with frozen ranges.
            for (path, exec) in &observers {
                let params = exec.params().map_err(to_model)?;
                *exec.mode.lock().expect("mode lock") = if pts_layers.contains(&path) {
                    Mode::Vote(params, voter.clone())
                } else {
                    Mode::Frozen(fixed_activation(exec.split, &params, None))
                };
            }
            let (x, cond) = batch_of(&rows, unet)?;
            let t = set.timesteps[rows[0]] as f64;
            unet.forward_cond(&x, Timesteps::Shared(t), &cond, &Ctx::at_step(step))?;
        }
        for (path, exec) in &observers {
            let params = exec.params().map_err(to_model)?;
            let voted = exec.voted.lock().expect("voted lock").take();
            if pts_layers.contains(&path) && voted.is_none() {
                return Err(ModelError::Source(format!(
                    "{path}: the voting forward never reached this PTS layer"
                )));
            }
            let entry = found.entry(path.clone()).or_insert_with(|| {
                vec![PerStepActivation::new(Vec::new(), Vec::new()); params.len()]
            });
            for (k, (part, p)) in entry.iter_mut().zip(params).enumerate() {
                part.steps.push(step);
                part.params.push(p);
                if let Some(v) = &voted {
                    part.shifts.get_or_insert_with(Vec::new).push(v[k].clone());
                }
            }
        }
    }
    // Install the simulated execution with what was found.
    let mut out = BTreeMap::new();
    for mut layer in unet.layers_mut() {
        if let (Some(plan), Some(parts)) = (plans.get(layer.path()), found.remove(layer.path())) {
            let act = LayerActivation::new(plan.split, parts);
            let like = layer.layer_ref().weight.clone();
            let exec = SimQuantExec::with_weight(plan.weight.as_ref(), &like, Some(act.clone()))
                .map_err(to_model)?;
            layer.set_exec(Some(exec));
            out.insert(layer.path().to_string(), act);
        }
    }
    Ok(out)
}
