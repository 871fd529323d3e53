//! Per-step activation calibration (spec §1.5, DMQ/TFMQ style): for each calibrated sampling
//! step, run that step's calibration samples through the model with weights quantized; every
//! quantized layer tracks the range of its input with an EMA (momentum 0.95), and quantizes its
//! input with the range seen so far, so later layers see the quantized network's activations.
//! Ranges are reset between steps (the reference code leaks them across steps, spec §8).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerRef};
use dmq_model::{ModelError, Timesteps, UNet2DModel};

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
        })
    }
}

/// Observes and quantizes a layer's input while calibration runs.
struct ObservingExec {
    weight: Option<Tensor>,
    bits: u8,
    split: Option<usize>,
    /// One observer per input part.
    observers: Vec<Mutex<ActRangeObserver>>,
}

impl ObservingExec {
    fn params(&self) -> crate::uniform::Result<Vec<UniformParams>> {
        self.observers
            .iter()
            .map(|o| o.lock().expect("observer lock").params(self.bits))
            .collect()
    }
}

impl LayerExec for ObservingExec {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        _ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
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
        float_op(&xq, self.weight.as_ref().unwrap_or(layer.weight))
    }
}

/// Calibrates the input activation of every layer in `plans` at every calibrated step of `set`,
/// `batch` samples per forward, EMA `momentum`. Leaves each planned layer with a
/// [`SimQuantExec`] holding its quantized weight and per-step activation parameters, and
/// returns those parameters by layer path (layers with float inputs are not in the result).
pub fn calibrate_activations(
    unet: &mut UNet2DModel,
    set: &CalibSet,
    plans: &BTreeMap<String, LayerQuantPlan>,
    batch: usize,
    momentum: f64,
    mut on_forward: impl FnMut(),
) -> dmq_model::Result<BTreeMap<String, LayerActivation>> {
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
        });
        observers.insert(layer.path().to_string(), exec.clone());
        layer.set_exec(Some(exec));
    }
    let mut steps: Vec<usize> = set.step_index.iter().map(|&s| s as usize).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut found: BTreeMap<String, Vec<PerStepActivation>> = BTreeMap::new();
    for &step in &steps {
        for exec in observers.values() {
            for obs in &exec.observers {
                obs.lock().expect("observer lock").reset();
            }
        }
        let rows = set.rows_of_step(step);
        for chunk in rows.chunks(batch.max(1)) {
            let idx = Tensor::from_vec(
                chunk.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                chunk.len(),
                set.x.device(),
            )?;
            let x = set
                .x
                .index_select(&idx, 0)?
                .to_dtype(unet.dtype())?
                .to_device(unet.device())?;
            let t = set.timesteps[chunk[0]] as f64;
            unet.forward(&x, Timesteps::Shared(t), None, &Ctx::at_step(step))?;
            on_forward();
        }
        for (path, exec) in &observers {
            let params = exec.params().map_err(to_model)?;
            let entry = found.entry(path.clone()).or_insert_with(|| {
                vec![
                    PerStepActivation {
                        steps: Vec::new(),
                        params: Vec::new(),
                    };
                    params.len()
                ]
            });
            for (part, p) in entry.iter_mut().zip(params) {
                part.steps.push(step);
                part.params.push(p);
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
