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

use dmq_quant::artifact::{self, Manifest};
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::config::{QuantConfig, Sampler as CalibSampler, Trajectories};
use dmq_quant::ptq::{self, Progress, PtqOptions};

use super::sample::{scheduler_for, write_json_atomic, ProtocolArgs, Sampler};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A built-in recipe (rtn-w8a8, rtn-w4a8, base-w8a8, base-w4a8, base-w4a6) or a recipe file
    /// (.toml or .json).
    #[arg(long, short = 'r', default_value = "base-w4a8")]
    pub recipe: String,
    /// The recipe's quick variant: fewer calibration samples and reconstruction iterations
    /// (minutes on a CPU; for trying things, not for quality).
    #[arg(long, default_value_t = false)]
    pub fast: bool,
    /// Override the recipe's reconstruction iterations per unit [default: the recipe's].
    #[arg(long)]
    pub iters: Option<usize>,
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
}

/// An indicatif bar per stage.
struct Bars {
    bar: Option<ProgressBar>,
    started: Instant,
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

fn cache_root(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(dmq_eval::fid::cache_dir)
}

/// sha256 of the UNet config and weights: identity of the model for caches and checkpoints.
fn model_fingerprint(pipeline: &dmq_model::Pipeline) -> Result<String> {
    let cfg = pipeline.unet_config.read_to_string()?;
    let weights: Vec<u8> = match &pipeline.unet_weights {
        dmq_model::source::FileRef::Path(p) => {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        }
        dmq_model::source::FileRef::Static { bytes, .. } => bytes.to_vec(),
    };
    Ok(calib::fingerprint(&[cfg.as_bytes(), &weights]))
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
    ptq::check_supported(&cfg)?;
    if cfg.calibration.trajectories != Trajectories::Shared {
        bail!(
            "recipe `{}`: calibration.trajectories = \"per_step\" is not implemented; use \"shared\"",
            cfg.name
        );
    }
    let (pipeline, mut unet) = args.model.load()?;
    if dmq_quant::artifact::is_artifact(Path::new(args.model.model.as_deref().unwrap_or(""))) {
        bail!("--model is already a quantized artifact; quantize its base model instead");
    }
    let paths = unet.layer_paths();
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
    let run_fingerprint = calib::fingerprint(&[
        fingerprint.as_bytes(),
        serde_json::to_string(&manifest)?.as_bytes(),
        cfg.to_json().as_bytes(),
        format!("{:?}", unet.dtype()).as_bytes(),
    ]);
    let opts = PtqOptions {
        checkpoint_dir: Some(ckpt.clone()),
        capture_batch: args.capture_batch.max(1),
        capture_budget_bytes: args.capture_mib.max(1) << 20,
        run_fingerprint,
    };
    let outcome = ptq::quantize(&mut unet, &cfg, &set, &opts, &mut bars)?;
    if let Some(b) = bars.bar.take() {
        b.finish();
    }

    // The artifact.
    let mut layers_json = Vec::new();
    let mut entries = Vec::new();
    for l in unet.layers_mut() {
        let path = l.path().to_string();
        let shape = l.layer_ref().weight.dims().to_vec();
        let q = outcome.layers.get(&path);
        let mut e = artifact::layer_entry(&path, &shape, q)?;
        e.weight_rel_error = outcome.weight_rel_error.get(&path).copied();
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
    });
    let manifest_out = Manifest {
        format: artifact::FORMAT.to_string(),
        format_version: artifact::FORMAT_VERSION,
        dmq_version: env!("CARGO_PKG_VERSION").to_string(),
        base_model: pipeline.name.clone(),
        recipe: serde_json::from_str(&cfg.to_json())?,
        calibration,
        layers: entries,
        extra: extra.clone(),
        ptqd: None,
    };
    let float = pipeline.open_unet_weights(&Device::Cpu, DType::F32)?;
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
    let report = json!({
        "recipe": cfg.name,
        "model": pipeline.name,
        "layers": layers_json,
        "units": outcome.units,
        "stage_seconds": extra["stage_seconds"],
        "total_seconds": total_seconds,
        "artifact_bytes": folder_bytes(&args.out),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mut report = report;
    if args.preview > 0 {
        let (_, fp) = args.model.load()?;
        let (psnr, picture) = preview(
            &fp,
            &unet,
            &*sched,
            args.preview,
            cfg.calibration.seed,
            &mut bars,
        )?;
        dmq_eval::images::save_png_atomic(&picture, &args.out.join("preview.png"))?;
        bars.message(&format!(
            "preview: {} images, PSNR {psnr:.2} dB against the full-precision model (preview.png: top FP, bottom quantized)",
            args.preview
        ));
        report["preview"] =
            json!({ "images": args.preview, "psnr_mean_db": psnr, "seed": cfg.calibration.seed });
    }
    write_json_atomic(&args.out.join("report.json"), &report)?;
    super::quantize_report::write_png(&args.out.join("report.png"), &report)?;
    // The run is complete: its checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&ckpt);
    summary(&report, &args.out);
    Ok(())
}

/// The same `n` seeds sampled by both models: mean PSNR and a picture (FP row above quantized).
fn preview(
    fp: &dmq_model::UNet2DModel,
    q: &dmq_model::UNet2DModel,
    sched: &dyn dmq_sched::Scheduler,
    n: usize,
    seed: u64,
    bars: &mut Bars,
) -> Result<(f64, image::RgbImage)> {
    let res = fp
        .config
        .sample_size
        .context("config.json has no sample_size")?;
    let noise = dmq_sched::NoiseSource::new(seed);
    let idx: Vec<usize> = (0..n).collect();
    bars.stage("preview", 2 * sched.timesteps().len() as u64);
    let mut rows = Vec::new();
    for model in [fp, q] {
        let x =
            super::sample::sample_batch(model, sched, &noise, &idx, res, None, |_| bars.inc(1))?;
        rows.push(dmq_eval::images::to_rgb8(&x)?);
    }
    if let Some(b) = bars.bar.take() {
        b.finish();
    }
    let psnr = rows[0]
        .iter()
        .zip(&rows[1])
        .map(|(a, b)| dmq_eval::fidelity::psnr(a, b))
        .sum::<f64>()
        / n as f64;
    let tiles: Vec<image::RgbImage> = rows.concat();
    let grid = dmq_eval::images::grid(&tiles, n);
    Ok((psnr, dmq_eval::images::upscale_to_width(&grid, 512)))
}

fn folder_bytes(dir: &Path) -> u64 {
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

fn summary(report: &serde_json::Value, out: &Path) {
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
