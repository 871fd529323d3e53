//! `dmq quantize`: run a recipe on a model and write the quantized artifact (a folder that
//! `dmq sample|eval --model Q` loads), with a per-layer report (JSON and PNG).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use dmq_methods::ptqd::{run_after_quantize, AfterQuantize, Parts, Protocol, PtqdSection};
use dmq_quant::artifact::{self, Manifest};
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::config::{
    PtqdConfig, QuantConfig, Sampler as CalibSampler, TimeWeighting, Trajectories,
};
use dmq_quant::ptq::{self, Progress, PtqOptions};
use dmq_sched::OutputCorrection;

use super::sample::{
    sampler_kind, schedule_config, scheduler_for, write_json_atomic, ProtocolArgs, Sampler,
};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A built-in recipe (rtn-w8a8, rtn-w4a8, base-w8a8, base-w4a8, base-w4a6, dmq-w8a8,
    /// dmq-w4a8, dmq-w4a6, ptqd-w4a8, ptqd-w4a6, ptqd-w4a8-mp, mp-w3.5a8, mp-w3.0a8) or a recipe
    /// file (.toml or .json). The mp-* recipes need --sensitivity.
    #[arg(long, short = 'r', default_value = "base-w4a8")]
    pub recipe: String,
    /// The recipe's quick variant: fewer calibration samples and reconstruction iterations
    /// (minutes on a CPU; for trying things, not for quality).
    #[arg(long, default_value_t = false)]
    pub fast: bool,
    /// Override the recipe's reconstruction iterations per unit [default: the recipe's].
    #[arg(long)]
    pub iters: Option<usize>,
    /// Override the recipe's LES iterations per layer (DMQ recipes) [default: the recipe's].
    #[arg(long)]
    pub les_iters: Option<usize>,
    /// Override the recipe's LES time-step weighting: adaptive, linear or uniform (DMQ
    /// ablations) [default: the recipe's].
    #[arg(long)]
    pub les_weighting: Option<String>,
    /// Turn the recipe's LES off (DMQ ablations).
    #[arg(long, default_value_t = false)]
    pub no_les: bool,
    /// Turn the recipe's power-of-two scaling off (DMQ ablations).
    #[arg(long, default_value_t = false)]
    pub no_pts: bool,
    /// Qua²SeDiMo mixed precision on top of the recipe: choose every weight-quantized layer's
    /// option (uniform or k-means, 3/4/8 bits) to minimise the predicted error at this average
    /// of stored bits per weight (codebooks, steps and zero points included); needs
    /// --sensitivity. Recipes with learned rounding get uniform options only [default: the
    /// recipe's mixed_precision.avg_bits; none].
    #[arg(long, conflicts_with = "lambda_bits")]
    pub avg_bits: Option<f64>,
    /// Qua²SeDiMo mixed precision with the paper's objective instead of a budget: per layer, the
    /// option minimising predicted cost + λ·(average bits), λ in the sensitivity report's cost
    /// units (ln of the proxy) per average bit; 0 picks the most accurate options, larger values
    /// fewer bits. Needs --sensitivity [default: none].
    #[arg(long)]
    pub lambda_bits: Option<f64>,
    /// The sensitivity.json (or its folder) written by `dmq sensitivity` for this model, used by
    /// --avg-bits and the mp-* recipes.
    #[arg(long)]
    pub sensitivity: Option<PathBuf>,
    /// Output folder of the quantized model.
    #[arg(long, short = 'o', default_value = "quantized")]
    pub out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long, default_value_t = false)]
    pub overwrite: bool,
    /// Per-unit checkpoints, so an interrupted run resumes [default: <out>.ckpt].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Ignore (delete) existing checkpoints instead of resuming from them.
    #[arg(long, default_value_t = false)]
    pub restart: bool,
    /// Where calibration data is cached [default: $DMQ_CACHE_DIR, else ~/.cache/dmq].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Samples per forward pass when capturing block inputs.
    #[arg(long, default_value_t = 64)]
    pub capture_batch: usize,
    /// Memory for full-precision block inputs and targets held at once, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub capture_mib: usize,
    /// Images sampled by the full-precision and the quantized model from the same seeds at the
    /// end (preview.png, PSNR in report.json); 0 skips it.
    #[arg(long, default_value_t = 8)]
    pub preview: usize,
    /// PTQD on top of the recipe: the quantized model's noise-prediction error is measured
    /// against the full-precision model along FP trajectories of the calibration protocol
    /// (correlation k_t, per-channel bias, residual σ_q per step), stored in the artifact and
    /// corrected when sampling. Uses the recipe's [ptqd] section, or PTQD's defaults (all parts,
    /// 64 trajectories, seed 1) when it has none; the ptqd-* recipes have it on already.
    #[arg(long, default_value_t = false)]
    pub ptqd: bool,
    /// PTQD corrections the artifact applies when sampled, unless `dmq sample --ptqd-parts`
    /// says otherwise: `all`, `none`, or a comma-separated subset of cnc (correlated noise
    /// correction), bc (bias correction), vsc (variance schedule calibration; no-op at eta 0)
    /// [default: the recipe's ptqd.parts, i.e. cnc,bc,vsc].
    #[arg(long)]
    pub ptqd_parts: Option<String>,
    /// FP trajectories PTQD's statistics are measured on [default: the recipe's ptqd.samples:
    /// 64, 8 with --fast].
    #[arg(long)]
    pub ptqd_samples: Option<usize>,
    /// Latent models: the conditioning of the calibration trajectories (the FP model's own
    /// classifier-free-guided trajectories over these prompt embeddings or class labels, at
    /// this guidance scale; trajectory j uses prompt/label j mod their count) and of the preview.
    #[command(flatten)]
    pub cond: super::latent::CondArgs,
}

/// An indicatif bar per stage.
pub struct Bars {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Bars {
    pub fn new() -> Self {
        Self::since(Instant::now())
    }

    /// Bars whose messages count seconds from `started`.
    pub fn since(started: Instant) -> Self {
        Self { bar: None, started }
    }

    /// Ends the current stage's bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Progress for Bars {
    fn stage(&mut self, name: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>22} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta_precise}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        self.bar = Some(bar);
    }

    fn inc(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn message(&mut self, msg: &str) {
        let line = format!("[{:>6.0} s] {msg}", self.started.elapsed().as_secs_f64());
        match &self.bar {
            // A hidden bar (stderr not a terminal, e.g. a log file) would drop the line.
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

/// The recipe named by `--recipe` (built-in name or file), with `--fast` applied.
pub fn load_recipe(name: &str, fast: bool) -> Result<QuantConfig> {
    let cfg = if QuantConfig::builtin_names().contains(&name) {
        QuantConfig::builtin(name)?
    } else if Path::new(name).is_file() {
        QuantConfig::from_path(name)?
    } else {
        bail!(
            "--recipe {name}: neither a built-in recipe ({}) nor a file",
            QuantConfig::builtin_names().join(", ")
        );
    };
    Ok(if fast { cfg.fast() } else { cfg })
}

pub fn cache_root(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(dmq_eval::fid::cache_dir)
}

/// sha256 of the UNet config and weights: identity of the model for caches and checkpoints.
pub fn model_fingerprint(pipeline: &dmq_model::Pipeline) -> Result<String> {
    let cfg = pipeline.unet_config.read_to_string()?;
    let weights: Vec<u8> = match &pipeline.unet_weights {
        dmq_model::source::FileRef::Path(p) => {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        }
        dmq_model::source::FileRef::Static { bytes, .. } => bytes.to_vec(),
    };
    Ok(calib::fingerprint(&[cfg.as_bytes(), &weights]))
}

/// `--les-iters`, `--les-weighting`, `--no-les`, `--no-pts`: each changes the recipe's name so
/// artifacts and reports say what ran.
fn apply_method_flags(cfg: &mut QuantConfig, args: &QuantizeArgs) -> Result<()> {
    let needs_les = |flag: &str, cfg: &QuantConfig| -> Result<()> {
        if cfg.les.as_ref().is_some_and(|l| l.enabled) {
            Ok(())
        } else {
            bail!("{flag}: recipe `{}` has no [les] section", cfg.name)
        }
    };
    if let Some(n) = args.les_iters {
        needs_les("--les-iters", cfg)?;
        if n == 0 {
            bail!("--les-iters must be at least 1");
        }
        cfg.les.as_mut().expect("checked").iters = n;
        cfg.name = format!("{}-les{n}", cfg.name);
    }
    if let Some(w) = &args.les_weighting {
        needs_les("--les-weighting", cfg)?;
        let kind: TimeWeighting = serde_json::from_value(json!(w)).map_err(|_| {
            anyhow::anyhow!("--les-weighting {w}: expected adaptive, linear or uniform")
        })?;
        cfg.les.as_mut().expect("checked").weighting = kind;
        cfg.name = format!("{}-{w}", cfg.name);
    }
    if args.no_les {
        needs_les("--no-les", cfg)?;
        cfg.les = None;
        cfg.name = format!("{}-noles", cfg.name);
    }
    if args.no_pts {
        if !cfg.pts.as_ref().is_some_and(|p| p.enabled) {
            bail!("--no-pts: recipe `{}` has no [pts] section", cfg.name);
        }
        cfg.pts = None;
        cfg.name = format!("{}-nopts", cfg.name);
    }
    cfg.validate()?;
    Ok(())
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    let mut cfg = load_recipe(&args.recipe, args.fast)?;
    if let Some(iters) = args.iters {
        if iters == 0 {
            bail!("--iters must be at least 1");
        }
        cfg.reconstruction.iters = iters;
        cfg.name = format!("{}-iters{iters}", cfg.name);
    }
    apply_method_flags(&mut cfg, &args)?;
    if args.ptqd && cfg.ptqd.is_none() {
        cfg.ptqd = Some(PtqdConfig {
            samples: if args.fast {
                dmq_quant::config::FAST_PTQD_SAMPLES
            } else {
                PtqdConfig::default().samples
            },
            ..PtqdConfig::default()
        });
        cfg.name = format!("{}+ptqd", cfg.name);
    }
    if args.ptqd_parts.is_some() || args.ptqd_samples.is_some() {
        let Some(p) = cfg.ptqd.as_mut() else {
            bail!(
                "--ptqd-parts/--ptqd-samples configure PTQD: add --ptqd or use a recipe with a \
                 [ptqd] section"
            );
        };
        if let Some(parts) = &args.ptqd_parts {
            p.parts = Parts::parse(parts)
                .with_context(|| format!("--ptqd-parts {parts}"))?
                .to_list();
        }
        if let Some(n) = args.ptqd_samples {
            if n == 0 {
                bail!("--ptqd-samples must be at least 1");
            }
            p.samples = n;
        }
    }
    cfg.validate()?;
    ptq::check_supported(&cfg)?;
    if cfg.calibration.trajectories != Trajectories::Shared {
        bail!(
            "recipe `{}`: calibration.trajectories = \"per_step\" is not implemented; use \"shared\"",
            cfg.name
        );
    }
    if super::latent::model_class(&args.model)?.is_latent() {
        return super::quantize_latent::run(&args, cfg, started);
    }
    let (pipeline, mut unet) = args.model.load()?;
    if dmq_quant::artifact::is_artifact(Path::new(args.model.model.as_deref().unwrap_or(""))) {
        bail!("--model is already a quantized artifact; quantize its base model instead");
    }
    let paths = unet.layer_paths();
    let mixed = apply_mixed_precision(&mut cfg, &args, &paths, &mut unet)?;
    for w in cfg.check_patterns(&paths) {
        eprintln!(
            "warning: recipe field {} = `{}` matches none of the model's {} layers",
            w.field, w.pattern, w.layers
        );
    }
    let mut bars = Bars { bar: None, started };
    bars.message(&format!(
        "recipe {} on {} ({} layers, {} parameters)",
        cfg.name,
        pipeline.name,
        paths.len(),
        unet.num_params
    ));

    // Calibration data: the model's own trajectories, cached.
    let t0 = Instant::now();
    let protocol = ProtocolArgs {
        sampler: match cfg.calibration.sampler {
            CalibSampler::Ddim => Sampler::Ddim,
            CalibSampler::Ddpm => Sampler::Ddpm,
        },
        steps: cfg.calibration.steps,
        eta: cfg.calibration.eta,
        seed: cfg.calibration.seed,
    };
    let sched = scheduler_for(&pipeline, &protocol)?;
    let spec = CalibSpec {
        steps_sampled: cfg.calibration.steps_sampled,
        samples_per_step: cfg.calibration.samples_per_step,
        seed: cfg.calibration.seed,
        batch: cfg.calibration.batch,
    };
    let fingerprint = model_fingerprint(&pipeline)?;
    let sampler_json = json!({
        "sampler": format!("{:?}", protocol.sampler).to_lowercase(),
        "eta": protocol.eta,
        "steps": protocol.steps,
        "timesteps": sched.timesteps(),
    });
    let manifest = calib::manifest_for(&spec, &fingerprint, sampler_json.clone());
    let cache = calib::cache_folder(&cache_root(&args.cache_dir), &manifest);
    let set = match calib::load_if_matching(&cache, &manifest)? {
        Some(set) => {
            bars.message(&format!("calibration data: reused {}", cache.display()));
            set
        }
        None => {
            let calls = spec.samples_per_step.div_ceil(spec.batch) * protocol.steps;
            bars.stage("calibration data", calls as u64);
            let set = calib::generate(&unet, &*sched, &spec, || bars.inc(1))?;
            calib::save(&cache, &set, &manifest)?;
            bars.message(&format!(
                "calibration data: {} samples at {} steps, cached in {}",
                set.len(),
                spec.steps_sampled,
                cache.display()
            ));
            set
        }
    };
    let calib_seconds = t0.elapsed().as_secs_f64();

    // The recipe.
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ckpt", args.out.display())));
    if args.restart && ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).with_context(|| format!("removing {}", ckpt.display()))?;
    }
    // PTQD runs after the base and changes nothing in it: checkpoints of the same recipe without
    // [ptqd] are the same run.
    let base_recipe = QuantConfig {
        ptqd: None,
        ..cfg.clone()
    };
    let run_fingerprint = calib::fingerprint(&[
        fingerprint.as_bytes(),
        serde_json::to_string(&manifest)?.as_bytes(),
        base_recipe.to_json().as_bytes(),
        format!("{:?}", unet.dtype()).as_bytes(),
    ]);
    let opts = PtqOptions {
        checkpoint_dir: Some(ckpt.clone()),
        capture_batch: args.capture_batch.max(1),
        capture_budget_bytes: args.capture_mib.max(1) << 20,
        run_fingerprint,
    };
    let mut hooks = dmq_methods::dmq::hooks_for(&cfg);
    let mut outcome = ptq::quantize_with(&mut unet, &cfg, &set, &opts, hooks.as_mut(), &mut bars)?;
    let method_report = hooks.report();
    bars.finish();

    // PTQD: statistics against the FP model (and the mixed-precision choice) on the quantized
    // model as it now is.
    let mut ptqd_stage = None;
    if let Some(settings) = &cfg.ptqd {
        let (_, fp) = args.model.load()?;
        let protocol_kind = sampler_kind(&protocol)?;
        let stage = run_after_quantize(
            AfterQuantize {
                fp: &fp,
                quantized: &mut unet,
                layers: &mut outcome.layers,
                recipe: &cfg,
                settings,
                calib: &set,
                sched: &*sched,
                protocol: Protocol::of(protocol_kind, &schedule_config(&pipeline)?, &*sched),
            },
            &mut || {
                args.model
                    .load()
                    .map(|(_, m)| m)
                    .map_err(|e| dmq_methods::ptqd::PtqdError::Stats(format!("{e:#}")))
            },
            &mut bars,
        )?;
        bars.finish();
        outcome
            .stage_seconds
            .push(("PTQD".to_string(), stage.seconds));
        let f = &stage.set.steps;
        bars.message(&format!(
            "PTQD: k_t {:.4}..{:.4}, sigma_q {:.4}..{:.4} over {} steps{}",
            f.iter().map(|s| s.fit.k).fold(f64::INFINITY, f64::min),
            f.iter().map(|s| s.fit.k).fold(0.0, f64::max),
            f.iter()
                .map(|s| s.fit.sigma_q)
                .fold(f64::INFINITY, f64::min),
            f.iter().map(|s| s.fit.sigma_q).fold(0.0, f64::max),
            f.len(),
            match &stage.choices {
                Some(c) => format!(
                    ", mixed precision: {} of {} steps at the lower width",
                    c.iter().filter(|c| c.bits < cfg.activations.bits).count(),
                    c.len()
                ),
                None => String::new(),
            }
        ));
        ptqd_stage = Some((stage, Parts::from_list(&settings.parts)));
    }

    // The artifact.
    let (entries, layers_json) = layer_entries(&mut unet, &outcome)?;
    let total_seconds = started.elapsed().as_secs_f64();
    let calibration = json!({
        "fingerprint": cache.file_name().map(|n| n.to_string_lossy().to_string()),
        "model_fingerprint": fingerprint,
        "samples": set.len(),
        "steps_sampled": spec.steps_sampled,
        "samples_per_step": spec.samples_per_step,
        "seed": spec.seed,
        "sampler": sampler_json["sampler"],
        "eta": protocol.eta,
        "steps": protocol.steps,
        "timesteps": sched.timesteps(),
    });
    let extra = json!({
        "units": outcome.units,
        "stage_seconds": std::iter::once(("calibration data".to_string(), calib_seconds))
            .chain(outcome.stage_seconds.iter().cloned())
            .collect::<Vec<_>>(),
        "total_seconds": total_seconds,
        "device": args.model.device,
        "dtype": args.model.dtype,
        "method": method_report,
        "mixed_precision": mixed,
    });
    let manifest_out = Manifest {
        format: artifact::FORMAT.to_string(),
        format_version: artifact::FORMAT_VERSION,
        dmq_version: env!("CARGO_PKG_VERSION").to_string(),
        base_model: pipeline.name.clone(),
        model_class: Some(pipeline.class.name().to_string()),
        recipe: serde_json::from_str(&cfg.to_json())?,
        calibration,
        layers: entries,
        extra: extra.clone(),
        ptqd: None,
    };
    let mut float = pipeline.open_unet_weights(&Device::Cpu, DType::F32)?;
    for (name, t) in &outcome.float_replaced {
        float.insert(name, t.clone())?;
    }
    let sched_text = pipeline.scheduler_config_text().ok().map(|(_, t)| t);
    artifact::save(
        &args.out,
        &manifest_out,
        &outcome.layers,
        &pipeline.unet_config.read_to_string()?,
        sched_text.as_deref(),
        &float,
        args.overwrite,
    )?;
    if let Some((stage, parts)) = &ptqd_stage {
        PtqdSection {
            default_parts: *parts,
            sets: vec![stage.set.clone()],
        }
        .write(&args.out)?;
    }
    let report = json!({
        "recipe": cfg.name,
        "model": pipeline.name,
        "layers": layers_json,
        "units": outcome.units,
        "method": extra["method"],
        "stage_seconds": extra["stage_seconds"],
        "total_seconds": total_seconds,
        "artifact_bytes": folder_bytes(&args.out),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mut report = report;
    let ptqd_correction = match &ptqd_stage {
        Some((stage, parts)) if !parts.is_none() => {
            Some(dmq_methods::ptqd::PtqdCorrection::new(&stage.set, *parts))
        }
        _ => None,
    };
    if let Some((stage, parts)) = &ptqd_stage {
        report["ptqd"] =
            super::ptqd::report_json(&stage.set, stage.choices.as_deref(), &*sched, *parts)?;
    }
    if args.preview > 0 {
        let (_, fp) = args.model.load()?;
        let (psnr, picture) = preview(
            &fp,
            &unet,
            ptqd_correction.as_ref().map(|c| c as &dyn OutputCorrection),
            &*sched,
            args.preview,
            cfg.calibration.seed,
            &mut bars,
        )?;
        dmq_eval::images::save_png_atomic(&picture, &args.out.join("preview.png"))?;
        let rows = if psnr.len() > 1 {
            "top FP, middle quantized, bottom quantized + PTQD"
        } else {
            "top FP, bottom quantized"
        };
        bars.message(&format!(
            "preview: {} images, PSNR {:.2} dB against the full-precision model{} (preview.png: {rows})",
            args.preview,
            psnr[0],
            psnr.get(1)
                .map(|p| format!(", {p:.2} dB with PTQD ({})", ptqd_stage.as_ref().map_or(String::new(), |(_, p)| p.to_string())))
                .unwrap_or_default(),
        ));
        report["preview"] = json!({ "images": args.preview, "psnr_mean_db": psnr[0], "seed": cfg.calibration.seed });
        if let Some(p) = psnr.get(1) {
            report["preview"]["psnr_mean_db_ptqd"] = json!(p);
        }
    }
    write_json_atomic(&args.out.join("report.json"), &report)?;
    super::quantize_report::write_png(&args.out.join("report.png"), &report)?;
    if report.get("ptqd").is_some() {
        super::ptqd::write_png(&args.out.join("report-ptqd.png"), &report["ptqd"])?;
    }
    // The run is complete: its checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&ckpt);
    summary(&report, &args.out);
    Ok(())
}

/// The manifest entry of every conv/linear layer of the quantized `model`, and its row of
/// report.json.
pub fn layer_entries(
    model: &mut dyn dmq_model::DenoiserModel,
    outcome: &ptq::PtqOutcome,
) -> Result<(Vec<artifact::LayerEntry>, Vec<serde_json::Value>)> {
    let mut layers_json = Vec::new();
    let mut entries = Vec::new();
    for l in model.layers_mut() {
        let path = l.path().to_string();
        let shape = l.layer_ref().weight.dims().to_vec();
        let q = outcome.layers.get(&path);
        let mut e = artifact::layer_entry(&path, &shape, q)?;
        e.weight_rel_error = outcome.weight_rel_error.get(&path).copied();
        e.scale_folded_into = outcome.scale_folded.get(&path).cloned();
        layers_json.push(json!({
            "path": path,
            "weight_bits": e.weight.as_ref().map(|w| w.bits),
            "act_bits": e.activation.as_ref().map(|a| a.bits),
            "split": e.activation.as_ref().and_then(|a| a.split)
                .or(e.weight.as_ref().and_then(|w| (w.parts.len() > 1).then(|| w.parts[1].start))),
            "weight_rel_error": e.weight_rel_error,
        }));
        entries.push(e);
    }
    Ok((entries, layers_json))
}

/// `--avg-bits`/`--sensitivity` and `[mixed_precision]`: allocates an option per weight-quantized
/// layer from the sensitivity report and appends one override per layer to the recipe. Returns
/// what was chosen (for the manifest and report), or null when the recipe has no mixed precision.
fn apply_mixed_precision(
    cfg: &mut QuantConfig,
    args: &QuantizeArgs,
    paths: &[String],
    unet: &mut dmq_model::UNet2DModel,
) -> Result<serde_json::Value> {
    use dmq_methods::qua2sedimo::SensitivityReport;
    use dmq_quant::config::{MixedOptions, MixedPrecisionConfig, Rounding};
    if let Some(b) = args.avg_bits {
        if !(b.is_finite() && (2.0..=16.0).contains(&b)) {
            bail!("--avg-bits {b}: must be a number in 2..=16");
        }
    }
    if let Some(l) = args.lambda_bits {
        if !(l.is_finite() && l >= 0.0) {
            bail!("--lambda-bits {l}: must be a finite number >= 0");
        }
    }
    if args.avg_bits.is_some() || args.lambda_bits.is_some() {
        let learned = cfg.weights.rounding == Rounding::Adaround && cfg.reconstruction.enabled;
        cfg.mixed_precision = Some(MixedPrecisionConfig {
            avg_bits: args.avg_bits,
            lambda_bits: args.lambda_bits,
            options: if learned {
                MixedOptions::Uniform
            } else {
                cfg.mixed_precision
                    .as_ref()
                    .map_or(MixedOptions::All, |m| m.options)
            },
        });
        cfg.name = match (args.avg_bits, args.lambda_bits) {
            (Some(b), _) => format!("{}-mp{b}", cfg.name),
            (_, Some(l)) => format!("{}-mplambda{l}", cfg.name),
            _ => unreachable!("one of them is set"),
        };
    }
    let Some(mp) = cfg.mixed_precision.clone() else {
        if args.sensitivity.is_some() {
            bail!("--sensitivity is used with --avg-bits, --lambda-bits or an mp-* recipe");
        }
        return Ok(serde_json::Value::Null);
    };
    let objective = mp
        .objective()
        .context("[mixed_precision] sets neither avg_bits nor lambda_bits")?;
    let Some(s) = &args.sensitivity else {
        bail!(
            "recipe `{}` allocates mixed precision ({objective}): pass --sensitivity S (run `dmq \
             sensitivity --model M --out S` first)",
            cfg.name,
        );
    };
    let file = if s.is_dir() {
        s.join("sensitivity.json")
    } else {
        s.clone()
    };
    let report = SensitivityReport::read(&file)?;
    let fp = model_fingerprint(&args.model.load()?.0)?;
    if report.model_fingerprint != fp {
        bail!(
            "{}: field `model_fingerprint` is of another model than --model ({})",
            file.display(),
            report.model
        );
    }
    let plans = cfg.layer_plans(paths);
    let quantized: Vec<String> = paths
        .iter()
        .filter(|p| plans[*p].weight_bits.is_some())
        .cloned()
        .collect();
    let uniform_only = mp.options == MixedOptions::Uniform;
    let (choice, predicted, avg) = report
        .allocate_for(&quantized, objective, uniform_only)
        .with_context(|| format!("allocating for {objective} from {}", file.display()))?;
    for (path, o) in &choice {
        cfg.overrides.push(o.override_for(path));
    }
    cfg.validate()?;
    let _ = unet;
    let mut counts = BTreeMap::new();
    for (_, o) in &choice {
        *counts.entry(o.name()).or_insert(0usize) += 1;
    }
    eprintln!(
        "mixed precision: {} layers at {avg:.4} average bits (objective: {objective}): {}",
        choice.len(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(json!({
        "sensitivity": file.display().to_string(),
        "budget_avg_bits": mp.avg_bits,
        "lambda_bits": mp.lambda_bits,
        "avg_bits": avg,
        "predicted_ln_proxy_change": predicted,
        "options": counts,
        "layers": choice.iter().map(|(p, o)| json!({"path": p, "option": o.name()})).collect::<Vec<_>>(),
    }))
}

/// The same `n` seeds sampled by both models (and by the quantized one with `correction`, when
/// given): mean PSNR against FP of each quantized row and a picture (FP row on top).
fn preview(
    fp: &dmq_model::UNet2DModel,
    q: &dmq_model::UNet2DModel,
    correction: Option<&dyn OutputCorrection>,
    sched: &dyn dmq_sched::Scheduler,
    n: usize,
    seed: u64,
    bars: &mut Bars,
) -> Result<(Vec<f64>, image::RgbImage)> {
    let res = fp
        .config
        .sample_size
        .context("config.json has no sample_size")?;
    let noise = dmq_sched::NoiseSource::new(seed);
    let idx: Vec<usize> = (0..n).collect();
    let mut runs: Vec<(&dmq_model::UNet2DModel, Option<&dyn OutputCorrection>)> =
        vec![(fp, None), (q, None)];
    if correction.is_some() {
        runs.push((q, correction));
    }
    bars.stage("preview", (runs.len() * sched.timesteps().len()) as u64);
    let mut rows = Vec::new();
    for (model, c) in runs {
        let x = super::sample::sample_batch_corrected(
            model,
            sched,
            &noise,
            &idx,
            res,
            None,
            |_| bars.inc(1),
            c,
        )?;
        rows.push(dmq_eval::images::to_rgb8(&x)?);
    }
    bars.finish();
    let psnr: Vec<f64> = rows[1..]
        .iter()
        .map(|row| {
            rows[0]
                .iter()
                .zip(row)
                .map(|(a, b)| dmq_eval::fidelity::psnr(a, b))
                .sum::<f64>()
                / n as f64
        })
        .collect();
    let tiles: Vec<image::RgbImage> = rows.concat();
    let grid = dmq_eval::images::grid(&tiles, n);
    Ok((psnr, dmq_eval::images::upscale_to_width(&grid, 512)))
}

pub fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn summary(report: &serde_json::Value, out: &Path) {
    let layers = report["layers"].as_array().cloned().unwrap_or_default();
    let mut by_bits: BTreeMap<String, usize> = BTreeMap::new();
    for l in &layers {
        let key = format!(
            "W{} A{}",
            l["weight_bits"]
                .as_u64()
                .map_or("fp".to_string(), |b| b.to_string()),
            l["act_bits"]
                .as_u64()
                .map_or("fp".to_string(), |b| b.to_string())
        );
        *by_bits.entry(key).or_default() += 1;
    }
    eprintln!(
        "wrote {} ({:.2} MB, {:.0} s): {}",
        out.display(),
        report["artifact_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        report["total_seconds"].as_f64().unwrap_or(0.0),
        by_bits
            .iter()
            .map(|(k, n)| format!("{n} layers {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
