//! Block reconstruction with AdaRound (BRECQ, spec §1.2 and §3): for one unit (a ResNet block,
//! an attention block or a single layer), learn the rounding of every quantized weight in it so
//! that the unit's output on its (quantized-prefix) inputs matches the full-precision unit's
//! output, by Adam on the rounding variables with the annealed rounding regulariser.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerRef};
use dmq_model::unet2d::units::Unit;
use dmq_model::{DenoiserModel, ModelError, Timesteps};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::adaround::{AdaRoundState, BetaSchedule, REG_LAMBDA};
use crate::calib::CalibSet;
use crate::qweight::{QuantWeight, WeightPart};
use crate::sim::SimQuantExec;
use crate::uniform::{QuantError, UniformParams};

/// How one unit is reconstructed (the `[reconstruction]` section of a recipe).
#[derive(Debug, Clone)]
pub struct ReconSettings {
    pub iters: usize,
    pub batch: usize,
    pub lr: f64,
    /// Exponent of the reconstruction loss (2).
    pub loss_p: f64,
    /// λ of the rounding regulariser (0.01).
    pub lambda: f64,
    pub schedule: BetaSchedule,
    /// Seed of the mini-batch draws; each unit mixes in its own index.
    pub seed: u64,
}

/// A unit's inputs (as the unit sees them) and full-precision outputs, for every sample.
pub struct UnitData {
    pub inputs: Vec<Tensor>,
    pub target: Tensor,
}

/// What reconstructing one unit produced.
#[derive(Debug, Clone)]
pub struct UnitOutcome {
    pub weights: BTreeMap<String, QuantWeight>,
    /// Reconstruction loss with round-to-nearest weights (the MSE-initialised starting point).
    pub loss_nearest: f64,
    /// The same loss with the learned rounding.
    pub loss_learned: f64,
}

fn model_err(e: QuantError) -> ModelError {
    ModelError::Source(e.to_string())
}

/// `lp_loss` of the reference (spec notation): `|pred − tgt|^p` summed over the channel axis
/// (1 for `[B, C, H, W]`, the last for `[B, .., C]`: never the token axis, pitfall §8.5) and
/// averaged over everything else. DiT/PixArt transformer blocks output `[B, N, D]` tokens: the
/// sum runs over each token's D features, the mean over batch and tokens.
pub fn lp_loss(pred: &Tensor, target: &Tensor, p: f64) -> candle_core::Result<Tensor> {
    let d = (pred - target)?;
    let e = if p == 2.0 {
        d.sqr()?
    } else {
        d.abs()?.powf(p)?
    };
    let axis = if e.rank() == 4 { 1 } else { e.rank() - 1 };
    e.sum(axis)?.mean_all()
}

/// Inputs of each of `units` for every row of `set`, from the model as it is now configured
/// (float, or with earlier units already quantized), `batch` rows per forward; each forward
/// stops at the last of the units.
pub fn capture_inputs(
    model: &dyn DenoiserModel,
    units: &[String],
    set: &CalibSet,
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> dmq_model::Result<BTreeMap<String, Vec<Tensor>>> {
    let mut parts: BTreeMap<String, Vec<Vec<Tensor>>> = BTreeMap::new();
    let n = set.len();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let x = set
            .x
            .narrow(0, start, len)?
            .to_device(model.device())?
            .to_dtype(model.dtype())?;
        let ts: Vec<f64> = set.timesteps[start..start + len]
            .iter()
            .map(|&t| f64::from(t))
            .collect();
        // Rows are grouped by step; a batch that straddles two steps has no single step index,
        // which only activation-quantized layers would need (none in the weight stage).
        let step = set.step_index[start] as usize;
        let same_step = set.step_index[start..start + len]
            .iter()
            .all(|&s| s as usize == step);
        let cond = set.cond.narrow(start, len)?.to_device(model.device())?;
        let got = model.capture_inputs_with(
            units,
            &x,
            Timesteps::PerSample(&ts),
            &cond,
            same_step.then_some(step),
        )?;
        for (unit, tensors) in got {
            let slot = parts
                .entry(unit)
                .or_insert_with(|| vec![Vec::new(); tensors.len()]);
            for (p, t) in slot.iter_mut().zip(tensors) {
                p.push(t.detach());
            }
        }
        start += len;
        on_batch(len);
    }
    parts
        .into_iter()
        .map(|(unit, p)| {
            let cat = p
                .iter()
                .map(|chunks| Tensor::cat(chunks, 0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok((unit, cat))
        })
        .collect()
}

/// The unit's output on `inputs`, `batch` rows at a time, without gradients.
pub fn unit_outputs(
    model: &dyn DenoiserModel,
    unit: &str,
    inputs: &[Tensor],
    batch: usize,
) -> dmq_model::Result<Tensor> {
    let n = inputs[0].dims()[0];
    let mut outs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let xs = inputs
            .iter()
            .map(|t| t.narrow(0, start, len))
            .collect::<candle_core::Result<Vec<_>>>()?;
        outs.push(model.unit_forward(unit, &xs, &Ctx::inference())?.detach());
        start += len;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Soft-quantized execution during reconstruction: the weight is `cat(Δ·(floor + h(V) − z))` of
/// the parts, differentiable in every `V`.
struct AdaRoundExec {
    parts: Vec<AdaRoundState>,
}

impl LayerExec for AdaRoundExec {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        _ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        let parts = self
            .parts
            .iter()
            .map(|p| p.soft_weight())
            .collect::<crate::uniform::Result<Vec<_>>>()
            .map_err(|e| ModelError::Source(format!("{}: {e}", layer.path)))?;
        let w = if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&parts, 1)?
        };
        float_op(x, &w.to_dtype(x.dtype())?)
    }
}

/// Mean reconstruction loss of the unit as configured now over the first (up to) 256 samples.
fn eval_loss(
    model: &dyn DenoiserModel,
    unit: &str,
    data: &UnitData,
    s: &ReconSettings,
) -> dmq_model::Result<f64> {
    let n = data.inputs[0].dims()[0].min(256);
    let inputs: Vec<Tensor> = data
        .inputs
        .iter()
        .map(|t| t.narrow(0, 0, n))
        .collect::<candle_core::Result<_>>()?;
    let out = unit_outputs(model, unit, &inputs, s.batch.max(32))?;
    let tgt = data.target.narrow(0, 0, n)?;
    Ok(lp_loss(
        &out.to_dtype(DType::F32)?,
        &tgt.to_dtype(DType::F32)?,
        s.loss_p,
    )?
    .to_scalar::<f32>()? as f64)
}

/// Installs round-to-nearest or learned hard weights on the unit's quantized layers.
fn install_hard(
    model: &mut dyn DenoiserModel,
    weights: &BTreeMap<String, QuantWeight>,
) -> dmq_model::Result<()> {
    for mut layer in model.layers_mut() {
        if let Some(q) = weights.get(layer.path()) {
            let like = layer.layer_ref().weight.clone();
            let deq = q.dequantize().map_err(model_err)?;
            layer.set_exec(Some(
                SimQuantExec::with_weight(Some(&deq), &like, None).map_err(model_err)?,
            ));
        }
    }
    Ok(())
}

/// Learns the rounding of the quantized layers of `unit` (those in `init`, with their initial
/// part parameters) against `data`. Leaves the layers with their hard-rounded weights installed
/// (weights only) and returns them. `unit_index` decorrelates the mini-batch draws of units.
pub fn reconstruct_unit(
    model: &mut dyn DenoiserModel,
    unit: &Unit,
    unit_index: usize,
    init: &BTreeMap<String, Vec<(usize, usize, UniformParams)>>,
    data: &UnitData,
    s: &ReconSettings,
    mut on_iter: impl FnMut(usize, f64),
) -> dmq_model::Result<UnitOutcome> {
    let n = data.inputs[0].dims()[0];
    if n == 0 {
        return Err(ModelError::Source(format!(
            "{}: no calibration samples",
            unit.path
        )));
    }
    // Round-to-nearest start, and its loss.
    let mut nearest = BTreeMap::new();
    let mut states: BTreeMap<String, Vec<AdaRoundState>> = BTreeMap::new();
    for mut layer in model.layers_mut() {
        let Some(parts) = init.get(layer.path()) else {
            continue;
        };
        let w = layer.layer_ref().weight.to_dtype(DType::F32)?;
        nearest.insert(
            layer.path().to_string(),
            QuantWeight::round_to_nearest(&w, parts).map_err(model_err)?,
        );
        let mut st = Vec::new();
        for (start, len, params) in parts {
            st.push(
                AdaRoundState::new(&w.narrow(1, *start, *len)?, params.clone())
                    .map_err(model_err)?,
            );
        }
        layer.set_exec(Some(Arc::new(AdaRoundExec { parts: st.clone() })));
        states.insert(layer.path().to_string(), st);
    }
    // Layers of the unit that stay float keep no exec.
    for mut layer in model.layers_mut() {
        if unit.layers.iter().any(|p| p == layer.path()) && !init.contains_key(layer.path()) {
            layer.set_exec(None);
        }
    }
    let soft: Vec<(String, Vec<AdaRoundState>)> = states.into_iter().collect();
    install_hard(model, &nearest)?;
    let loss_nearest = eval_loss(model, &unit.path, data, s)?;
    for mut layer in model.layers_mut() {
        if let Some((_, st)) = soft.iter().find(|(p, _)| p == layer.path()) {
            layer.set_exec(Some(Arc::new(AdaRoundExec { parts: st.clone() })));
        }
    }

    let vars: Vec<candle_core::Var> = soft
        .iter()
        .flat_map(|(_, st)| st.iter().map(|a| a.v.clone()))
        .collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: s.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(
        s.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(unit_index as u64 + 1)),
    );
    let ctx = Ctx::differentiable();
    let device = data.target.device().clone();
    let b = s.batch.min(n);
    for it in 1..=s.iters {
        let rows: Vec<u32> = rand::seq::index::sample(&mut rng, n, b)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let idx = Tensor::from_vec(rows, b, &device)?;
        let xs = data
            .inputs
            .iter()
            .map(|t| t.index_select(&idx, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tgt = data.target.index_select(&idx, 0)?;
        let out = model.unit_forward(&unit.path, &xs, &ctx)?;
        let rec = lp_loss(
            &out.to_dtype(DType::F32)?,
            &tgt.to_dtype(DType::F32)?,
            s.loss_p,
        )?;
        let mut loss = rec.clone();
        if s.schedule.reg_active(it) {
            for (_, st) in &soft {
                for a in st {
                    let r = a
                        .scheduled_reg_loss(&s.schedule, it)
                        .map_err(model_err)?
                        .to_dtype(DType::F32)?;
                    loss = (loss + (r * (s.lambda / REG_LAMBDA))?)?;
                }
            }
        }
        opt.backward_step(&loss)?;
        if it % 50 == 0 || it == s.iters {
            on_iter(it, rec.to_scalar::<f32>()? as f64);
        }
    }

    // Hard rounding of the learned V.
    let mut learned = BTreeMap::new();
    for (path, st) in &soft {
        let shape = nearest[path].shape.clone();
        let mut parts = Vec::new();
        for (a, p) in st.iter().zip(&nearest[path].parts) {
            parts.push(WeightPart {
                start: p.start,
                len: p.len,
                params: a.params.clone(),
                codes: a.hard_codes().map_err(model_err)?,
                codebook: None,
            });
        }
        learned.insert(
            path.clone(),
            QuantWeight::new(shape, parts).map_err(model_err)?,
        );
    }
    install_hard(model, &learned)?;
    let loss_learned = eval_loss(model, &unit.path, data, s)?;
    Ok(UnitOutcome {
        weights: learned,
        loss_nearest,
        loss_learned,
    })
}

/// Installs weight-only hard-quantized execs for `weights` (used when restoring checkpoints).
pub fn install_weights(
    model: &mut dyn DenoiserModel,
    weights: &BTreeMap<String, QuantWeight>,
) -> dmq_model::Result<()> {
    install_hard(model, weights)
}

#[cfg(test)]
mod tests {
    use super::lp_loss;
    use candle_core::{Device, Tensor};

    /// Transformer-block outputs `[B, N, D]`: the error is summed over each token's D features
    /// and averaged over batch and tokens (DMQ's reference sums over the token axis instead,
    /// which weights a block by its token count: `docs/methods/dmq.md` §8).
    #[test]
    fn lp_loss_sums_features_not_tokens() {
        // B = 1, N = 2 tokens, D = 3 features; error 1 on token 0 feature 0, 2 on token 1 feature 2.
        let pred =
            Tensor::from_vec(vec![1f32, 0., 0., 0., 0., 2.], (1, 2, 3), &Device::Cpu).unwrap();
        let tgt = pred.zeros_like().unwrap();
        let l: f32 = lp_loss(&pred, &tgt, 2.0).unwrap().to_scalar().unwrap();
        // per token: 1 and 4; mean over the 2 tokens = 2.5 (token-axis sum: mean of [1, 0, 4] = 5/3)
        assert!((l - 2.5).abs() < 1e-6, "{l}");
        // [B, C, H, W]: the channel axis.
        let pred = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 2, 2, 1), &Device::Cpu).unwrap();
        let l: f32 = lp_loss(&pred, &pred.zeros_like().unwrap(), 2.0)
            .unwrap()
            .to_scalar()
            .unwrap();
        // per position: 1 + 9 = 10 and 4 + 16 = 20, mean 15
        assert!((l - 15.0).abs() < 1e-5, "{l}");
    }
}
