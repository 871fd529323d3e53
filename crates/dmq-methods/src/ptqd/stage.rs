//! PTQD as a stage after any quantization: measure the statistics of a quantized model against
//! its full-precision model for one sampling protocol ([`measure`]), and, inside `dmq quantize`,
//! optionally choose the activation width per step first ([`run_after_quantize`]).
//!
//! Nothing here depends on how the model was quantized (RTN, the PTQ base, DMQ): it needs the FP
//! network and the quantized network, run on the same inputs. Mixed precision additionally needs
//! the quantized layers (to calibrate their activations at another width).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;
use dmq_model::UNet2DModel;
use dmq_quant::act_calib::{calibrate_activations, LayerQuantPlan};
use dmq_quant::artifact::QuantLayer;
use dmq_quant::calib::CalibSet;
use dmq_quant::config::{PtqdConfig, QuantConfig};
use dmq_quant::ptq::Progress;
use dmq_quant::sim::{LayerActivation, SimQuantExec};
use dmq_sched::Scheduler;

use super::collect::{
    collect, collect_indexed, unet_denoiser, CollectSpec, Denoiser, IndexedDenoiser, SampleSpace,
};
use super::precision::{choose_bits, mix_activations, StepChoice};
use super::stats::{StepAccumulator, StepFit};
use super::store::{Protocol, PtqdSet, StepStats};
use super::{PtqdError, Result};

/// The samples of `unet`: `[C, H, W]` from its config, its device and dtype.
fn sample_space(unet: &UNet2DModel) -> Result<SampleSpace> {
    let res = unet.config.sample_size.ok_or_else(|| {
        PtqdError::Stats("the model's config.json has no sample_size: image size unknown".into())
    })?;
    Ok(SampleSpace {
        shape: vec![unet.config.in_channels, res, res],
        device: unet.device().clone(),
        dtype: unet.dtype(),
    })
}

fn fit_steps(acc: &[StepAccumulator], sched: &dyn Scheduler) -> Result<Vec<StepFit>> {
    acc.iter()
        .enumerate()
        .map(|(i, a)| {
            a.fit().map_err(|e| {
                PtqdError::Stats(format!(
                    "step {i} (timestep {}): {e}",
                    sched.timesteps().get(i).copied().unwrap_or(0)
                ))
            })
        })
        .collect()
}

fn check_protocol(sched: &dyn Scheduler, protocol: &Protocol) -> Result<()> {
    if sched.timesteps() != protocol.timesteps.as_slice() {
        return Err(PtqdError::Protocol(format!(
            "the sampler's timesteps are not those of the protocol {}",
            protocol.describe()
        )));
    }
    Ok(())
}

/// The statistics of `quantized` against `fp` for `protocol` (whose sampler is `sched`),
/// measured on `spec.samples` FP trajectories.
pub fn measure(
    fp: &UNet2DModel,
    quantized: &UNet2DModel,
    sched: &dyn Scheduler,
    protocol: &Protocol,
    spec: &CollectSpec,
    progress: &mut dyn Progress,
) -> Result<PtqdSet> {
    let space = sample_space(fp)?;
    let fd = unet_denoiser(fp);
    let qd = unet_denoiser(quantized);
    measure_indexed(
        &|x: &Tensor, t, i, _: &[usize]| fd(x, t, i),
        &|x: &Tensor, t, i, _: &[usize]| qd(x, t, i),
        &space,
        sched,
        protocol,
        spec,
        progress,
    )
}

/// [`measure`] for networks given as functions of the batch's image indices (conditional
/// models: their guided prediction), on samples of `space`.
pub fn measure_indexed(
    fp: &IndexedDenoiser,
    quantized: &IndexedDenoiser,
    space: &SampleSpace,
    sched: &dyn Scheduler,
    protocol: &Protocol,
    spec: &CollectSpec,
    progress: &mut dyn Progress,
) -> Result<PtqdSet> {
    check_protocol(sched, protocol)?;
    progress.stage(
        "PTQD statistics",
        (spec.samples.div_ceil(spec.batch.max(1)) * sched.timesteps().len()) as u64,
    );
    let q: [&IndexedDenoiser; 1] = [quantized];
    let acc = collect_indexed(fp, &q, sched, spec, space, || progress.inc(1))?;
    let fits = fit_steps(&acc[0], sched)?;
    Ok(PtqdSet {
        protocol: protocol.clone(),
        samples: spec.samples,
        seed: spec.seed,
        steps: fits
            .into_iter()
            .enumerate()
            .map(|(i, fit)| StepStats {
                step: i,
                timestep: sched.timesteps()[i],
                fit,
                act_bits: None,
            })
            .collect(),
        mixed_act_bits: Vec::new(),
    })
}

/// What [`run_after_quantize`] did.
pub struct StageOutcome {
    pub set: PtqdSet,
    /// The per-step width choice, with mixed precision.
    pub choices: Option<Vec<StepChoice>>,
    pub seconds: f64,
}

/// The inputs of PTQD inside `dmq quantize`.
pub struct AfterQuantize<'a> {
    /// The full-precision model.
    pub fp: &'a UNet2DModel,
    /// The quantized model (simulated execution installed); with mixed precision its
    /// activations are replaced by the per-step mix.
    pub quantized: &'a mut UNet2DModel,
    /// Its quantized layers; with mixed precision their activations are replaced likewise.
    pub layers: &'a mut BTreeMap<String, QuantLayer>,
    pub recipe: &'a QuantConfig,
    pub settings: &'a PtqdConfig,
    /// The calibration set the activations were calibrated on (mixed precision calibrates the
    /// other widths on it).
    pub calib: &'a CalibSet,
    pub sched: &'a dyn Scheduler,
    pub protocol: Protocol,
}

/// The activation width of a quantized input (the widest of its sets).
fn act_width(a: &LayerActivation) -> u8 {
    a.parts
        .iter()
        .flat_map(|p| p.params.iter().map(|q| q.bits))
        .max()
        .unwrap_or(0)
}

/// Calibrates, on `model` (a fresh full-precision model), the activations of `layers` with
/// every input at the recipe's width moved to `bits` (inputs the recipe gave another width keep
/// it), and leaves `model` executing that variant. Returns the new activations.
fn calibrate_variant(
    model: &mut UNet2DModel,
    layers: &BTreeMap<String, QuantLayer>,
    recipe: &QuantConfig,
    calib: &CalibSet,
    bits: u8,
    progress: &mut dyn Progress,
) -> Result<BTreeMap<String, LayerActivation>> {
    if let Some(path) = layers.iter().find_map(|(p, l)| {
        l.activation
            .as_ref()
            .is_some_and(|a| a.parts.iter().any(|q| q.shifts.is_some()))
            .then_some(p)
    }) {
        return Err(PtqdError::Stats(format!(
            "step-aware mixed precision re-calibrates activations, which would drop the PTS shifts \
             of {path} (a DMQ model): not supported yet; use PTQD without mixed_act_bits"
        )));
    }
    let mut plans = BTreeMap::new();
    for (path, l) in layers {
        let weight = match &l.weight {
            Some(w) => Some(w.dequantize()?),
            None => None,
        };
        let act_bits = l.activation.as_ref().map(|a| {
            let w = act_width(a);
            if w == recipe.activations.bits {
                bits
            } else {
                w
            }
        });
        plans.insert(
            path.clone(),
            LayerQuantPlan {
                weight,
                act_bits,
                split: l.activation.as_ref().and_then(|a| a.split),
                pts: false,
            },
        );
    }
    let steps = {
        let mut s = calib.step_index.clone();
        s.sort_unstable();
        s.dedup();
        s
    };
    let batch = recipe.activations.ema_batch.max(1);
    let total: usize = steps
        .iter()
        .map(|&s| calib.rows_of_step(s as usize).len().div_ceil(batch))
        .sum();
    progress.stage(&format!("A{bits} activation ranges"), total as u64);
    Ok(calibrate_activations(
        model,
        calib,
        &plans,
        batch,
        recipe.activations.ema_momentum,
        None,
        || progress.inc(1),
    )?)
}

/// Installs `layers` (weights and activations) as simulated execution on `model`, whose
/// weights may be float or already the dequantized ones.
fn install(model: &mut UNet2DModel, layers: &BTreeMap<String, QuantLayer>) -> Result<()> {
    for mut l in model.layers_mut() {
        let Some(q) = layers.get(l.path()) else {
            continue;
        };
        let like = l.layer_ref().weight.clone();
        let deq = match &q.weight {
            Some(w) => Some(w.dequantize()?),
            None => None,
        };
        let exec = SimQuantExec::with_weight(deq.as_ref(), &like, q.activation.clone())?;
        l.set_exec(Some(exec));
    }
    Ok(())
}

/// PTQD after the quantization in `dmq quantize`: with `settings.mixed_act_bits`, calibrates
/// the activations at each lower width (on models from `load_fp`), measures every width's
/// statistics on the same FP trajectories, chooses the width per step (SNR criterion) and
/// installs the mix; then returns the statistics of the final model (for mixed precision:
/// each step's from its chosen width, which is what the mixed model computes at that step).
pub fn run_after_quantize(
    input: AfterQuantize<'_>,
    load_fp: &mut dyn FnMut() -> Result<UNet2DModel>,
    progress: &mut dyn Progress,
) -> Result<StageOutcome> {
    let started = Instant::now();
    let AfterQuantize {
        fp,
        quantized,
        layers,
        recipe,
        settings,
        calib,
        sched,
        protocol,
    } = input;
    let spec = CollectSpec {
        samples: settings.samples,
        batch: settings.batch,
        seed: settings.seed,
    };
    if settings.mixed_act_bits.is_empty() {
        let set = measure(fp, quantized, sched, &protocol, &spec, progress)?;
        return Ok(StageOutcome {
            set,
            choices: None,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    check_protocol(sched, &protocol)?;
    let high = recipe.activations.bits;
    let mut by_bits: BTreeMap<u8, BTreeMap<String, LayerActivation>> = BTreeMap::new();
    by_bits.insert(
        high,
        layers
            .iter()
            .filter_map(|(p, l)| l.activation.clone().map(|a| (p.clone(), a)))
            .collect(),
    );
    let mut variants = Vec::new();
    for &b in &settings.mixed_act_bits {
        let mut m = load_fp()?;
        let acts = calibrate_variant(&mut m, layers, recipe, calib, b, progress)?;
        by_bits.insert(b, acts);
        variants.push((b, m));
    }
    let space = sample_space(fp)?;
    progress.stage(
        "PTQD statistics",
        (spec.samples.div_ceil(spec.batch) * sched.timesteps().len()) as u64,
    );
    let fd = unet_denoiser(fp);
    let mut denoisers: Vec<Box<Denoiser>> = vec![Box::new(unet_denoiser(quantized))];
    for (_, m) in &variants {
        denoisers.push(Box::new(unet_denoiser(m)));
    }
    let refs: Vec<&Denoiser> = denoisers.iter().map(|d| d.as_ref()).collect();
    let acc = collect(&fd, &refs, sched, &spec, &space, || progress.inc(1))?;
    drop(refs);
    drop(denoisers);
    let widths: Vec<u8> = std::iter::once(high)
        .chain(variants.iter().map(|(b, _)| *b))
        .collect();
    let fits: Vec<Vec<StepFit>> = acc
        .iter()
        .map(|a| fit_steps(a, sched))
        .collect::<Result<_>>()?;
    let alphas: Vec<f64> = (0..sched.timesteps().len())
        .map(|i| Ok(sched.step_terms(i)?.alpha_prod_t))
        .collect::<Result<_>>()?;
    let candidates: Vec<(u8, Vec<StepFit>)> =
        widths.iter().copied().zip(fits.iter().cloned()).collect();
    let choices = choose_bits(&candidates, &alphas)?;
    let bits: Vec<u8> = choices.iter().map(|c| c.bits).collect();
    let mixed = mix_activations(&by_bits, &bits)?;
    for (path, act) in mixed {
        if let Some(l) = layers.get_mut(&path) {
            l.activation = Some(act);
        }
    }
    install(quantized, layers)?;
    let steps = bits
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let m = widths
                .iter()
                .position(|w| w == b)
                .expect("a candidate width");
            StepStats {
                step: i,
                timestep: sched.timesteps()[i],
                fit: fits[m][i].clone(),
                act_bits: Some(*b),
            }
        })
        .collect();
    let mut lower = settings.mixed_act_bits.clone();
    lower.sort_unstable();
    Ok(StageOutcome {
        set: PtqdSet {
            protocol,
            samples: spec.samples,
            seed: spec.seed,
            steps,
            mixed_act_bits: lower,
        },
        choices: Some(choices),
        seconds: started.elapsed().as_secs_f64(),
    })
}
