//! Helpers shared by the dmq-methods integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device};
use dmq_model::{Pipeline, UNet2DModel};
use dmq_quant::calib::{self, CalibSet, CalibSpec};

/// The embedded model on the CPU in f32 and a calibration set from its own DDIM (eta 0)
/// trajectories of `steps` steps: `steps_sampled` steps x `per_step` samples, seed 0.
pub fn embedded_calib(
    steps: usize,
    steps_sampled: usize,
    per_step: usize,
) -> (Pipeline, UNet2DModel, CalibSet) {
    let pipeline = dmq_model::ModelSource::Embedded.resolve().unwrap();
    let unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let cfg = dmq_sched::ScheduleConfig::from_json_str(&label, &text).unwrap();
    let sched = dmq_sched::build(dmq_sched::SamplerKind::Ddim { eta: 0.0 }, &cfg, steps).unwrap();
    let spec = CalibSpec {
        steps_sampled,
        samples_per_step: per_step,
        seed: 0,
        batch: per_step,
    };
    let set = calib::generate(&unet, &*sched, &spec, || {}).unwrap();
    (pipeline, unet, set)
}
