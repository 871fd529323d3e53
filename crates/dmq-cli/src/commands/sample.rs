//! `dmq sample`: images from a model with DDIM, DDPM or DPM-Solver++, seeded per image so that the same
//! `--seed` gives the same images whatever the batch size, and an interrupted run resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dmq_eval::images;
use dmq_model::unet2d::embeddings::ClassLabels;
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_sched::{
    NoiseSource, OutputCorrection, SamplerKind, SchedError, ScheduleConfig, Scheduler,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{ExecArgs, ExecMode, ModelArgs};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sampler {
    /// Deterministic at --eta 0; DDPM-like noise at --eta 1.
    Ddim,
    /// Ancestral sampling with the scheduler config's variance type.
    Ddpm,
    /// DPM-Solver++ multistep, deterministic (--eta must be 0): diffusers'
    /// DPMSolverMultistepScheduler with its defaults (algorithm dpmsolver++, solver_order 2,
    /// midpoint, first-order first and last steps, final sigma 0); timestep_spacing from
    /// scheduler_config.json (linspace when absent); epsilon, sample or v_prediction models.
    #[value(name = "dpm-solver++", alias = "dpmsolver++")]
    DpmSolverPp,
}

impl Sampler {
    /// The name on the command line and in samples.json: ddim, ddpm, dpm-solver++.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Ddim => "ddim",
            Sampler::Ddpm => "ddpm",
            Sampler::DpmSolverPp => "dpm-solver++",
        }
    }
}

/// The sampling protocol: what, besides the model, determines the images.
#[derive(Args, Debug, Clone)]
pub struct ProtocolArgs {
    /// Sampler.
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    pub sampler: Sampler,
    /// Number of denoising steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM noise weight (0 = deterministic); ignored by DDPM; DPM-Solver++ accepts only 0.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Seed of all noise; image i always gets the same noise for a given seed (also in the
    /// model that `dmq eval --against` compares with).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub ptqd: super::ptqd::PtqdSampleArgs,
    #[command(flatten)]
    pub cond: super::latent::CondArgs,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images per UNet call (memory vs speed; does not change the images).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Class label for class-conditional models (all images get it) [default: none].
    #[arg(long)]
    pub class: Option<u32>,
    /// Output folder: NNNNNN.png per image, grid.png, samples.json. Latent models are decoded
    /// by their VAE; a folder without one (tiny-latent/pixart) gets a preview of the latents
    /// instead (their first three channels, each image scaled by its largest magnitude).
    #[arg(long, short = 'o', default_value = "samples")]
    pub out: PathBuf,
    /// Replace the images of a different earlier run in --out instead of refusing.
    #[arg(long, default_value_t = false)]
    pub overwrite: bool,
}

/// Everything that determines the images; a folder is resumed only if this matches exactly.
pub fn protocol(
    model_name: &str,
    p: &ProtocolArgs,
    class: Option<u32>,
    model: &ModelArgs,
    exec: ExecMode,
    timesteps: &[usize],
) -> serde_json::Value {
    let mut v = json!({
        "model": model_name,
        "sampler": p.sampler.name(),
        "steps": timesteps.len(),
        "eta": if p.sampler == Sampler::Ddim { p.eta } else { 0.0 },
        "seed": p.seed,
        "class": class,
        "dtype": model.dtype,
        "device": model.device,
        "timesteps": timesteps,
    });
    // Integer and simulated images differ slightly, so a folder holds one or the other; `sim`
    // adds no key so folders written before `--exec` existed still resume.
    if exec != ExecMode::Sim {
        v["exec"] = json!(exec.name());
    }
    v
}

pub fn image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:06}.png"))
}

pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The sampler of a protocol (eta checked; DDPM ignores it).
pub fn sampler_kind(p: &ProtocolArgs) -> Result<SamplerKind> {
    Ok(match p.sampler {
        Sampler::Ddim => {
            let eta = p.eta;
            if !(0.0..=1.0).contains(&eta) {
                bail!("--eta {eta}: expected a value in [0, 1]");
            }
            SamplerKind::Ddim { eta }
        }
        Sampler::Ddpm => SamplerKind::Ddpm,
        Sampler::DpmSolverPp => {
            if p.eta != 0.0 {
                bail!(
                    "--eta {}: DPM-Solver++ is deterministic; --eta applies to DDIM only",
                    p.eta
                );
            }
            SamplerKind::DpmSolverPp
        }
    })
}

/// The pipeline's scheduler config.
pub fn schedule_config(pipeline: &dmq_model::Pipeline) -> Result<ScheduleConfig> {
    let (label, text) = pipeline.scheduler_config_text()?;
    Ok(ScheduleConfig::from_json_str(&label, &text)?)
}

/// Builds the scheduler of the pipeline for this protocol.
pub fn scheduler_for(
    pipeline: &dmq_model::Pipeline,
    p: &ProtocolArgs,
) -> Result<Box<dyn Scheduler>> {
    let cfg = schedule_config(pipeline)?;
    let sched = dmq_sched::build(sampler_kind(p)?, &cfg, p.steps)?;
    check_artifact_protocol(pipeline, sched.timesteps(), p)?;
    Ok(sched)
}

/// A quantized model's per-step activation parameters are indexed by sampling step: sampling
/// with another time grid would apply them at the wrong steps, so it is refused.
fn check_artifact_protocol(
    pipeline: &dmq_model::Pipeline,
    timesteps: &[usize],
    p: &ProtocolArgs,
) -> Result<()> {
    let dmq_model::source::FileRef::Path(cfg) = &pipeline.unet_config else {
        return Ok(());
    };
    let Some(dir) = cfg.parent().filter(|d| dmq_quant::artifact::is_artifact(d)) else {
        return Ok(());
    };
    let m = dmq_quant::artifact::read_manifest(dir)?;
    let cal = &m.calibration;
    let want: Vec<usize> = cal["timesteps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .collect()
        })
        .unwrap_or_default();
    if !want.is_empty() && want != timesteps {
        bail!(
            "{} was calibrated for {} {} steps (timesteps {:?}...); sampling with --sampler {} --steps {} \
             would apply its per-step activation parameters at the wrong steps. Use the calibrated \
             protocol, or quantize again with calibration.steps = {}",
            dir.display(),
            want.len(),
            cal["sampler"].as_str().unwrap_or("?"),
            &want[..want.len().min(3)],
            p.sampler.name(),
            p.steps,
            p.steps
        );
    }
    Ok(())
}

/// Samples the images `indices` (a batch) and returns `[B, C, H, W]` in the model's range.
pub fn sample_batch(
    unet: &UNet2DModel,
    sched: &dyn Scheduler,
    noise: &NoiseSource,
    indices: &[usize],
    resolution: usize,
    class: Option<u32>,
    on_step: impl FnMut(usize),
) -> Result<candle_core::Tensor> {
    sample_batch_corrected(
        unet, sched, noise, indices, resolution, class, on_step, None,
    )
}

/// [`sample_batch`] with the model output corrected at every step (PTQD).
#[allow(clippy::too_many_arguments)]
pub fn sample_batch_corrected(
    unet: &UNet2DModel,
    sched: &dyn Scheduler,
    noise: &NoiseSource,
    indices: &[usize],
    resolution: usize,
    class: Option<u32>,
    mut on_step: impl FnMut(usize),
    correction: Option<&dyn OutputCorrection>,
) -> Result<candle_core::Tensor> {
    let shape = [unet.config.in_channels, resolution, resolution];
    let device = unet.device().clone();
    let x = noise
        .initial(indices, &shape, &device)?
        .to_dtype(unet.dtype())?;
    let labels_vec: Vec<u32> = class.map(|c| vec![c; indices.len()]).unwrap_or_default();
    let labels = class.map(|_| ClassLabels::Indices(&labels_vec));
    let x = dmq_sched::sample_corrected(
        sched,
        x,
        |x, t, i| {
            unet.forward(
                x,
                Timesteps::Shared(t as f64),
                labels.as_ref(),
                &Ctx::at_step(i),
            )
            .map_err(SchedError::other)
        },
        |i| Ok(Some(noise.step_noise(i, indices, &shape, &device)?)),
        &mut on_step,
        correction,
    )?;
    Ok(x)
}

/// One sampling job into a folder: resumable, refusing to mix with another run's images.
pub struct SampleJob<'a> {
    pub unet: &'a UNet2DModel,
    pub sched: &'a dyn Scheduler,
    /// Everything that determines the images; stored in samples.json and compared on resume.
    pub protocol: serde_json::Value,
    pub seed: u64,
    pub num: usize,
    pub batch: usize,
    pub class: Option<u32>,
    pub out: &'a Path,
    pub overwrite: bool,
    /// Shown on the progress bar.
    pub label: &'a str,
    /// PTQD's correction of the model output, when applied (it is part of `protocol` then).
    pub correction: Option<&'a dyn OutputCorrection>,
}

pub struct SampleOutcome {
    pub sampled_now: usize,
    pub wall_s: f64,
}

/// Samples `job.num` images to `job.out` (NNNNNN.png, grid.png, samples.json).
pub fn sample_to_folder(job: &SampleJob) -> Result<SampleOutcome> {
    if job.num == 0 || job.batch == 0 {
        bail!("the number of images and the batch size must be at least 1");
    }
    let resolution = job
        .unet
        .config
        .sample_size
        .context("the model's config.json has no sample_size, so the image size is unknown")?;
    if job.unet.config.out_channels != job.unet.config.in_channels
        || job.unet.config.in_channels != 3
    {
        bail!(
            "dmq samples RGB pixel-space models (3 input and output channels); this one has {} in, {} out",
            job.unet.config.in_channels,
            job.unet.config.out_channels
        );
    }
    let noise = NoiseSource::new(job.seed);
    let folder = SampleFolder {
        out: job.out,
        protocol: &job.protocol,
        num: job.num,
        batch: job.batch,
        overwrite: job.overwrite,
        label: job.label,
        calls_per_batch: job.sched.timesteps().len(),
    };
    write_samples(&folder, &mut |indices, on_call| {
        sample_batch_corrected(
            job.unet,
            job.sched,
            &noise,
            indices,
            resolution,
            job.class,
            |_| on_call(),
            job.correction,
        )
    })
}

/// Samples a batch of image indices: `[B, 3, H, W]` in [−1, 1]; calls its second argument
/// once per model call (progress).
pub type BatchSampler<'a> =
    dyn FnMut(&[usize], &mut dyn FnMut()) -> Result<candle_core::Tensor> + 'a;

/// Where and how [`write_samples`] writes a run's images.
pub struct SampleFolder<'a> {
    pub out: &'a Path,
    /// Everything that determines the images; stored in samples.json and compared on resume.
    pub protocol: &'a serde_json::Value,
    pub num: usize,
    pub batch: usize,
    pub overwrite: bool,
    /// Shown on the progress bar.
    pub label: &'a str,
    /// Model calls per batch (for the progress bar).
    pub calls_per_batch: usize,
}

/// Writes images `0..num` (NNNNNN.png, grid.png, samples.json) with `sample(indices, on_call)`
/// giving `[B, 3, H, W]` images in [−1, 1] for a batch of image indices: resumable, refusing to
/// mix with another run's images.
pub fn write_samples(job: &SampleFolder, sample: &mut BatchSampler) -> Result<SampleOutcome> {
    let out = job.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let manifest_path = out.join("samples.json");
    if manifest_path.exists() && !job.overwrite {
        let old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)
                .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?;
        if old.get("protocol") != Some(job.protocol) {
            bail!(
                "{} holds samples of a different run (model, sampler, steps, eta, seed, dtype or device differ); \
                 pass --overwrite to replace them or choose another --out",
                out.display()
            );
        }
    }
    let todo: Vec<usize> = (0..job.num)
        .filter(|&i| job.overwrite || !image_path(out, i).exists())
        .collect();
    let reused = job.num - todo.len();
    write_json_atomic(
        &manifest_path,
        &json!({ "protocol": job.protocol, "num": job.num, "complete": false }),
    )?;
    if reused > 0 {
        eprintln!(
            "resuming: {reused} of {} images already in {}",
            job.num,
            out.display()
        );
    }

    let batches: Vec<&[usize]> = todo.chunks(job.batch).collect();
    let pb = ProgressBar::new((batches.len() * job.calls_per_batch) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} UNet calls, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(format!("{}: {} images", job.label, todo.len()));
    let start = Instant::now();
    for indices in &batches {
        let x = sample(indices, &mut || pb.inc(1))?;
        for (img, &i) in images::to_rgb8(&x)?.iter().zip(indices.iter()) {
            images::save_png_atomic(img, &image_path(out, i))?;
        }
    }
    pb.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();

    let all = read_images(out, job.num)?;
    let grid = images::grid(&all, images::grid_cols(job.num.min(256)));
    images::save_png_atomic(&grid, &out.join("grid.png"))?;
    write_json_atomic(
        &manifest_path,
        &json!({
            "protocol": job.protocol,
            "num": job.num,
            "complete": true,
            "sampled_now": todo.len(),
            "wall_s": wall,
            "images_per_s": if wall > 0.0 { todo.len() as f64 / wall } else { 0.0 },
            "dmq_version": env!("CARGO_PKG_VERSION"),
        }),
    )?;
    Ok(SampleOutcome {
        sampled_now: todo.len(),
        wall_s: wall,
    })
}

/// The first `num` images of a sample folder (at most 256 for grids).
pub fn read_images(out: &Path, num: usize) -> Result<Vec<image::RgbImage>> {
    (0..num.min(256))
        .map(|i| {
            let p = image_path(out, i);
            image::open(&p)
                .with_context(|| format!("reading back {}", p.display()))
                .map(|im| im.to_rgb8())
        })
        .collect()
}

pub fn run(args: SampleArgs) -> Result<()> {
    if args.num == 0 || args.batch == 0 {
        bail!("--num and --batch must be at least 1");
    }
    if super::latent::model_class(&args.model)?.is_latent() {
        return super::latent::run_sample(args);
    }
    let loaded = args.model.load_exec(args.exec.exec)?;
    let (pipeline, unet) = (loaded.pipeline, loaded.unet);
    let sched = scheduler_for(&pipeline, &args.protocol)?;
    let correction =
        super::ptqd::correction_for(&pipeline, &args.protocol, &*sched, &args.ptqd.ptqd_parts)?;
    let mut proto = protocol(
        &pipeline.name,
        &args.protocol,
        args.class,
        &args.model,
        args.exec.exec,
        sched.timesteps(),
    );
    if let Some(c) = &correction {
        proto["ptqd"] = c.describe();
        eprintln!("PTQD: {}", c.summary());
    }
    let job = SampleJob {
        unet: &unet,
        sched: &*sched,
        protocol: proto,
        seed: args.protocol.seed,
        num: args.num,
        batch: args.batch,
        class: args.class,
        out: &args.out,
        overwrite: args.overwrite,
        label: "sampling",
        correction: correction.as_ref().map(|c| c.correction()),
    };
    let outcome = sample_to_folder(&job)?;
    eprintln!(
        "wrote {} images and grid.png to {} ({:.1} s, {:.2} images/s)",
        args.num,
        args.out.display(),
        outcome.wall_s,
        outcome.sampled_now as f64 / outcome.wall_s.max(1e-9)
    );
    Ok(())
}
