//! Times the stages of a recipe's PTQ run on a model (CPU), printing each unit as it finishes.
//! usage: cargo run --release -p dmq-quant --example ptq_timing -- MODEL_DIR RECIPE [fast]

use std::time::Instant;

use candle_core::{DType, Device};
use dmq_model::ModelSource;
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::config::QuantConfig;
use dmq_quant::ptq::{self, Progress, PtqOptions};
use dmq_sched::{SamplerKind, ScheduleConfig};

struct Print(Instant);
impl Progress for Print {
    fn stage(&mut self, name: &str, total: u64) {
        eprintln!(
            "[{:7.1}s] stage {name} ({total})",
            self.0.elapsed().as_secs_f64()
        );
    }
    fn inc(&mut self, _: u64) {}
    fn message(&mut self, msg: &str) {
        eprintln!("[{:7.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut cfg = QuantConfig::builtin(&args[2]).unwrap();
    if args.get(3).map(String::as_str) == Some("fast") {
        cfg = cfg.fast();
    }
    let t0 = Instant::now();
    let pipeline = ModelSource::parse(Some(&args[1]))
        .unwrap()
        .resolve()
        .unwrap();
    let mut unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let sc = ScheduleConfig::from_json_str(&label, &text).unwrap();
    let sched =
        dmq_sched::build(SamplerKind::Ddim { eta: 0.0 }, &sc, cfg.calibration.steps).unwrap();
    let spec = CalibSpec {
        steps_sampled: cfg.calibration.steps_sampled,
        samples_per_step: cfg.calibration.samples_per_step,
        seed: 0,
        batch: cfg.calibration.batch,
    };
    let set = calib::generate(&unet, &*sched, &spec, || {}).unwrap();
    eprintln!(
        "[{:7.1}s] calibration set {}",
        t0.elapsed().as_secs_f64(),
        set.len()
    );
    let opts = PtqOptions {
        checkpoint_dir: None,
        capture_batch: 32,
        capture_budget_bytes: 1 << 30,
        run_fingerprint: "timing".into(),
    };
    let out = ptq::quantize(&mut unet, &cfg, &set, &opts, &mut Print(t0)).unwrap();
    eprintln!("stages {:?}", out.stage_seconds);
}
