//! `dmq gpu-check`: every tensor path dmq uses (UNet forward, DDIM and DDPM sampling, the
//! calibration backward pass, the FID Inception network) run on the CPU in f32 and on a GPU, with
//! the same weights and the same inputs, and compared. The CPU path is the one checked against
//! diffusers' goldens, so agreement here carries that check over to the GPU. The result is a
//! table and a JSON report (the recorded check); any f32 check over its tolerance fails the run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use dmq_eval::images;
use dmq_eval::inception::FidInception;
use dmq_eval::preprocess::to_model_input;
use dmq_model::layers::LayerMut;
use dmq_model::unet2d::embeddings::ClassLabels;
use dmq_model::{Ctx, ModelSource, Pipeline, Timesteps, UNet2DModel};
use dmq_sched::NoiseSource;
use serde_json::{json, Value};

use super::fid::InceptionArgs;
use super::sample::{sample_batch, scheduler_for, write_json_atomic, ProtocolArgs, Sampler};

/// What every check reports: `max |device − cpu| / max |cpu|` (as in the golden READMEs).
const METRIC: &str = "max_rel_err";

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// Model: a diffusers folder, a hub id (owner/name), or omitted for the small CIFAR-10 DDPM
    /// embedded in dmq [default: embedded].
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Device compared with the CPU f32 reference: cuda or cuda:N (needs a build with
    /// `--features cuda`), or cpu, which checks the CPU against itself (errors 0: a dry run of
    /// this command on a machine without a GPU).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// FID Inception weights, or `none` to skip that check [default: $DMQ_FID_INCEPTION, else
    /// ../shared/models/fid-inception/fid_inception_2015_12_05.safetensors, else
    /// <cache>/fid_inception_2015_12_05.safetensors; the check is skipped, with a note, when none
    /// of them exists].
    #[arg(long)]
    pub inception: Option<String>,
    /// JSON report, written atomically (also when a check fails).
    #[arg(long, short = 'o', default_value = "gpu-check.json")]
    pub out: PathBuf,
    /// Images per batch (the Inception check takes the DDIM and the DDPM batch: twice as many).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timesteps of the UNet forward checks (the backward check uses the middle one).
    #[arg(long, default_value = "999,500,10", value_delimiter = ',')]
    pub timesteps: Vec<usize>,
    /// Steps of the DDIM (eta 0) and DDPM sampling trajectories.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Seed of all noise (built on the CPU and copied to the device, so both sides see the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tolerance of the f32 UNet forwards (max relative error).
    #[arg(long, default_value_t = 1e-4)]
    pub tol_forward: f32,
    /// Tolerance of the final images of the f32 sampling trajectories.
    #[arg(long, default_value_t = 1e-3)]
    pub tol_trajectory: f32,
    /// Tolerance of the f32 gradients (input and layer weights).
    #[arg(long, default_value_t = 1e-3)]
    pub tol_grad: f32,
    /// Tolerance of the f32 Inception features (pool3 and sFID spatial).
    #[arg(long, default_value_t = 1e-3)]
    pub tol_inception: f32,
}

/// One comparison. `tolerance: None` means reported only (bf16 is expected to be ~1e-2 off).
struct Check {
    name: String,
    value: f32,
    rel_l2: f32,
    /// `max |cpu|`: shows that a check does not compare zeros.
    ref_max_abs: f32,
    tolerance: Option<f32>,
    cpu_s: f64,
    device_s: f64,
    shape: Vec<usize>,
    error: Option<String>,
}

impl Check {
    fn passed(&self) -> bool {
        match self.tolerance {
            Some(t) => self.error.is_none() && self.value.is_finite() && self.value <= t,
            None => true,
        }
    }

    /// A section that could not run (an op missing on the device, say), with the first line of
    /// its error (candle appends a backtrace when RUST_BACKTRACE is set). A failure if `gated`.
    fn failed(name: &str, e: &anyhow::Error, gated: bool) -> Self {
        let msg = format!("{e:#}");
        Self {
            name: name.to_string(),
            value: f32::NAN,
            rel_l2: f32::NAN,
            ref_max_abs: f32::NAN,
            tolerance: gated.then_some(0.0),
            cpu_s: 0.0,
            device_s: 0.0,
            shape: vec![],
            error: Some(msg.lines().next().unwrap_or_default().to_string()),
        }
    }

    fn to_json(&self) -> Value {
        // Through the f32's shortest decimal, so 1e-3 is written 0.001, not 0.0010000000474974513.
        let num = |v: f32| match format!("{v}").parse::<f64>() {
            Ok(x) if v.is_finite() => json!(x),
            _ => Value::Null,
        };
        json!({
            "name": self.name, "metric": METRIC, "value": num(self.value),
            "rel_l2": num(self.rel_l2), "ref_max_abs": num(self.ref_max_abs),
            "tolerance": self.tolerance.map(num), "gated": self.tolerance.is_some(), "pass": self.passed(),
            "cpu_s": self.cpu_s, "device_s": self.device_s, "shape": self.shape,
            "error": self.error,
        })
    }
}

/// Compares `dev` (any device and dtype) with the CPU f32 reference `cpu`.
fn compare(
    name: String,
    cpu: &Tensor,
    dev: &Tensor,
    tolerance: Option<f32>,
    times: (f64, f64),
) -> Result<Check> {
    let d = dev.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let c = cpu.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let value = dmq_model::compare::max_rel_err(&d, &c)?;
    let norm = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?) };
    let rel_l2 = norm(&(&d - &c)?)? / norm(&c)?;
    let ref_max_abs = c.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(Check {
        name,
        value,
        rel_l2,
        ref_max_abs,
        tolerance,
        cpu_s: times.0,
        device_s: times.1,
        shape: c.dims().to_vec(),
        error: None,
    })
}

/// Runs `f` and waits for the device's queued work, so the wall time is real.
fn timed<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let r = f()?;
    device.synchronize()?;
    Ok((r, t0.elapsed().as_secs_f64()))
}

/// The two models under comparison and the inputs both get.
struct Setup {
    pipeline: Pipeline,
    cpu: UNet2DModel,
    dev: UNet2DModel,
    device: Device,
    res: usize,
    indices: Vec<usize>,
    /// Class 0 for every image of class-conditional models.
    class: Option<u32>,
    labels: Vec<u32>,
}

impl Setup {
    fn labels(&self) -> Option<ClassLabels<'_>> {
        self.class.map(|_| ClassLabels::Indices(&self.labels))
    }

    fn noise(&self, seed: u64) -> Result<Tensor> {
        let shape = [self.cpu.config.in_channels, self.res, self.res];
        Ok(NoiseSource::new(seed).initial(&self.indices, &shape, &Device::Cpu)?)
    }
}

fn forward_checks(
    s: &Setup,
    a: &GpuCheckArgs,
    outs: &mut Vec<(usize, Tensor)>,
) -> Result<Vec<Check>> {
    let x_cpu = s.noise(a.seed)?;
    let x_dev = x_cpu.to_device(&s.device)?;
    let mut checks = Vec::new();
    for &t in &a.timesteps {
        let ts = Timesteps::Shared(t as f64);
        let ctx = Ctx::inference();
        let (y_cpu, c) = timed(&Device::Cpu, || {
            Ok(s.cpu.forward(&x_cpu, ts, s.labels().as_ref(), &ctx)?)
        })?;
        let (y_dev, d) = timed(&s.device, || {
            Ok(s.dev.forward(&x_dev, ts, s.labels().as_ref(), &ctx)?)
        })?;
        checks.push(compare(
            format!("forward t={t}"),
            &y_cpu,
            &y_dev,
            Some(a.tol_forward),
            (c, d),
        )?);
        outs.push((t, y_cpu));
    }
    Ok(checks)
}

/// DDIM (eta 0) and DDPM trajectories through `sample_batch`, as `dmq sample` runs them; returns
/// the CPU images too (the Inception check's input).
fn trajectory_checks(s: &Setup, a: &GpuCheckArgs, images: &mut Vec<Tensor>) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for sampler in [Sampler::Ddim, Sampler::Ddpm] {
        let p = ProtocolArgs {
            sampler,
            steps: a.steps,
            eta: 0.0,
            seed: a.seed,
        };
        let sched = scheduler_for(&s.pipeline, &p)?;
        let noise = NoiseSource::new(a.seed);
        let run = |unet: &UNet2DModel| {
            sample_batch(unet, &*sched, &noise, &s.indices, s.res, s.class, |_| {})
        };
        let (x_cpu, c) = timed(&Device::Cpu, || run(&s.cpu))?;
        let (x_dev, d) = timed(&s.device, || run(&s.dev))?;
        let name = format!("{:?} {} steps x_0", sampler, a.steps).to_lowercase();
        checks.push(compare(
            name,
            &x_cpu,
            &x_dev,
            Some(a.tol_trajectory),
            (c, d),
        )?);
        images.push(x_cpu);
    }
    Ok(checks)
}

fn set_weight(layer: &mut LayerMut, w: Tensor) {
    match layer {
        LayerMut::Conv(c) => c.weight = w,
        LayerMut::Linear(l) => l.weight = w,
    }
}

/// The layers whose weight gradients are checked: the first conv of the first resnet, the first
/// attention query projection, and the first time-embedding linear (a path the input gradient
/// does not reach).
fn grad_targets(unet: &mut UNet2DModel) -> Vec<String> {
    let paths = unet.layer_paths();
    let mut out = Vec::new();
    let conv = "down_blocks.0.resnets.0.conv1";
    if paths.iter().any(|p| p == conv) {
        out.push(conv.to_string());
    }
    if let Some(q) = paths.iter().find(|p| p.ends_with(".to_q")) {
        out.push(q.clone());
    }
    if let Some(l) = paths.first() {
        out.push(l.clone());
    }
    out
}

/// Output of a differentiable forward and the gradients of `mean(y²)` w.r.t. the input and the
/// `targets`' weights (made `Var`s for the pass, restored after).
fn gradients(
    unet: &mut UNet2DModel,
    s_labels: Option<&ClassLabels>,
    x: &Tensor,
    t: f64,
    targets: &[String],
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut originals = Vec::new();
    let mut vars = Vec::new();
    for mut l in unet.layers_mut() {
        if targets.iter().any(|p| p == l.path()) {
            let w = l.layer_ref().weight.clone();
            let v = Var::from_tensor(&w)?;
            set_weight(&mut l, v.as_tensor().clone());
            originals.push((l.path().to_string(), w));
            vars.push((l.path().to_string(), v));
        }
    }
    let xv = Var::from_tensor(x)?;
    let mut ctx = Ctx::inference();
    ctx.differentiable = true;
    let result = (|| -> Result<(Tensor, Vec<Tensor>)> {
        let y = unet.forward(xv.as_tensor(), Timesteps::Shared(t), s_labels, &ctx)?;
        let grads = y.sqr()?.mean_all()?.backward()?;
        let mut out = vec![grads
            .get(xv.as_tensor())
            .context("no gradient for the input")?
            .clone()];
        for target in targets {
            let (_, v) = vars
                .iter()
                .find(|(p, _)| p == target)
                .with_context(|| format!("no layer {target}"))?;
            let g = grads
                .get(v.as_tensor())
                .with_context(|| format!("no gradient for {target}.weight"))?;
            out.push(g.clone());
        }
        Ok((y.detach(), out))
    })();
    for mut l in unet.layers_mut() {
        if let Some((_, w)) = originals.iter().find(|(p, _)| p == l.path()) {
            set_weight(&mut l, w.clone());
        }
    }
    result
}

fn backward_checks(s: &mut Setup, a: &GpuCheckArgs) -> Result<Vec<Check>> {
    let t = a
        .timesteps
        .get(a.timesteps.len() / 2)
        .copied()
        .unwrap_or(500) as f64;
    let targets = grad_targets(&mut s.cpu);
    let x_cpu = s.noise(a.seed)?;
    let x_dev = x_cpu.to_device(&s.device)?;
    let labels = s.labels.clone();
    let l = s.class.map(|_| ClassLabels::Indices(&labels));
    let ((y_cpu, g_cpu), c) = timed(&Device::Cpu, || {
        gradients(&mut s.cpu, l.as_ref(), &x_cpu, t, &targets)
    })?;
    let ((y_dev, g_dev), d) = timed(&s.device, || {
        gradients(&mut s.dev, l.as_ref(), &x_dev, t, &targets)
    })?;
    let mut checks = vec![compare(
        format!("forward t={t} differentiable"),
        &y_cpu,
        &y_dev,
        Some(a.tol_forward),
        (c, d),
    )?];
    let names =
        std::iter::once("input".to_string()).chain(targets.iter().map(|p| format!("{p}.weight")));
    for ((name, gc), gd) in names.zip(&g_cpu).zip(&g_dev) {
        checks.push(compare(
            format!("grad {name}"),
            gc,
            gd,
            Some(a.tol_grad),
            (c, d),
        )?);
    }
    Ok(checks)
}

/// Where the Inception weights are, or why the check is skipped.
fn inception_path(a: &GpuCheckArgs) -> Result<std::result::Result<PathBuf, String>> {
    match a.inception.as_deref() {
        Some("none") => Ok(Err("--inception none".into())),
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("--inception {}: no such file", p.display());
            }
            Ok(Ok(p))
        }
        None => {
            let defaults = InceptionArgs {
                inception: None,
                fid_device: "cpu".into(),
                fid_batch: 50,
                no_cache: false,
            };
            Ok(defaults.weights_path().map_err(|e| format!("{e:#}")))
        }
    }
}

/// The Inception input: the sampled images (8-bit, as `dmq fid` reads them), or seeded noise
/// images for models that do not make RGB images.
fn inception_input(s: &Setup, a: &GpuCheckArgs, sampled: &[Tensor]) -> Result<Tensor> {
    let mut imgs = Vec::new();
    if s.cpu.config.in_channels == 3 && !sampled.is_empty() {
        for x in sampled {
            imgs.extend(images::to_rgb8(x)?);
        }
    } else {
        let n: Vec<usize> = (0..2 * s.indices.len()).collect();
        let x = NoiseSource::new(a.seed).initial(&n, &[3, s.res, s.res], &Device::Cpu)?;
        imgs = images::to_rgb8(&x)?;
    }
    Ok(to_model_input(&imgs, &Device::Cpu)?)
}

fn inception_checks(
    s: &Setup,
    a: &GpuCheckArgs,
    path: &Path,
    sampled: &[Tensor],
) -> Result<Vec<Check>> {
    let x = inception_input(s, a, sampled)?;
    let net_cpu = FidInception::load(path, &Device::Cpu)?;
    let net_dev = FidInception::load(path, &s.device)?;
    let (f_cpu, c) = timed(&Device::Cpu, || Ok(net_cpu.features(&x)?))?;
    let x_dev = x.to_device(&s.device)?;
    let (f_dev, d) = timed(&s.device, || Ok(net_dev.features(&x_dev)?))?;
    let tol = Some(a.tol_inception);
    Ok(vec![
        compare(
            "inception pool3".into(),
            &f_cpu.pool3,
            &f_dev.pool3,
            tol,
            (c, d),
        )?,
        compare(
            "inception spatial (sFID)".into(),
            &f_cpu.spatial,
            &f_dev.spatial,
            tol,
            (c, d),
        )?,
    ])
}

/// The model in bf16 on the device against the CPU f32 outputs of the forward check.
fn bf16_checks(s: &Setup, a: &GpuCheckArgs, ref_outs: &[(usize, Tensor)]) -> Result<Vec<Check>> {
    let unet = s.pipeline.load_unet(&s.device, DType::BF16)?;
    let x = s
        .noise(a.seed)?
        .to_device(&s.device)?
        .to_dtype(DType::BF16)?;
    let mut checks = Vec::new();
    for (t, y_cpu) in ref_outs {
        let (y, d) = timed(&s.device, || {
            Ok(unet.forward(
                &x,
                Timesteps::Shared(*t as f64),
                s.labels().as_ref(),
                &Ctx::inference(),
            )?)
        })?;
        checks.push(compare(
            format!("bf16 forward t={t}"),
            y_cpu,
            &y,
            None,
            (0.0, d),
        )?);
    }
    Ok(checks)
}

/// The GPU's name from nvidia-smi (candle does not expose it), else what is known.
fn device_name(spec: &str, device: &Device) -> String {
    if !device.is_cuda() {
        return format!("cpu: {}", super::bench::cpu_name());
    }
    let ordinal = spec.strip_prefix("cuda:").unwrap_or("0");
    std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
            "-i",
            ordinal,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("CUDA device {ordinal} (nvidia-smi gave no name)"))
}

fn print_table(checks: &[Check], notes: &[String]) {
    println!(
        "{:<44} {:<12} {:>10} {:>10} {:>9} {:>9}  result",
        "check", "metric", "value", "tolerance", "cpu s", "device s"
    );
    for c in checks {
        let tol = c
            .tolerance
            .map_or("(report)".to_string(), |t| format!("{t:.0e}"));
        let result = match (&c.error, c.tolerance, c.passed()) {
            (Some(e), None, _) => format!("error (reported only): {e}"),
            (Some(e), Some(_), _) => format!("ERROR: {e}"),
            (None, None, _) => "-".into(),
            (None, Some(_), true) => "pass".into(),
            (None, Some(_), false) => "FAIL".into(),
        };
        println!(
            "{:<44} {:<12} {:>10.3e} {:>10} {:>9.3} {:>9.3}  {result}",
            c.name, METRIC, c.value, tol, c.cpu_s, c.device_s
        );
    }
    for n in notes {
        println!("note: {n}");
    }
}

pub fn run(a: GpuCheckArgs) -> Result<()> {
    if a.batch == 0 || a.steps == 0 || a.timesteps.is_empty() {
        bail!("--batch, --steps and --timesteps must be non-empty / at least 1");
    }
    let start = Instant::now();
    let device = crate::device::parse_device(&a.device)?;
    let inception = inception_path(&a)?;
    let pipeline = ModelSource::parse(a.model.as_deref())?.resolve()?;
    let cpu = pipeline
        .load_unet(&Device::Cpu, DType::F32)
        .with_context(|| format!("loading the UNet of {} on the CPU", pipeline.name))?;
    let dev = pipeline
        .load_unet(&device, DType::F32)
        .with_context(|| format!("loading the UNet of {} on {}", pipeline.name, a.device))?;
    let res = cpu
        .config
        .sample_size
        .context("the model's config.json has no sample_size")?;
    let class = cpu.class_embedding.is_some().then_some(0);
    let mut s = Setup {
        pipeline,
        cpu,
        dev,
        device,
        res,
        indices: (0..a.batch).collect(),
        class,
        labels: vec![0; a.batch],
    };
    let mut notes = Vec::new();
    if !s.device.is_cuda() {
        notes.push(format!(
            "--device {}: the CPU against itself (a dry run; expect 0)",
            a.device
        ));
    }
    // Loads kernels and warms caches so the timings below are of the computation.
    let warm = s.noise(a.seed)?;
    s.dev.forward(
        &warm.to_device(&s.device)?,
        Timesteps::Shared(500.0),
        s.labels().as_ref(),
        &Ctx::inference(),
    )?;
    s.device.synchronize()?;

    let mut checks = Vec::new();
    // A section that errors is recorded and the others still run: one GPU session shows all.
    let mut section = |name: &str, gated: bool, r: Result<Vec<Check>>| {
        eprintln!("checked: {name}");
        match r {
            Ok(c) => checks.extend(c),
            Err(e) => checks.push(Check::failed(name, &e, gated)),
        }
    };
    let mut ref_outs = Vec::new();
    section("forward", true, forward_checks(&s, &a, &mut ref_outs));
    let mut sampled = Vec::new();
    section("trajectory", true, trajectory_checks(&s, &a, &mut sampled));
    section("backward", true, backward_checks(&mut s, &a));
    match &inception {
        Ok(path) => section("inception", true, inception_checks(&s, &a, path, &sampled)),
        Err(why) => notes.push(format!("inception skipped: {why}")),
    }
    section("bf16", false, bf16_checks(&s, &a, &ref_outs));

    print_table(&checks, &notes);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name.as_str())
        .collect();
    let report = json!({
        "model": s.pipeline.name,
        "device": a.device,
        "device_name": device_name(&a.device, &s.device),
        "reference": "cpu f32",
        "dtype": "f32 (checks with a tolerance); bf16 (reported only)",
        "metric": "max_rel_err = max|device - cpu| / max|cpu|; rel_l2 = ||device - cpu|| / ||cpu||",
        "cuda_feature": cfg!(feature = "cuda"),
        "cudnn_feature": cfg!(feature = "cudnn"),
        // TF32 in f32 GEMMs (candle's switch; off unless set) and cuDNN convolutions (on by
        // default on Ampere and later unless NVIDIA_TF32_OVERRIDE=0) costs ~1e-3 of precision.
        "gemm_tf32": s.device.is_cuda().then(candle_core::cuda::gemm_reduced_precision_f32),
        "nvidia_tf32_override": std::env::var("NVIDIA_TF32_OVERRIDE").ok(),
        "cpu": super::bench::cpu_name(),
        "batch": a.batch, "steps": a.steps, "timesteps": a.timesteps, "seed": a.seed,
        "inception": inception.as_ref().ok(),
        "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        "notes": notes,
        "pass": failed.is_empty(),
        "failed": failed,
        "wall_s": start.elapsed().as_secs_f64(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "dmq_version": env!("CARGO_PKG_VERSION"),
    });
    write_json_atomic(&a.out, &report)?;
    eprintln!("wrote {}", a.out.display());
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed ({}); see {}",
            failed.len(),
            checks.len(),
            failed.join(", "),
            a.out.display()
        );
    }
    Ok(())
}
