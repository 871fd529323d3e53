//! Corrected sampling on the embedded model: a "quantized" network equal to
//! `(1 + k_t)·ε_fp + b_t` is measured, and sampling it with PTQD's correction reproduces the
//! full-precision trajectory (DDIM eta 0 and 1, DDPM); VSC is a no-op at eta 0; the statistics
//! round trip through the artifact and are refused for another protocol.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};
use dmq_methods::ptqd::collect::{collect, unet_denoiser, CollectSpec, Denoiser, SampleSpace};
use dmq_methods::ptqd::{Parts, Protocol, PtqdCorrection, PtqdSection, PtqdSet, StepStats};
use dmq_model::{ModelSource, UNet2DModel};
use dmq_sched::{build, NoiseSource, OutputCorrection, SamplerKind, ScheduleConfig, Scheduler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const STEPS: usize = 5;
/// 16×16 instead of the model's 32×32: a quarter of the compute, the same network.
const SHAPE: [usize; 3] = [3, 16, 16];

fn model() -> (UNet2DModel, ScheduleConfig) {
    let p = ModelSource::Embedded.resolve().unwrap();
    let unet = p.load_unet(&Device::Cpu, DType::F32).unwrap();
    let (label, text) = p.scheduler_config_text().unwrap();
    (unet, ScheduleConfig::from_json_str(&label, &text).unwrap())
}

/// k_t and b_t,c of the fake quantized network, by step index.
fn k_of(i: usize) -> f64 {
    0.03 + 0.02 * i as f64
}

fn b_of(i: usize) -> [f64; 3] {
    [0.01 * i as f64, -0.02, 0.005 * (i as f64 - 3.0)]
}

/// `(1 + k_i)·ε + b_i` (+ `noise`·z with a seeded z when `noise > 0`).
fn fake_quantized<'a>(
    fp: &'a Denoiser<'a>,
    noise: f64,
    rng: &'a RefCell<ChaCha8Rng>,
) -> impl Fn(&Tensor, usize, usize) -> dmq_sched::Result<Tensor> + 'a {
    move |x, t, i| {
        let e = fp(x, t, i)?;
        let b =
            Tensor::from_vec(b_of(i).to_vec(), (1, 3, 1, 1), &Device::Cpu)?.to_dtype(e.dtype())?;
        let mut q = e.affine(1.0 + k_of(i), 0.0)?.broadcast_add(&b)?;
        if noise > 0.0 {
            let n = e.elem_count();
            let z: Vec<f32> = (0..n)
                .map(|_| (noise * rng.borrow_mut().sample::<f64, _>(StandardNormal)) as f32)
                .collect();
            q = (q + Tensor::from_vec(z, e.dims(), &Device::Cpu)?)?;
        }
        Ok(q)
    }
}

fn measure_set(fp: &Denoiser, q: &Denoiser, sched: &dyn Scheduler, protocol: &Protocol) -> PtqdSet {
    let spec = CollectSpec {
        samples: 4,
        batch: 4,
        seed: 11,
    };
    let acc = collect(
        fp,
        &[q],
        sched,
        &spec,
        &SampleSpace {
            shape: SHAPE.to_vec(),
            device: Device::Cpu,
            dtype: DType::F32,
        },
        || {},
    )
    .unwrap();
    PtqdSet {
        protocol: protocol.clone(),
        samples: spec.samples,
        seed: spec.seed,
        steps: acc[0]
            .iter()
            .enumerate()
            .map(|(i, a)| StepStats {
                step: i,
                timestep: sched.timesteps()[i],
                fit: a.fit().unwrap(),
                act_bits: None,
            })
            .collect(),
        mixed_act_bits: Vec::new(),
    }
}

/// Samples images 100, 101 (not the statistics' trajectories) with `denoise` and `correction`.
fn run(
    sched: &dyn Scheduler,
    denoise: &Denoiser,
    correction: Option<&dyn OutputCorrection>,
) -> Vec<f32> {
    let ns = NoiseSource::new(5);
    let idx = [100, 101];
    let x = ns.initial(&idx, &SHAPE, &Device::Cpu).unwrap();
    dmq_sched::sample_corrected(
        sched,
        x,
        |x, t, i| denoise(x, t, i),
        |i| Ok(Some(ns.step_noise(i, &idx, &SHAPE, &Device::Cpu)?)),
        |_| {},
        correction,
    )
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1()
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn corrected_sampling_reproduces_the_fp_trajectory() {
    let (unet, cfg) = model();
    let fp = unet_denoiser(&unet);
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(1));
    let q = fake_quantized(&fp, 0.0, &rng);
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::Ddim { eta: 1.0 },
        SamplerKind::Ddpm,
    ] {
        let sched = build(kind, &cfg, STEPS).unwrap();
        let protocol = Protocol::of(kind, &cfg, &*sched);
        let set = measure_set(&fp, &q, &*sched, &protocol);
        for (i, s) in set.steps.iter().enumerate() {
            assert!(
                (s.fit.k - k_of(i)).abs() < 1e-5,
                "{kind:?} step {i}: k {}",
                s.fit.k
            );
            for (c, b) in b_of(i).iter().enumerate() {
                assert!(
                    (s.fit.bias[c] - b).abs() < 1e-5,
                    "{kind:?} step {i} bias {c}"
                );
            }
            assert!(
                s.fit.sigma_q < 1e-5,
                "only f32 rounding is left: {}",
                s.fit.sigma_q
            );
        }
        let reference = run(&*sched, &fp, None);
        let uncorrected = run(&*sched, &q, None);
        let corrected = run(&*sched, &q, Some(&PtqdCorrection::new(&set, Parts::ALL)));
        let before = max_diff(&uncorrected, &reference);
        let after = max_diff(&corrected, &reference);
        assert!(
            before > 0.05,
            "{kind:?}: the fake quantization must matter ({before})"
        );
        assert!(
            after < 2e-4,
            "{kind:?}: corrected trajectory {after} away from FP"
        );
    }
}

#[test]
fn vsc_is_a_noop_at_eta_zero_and_acts_at_eta_one() {
    let (unet, cfg) = model();
    let fp = unet_denoiser(&unet);
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(2));
    // with a real residual (σ = 0.05) VSC has something to absorb
    let q = fake_quantized(&fp, 0.05, &rng);
    let cnc_bc = Parts::parse("cnc,bc").unwrap();
    for eta in [0.0, 1.0] {
        let kind = SamplerKind::Ddim { eta };
        let sched = build(kind, &cfg, STEPS).unwrap();
        let set = measure_set(&fp, &q, &*sched, &Protocol::of(kind, &cfg, &*sched));
        assert!(set
            .steps
            .iter()
            .all(|s| (s.fit.sigma_q / 0.05 - 1.0).abs() < 0.05));
        // a deterministic "quantized" network for the comparison: the residual drawn once
        let with = run(&*sched, &fp, Some(&PtqdCorrection::new(&set, Parts::ALL)));
        let without = run(&*sched, &fp, Some(&PtqdCorrection::new(&set, cnc_bc)));
        if eta == 0.0 {
            assert_eq!(with, without, "VSC must not change deterministic sampling");
        } else {
            assert!(max_diff(&with, &without) > 1e-3, "VSC must act at eta 1");
        }
    }
}

#[test]
fn statistics_round_trip_through_the_artifact_and_protocols_are_checked() {
    let (unet, cfg) = model();
    let fp = unet_denoiser(&unet);
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(3));
    let q = fake_quantized(&fp, 0.02, &rng);
    let mut section = PtqdSection {
        default_parts: Parts::parse("cnc,vsc").unwrap(),
        sets: Vec::new(),
    };
    let mut protocols = Vec::new();
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::Ddim { eta: 0.5 },
    ] {
        let sched = build(kind, &cfg, STEPS).unwrap();
        let protocol = Protocol::of(kind, &cfg, &*sched);
        let mut set = measure_set(&fp, &q, &*sched, &protocol);
        if protocols.is_empty() {
            set.steps[2].act_bits = Some(4);
            set.mixed_act_bits = vec![4];
        }
        section.upsert(set);
        protocols.push(protocol);
    }
    assert_eq!(protocols[1].id(), "ddim-5-eta0p5-leading");
    // in memory
    let (json, tensors) = section.to_parts().unwrap();
    let back = PtqdSection::from_parts(&json, &tensors, "ptqd.safetensors".as_ref()).unwrap();
    assert_eq!(back, section);
    // through a folder with a manifest, as an artifact holds it
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("manifest.json"),
        r#"{"format":"dmq-quantized","format_version":1,"dmq_version":"t","base_model":"m",
            "recipe":{},"calibration":{},"layers":[],"extra":{}}"#,
    )
    .unwrap();
    let m = section.write(tmp.path()).unwrap();
    let read = PtqdSection::read(tmp.path(), &m).unwrap().unwrap();
    assert_eq!(read, section);
    // replacing the set of one protocol keeps the other
    let mut again = read.clone();
    let mut changed = again.sets[1].clone();
    changed.samples = 99;
    again.upsert(changed);
    assert_eq!(again.sets.len(), 2);
    assert_eq!(again.sets[1].samples, 99);

    // the set of a protocol is found; another protocol is refused with what differs
    assert_eq!(read.set_for(&protocols[1]).unwrap().protocol.eta, 0.5);
    let sched = build(SamplerKind::Ddim { eta: 1.0 }, &cfg, STEPS).unwrap();
    let other = Protocol::of(SamplerKind::Ddim { eta: 1.0 }, &cfg, &*sched);
    let err = read.set_for(&other).unwrap_err().to_string();
    assert!(
        err.contains("eta 0 vs 1") || err.contains("eta 1 vs 0"),
        "{err}"
    );
    assert!(
        err.contains("dmq ptqd") && err.contains("--ptqd-parts none"),
        "{err}"
    );

    // damaged tensors are errors naming the tensor
    let mut broken = tensors.clone();
    let key = format!("ptqd.{}.sigma_q", protocols[0].id());
    broken.insert(
        key.clone(),
        Tensor::new(&[1.0f64; 3], &Device::Cpu).unwrap(),
    );
    let err = PtqdSection::from_parts(&json, &broken, "ptqd.safetensors".as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key) && err.contains("ptqd.safetensors"),
        "{err}"
    );
    let mut broken = tensors.clone();
    broken.remove(&format!("ptqd.{}.bias", protocols[1].id()));
    let err = PtqdSection::from_parts(&json, &broken, "ptqd.safetensors".as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    let mut broken = tensors;
    let mut k = vec![0.1f64; STEPS];
    k[3] = -0.5;
    let key = format!("ptqd.{}.k", protocols[0].id());
    broken.insert(
        key.clone(),
        Tensor::new(k.as_slice(), &Device::Cpu).unwrap(),
    );
    let err = PtqdSection::from_parts(&json, &broken, "x".as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.contains("negative at step 3"), "{err}");

    // a correction applied at a timestep its set does not know is an error, not a skip
    let c = PtqdCorrection::new(&section.sets[0], Parts::ALL);
    let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let err = c.correct(0, 12345, &x).unwrap_err().to_string();
    assert!(err.contains("12345"), "{err}");
}
