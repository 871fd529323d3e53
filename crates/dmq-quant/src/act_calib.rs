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
use crate::sim::{PerStepActivation, SimQuantExec};
use crate::uniform::{ActRangeObserver, UniformParams};

/// What to do with one layer during activation calibration.
pub struct LayerQuantPlan {
    /// Quantization of the weight (`None`: float weight).
    pub weight: Option<UniformParams>,
    /// Bits of the input activation.
    pub act_bits: u8,
}

/// Observes and quantizes a layer's input while calibration runs.
struct ObservingExec {
    weight: Option<Tensor>,
    bits: u8,
    observer: Mutex<ActRangeObserver>,
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
        let params = {
            let mut obs = self.observer.lock().expect("observer lock");
            obs.observe(x).map_err(err)?;
            obs.params(self.bits).map_err(err)?
        };
        let xq = params.fake_quant(x).map_err(err)?;
        float_op(&xq, self.weight.as_ref().unwrap_or(layer.weight))
    }
}

/// Calibrates the input activation of every layer in `plans` at every calibrated step of `set`,
/// `batch` samples per forward, EMA `momentum`. Leaves each planned layer with a
/// [`SimQuantExec`] holding its quantized weight and per-step activation parameters, and
/// returns those parameters by layer path.
pub fn calibrate_activations(
    unet: &mut UNet2DModel,
    set: &CalibSet,
    plans: &BTreeMap<String, LayerQuantPlan>,
    batch: usize,
    momentum: f64,
    mut on_forward: impl FnMut(),
) -> dmq_model::Result<BTreeMap<String, PerStepActivation>> {
    let to_model = |e: crate::uniform::QuantError| ModelError::Source(e.to_string());
    let mut observers: BTreeMap<String, Arc<ObservingExec>> = BTreeMap::new();
    for mut layer in unet.layers_mut() {
        let Some(plan) = plans.get(layer.path()) else {
            layer.set_exec(None);
            continue;
        };
        let weight = match &plan.weight {
            Some(p) => Some(p.fake_quant(layer.layer_ref().weight).map_err(to_model)?),
            None => None,
        };
        let exec = Arc::new(ObservingExec {
            weight,
            bits: plan.act_bits,
            observer: Mutex::new(ActRangeObserver::with_momentum(momentum).map_err(to_model)?),
        });
        observers.insert(layer.path().to_string(), exec.clone());
        layer.set_exec(Some(exec));
    }
    let mut steps: Vec<usize> = set.step_index.iter().map(|&s| s as usize).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut found: BTreeMap<String, PerStepActivation> = BTreeMap::new();
    for &step in &steps {
        for obs in observers.values() {
            obs.observer.lock().expect("observer lock").reset();
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
        for (path, obs) in &observers {
            let params = obs
                .observer
                .lock()
                .expect("observer lock")
                .params(obs.bits)
                .map_err(to_model)?;
            let entry = found.entry(path.clone()).or_insert(PerStepActivation {
                steps: Vec::new(),
                params: Vec::new(),
            });
            entry.steps.push(step);
            entry.params.push(params);
        }
    }
    // Install the simulated execution with what was found.
    for mut layer in unet.layers_mut() {
        if let (Some(plan), Some(act)) = (plans.get(layer.path()), found.get(layer.path())) {
            let w = layer.layer_ref().weight.clone();
            let exec =
                SimQuantExec::new(&w, plan.weight.as_ref(), Some(act.clone())).map_err(to_model)?;
            layer.set_exec(Some(exec));
        }
    }
    Ok(found)
}
