//! PTQD after a real (tiny) quantization of the embedded model, with step-aware mixed precision:
//! the widths follow the SNR choice, the mixed model's layers carry one parameter set per step at
//! the chosen width, and the stored statistics are what the mixed model itself measures.

use candle_core::{DType, Device};
use dmq_methods::ptqd::{measure, run_after_quantize, AfterQuantize, CollectSpec, Protocol};
use dmq_model::ModelSource;
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::config::{PtqdConfig, QuantConfig};
use dmq_quant::ptq::{self, PtqOptions, Silent};
use dmq_sched::{build, SamplerKind, ScheduleConfig};

#[test]
fn mixed_precision_stage_on_the_embedded_model() {
    let pipeline = ModelSource::Embedded.resolve().unwrap();
    let load = || pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = pipeline.scheduler_config_text().unwrap();
    let cfg = ScheduleConfig::from_json_str(&label, &text).unwrap();
    let kind = SamplerKind::Ddim { eta: 0.0 };
    let steps = 4;
    let sched = build(kind, &cfg, steps).unwrap();

    let mut recipe = QuantConfig::builtin("rtn-w4a8").unwrap();
    recipe.calibration.steps = steps;
    recipe.calibration.steps_sampled = 2;
    recipe.calibration.samples_per_step = 2;
    recipe.calibration.batch = 2;
    recipe.activations.ema_batch = 2;
    let mut unet = load();
    let spec = CalibSpec {
        steps_sampled: 2,
        samples_per_step: 2,
        seed: 0,
        batch: 2,
    };
    let set = calib::generate(&unet, &*sched, &spec, || {}).unwrap();
    let opts = PtqOptions {
        checkpoint_dir: None,
        capture_batch: 2,
        capture_budget_bytes: 1 << 28,
        run_fingerprint: "test".into(),
    };
    let mut outcome = ptq::quantize(&mut unet, &recipe, &set, &opts, &mut Silent).unwrap();
    let fp = load();
    let settings = PtqdConfig {
        samples: 2,
        batch: 2,
        mixed_act_bits: vec![4],
        ..PtqdConfig::default()
    };
    let protocol = Protocol::of(kind, &cfg, &*sched);
    let result = run_after_quantize(
        AfterQuantize {
            fp: &fp,
            quantized: &mut unet,
            layers: &mut outcome.layers,
            recipe: &recipe,
            settings: &settings,
            calib: &set,
            sched: &*sched,
            protocol: protocol.clone(),
        },
        &mut || Ok(load()),
        &mut Silent,
    )
    .unwrap();
    let choices = result.choices.expect("mixed precision ran");
    assert_eq!(choices.len(), steps);
    let bits: Vec<u8> = choices.iter().map(|c| c.bits).collect();
    for c in &choices {
        assert_eq!(c.snr_q.len(), 2);
        assert_eq!((c.snr_q[0].0, c.snr_q[1].0), (4, 8));
        assert!(
            c.snr_q[0].1 < c.snr_q[1].1,
            "A4 is noisier than A8 at step {}",
            c.step
        );
        let want = if c.snr_q[0].1 >= c.snr_fp { 4 } else { 8 };
        assert_eq!(c.bits, want, "the SNR rule at step {}", c.step);
    }
    // SNR^F grows along sampling: once A8 is needed it stays needed
    let first8 = bits.iter().position(|&b| b == 8).unwrap_or(steps);
    assert!(bits[first8..].iter().all(|&b| b == 8), "{bits:?}");
    assert_eq!(result.set.mixed_act_bits, vec![4]);
    let stored: Vec<Option<u8>> = result.set.steps.iter().map(|s| s.act_bits).collect();
    assert_eq!(stored, bits.iter().map(|&b| Some(b)).collect::<Vec<_>>());
    // every quantized input carries one set per step at the chosen width
    let mut checked = 0;
    for l in outcome.layers.values() {
        if let Some(a) = &l.activation {
            for p in &a.parts {
                assert_eq!(p.steps, (0..steps).collect::<Vec<_>>());
                let pb: Vec<u8> = p.params.iter().map(|q| q.bits).collect();
                assert_eq!(pb, bits);
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} quantized inputs");
    // the stored statistics are the mixed model's own
    let again = measure(
        &fp,
        &unet,
        &*sched,
        &protocol,
        &CollectSpec {
            samples: 2,
            batch: 2,
            seed: settings.seed,
        },
        &mut Silent,
    )
    .unwrap();
    for (a, b) in again.steps.iter().zip(&result.set.steps) {
        assert!(
            (a.fit.k_raw - b.fit.k_raw).abs() < 1e-9
                && (a.fit.sigma_q - b.fit.sigma_q).abs() < 1e-9,
            "step {}: {:?} vs {:?}",
            a.step,
            a.fit,
            b.fit
        );
    }
    // a protocol that is not the sampler's is refused
    let other = build(SamplerKind::Ddim { eta: 0.0 }, &cfg, 5).unwrap();
    assert!(measure(
        &fp,
        &unet,
        &*other,
        &protocol,
        &CollectSpec {
            samples: 1,
            batch: 1,
            seed: 0
        },
        &mut Silent
    )
    .is_err());
}
