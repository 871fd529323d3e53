//! Helpers shared by the dmq-quant integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

/// SplitMix64: a tiny seeded generator so the tests need no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The CPU, plus the first GPU when candle was built with CUDA and one is present.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if let Ok(cuda) = Device::new_cuda(0) {
        d.push(cuda);
    }
    d
}

/// A tensor's values as f64 on the host.
pub fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The embedded model on the CPU in f32, with its DDIM scheduler (eta 0) at `steps` steps.
pub fn embedded_ddim(
    steps: usize,
) -> (
    dmq_model::Pipeline,
    dmq_model::UNet2DModel,
    Box<dyn dmq_sched::Scheduler>,
) {
    let pipeline = dmq_model::ModelSource::Embedded.resolve().unwrap();
    let unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let cfg = dmq_sched::ScheduleConfig::from_json_str(&label, &text).unwrap();
    let sched = dmq_sched::build(dmq_sched::SamplerKind::Ddim { eta: 0.0 }, &cfg, steps).unwrap();
    (pipeline, unet, sched)
}
