//! `dmq bench`: speed and memory of UNet forwards (and optionally of DDIM sampling) for one or
//! more models and, for quantized models, each execution mode, measured in one process so the
//! rows are comparable as ratios. Prints a table and writes JSON with the machine and command.
//!
//! Memory: *resident weight bytes* are counted from what the model holds (f32 tensors, packed
//! integer weights with their steps and zero points); *peak RSS* is the kernel's high-water mark
//! `VmHWM` of this process, reset (`/proc/self/clear_refs`) after each model is loaded and before
//! each batch size, so it covers the forwards of that row with the model resident.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use dmq_model::{Ctx, Timesteps};
use dmq_sched::NoiseSource;
use serde_json::json;

use super::sample::{sample_batch, scheduler_for, write_json_atomic, ProtocolArgs, Sampler};
use super::{ExecMode, ModelArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model to time; repeat the flag to time several in one run (diffusers folders, hub ids,
    /// quantized models written by `dmq quantize`) [default: the embedded model].
    #[arg(long = "model", short = 'm')]
    pub models: Vec<String>,
    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision of the models: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// How quantized models compute, comma-separated; each mode is timed as its own row (models
    /// that are not quantized run as they are).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sim,int")]
    pub exec: Vec<ExecMode>,
    /// Batch sizes for the forward timing, comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Timed repetitions of each forward (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// DDIM steps: images/s of a row is batch / (steps × time per UNet call), and the sampling
    /// run uses them (quantized models need their calibrated number).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Images sampled together in a measured DDIM run per model and mode (0 skips it).
    #[arg(long, default_value_t = 16)]
    pub sample_batch: usize,
    /// Write the results as JSON to this file (also printed).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the table as Markdown to this file (also printed to stderr).
    #[arg(long)]
    pub table: Option<PathBuf>,
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

/// A `/proc/self/status` field in bytes (`VmHWM`, `VmRSS`), where Linux provides it.
fn status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak-RSS mark to the current RSS (Linux ≥ 4.0); false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.1}", b as f64 / (1u64 << 20) as f64)
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be at least 1");
    }
    if args.exec.is_empty() {
        bail!("--exec needs at least one mode");
    }
    let models: Vec<Option<String>> = if args.models.is_empty() {
        vec![None]
    } else {
        args.models.iter().cloned().map(Some).collect()
    };
    let peak_resettable = reset_peak_rss();
    if !peak_resettable {
        eprintln!(
            "note: /proc/self/clear_refs is not writable, so peak RSS is the process's high-water mark so far"
        );
    }
    let mut rows = Vec::new();
    let mut sampling = Vec::new();
    let mut names = Vec::new();
    for model in &models {
        let margs = ModelArgs {
            model: model.clone(),
            device: args.device.clone(),
            dtype: args.dtype.clone(),
            scheduler_config: None,
        };
        let quantized = model
            .as_deref()
            .is_some_and(|m| dmq_quant::artifact::is_artifact(std::path::Path::new(m)));
        let modes: Vec<Option<ExecMode>> = if quantized {
            args.exec.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        for mode in modes {
            let loaded = margs.load_exec(mode.unwrap_or(ExecMode::Sim))?;
            let unet = &loaded.unet;
            let label = match mode {
                None => args.dtype.clone(),
                Some(m) => m.name().to_string(),
            };
            names.push(loaded.pipeline.name.clone());
            let bytes_per_param = unet.dtype().size_in_bytes() as u64;
            let resident = match &loaded.int_info {
                Some(info) => info.resident_weight_bytes(unet.num_params),
                None => unet.num_params * bytes_per_param,
            };
            let isa = loaded
                .int_info
                .as_ref()
                .and_then(|i| i.isa)
                .map(|i| i.name().to_string());
            let res = unet
                .config
                .sample_size
                .context("config.json has no sample_size")?;
            let c = unet.config.in_channels;
            for &b in &args.batch_sizes {
                let x = NoiseSource::new(0)
                    .initial(&(0..b).collect::<Vec<_>>(), &[c, res, res], unet.device())?
                    .to_dtype(unet.dtype())?;
                reset_peak_rss();
                let rss_before = status_bytes("VmRSS:");
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
                let peak = status_bytes("VmHWM:");
                let med = median(times.clone());
                let ips = b as f64 / (med * args.steps as f64);
                eprintln!(
                    "{} [{label}] batch {b:>4}: {:>9.2} ms per UNet call, {:.4} images/s at {} DDIM steps, peak RSS {} MiB",
                    loaded.pipeline.name,
                    med * 1e3,
                    ips,
                    args.steps,
                    mib(peak)
                );
                rows.push(json!({
                    "model": loaded.pipeline.name,
                    "mode": label,
                    "isa": isa,
                    "batch": b,
                    "ms_per_unet_call": med * 1e3,
                    "min_ms_per_unet_call": times.iter().cloned().fold(f64::INFINITY, f64::min) * 1e3,
                    "images_per_s": ips,
                    "iters": args.iters,
                    "resident_weight_bytes": resident,
                    "peak_rss_bytes": peak,
                    "rss_before_bytes": rss_before,
                    "int_layers": loaded.int_info.as_ref().map(|i| i.int_layers.len()),
                }));
            }
            if args.sample_batch > 0 {
                let ddim = ProtocolArgs {
                    sampler: Sampler::Ddim,
                    steps: args.steps,
                    eta: 0.0,
                    seed: 0,
                };
                let sched = scheduler_for(&loaded.pipeline, &ddim)?;
                let noise = NoiseSource::new(0);
                let idx: Vec<usize> = (0..args.sample_batch).collect();
                reset_peak_rss();
                let t0 = Instant::now();
                let x = sample_batch(unet, &*sched, &noise, &idx, res, None, |_| {})?;
                sync(&x)?;
                let wall = t0.elapsed().as_secs_f64();
                let peak = status_bytes("VmHWM:");
                eprintln!(
                    "{} [{label}] DDIM {} steps, batch {}: {:.1} s ({:.4} images/s)",
                    loaded.pipeline.name,
                    args.steps,
                    args.sample_batch,
                    wall,
                    args.sample_batch as f64 / wall
                );
                sampling.push(json!({
                    "model": loaded.pipeline.name, "mode": label,
                    "sampler": "ddim", "eta": 0.0, "steps": args.steps, "batch": args.sample_batch,
                    "wall_s": wall, "images_per_s": args.sample_batch as f64 / wall,
                    "ms_per_unet_call": wall * 1e3 / args.steps as f64,
                    "peak_rss_bytes": peak,
                }));
            }
        }
    }
    let table = table(&rows, args.steps);
    eprintln!("\n{table}");
    if let Some(path) = &args.table {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    let report = json!({
        "models": names,
        "device": args.device,
        "dtype": args.dtype,
        "cpu": cpu_name(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "dmq_version": env!("CARGO_PKG_VERSION"),
        "ddim_steps": args.steps,
        "peak_rss_reset_per_row": peak_resettable,
        "rows": rows,
        "ddim_sampling": sampling,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        write_json_atomic(path, &report)?;
    }
    Ok(())
}

/// The rows as a Markdown table.
fn table(rows: &[serde_json::Value], steps: usize) -> String {
    let mut s = format!(
        "| model | mode | batch | ms per UNet call | images/s (DDIM {steps}) | resident weights (MiB) | peak RSS (MiB) |\n|---|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let mode = match r["isa"].as_str() {
            Some(isa) => format!("{} ({isa})", r["mode"].as_str().unwrap_or("?")),
            None => r["mode"].as_str().unwrap_or("?").to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.4} | {} | {} |\n",
            r["model"].as_str().unwrap_or("?"),
            mode,
            r["batch"],
            r["ms_per_unet_call"].as_f64().unwrap_or(f64::NAN),
            r["images_per_s"].as_f64().unwrap_or(f64::NAN),
            mib(r["resident_weight_bytes"].as_u64()),
            mib(r["peak_rss_bytes"].as_u64()),
        ));
    }
    s
}
