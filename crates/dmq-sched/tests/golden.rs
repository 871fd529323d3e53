//! Parity with diffusers 0.42.1 on the reference tensors of ddpm-cifar10-small
//! (`shared/models/ddpm-cifar10-small/golden/`, see its README.md): the training schedule, and
//! every step of a 20-step DDIM and a 20-step DDPM trajectory replayed from the recorded UNet
//! outputs (and, for DDPM, the recorded noise).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dmq_sched::{Ddim, Ddpm, ScheduleConfig, Scheduler};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/ddpm-cifar10-small")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = model_dir().join("golden").join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config() -> ScheduleConfig {
    ScheduleConfig::from_file(&model_dir().join("scheduler/scheduler_config.json")).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (f64s(a), f64s(b));
    let num = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

fn timesteps(g: &HashMap<String, Tensor>) -> Vec<usize> {
    g["timesteps"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as usize)
        .collect()
}

#[test]
fn schedule_matches_diffusers() {
    let g = load("schedule.safetensors");
    let cfg = config();
    for (name, ours) in [
        ("betas", cfg.betas()),
        ("alphas_cumprod", cfg.alphas_cumprod()),
    ] {
        let want = f64s(&g[name]);
        assert_eq!(ours.len(), want.len());
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{name}: max abs error {worst:e}");
    }
}

#[test]
fn ddim20_steps_match_diffusers() {
    let g = load("ddim20.safetensors");
    let ddim = Ddim::new(&config(), 20, 0.0).unwrap();
    assert_eq!(ddim.timesteps(), timesteps(&g).as_slice());
    assert_eq!(ddim.timesteps()[..3], [950, 900, 850]);
    let (eps, xs, x0s) = (&g["eps"], &g["xs"], &g["pred_x0"]);
    assert_eq!(xs.dims(), &[21, 4, 3, 32, 32]);
    let (mut worst_x, mut worst_x0) = (0.0f64, 0.0f64);
    for i in 0..20 {
        let x = xs.get(i).unwrap();
        let out = ddim.step(i, &eps.get(i).unwrap(), &x, None).unwrap();
        assert_eq!(out.prev_sample.dtype(), DType::F32);
        let ex = rel_err(&out.prev_sample, &xs.get(i + 1).unwrap());
        let ex0 = rel_err(&out.pred_original_sample, &x0s.get(i).unwrap());
        assert!(ex < 1e-5, "step {i}: xs relative error {ex:e}");
        assert!(ex0 < 1e-5, "step {i}: pred_x0 relative error {ex0:e}");
        worst_x = worst_x.max(ex);
        worst_x0 = worst_x0.max(ex0);
    }
    eprintln!("DDIM: worst xs error {worst_x:e}, worst pred_x0 error {worst_x0:e}");
}

#[test]
fn ddpm20_steps_match_diffusers() {
    let g = load("ddpm20.safetensors");
    let ddpm = Ddpm::new(&config(), 20).unwrap();
    assert_eq!(ddpm.timesteps(), timesteps(&g).as_slice());
    let (eps, xs, noise) = (&g["eps"], &g["xs"], &g["noise"]);
    let mut worst = 0.0f64;
    for i in 0..20 {
        let x = xs.get(i).unwrap();
        let n = noise.get(i).unwrap();
        // the recorded noise is zero exactly where the scheduler adds none (t = 0)
        let noise_is_zero = f64s(&n).iter().all(|v| *v == 0.0);
        assert_eq!(ddpm.needs_noise(i), !noise_is_zero, "step {i}");
        let out = ddpm.step(i, &eps.get(i).unwrap(), &x, Some(&n)).unwrap();
        let e = rel_err(&out.prev_sample, &xs.get(i + 1).unwrap());
        assert!(e < 1e-5, "step {i}: xs relative error {e:e}");
        worst = worst.max(e);
    }
    eprintln!("DDPM: worst xs error {worst:e}");
    // and the end point
    let e = rel_err(&xs.get(20).unwrap(), &g["x_0"]);
    assert_eq!(e, 0.0);
}
