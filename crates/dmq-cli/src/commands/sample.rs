//! `dmq sample`: images from a model with DDIM or DDPM, seeded per image so that the same
//! `--seed` gives the same images whatever the batch size, and an interrupted run resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dmq_eval::images;
use dmq_model::unet2d::embeddings::ClassLabels;
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_sched::{NoiseSource, SamplerKind, SchedError, ScheduleConfig, Scheduler};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::ModelArgs;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sampler {
    /// Deterministic at --eta 0; DDPM-like noise at --eta 1.
    Ddim,
    /// Ancestral sampling with the scheduler config's variance type.
    Ddpm,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    pub sampler: Sampler,
    /// Number of denoising steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM noise weight (0 = deterministic); ignored by DDPM.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Seed of all noise; image i always gets the same noise for a given seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images per UNet call (memory vs speed; does not change the images).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Class label for class-conditional models (all images get it) [default: none].
    #[arg(long)]
    pub class: Option<u32>,
    /// Output folder: NNNNNN.png per image, grid.png, samples.json.
    #[arg(long, short = 'o', default_value = "samples")]
    pub out: PathBuf,
    /// Replace the images of a different earlier run in --out instead of refusing.
    #[arg(long, default_value_t = false)]
    pub overwrite: bool,
}

/// Everything that determines the images; a folder is resumed only if this matches exactly.
fn protocol(args: &SampleArgs, model_name: &str, timesteps: &[usize]) -> serde_json::Value {
    json!({
        "model": model_name,
        "sampler": format!("{:?}", args.sampler).to_lowercase(),
        "steps": args.steps,
        "eta": if args.sampler == Sampler::Ddim { args.eta } else { 0.0 },
        "seed": args.seed,
        "class": args.class,
        "dtype": args.model.dtype,
        "device": args.model.device,
        "timesteps": timesteps,
    })
}

fn image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:06}.png"))
}

fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Builds the scheduler of the pipeline for these arguments.
pub fn scheduler_for(
    pipeline: &dmq_model::Pipeline,
    sampler: Sampler,
    steps: usize,
    eta: f64,
) -> Result<Box<dyn Scheduler>> {
    let (label, text) = pipeline.scheduler_config_text()?;
    let cfg = ScheduleConfig::from_json_str(&label, &text)?;
    let kind = match sampler {
        Sampler::Ddim => {
            if !(0.0..=1.0).contains(&eta) {
                bail!("--eta {eta}: expected a value in [0, 1]");
            }
            SamplerKind::Ddim { eta }
        }
        Sampler::Ddpm => SamplerKind::Ddpm,
    };
    Ok(dmq_sched::build(kind, &cfg, steps)?)
}

/// Samples the images `indices` (a batch) and returns `[B, C, H, W]` in the model's range.
pub fn sample_batch(
    unet: &UNet2DModel,
    sched: &dyn Scheduler,
    noise: &NoiseSource,
    indices: &[usize],
    resolution: usize,
    class: Option<u32>,
    mut on_step: impl FnMut(usize),
) -> Result<candle_core::Tensor> {
    let shape = [unet.config.in_channels, resolution, resolution];
    let device = unet.device().clone();
    let x = noise
        .initial(indices, &shape, &device)?
        .to_dtype(unet.dtype())?;
    let labels_vec: Vec<u32> = class.map(|c| vec![c; indices.len()]).unwrap_or_default();
    let labels = class.map(|_| ClassLabels::Indices(&labels_vec));
    let x = dmq_sched::sample(
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
    )?;
    Ok(x)
}

pub fn run(args: SampleArgs) -> Result<()> {
    if args.num == 0 || args.batch == 0 {
        bail!("--num and --batch must be at least 1");
    }
    let (pipeline, unet) = args.model.load()?;
    let resolution = unet
        .config
        .sample_size
        .context("the model's config.json has no sample_size, so the image size is unknown")?;
    if unet.config.out_channels != unet.config.in_channels || unet.config.in_channels != 3 {
        bail!(
            "{}: dmq samples RGB pixel-space models (3 input and output channels); this one has {} in, {} out",
            pipeline.name,
            unet.config.in_channels,
            unet.config.out_channels
        );
    }
    let sched = scheduler_for(&pipeline, args.sampler, args.steps, args.eta)?;
    let proto = protocol(&args, &pipeline.name, sched.timesteps());

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let manifest_path = args.out.join("samples.json");
    if manifest_path.exists() && !args.overwrite {
        let old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)
                .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?;
        if old.get("protocol") != Some(&proto) {
            bail!(
                "{} holds samples of a different run (model, sampler, steps, eta, seed, dtype or device differ); \
                 pass --overwrite to replace them or choose another --out",
                args.out.display()
            );
        }
    }
    let todo: Vec<usize> = (0..args.num)
        .filter(|&i| args.overwrite || !image_path(&args.out, i).exists())
        .collect();
    let reused = args.num - todo.len();
    write_json_atomic(
        &manifest_path,
        &json!({ "protocol": proto, "num": args.num, "complete": false }),
    )?;
    if reused > 0 {
        eprintln!(
            "resuming: {reused} of {} images already in {}",
            args.num,
            args.out.display()
        );
    }

    let noise = NoiseSource::new(args.seed);
    let batches: Vec<&[usize]> = todo.chunks(args.batch).collect();
    let pb = ProgressBar::new((batches.len() * sched.timesteps().len()) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} UNet calls, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(format!("sampling {} images", todo.len()));
    let start = Instant::now();
    for indices in &batches {
        let x = sample_batch(
            &unet,
            &*sched,
            &noise,
            indices,
            resolution,
            args.class,
            |_| pb.inc(1),
        )?;
        for (img, &i) in images::to_rgb8(&x)?.iter().zip(indices.iter()) {
            images::save_png_atomic(img, &image_path(&args.out, i))?;
        }
    }
    pb.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();

    let all: Vec<image::RgbImage> = (0..args.num)
        .map(|i| {
            let p = image_path(&args.out, i);
            image::open(&p)
                .with_context(|| format!("reading back {}", p.display()))
                .map(|im| im.to_rgb8())
        })
        .collect::<Result<_>>()?;
    let grid = images::grid(&all, images::grid_cols(args.num));
    images::save_png_atomic(&grid, &args.out.join("grid.png"))?;
    write_json_atomic(
        &manifest_path,
        &json!({
            "protocol": proto,
            "num": args.num,
            "complete": true,
            "sampled_now": todo.len(),
            "wall_s": wall,
            "images_per_s": if wall > 0.0 { todo.len() as f64 / wall } else { 0.0 },
            "dmq_version": env!("CARGO_PKG_VERSION"),
        }),
    )?;
    eprintln!(
        "wrote {} images and grid.png to {} ({:.1} s, {:.2} images/s)",
        args.num,
        args.out.display(),
        wall,
        todo.len() as f64 / wall.max(1e-9)
    );
    Ok(())
}
