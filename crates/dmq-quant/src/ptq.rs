//! The shared PTQ base run end to end on a model (spec `dmq.md` §1-3, §5): weight-quantizer
//! initialisation, block reconstruction with AdaRound (each unit checkpointed, so an
//! interrupted run resumes where it stopped), then per-step activation calibration. Methods
//! (DMQ, PTQD, mixed precision) hook in around these stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use dmq_model::unet2d::units::Unit;
use dmq_model::{DenoiserModel, ModelError};

use std::sync::Arc;

use crate::act_calib::{calibrate_activations, LayerQuantPlan, ShiftVoter};
use crate::adaround::BetaSchedule;
use crate::artifact::{self, ArtifactError, QuantLayer};
use crate::calib::CalibSet;
use crate::config::{
    ActRange, LayerPlan, QuantConfig, ReconInputs, ReconUnit, Rounding, WeightQuantizer,
};
use crate::qweight::{init_part_params, QuantWeight};
use crate::recon::{self, ReconSettings, UnitData};
use crate::uniform::{QuantError, UniformParams};

/// Where long stages report to (a progress bar in the CLI, nothing in tests).
pub trait Progress {
    /// A new stage with `total` steps of work.
    fn stage(&mut self, name: &str, total: u64);
    fn inc(&mut self, n: u64);
    /// A line worth keeping (e.g. a unit's losses).
    fn message(&mut self, msg: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn stage(&mut self, _: &str, _: u64) {}
    fn inc(&mut self, _: u64) {}
    fn message(&mut self, _: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum PtqError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("recipe `{recipe}`: {message}")]
    Unsupported { recipe: String, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, PtqError>;

/// How a run is carried out (not part of the recipe: results do not depend on these, except
/// that a checkpoint is only reused by a run with the same `run_fingerprint`).
#[derive(Debug, Clone)]
pub struct PtqOptions {
    /// Folder for per-unit checkpoints; `None`: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Samples per forward when capturing unit inputs.
    pub capture_batch: usize,
    /// Bytes of full-precision unit inputs and targets held at once.
    pub capture_budget_bytes: usize,
    /// Identity of model, calibration data and recipe.
    pub run_fingerprint: String,
}

/// What reconstructing one unit did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitReport {
    pub path: String,
    pub layers: Vec<String>,
    /// Reconstruction loss (`lp_loss`, first 256 samples) with round-to-nearest weights.
    pub loss_nearest: f64,
    /// The same with the learned rounding.
    pub loss_learned: f64,
    pub seconds: f64,
    /// Restored from a checkpoint rather than computed in this run.
    pub resumed: bool,
}

/// The quantized model's parts and what it took to get them.
pub struct PtqOutcome {
    /// Every layer with a quantized weight or input.
    pub layers: BTreeMap<String, QuantLayer>,
    pub units: Vec<UnitReport>,
    /// `‖Ŵ − W‖ / ‖W‖` per quantized weight.
    pub weight_rel_error: BTreeMap<String, f64>,
    /// Wall time of each stage, in order.
    pub stage_seconds: Vec<(String, f64)>,
    /// Float checkpoint tensors a method changed (e.g. a bias that absorbed a folded scale), by
    /// tensor name: the artifact stores these instead of the base model's.
    pub float_replaced: BTreeMap<String, Tensor>,
    /// Layers whose equivalent scale was folded into another layer: folded layer → host layer.
    pub scale_folded: BTreeMap<String, String>,
}

/// What a method adds to the base pipeline; DMQ's LES and PTS (in `dmq-methods`) are hooks.
pub trait PtqHooks {
    /// Before the weight quantizers are initialised, with every layer float: may rescale layers
    /// (LES sets `W·γ` as the weight and `γ` as the input scale, which every later stage sees).
    #[allow(clippy::too_many_arguments)]
    fn before_weights(
        &mut self,
        model: &mut dyn DenoiserModel,
        cfg: &QuantConfig,
        set: &CalibSet,
        plans: &BTreeMap<String, LayerPlan>,
        splits: &BTreeMap<String, usize>,
        opts: &PtqOptions,
        progress: &mut dyn Progress,
    ) -> Result<()>;

    /// The chooser of power-of-two step factors, for recipes with `[pts]`.
    fn shift_voter(&self) -> Option<Arc<dyn ShiftVoter>>;

    /// After the last stage: may rewrite the outcome (e.g. fold scales), leaving the model
    /// computing what the outcome describes.
    fn finish(&mut self, model: &mut dyn DenoiserModel, outcome: &mut PtqOutcome) -> Result<()>;

    /// What the method wants in the artifact's manifest (`extra`) and report.
    fn report(&self) -> serde_json::Value;
}

/// The base pipeline alone.
pub struct NoHooks;

impl PtqHooks for NoHooks {
    fn before_weights(
        &mut self,
        _: &mut dyn DenoiserModel,
        cfg: &QuantConfig,
        _: &CalibSet,
        _: &BTreeMap<String, LayerPlan>,
        _: &BTreeMap<String, usize>,
        _: &PtqOptions,
        _: &mut dyn Progress,
    ) -> Result<()> {
        if cfg.les.as_ref().is_some_and(|l| l.enabled)
            || cfg.pts.as_ref().is_some_and(|p| p.enabled)
        {
            return Err(unsupported(
                cfg,
                "uses DMQ's [les]/[pts], which run through dmq_methods::dmq (the `dmq` CLI does this)",
            ));
        }
        Ok(())
    }

    fn shift_voter(&self) -> Option<Arc<dyn ShiftVoter>> {
        None
    }

    fn finish(&mut self, _: &mut dyn DenoiserModel, _: &mut PtqOutcome) -> Result<()> {
        Ok(())
    }

    fn report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn unsupported(cfg: &QuantConfig, message: impl Into<String>) -> PtqError {
    PtqError::Unsupported {
        recipe: cfg.name.clone(),
        message: message.into(),
    }
}

/// Rejects recipe values this engine does not implement yet (rather than ignoring them).
pub fn check_supported(cfg: &QuantConfig) -> Result<()> {
    if cfg.has_kmeans() && cfg.weights.rounding == Rounding::Adaround && cfg.reconstruction.enabled
    {
        return Err(unsupported(
            cfg,
            "k-means weight quantizers (overrides with weight_quantizer = \"kmeans\") need \
             weights.rounding = \"nearest\": learned rounding of codebooks is not implemented",
        ));
    }
    if cfg.weights.symmetric {
        return Err(unsupported(
            cfg,
            "weights.symmetric = true is not implemented; use false",
        ));
    }
    if cfg.activations.symmetric {
        return Err(unsupported(
            cfg,
            "activations.symmetric = true is not implemented; use false",
        ));
    }
    if cfg.activations.range != ActRange::MinmaxEma {
        return Err(unsupported(cfg, "activations.range must be \"minmax_ema\" (percentile is not implemented for calibration)"));
    }
    if !cfg.activations.per_step || !cfg.activations.ema_reset_per_step {
        return Err(unsupported(
            cfg,
            "activations.per_step and activations.ema_reset_per_step must be true",
        ));
    }
    if cfg.reconstruction.enabled && cfg.reconstruction.unit != ReconUnit::Block {
        return Err(unsupported(cfg, "reconstruction.unit must be \"block\""));
    }
    if cfg.reconstruction.enabled && cfg.reconstruction.act_steps {
        return Err(unsupported(
            cfg,
            "reconstruction.act_steps (learned activation steps) is not implemented",
        ));
    }
    if cfg.reconstruction.enabled
        && (cfg.reconstruction.adaround_zeta != 1.1 || cfg.reconstruction.adaround_gamma != -0.1)
    {
        return Err(unsupported(
            cfg,
            "adaround_zeta/adaround_gamma other than 1.1/-0.1",
        ));
    }
    Ok(())
}

fn rel_error(q: &Tensor, w: &Tensor) -> Result<f64> {
    let w = w.to_dtype(DType::F64)?;
    let d = (q.to_dtype(DType::F64)? - &w)?;
    let num = d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = w.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den > 0.0 { num / den } else { num })
}

/// Runs the base recipe `cfg` on `model` with calibration data `set`. The model is left with
/// the quantized model's simulated execution installed.
pub fn quantize(
    model: &mut dyn DenoiserModel,
    cfg: &QuantConfig,
    set: &CalibSet,
    opts: &PtqOptions,
    progress: &mut dyn Progress,
) -> Result<PtqOutcome> {
    quantize_with(model, cfg, set, opts, &mut NoHooks, progress)
}

/// [`quantize`] with a method's `hooks` around the base stages.
pub fn quantize_with(
    model: &mut dyn DenoiserModel,
    cfg: &QuantConfig,
    set: &CalibSet,
    opts: &PtqOptions,
    hooks: &mut dyn PtqHooks,
    progress: &mut dyn Progress,
) -> Result<PtqOutcome> {
    check_supported(cfg)?;
    let paths = model.layer_paths();
    let plans = cfg.layer_plans(&paths);
    let splits = if cfg.layers.split_skip {
        model.split_points()
    } else {
        BTreeMap::new()
    };
    for mut l in model.layers_mut() {
        l.set_exec(None);
    }
    let mut stage_seconds = Vec::new();
    let t0 = Instant::now();
    hooks.before_weights(model, cfg, set, &plans, &splits, opts, progress)?;
    if cfg.les.as_ref().is_some_and(|l| l.enabled) {
        stage_seconds.push(("equivalent scaling".to_string(), t0.elapsed().as_secs_f64()));
    }

    // 1. Weight quantizer ranges.
    let t0 = Instant::now();
    let quantized: Vec<String> = paths
        .iter()
        .filter(|p| plans[*p].weight_bits.is_some())
        .cloned()
        .collect();
    progress.stage("weight ranges", quantized.len() as u64);
    let quantizers = cfg.weight_quantizers(&paths);
    let mut init: BTreeMap<String, Vec<(usize, usize, UniformParams)>> = BTreeMap::new();
    // K-means layers: codes and codebook fixed here (one part: a split layer's two input
    // slices share one codebook per output channel).
    let mut codebook_weights: BTreeMap<String, QuantWeight> = BTreeMap::new();
    let mut float_weights: BTreeMap<String, Tensor> = BTreeMap::new();
    for l in model.layers_mut() {
        let plan = plans[l.path()];
        if let Some(bits) = plan.weight_bits {
            let w = l.layer_ref().weight.to_dtype(DType::F32)?;
            if quantizers[l.path()] == WeightQuantizer::Kmeans {
                codebook_weights.insert(
                    l.path().to_string(),
                    crate::kmeans::quantize_kmeans(&w, bits, plan.granularity)?,
                );
                float_weights.insert(l.path().to_string(), w);
                progress.inc(1);
                continue;
            }
            init.insert(
                l.path().to_string(),
                init_part_params(
                    &w,
                    bits,
                    cfg.weights.range,
                    plan.granularity,
                    splits.get(l.path()).copied(),
                )?,
            );
            float_weights.insert(l.path().to_string(), w);
            progress.inc(1);
        }
    }
    stage_seconds.push(("weight ranges".to_string(), t0.elapsed().as_secs_f64()));

    // 2. Rounding: learned by block reconstruction, or to nearest.
    let t0 = Instant::now();
    let mut units_report = Vec::new();
    let weights: BTreeMap<String, QuantWeight> =
        if cfg.weights.rounding == Rounding::Adaround && cfg.reconstruction.enabled {
            reconstruct_all(model, cfg, set, opts, &init, &mut units_report, progress)?
        } else {
            let mut w = codebook_weights;
            for (path, parts) in &init {
                w.insert(
                    path.clone(),
                    QuantWeight::round_to_nearest(&float_weights[path], parts)?,
                );
            }
            recon::install_weights(model, &w)?;
            w
        };
    stage_seconds.push(("rounding".to_string(), t0.elapsed().as_secs_f64()));

    // 3. Per-step activation calibration on the weight-quantized network.
    let t0 = Instant::now();
    let mut deq = BTreeMap::new();
    let mut weight_rel_error = BTreeMap::new();
    for (path, q) in &weights {
        let d = q.dequantize()?;
        weight_rel_error.insert(path.clone(), rel_error(&d, &float_weights[path])?);
        deq.insert(path.clone(), d);
    }
    let mut act_plans = BTreeMap::new();
    for path in &paths {
        let plan = plans[path];
        let act_bits = plan.act_bits.filter(|&b| b < 16);
        if plan.weight_bits.is_none() && act_bits.is_none() {
            continue;
        }
        act_plans.insert(
            path.clone(),
            LayerQuantPlan {
                weight: deq.get(path).cloned(),
                act_bits,
                split: act_bits.and_then(|_| splits.get(path).copied()),
                pts: cfg.pts.as_ref().is_some_and(|p| p.applies_to(path)),
            },
        );
    }
    let batches: u64 = {
        let mut steps: Vec<u32> = set.step_index.clone();
        steps.sort_unstable();
        steps.dedup();
        steps
            .iter()
            .map(|&s| {
                set.rows_of_step(s as usize)
                    .len()
                    .div_ceil(cfg.activations.ema_batch.max(1)) as u64
            })
            .sum()
    };
    progress.stage("activation ranges", batches);
    let acts = calibrate_activations(
        model,
        set,
        &act_plans,
        cfg.activations.ema_batch.max(1),
        cfg.activations.ema_momentum,
        hooks.shift_voter(),
        || progress.inc(1),
    )?;
    stage_seconds.push(("activation ranges".to_string(), t0.elapsed().as_secs_f64()));

    let mut scales = BTreeMap::new();
    for l in model.layers_mut() {
        if let Some(g) = l.layer_ref().input_scale {
            scales.insert(
                l.path().to_string(),
                g.to_device(&candle_core::Device::Cpu)?,
            );
        }
    }
    let mut layers = BTreeMap::new();
    for path in act_plans.keys() {
        layers.insert(
            path.clone(),
            QuantLayer {
                weight: weights.get(path).cloned(),
                activation: acts.get(path).cloned(),
                equivalent_scale: scales.remove(path),
            },
        );
    }
    if let Some(path) = scales.keys().next() {
        return Err(unsupported(
            cfg,
            format!("layer `{path}` has an equivalent scale but is not quantized"),
        ));
    }
    let mut outcome = PtqOutcome {
        layers,
        units: units_report,
        weight_rel_error,
        stage_seconds,
        float_replaced: BTreeMap::new(),
        scale_folded: BTreeMap::new(),
    };
    hooks.finish(model, &mut outcome)?;
    Ok(outcome)
}

fn settings(cfg: &QuantConfig) -> ReconSettings {
    let r = &cfg.reconstruction;
    ReconSettings {
        iters: r.iters,
        batch: r.batch,
        lr: r.lr,
        loss_p: r.loss_p,
        lambda: r.adaround_lambda,
        schedule: BetaSchedule {
            t_max: r.iters,
            warmup: r.warmup,
            start_b: r.beta_start,
            end_b: r.beta_end,
        },
        seed: cfg.calibration.seed,
    }
}

fn tensors_bytes(ts: &[Tensor]) -> usize {
    ts.iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

/// Block reconstruction of every unit holding a quantized weight, in forward order.
fn reconstruct_all(
    model: &mut dyn DenoiserModel,
    cfg: &QuantConfig,
    set: &CalibSet,
    opts: &PtqOptions,
    init: &BTreeMap<String, Vec<(usize, usize, UniformParams)>>,
    reports: &mut Vec<UnitReport>,
    progress: &mut dyn Progress,
) -> Result<BTreeMap<String, QuantWeight>> {
    let all_units = model.units();
    let units: Vec<(usize, Unit)> = all_units
        .into_iter()
        .enumerate()
        .filter(|(_, u)| u.layers.iter().any(|l| init.contains_key(l)))
        .collect();
    let ckpt = opts
        .checkpoint_dir
        .as_deref()
        .map(|d| Checkpoints::open(d, &opts.run_fingerprint))
        .transpose()?;
    let mut weights: BTreeMap<String, QuantWeight> = BTreeMap::new();
    let mut pending: Vec<(usize, Unit)> = Vec::new();
    for (i, u) in units {
        match ckpt.as_ref().map(|c| c.load(&u)).transpose()?.flatten() {
            Some((w, report)) => {
                weights.extend(w);
                reports.push(report);
            }
            None => pending.push((i, u)),
        }
    }
    if !reports.is_empty() {
        progress.message(&format!(
            "resuming: {} of {} units restored from {}",
            reports.len(),
            reports.len() + pending.len(),
            opts.checkpoint_dir
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        ));
    }
    if pending.is_empty() {
        recon::install_weights(model, &weights)?;
        return Ok(weights);
    }
    let s = settings(cfg);
    let unit_inits = |u: &Unit| -> BTreeMap<String, Vec<(usize, usize, UniformParams)>> {
        u.layers
            .iter()
            .filter_map(|l| init.get(l).map(|p| (l.clone(), p.clone())))
            .collect()
    };
    // Bytes per sample of each pending unit's inputs (outputs are about the same size).
    let probe: Vec<String> = pending.iter().map(|(_, u)| u.path.clone()).collect();
    let one = set
        .narrow(0, 1)
        .map_err(|e| PtqError::Model(ModelError::Source(e.to_string())))?;
    for mut l in model.layers_mut() {
        l.set_exec(None);
    }
    let sizes = recon::capture_inputs(model, &probe, &one, 1, |_| {})?;
    let n = set.len();
    progress.stage(
        "block reconstruction",
        (pending.len() * cfg.reconstruction.iters) as u64,
    );
    let mut next = 0;
    while next < pending.len() {
        // A chunk of units whose full-precision inputs and targets fit the budget.
        let mut end = next;
        let mut bytes = 0usize;
        while end < pending.len() {
            let b = 2 * n * tensors_bytes(&sizes[&pending[end].1.path]);
            if end > next && bytes + b > opts.capture_budget_bytes {
                break;
            }
            bytes += b;
            end += 1;
        }
        let chunk: Vec<String> = pending[next..end]
            .iter()
            .map(|(_, u)| u.path.clone())
            .collect();
        // Full-precision targets: every layer float.
        for mut l in model.layers_mut() {
            l.set_exec(None);
        }
        let fp_inputs = recon::capture_inputs(model, &chunk, set, opts.capture_batch, |_| {})?;
        let mut targets = BTreeMap::new();
        for u in &chunk {
            targets.insert(
                u.clone(),
                recon::unit_outputs(model, u, &fp_inputs[u], opts.capture_batch)?,
            );
        }
        recon::install_weights(model, &weights)?;
        let mut fp_inputs = fp_inputs;
        for (index, unit) in &pending[next..end] {
            let started = Instant::now();
            let inputs = match cfg.reconstruction.inputs {
                ReconInputs::Float => fp_inputs.remove(&unit.path).expect("captured"),
                ReconInputs::Quantized => {
                    fp_inputs.remove(&unit.path);
                    recon::capture_inputs(
                        model,
                        std::slice::from_ref(&unit.path),
                        set,
                        opts.capture_batch,
                        |_| {},
                    )?
                    .remove(&unit.path)
                    .expect("captured")
                }
            };
            let data = UnitData {
                inputs,
                target: targets.remove(&unit.path).expect("computed"),
            };
            let mut done = 0usize;
            let outcome = recon::reconstruct_unit(
                model,
                unit,
                *index,
                &unit_inits(unit),
                &data,
                &s,
                |it, _loss| {
                    progress.inc((it - done) as u64);
                    done = it;
                },
            )?;
            let report = UnitReport {
                path: unit.path.clone(),
                layers: outcome.weights.keys().cloned().collect(),
                loss_nearest: outcome.loss_nearest,
                loss_learned: outcome.loss_learned,
                seconds: started.elapsed().as_secs_f64(),
                resumed: false,
            };
            progress.message(&format!(
                "{}: loss {:.4e} (nearest) -> {:.4e} (learned), {:.1} s",
                unit.path, report.loss_nearest, report.loss_learned, report.seconds
            ));
            if let Some(c) = &ckpt {
                c.save(unit, &outcome.weights, &report)?;
            }
            weights.extend(outcome.weights);
            reports.push(report);
        }
        next = end;
    }
    recon::install_weights(model, &weights)?;
    Ok(weights)
}

/// Per-unit checkpoints: `units/<unit>.safetensors` (the unit's quantized weights) and
/// `units/<unit>.json` (their layout and the losses), the JSON written last so a unit counts as
/// done only when both are complete. `run.json` holds the run's fingerprint.
struct Checkpoints {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct UnitFile {
    layers: Vec<artifact::LayerEntry>,
    loss_nearest: f64,
    loss_learned: f64,
    seconds: f64,
}

impl Checkpoints {
    fn err(path: &Path, m: impl ToString) -> PtqError {
        PtqError::Checkpoint {
            path: path.to_path_buf(),
            message: m.to_string(),
        }
    }

    fn open(dir: &Path, fingerprint: &str) -> Result<Self> {
        let units = dir.join("units");
        std::fs::create_dir_all(&units).map_err(|e| Self::err(&units, e))?;
        claim_checkpoint_dir(dir, fingerprint)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

/// Makes `dir` the checkpoint folder of the run `fingerprint`: records it in `dir/run.json`, or
/// checks that the one recorded there is the same (a folder of another run is an error, never
/// silently reused). Every stage that checkpoints calls this before reading anything.
pub fn claim_checkpoint_dir(dir: &Path, fingerprint: &str) -> Result<()> {
    {
        std::fs::create_dir_all(dir).map_err(|e| Checkpoints::err(dir, e))?;
        let run = dir.join("run.json");
        match std::fs::read_to_string(&run) {
            Ok(text) => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Checkpoints::err(&run, e))?;
                if v.get("fingerprint").and_then(|f| f.as_str()) != Some(fingerprint) {
                    return Err(Checkpoints::err(
                        &run,
                        "belongs to another run (model, calibration data or recipe differ); \
                         remove the folder or pass --restart",
                    ));
                }
            }
            Err(_) => {
                let text = serde_json::json!({ "fingerprint": fingerprint }).to_string();
                write_atomic(&run, text.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl Checkpoints {
    fn paths(&self, unit: &Unit) -> (PathBuf, PathBuf) {
        let d = self.dir.join("units");
        (
            d.join(format!("{}.safetensors", unit.path)),
            d.join(format!("{}.json", unit.path)),
        )
    }

    fn save(
        &self,
        unit: &Unit,
        weights: &BTreeMap<String, QuantWeight>,
        report: &UnitReport,
    ) -> Result<()> {
        let (st, js) = self.paths(unit);
        let st_tmp = self
            .dir
            .join("units")
            .join(format!("{}.safetensors.tmp", unit.path));
        let layers: BTreeMap<String, QuantLayer> = weights
            .iter()
            .map(|(p, w)| {
                (
                    p.clone(),
                    QuantLayer {
                        weight: Some(w.clone()),
                        activation: None,
                        equivalent_scale: None,
                    },
                )
            })
            .collect();
        candle_core::safetensors::save(&artifact::layer_tensors(&layers)?, &st_tmp)?;
        std::fs::rename(&st_tmp, &st).map_err(|e| Self::err(&st, e))?;
        let file = UnitFile {
            layers: layers
                .iter()
                .map(|(p, l)| {
                    artifact::layer_entry(p, &l.weight.as_ref().expect("weight").shape, Some(l))
                })
                .collect::<std::result::Result<_, _>>()?,
            loss_nearest: report.loss_nearest,
            loss_learned: report.loss_learned,
            seconds: report.seconds,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| Self::err(&js, e))?;
        write_atomic(&js, text.as_bytes())
    }

    fn load(&self, unit: &Unit) -> Result<Option<(BTreeMap<String, QuantWeight>, UnitReport)>> {
        let (st, js) = self.paths(unit);
        let Ok(text) = std::fs::read_to_string(&js) else {
            return Ok(None);
        };
        let file: UnitFile = serde_json::from_str(&text).map_err(|e| Self::err(&js, e))?;
        let tensors = candle_core::safetensors::load(&st, &candle_core::Device::Cpu)
            .map_err(|e| Self::err(&st, e))?;
        let mut out = BTreeMap::new();
        for e in &file.layers {
            let l = artifact::layer_from(e, &tensors, &st)?;
            out.insert(
                e.path.clone(),
                l.weight
                    .ok_or_else(|| Self::err(&js, format!("layer `{}` has no weight", e.path)))?,
            );
        }
        Ok(Some((
            out.clone(),
            UnitReport {
                path: unit.path.clone(),
                layers: out.keys().cloned().collect(),
                loss_nearest: file.loss_nearest,
                loss_learned: file.loss_learned,
                seconds: file.seconds,
                resumed: true,
            },
        )))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Checkpoints::err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Checkpoints::err(path, e))
}
