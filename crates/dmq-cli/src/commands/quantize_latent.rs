//! `dmq quantize` for latent models (Stable Diffusion's UNet, DiT, PixArt): the same engine and
//! recipes as the pixel-space UNet, calibrated on the FP model's own classifier-free-guided
//! trajectories (both halves of every doubled batch, with their conditioning). The VAE stays
//! full precision and is copied into the artifact.
//!
//! PTQD measures the guided prediction (what the scheduler steps with) of the quantized model
//! against the FP model's at the recipe's guidance scale, which the statistics record: they
//! apply only to sampling at that scale. Not yet for latent models: PTQD's step-aware mixed
//! precision and Qua²SeDiMo mixed precision (refused, not ignored).
//! Cross-attention `to_k`/`to_v` only ever see the text embeddings; they are quantized like
//! every other linear (per-step activation ranges of an input that does not change with the
//! step), which is simple but wasteful.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde_json::json;

use candle_core::Tensor;
use dmq_methods::ptqd::{
    measure_indexed, CollectSpec, Parts, Protocol, PtqdCorrection, PtqdSection, SampleSpace,
};
use dmq_model::DenoiserModel;
use dmq_quant::artifact::{self, Manifest};
use dmq_quant::calib::{self, CalibGuidance, CalibSpec};
use dmq_quant::config::{QuantConfig, Sampler as CalibSampler};
use dmq_quant::ptq::{self, Progress, PtqOptions};

use super::latent::{self, LatentModel};
use super::quantize::{
    cache_root, folder_bytes, layer_entries, model_fingerprint, summary, Bars, QuantizeArgs,
};
use super::sample::{
    sampler_kind, schedule_config, scheduler_for, write_json_atomic, ProtocolArgs, Sampler,
};
use super::ExecMode;

/// Quantizes the latent model of `args` with the (flag-adjusted, validated) recipe `cfg`.
pub fn run(args: &QuantizeArgs, cfg: QuantConfig, started: Instant) -> Result<()> {
    if cfg
        .ptqd
        .as_ref()
        .is_some_and(|p| !p.mixed_act_bits.is_empty())
    {
        bail!(
            "recipe `{}`: PTQD's step-aware mixed precision (ptqd.mixed_act_bits) is not \
             implemented for latent models yet",
            cfg.name
        );
    }
    if cfg.mixed_precision.is_some() || args.avg_bits.is_some() || args.sensitivity.is_some() {
        bail!("mixed precision (--avg-bits, --sensitivity, mp-* recipes) is not implemented for latent models yet");
    }
    if let Some(dir) = args.model.model.as_deref() {
        if artifact::is_artifact(std::path::Path::new(dir)) {
            bail!("--model is already a quantized artifact; quantize its base model instead");
        }
    }
    let LatentModel {
        pipeline,
        mut model,
        vae: _,
    } = latent::load(&args.model, ExecMode::Sim)?;
    let paths = model.layer_paths();
    for w in cfg.check_patterns(&paths) {
        eprintln!(
            "warning: recipe field {} = `{}` matches none of the model's {} layers",
            w.field, w.pattern, w.layers
        );
    }
    let plans = cfg.layer_plans(&paths);
    if !cfg.layers.keep_float.is_empty() && plans.values().all(|p| p.weight_bits.is_some()) {
        // The built-in lists name UNet paths (conv_in, time_embedding.*): silently quantizing
        // a transformer's first and last layers would surprise.
        eprintln!(
            "note: the recipe's layers.keep_float matches none of this {}'s layers, so every \
             conv/linear is quantized; list e.g. pos_embed.proj, proj_out*, *timestep_embedder.* \
             in a recipe to keep them float",
            pipeline.class
        );
    }
    let mut bars = Bars::since(started);
    bars.message(&format!(
        "recipe {} on {} ({}, {} layers, {} parameters)",
        cfg.name,
        pipeline.name,
        pipeline.class,
        paths.len(),
        model.num_params()
    ));

    // Calibration data: the FP model's own guided trajectories, cached.
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
    let (guide, cond_desc) = latent::guidance_for(&model, &args.cond)?;
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
        "guidance": cond_desc,
    });
    let mut manifest = calib::manifest_for(&spec, &fingerprint, sampler_json.clone());
    // Every trajectory contributes its doubled batch (conditional and unconditional halves).
    manifest.samples *= 2;
    let cache = calib::cache_folder(&cache_root(&args.cache_dir), &manifest);
    let set = match calib::load_if_matching(&cache, &manifest)? {
        Some(set) => {
            bars.message(&format!("calibration data: reused {}", cache.display()));
            set
        }
        None => {
            let calls = spec.samples_per_step.div_ceil(spec.batch) * protocol.steps;
            bars.stage("calibration data", calls as u64);
            let set = calib::generate_guided(&model, &*sched, &spec, &guide, || bars.inc(1))?;
            calib::save(&cache, &set, &manifest)?;
            bars.message(&format!(
                "calibration data: {} model inputs (guided: both halves) at {} steps, cached in {}",
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
        format!("{:?}", model.dtype()).as_bytes(),
    ]);
    let opts = PtqOptions {
        checkpoint_dir: Some(ckpt.clone()),
        capture_batch: args.capture_batch.max(1),
        capture_budget_bytes: args.capture_mib.max(1) << 20,
        run_fingerprint,
    };
    let mut hooks = dmq_methods::dmq::hooks_for(&cfg);
    let mut outcome = ptq::quantize_with(&mut model, &cfg, &set, &opts, hooks.as_mut(), &mut bars)?;
    let method_report = hooks.report();
    bars.finish();

    // PTQD: statistics of the guided prediction against the FP model on FP trajectories.
    let mut ptqd_stage = None;
    if let Some(settings) = &cfg.ptqd {
        let t0 = Instant::now();
        let fp = latent::load(&args.model, ExecMode::Sim)?;
        let mut ptqd_protocol = Protocol::of(
            sampler_kind(&protocol)?,
            &schedule_config(&pipeline)?,
            &*sched,
        );
        ptqd_protocol.guidance = Some(guide.guidance.scale);
        let space = SampleSpace {
            shape: model
                .sample_shape()
                .context("the model's config has no sample_size")?
                .to_vec(),
            device: model.device().clone(),
            dtype: model.dtype(),
        };
        let spec = CollectSpec {
            samples: settings.samples,
            batch: settings.batch,
            seed: settings.seed,
        };
        let set = measure_indexed(
            &|x: &Tensor, t, i, idx: &[usize]| latent::guided_eps(&fp.model, &guide, x, t, i, idx),
            &|x: &Tensor, t, i, idx: &[usize]| latent::guided_eps(&model, &guide, x, t, i, idx),
            &space,
            &*sched,
            &ptqd_protocol,
            &spec,
            &mut bars,
        )?;
        bars.finish();
        let seconds = t0.elapsed().as_secs_f64();
        outcome.stage_seconds.push(("PTQD".to_string(), seconds));
        let f = &set.steps;
        bars.message(&format!(
            "PTQD (guided prediction, scale {}): k_t {:.4}..{:.4}, sigma_q {:.4}..{:.4} over {} steps",
            guide.guidance.scale,
            f.iter().map(|s| s.fit.k).fold(f64::INFINITY, f64::min),
            f.iter().map(|s| s.fit.k).fold(0.0, f64::max),
            f.iter().map(|s| s.fit.sigma_q).fold(f64::INFINITY, f64::min),
            f.iter().map(|s| s.fit.sigma_q).fold(0.0, f64::max),
            f.len()
        ));
        ptqd_stage = Some((set, Parts::from_list(&settings.parts)));
    }

    // The artifact.
    let (entries, layers_json) = layer_entries(&mut model, &outcome)?;
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
        "guidance": sampler_json["guidance"],
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
    artifact::save_with(
        &args.out,
        &manifest_out,
        &outcome.layers,
        &pipeline.unet_config.read_to_string()?,
        sched_text.as_deref(),
        &float,
        pipeline.vae.as_deref(),
        args.overwrite,
    )?;
    if let Some((set, parts)) = &ptqd_stage {
        PtqdSection {
            default_parts: *parts,
            sets: vec![set.clone()],
        }
        .write(&args.out)?;
    }
    let mut report = json!({
        "recipe": cfg.name,
        "model": pipeline.name,
        "model_class": pipeline.class.name(),
        "layers": layers_json,
        "units": outcome.units,
        "method": extra["method"],
        "stage_seconds": extra["stage_seconds"],
        "total_seconds": total_seconds,
        "artifact_bytes": folder_bytes(&args.out),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let ptqd_correction = match &ptqd_stage {
        Some((set, parts)) if !parts.is_none() => Some(PtqdCorrection::new(set, *parts)),
        _ => None,
    };
    if let Some((set, parts)) = &ptqd_stage {
        report["ptqd"] = super::ptqd::report_json(set, None, &*sched, *parts)?;
    }
    if args.preview > 0 {
        let fp = latent::load(&args.model, ExecMode::Sim)?;
        let (psnrs, picture) = preview(
            &fp,
            &model,
            ptqd_correction
                .as_ref()
                .map(|c| c as &dyn dmq_sched::OutputCorrection),
            &guide,
            &*sched,
            args.preview,
            cfg.calibration.seed,
            &mut bars,
        )?;
        let psnr = psnrs[0];
        dmq_eval::images::save_png_atomic(&picture, &args.out.join("preview.png"))?;
        bars.message(&format!(
            "preview: {} images, PSNR {psnr:.2} dB against the full-precision model{} (preview.png: top FP, {}{})",
            args.preview,
            psnrs
                .get(1)
                .map(|p| format!(", {p:.2} dB with PTQD"))
                .unwrap_or_default(),
            if psnrs.len() > 1 {
                "middle quantized, bottom quantized + PTQD"
            } else {
                "bottom quantized"
            },
            if fp.vae.is_none() { "; latent previews, no VAE" } else { "" }
        ));
        report["preview"] = json!({
            "images": args.preview,
            "psnr_mean_db": psnr,
            "seed": cfg.calibration.seed,
            "guidance": sampler_json["guidance"],
        });
        if let Some(p) = psnrs.get(1) {
            report["preview"]["psnr_mean_db_ptqd"] = json!(p);
        }
    }
    write_json_atomic(&args.out.join("report.json"), &report)?;
    super::quantize_report::write_png(&args.out.join("report.png"), &report)?;
    if report.get("ptqd").is_some() {
        super::ptqd::write_png(&args.out.join("report-ptqd.png"), &report["ptqd"])?;
    }
    let _ = std::fs::remove_dir_all(&ckpt);
    summary(&report, &args.out);
    Ok(())
}

/// The same `n` seeds (image i conditioned as `dmq sample` conditions image i) through the FP
/// and the quantized model (and the quantized one with `correction`, when given): mean PSNR of
/// each quantized row's decoded images against FP, and a picture (FP row on top).
#[allow(clippy::too_many_arguments)]
fn preview(
    fp: &LatentModel,
    q: &dyn DenoiserModel,
    correction: Option<&dyn dmq_sched::OutputCorrection>,
    guide: &CalibGuidance,
    sched: &dyn dmq_sched::Scheduler,
    n: usize,
    seed: u64,
    bars: &mut Bars,
) -> Result<(Vec<f64>, image::RgbImage)> {
    let noise = dmq_sched::NoiseSource::new(seed);
    let idx: Vec<usize> = (0..n).collect();
    let mut runs: Vec<(&dyn DenoiserModel, Option<&dyn dmq_sched::OutputCorrection>)> =
        vec![(&fp.model, None), (q, None)];
    if correction.is_some() {
        runs.push((q, correction));
    }
    bars.stage("preview", (runs.len() * sched.timesteps().len()) as u64);
    let mut rows = Vec::new();
    for (model, c) in runs {
        let z = latent::sample_latents(model, sched, &noise, &idx, guide, |_| bars.inc(1), c)?;
        rows.push(dmq_eval::images::to_rgb8(&latent::decode(
            fp.vae.as_ref(),
            &z,
        )?)?);
    }
    bars.finish();
    let psnr = rows[1..]
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
    let grid = dmq_eval::images::grid(&rows.concat(), n);
    Ok((psnr, dmq_eval::images::upscale_to_width(&grid, 512)))
}
