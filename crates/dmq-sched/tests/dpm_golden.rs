//! Parity of DPM-Solver++ with diffusers' `DPMSolverMultistepScheduler` (version in the golden's
//! metadata), on goldens written by `tests/data/make_dpm_golden.py`: the timesteps of every
//! spacing, and whole sampling trajectories of an analytic model `0.3·x + 0.1·sin(t/100)` (as ε
//! and as v) from a fixed x_T, for the ddpm-cifar10-small and tiny-latent SD scheduler configs
//! and for a `DPMSolverMultistepScheduler` config as diffusers saves it.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dmq_sched::{
    build, sample, DpmSolverPp, PredictionType, SamplerKind, ScheduleConfig, Scheduler,
    TimestepSpacing,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models")
        .join(rel)
}

fn golden() -> HashMap<String, Tensor> {
    let path = data("dpm_golden.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The scheduler config of a golden case, with the case's overrides.
fn config(case: &str) -> ScheduleConfig {
    let file = match case.split('-').next().unwrap() {
        "cifar" => shared("ddpm-cifar10-small/scheduler/scheduler_config.json"),
        "sd" => shared("tiny-latent/sd/scheduler/scheduler_config.json"),
        "pixart" => data("dpm_scheduler_config.json"),
        other => panic!("unknown config {other}"),
    };
    let mut cfg = ScheduleConfig::from_file(&file).unwrap();
    let spacing = |s| {
        // the override sets timestep_spacing for every sampler, as in diffusers
        (s, s)
    };
    let (ddim, dpm) = match case {
        "sd-linspace" => spacing(TimestepSpacing::Linspace),
        "sd-trailing" | "sd-zsnr-v" => spacing(TimestepSpacing::Trailing),
        _ => (cfg.timestep_spacing, cfg.dpm_solver.timestep_spacing),
    };
    cfg.timestep_spacing = ddim;
    cfg.dpm_solver.timestep_spacing = dpm;
    if case.ends_with("-v") {
        cfg.prediction_type = PredictionType::VPrediction;
    }
    if case == "sd-zsnr-v" {
        cfg.rescale_betas_zero_snr = true;
    }
    cfg
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

fn model(x: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    x.affine(0.3, 0.1 * (t as f64 / 100.0).sin())
}

/// Every `<case>/<steps>/timesteps` in the golden.
fn timestep_keys(g: &HashMap<String, Tensor>) -> Vec<(String, usize)> {
    let mut keys: Vec<(String, usize)> = g
        .keys()
        .filter_map(|k| {
            let mut parts = k.split('/');
            let (case, steps, what) = (parts.next()?, parts.next()?, parts.next()?);
            (what == "timesteps").then(|| (case.to_string(), steps.parse().unwrap()))
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn golden_metadata_and_configs() {
    // safetensors: an 8-byte little-endian header length, then the JSON header
    let bytes = std::fs::read(data("dpm_golden.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &header["__metadata__"];
    eprintln!(
        "golden: diffusers {}, torch {}",
        meta["diffusers"], meta["torch"]
    );
    assert!(meta["diffusers"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(meta["torch"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(meta["model"], "0.3 * x + 0.1 * sin(t / 100)");

    // The file diffusers saves for DPMSolverMultistepScheduler() (it has -Infinity in it).
    let cfg = config("pixart");
    assert_eq!(cfg.dpm_solver.timestep_spacing, TimestepSpacing::Linspace);
    assert_eq!(cfg.dpm_solver.solver_order, 2);
    // The SD config says "leading" explicitly: DPM-Solver++ takes it.
    let sd = config("sd");
    assert_eq!(sd.dpm_solver.timestep_spacing, TimestepSpacing::Leading);
    assert_eq!(sd.steps_offset, 1);
}

#[test]
fn timesteps_match_diffusers_exactly() {
    let g = golden();
    let keys = timestep_keys(&g);
    assert!(keys.len() >= 30, "{keys:?}");
    for (case, steps) in keys {
        let want: Vec<usize> = g[&format!("{case}/{steps}/timesteps")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let cfg = config(&case);
        let ours = cfg.dpm_solver_timesteps(steps).unwrap();
        assert_eq!(ours, want, "{case}, {steps} steps");
        let sched = build(SamplerKind::DpmSolverPp, &cfg, steps).unwrap();
        assert_eq!(sched.timesteps(), want.as_slice(), "{case}, {steps} steps");
    }
}

/// Every step of every recorded trajectory: (a) the solver alone, fed diffusers' model outputs
/// and its own previous samples (the step is checked against diffusers' next sample), and (b)
/// the whole loop through [`sample`] with the analytic model evaluated in Rust.
#[test]
fn trajectories_match_diffusers() {
    let g = golden();
    let x_t = &g["x_T"];
    let mut worst_step = 0.0f64;
    let mut worst_end = 0.0f64;
    let mut cases = 0;
    for (case, steps) in timestep_keys(&g) {
        let Some(xs) = g.get(&format!("{case}/{steps}/xs")) else {
            continue;
        };
        cases += 1;
        let outs = &g[&format!("{case}/{steps}/model_out")];
        let cfg = config(&case);
        let d = DpmSolverPp::new(&cfg, steps).unwrap();
        assert_eq!(xs.dims()[0], steps + 1);
        assert_eq!(rel_err(&xs.get(0).unwrap(), x_t), 0.0);

        // (a) step by step on our own samples, with diffusers' model outputs
        let mut x = x_t.clone();
        let mut case_worst = 0.0f64;
        for i in 0..steps {
            let out = d.step(i, &outs.get(i).unwrap(), &x, None).unwrap();
            assert_eq!(out.prev_sample.dtype(), DType::F32);
            let e = rel_err(&out.prev_sample, &xs.get(i + 1).unwrap());
            case_worst = case_worst.max(e);
            x = out.prev_sample;
        }
        eprintln!("{case} {steps} steps: worst step relative error {case_worst:e}");
        assert!(case_worst < 1e-5, "{case} {steps}: {case_worst:e}");
        worst_step = worst_step.max(case_worst);

        // (b) the sampling loop with the model computed here
        let sched = build(SamplerKind::DpmSolverPp, &cfg, steps).unwrap();
        let mut out_err = 0.0f64;
        let end = sample(
            &*sched,
            x_t.clone(),
            |x, t, i| {
                let o = model(x, t)?;
                out_err = out_err.max(rel_err(&o, &outs.get(i)?));
                Ok(o)
            },
            |_| panic!("DPM-Solver++ needs no noise"),
            |_| {},
        )
        .unwrap();
        let e = rel_err(&end, &xs.get(steps).unwrap());
        eprintln!("{case} {steps} steps: model output error {out_err:e}, end point {e:e}");
        assert!(out_err < 1e-5, "{case} {steps}: model output {out_err:e}");
        assert!(e < 1e-5, "{case} {steps}: end point {e:e}");
        worst_end = worst_end.max(e);
    }
    assert_eq!(cases, 13);
    eprintln!("DPM-Solver++: worst step error {worst_step:e}, worst end point error {worst_end:e}");
}
