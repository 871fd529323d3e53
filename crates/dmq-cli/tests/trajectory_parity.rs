//! Whole sampling trajectories against diffusers: the UNet and the schedulers together.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use dmq_model::{Ctx, ModelSource, Timesteps};
use dmq_sched::{SamplerKind, SchedError, ScheduleConfig};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    dmq_model::compare::max_rel_err(a, b).unwrap()
}

/// Runs `kind` for 20 steps from the golden x_T, injecting the golden noise where it has one.
fn run(
    model_dir: PathBuf,
    golden: &str,
    kind: SamplerKind,
) -> (Tensor, std::collections::HashMap<String, Tensor>) {
    let pipeline = ModelSource::Folder(model_dir).resolve().unwrap();
    let unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let cfg = ScheduleConfig::from_json_str(&label, &text).unwrap();
    let sched = dmq_sched::build(kind, &cfg, 20).unwrap();
    let g = candle_core::safetensors::load(
        shared()
            .join("models/ddpm-cifar10-small/golden")
            .join(golden),
        &Device::Cpu,
    )
    .unwrap();
    let expected: Vec<usize> = g["timesteps"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as usize)
        .collect();
    assert_eq!(sched.timesteps(), expected.as_slice());
    let x = dmq_sched::sample(
        &*sched,
        g["x_T"].clone(),
        |x, t, i| {
            unet.forward(x, Timesteps::Shared(t as f64), None, &Ctx::at_step(i))
                .map_err(SchedError::other)
        },
        |i| Ok(g.get("noise").map(|n| n.i(i).unwrap())),
        |_| {},
    )
    .unwrap();
    (x, g)
}

#[test]
fn ddim20_end_point_matches_diffusers() {
    let (x0, g) = run(
        shared().join("models/ddpm-cifar10-small"),
        "ddim20.safetensors",
        SamplerKind::Ddim { eta: 0.0 },
    );
    let e = rel_err(&x0, &g["x_0"]);
    eprintln!("DDIM-20 x_0 rel err {e:.2e}");
    assert!(e < 1e-3, "DDIM-20 x_0 rel err {e}");
}

#[test]
fn ddpm20_with_recorded_noise_matches_diffusers() {
    let (x0, g) = run(
        shared().join("models/ddpm-cifar10-small"),
        "ddpm20.safetensors",
        SamplerKind::Ddpm,
    );
    let e = rel_err(&x0, &g["x_0"]);
    eprintln!("DDPM-20 x_0 rel err {e:.2e}");
    assert!(e < 1e-3, "DDPM-20 x_0 rel err {e}");
}

/// The embedded default model (compiled into dmq) against diffusers' outputs for the same weights,
/// recorded by scripts/train-default-model/train.py.
#[test]
fn embedded_model_matches_diffusers() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/dmq-default-ddpm/golden/embedded_golden.safetensors");
    let g = candle_core::safetensors::load(golden, &Device::Cpu).unwrap();
    let pipeline = ModelSource::Embedded.resolve().unwrap();
    let unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let ts: Vec<f64> = g["timesteps"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as f64)
        .collect();
    let eps = unet
        .forward(
            &g["x_t"],
            Timesteps::PerSample(&ts),
            None,
            &Ctx::inference(),
        )
        .unwrap();
    let e = rel_err(&eps, &g["eps"]);
    eprintln!("embedded eps rel err {e:.2e}");
    assert!(e < 1e-4, "embedded eps rel err {e}");

    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let cfg = ScheduleConfig::from_json_str(&label, &text).unwrap();
    let sched = dmq_sched::build(SamplerKind::Ddim { eta: 0.0 }, &cfg, 20).unwrap();
    let x0 = dmq_sched::sample(
        &*sched,
        g["ddim20_x_T"].clone(),
        |x, t, i| {
            unet.forward(x, Timesteps::Shared(t as f64), None, &Ctx::at_step(i))
                .map_err(SchedError::other)
        },
        |_| Ok(None),
        |_| {},
    )
    .unwrap();
    let e = rel_err(&x0, &g["ddim20_x_0"]);
    eprintln!("embedded DDIM-20 x_0 rel err {e:.2e}");
    assert!(e < 1e-3, "embedded DDIM-20 x_0 rel err {e}");
}
