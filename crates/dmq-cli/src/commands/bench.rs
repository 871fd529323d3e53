//! `dmq bench`: speed of UNet forwards and of DDIM sampling, measured in one process so the
//! numbers are comparable as ratios; the result is JSON with the machine and the command.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use dmq_model::{Ctx, Timesteps};
use dmq_sched::NoiseSource;
use serde_json::json;

use super::sample::{sample_batch, scheduler_for, write_json_atomic, ProtocolArgs, Sampler};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes for the single-forward timing, comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Timed repetitions of each forward (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// DDIM steps for the sampling throughput.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Images sampled together for the sampling throughput (0 skips it).
    #[arg(long, default_value_t = 16)]
    pub sample_batch: usize,
    /// Write the results as JSON to this file (also printed).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("timings are finite"));
    v[v.len() / 2]
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Waits for queued device work so wall-clock timings are real.
fn sync(t: &Tensor) -> Result<()> {
    t.device().synchronize()?;
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let (pipeline, unet) = args.model.load()?;
    let res = unet
        .config
        .sample_size
        .context("config.json has no sample_size")?;
    let c = unet.config.in_channels;
    let mut forwards = Vec::new();
    for &b in &args.batch_sizes {
        let x = NoiseSource::new(0)
            .initial(&(0..b).collect::<Vec<_>>(), &[c, res, res], unet.device())?
            .to_dtype(unet.dtype())?;
        let mut times = Vec::new();
        for i in 0..=args.iters {
            let t0 = Instant::now();
            // Step 0: quantized models pick their per-step activation parameters by it.
            let y = unet.forward(&x, Timesteps::Shared(500.0), None, &Ctx::at_step(0))?;
            sync(&y)?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let med = median(times.clone());
        eprintln!(
            "forward batch {b:>4}: {:>9.2} ms median ({:.1} images/s)",
            med * 1e3,
            b as f64 / med
        );
        forwards.push(json!({
            "batch": b, "median_ms": med * 1e3,
            "min_ms": times.iter().cloned().fold(f64::INFINITY, f64::min) * 1e3,
            "images_per_s": b as f64 / med, "iters": args.iters,
        }));
    }
    let mut sampling = serde_json::Value::Null;
    if args.sample_batch > 0 {
        let ddim = ProtocolArgs {
            sampler: Sampler::Ddim,
            steps: args.steps,
            eta: 0.0,
            seed: 0,
        };
        let sched = scheduler_for(&pipeline, &ddim)?;
        let noise = NoiseSource::new(0);
        let idx: Vec<usize> = (0..args.sample_batch).collect();
        let t0 = Instant::now();
        let x = sample_batch(&unet, &*sched, &noise, &idx, res, None, |_| {})?;
        sync(&x)?;
        let wall = t0.elapsed().as_secs_f64();
        eprintln!(
            "DDIM {} steps, batch {}: {:.1} s ({:.3} images/s)",
            args.steps,
            args.sample_batch,
            wall,
            args.sample_batch as f64 / wall
        );
        sampling = json!({
            "sampler": "ddim", "eta": 0.0, "steps": args.steps, "batch": args.sample_batch,
            "wall_s": wall, "images_per_s": args.sample_batch as f64 / wall,
            "ms_per_unet_call": wall * 1e3 / args.steps as f64,
        });
    }
    let report = json!({
        "model": pipeline.name,
        "params": unet.num_params,
        "device": args.model.device,
        "dtype": args.model.dtype,
        "cpu": cpu_name(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "dmq_version": env!("CARGO_PKG_VERSION"),
        "forward": forwards,
        "ddim_sampling": sampling,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        write_json_atomic(path, &report)?;
    }
    Ok(())
}
