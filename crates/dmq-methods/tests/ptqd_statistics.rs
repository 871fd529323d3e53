//! PTQD's statistics against synthetic noise whose slope, bias and variance are known: the
//! estimates recover them, through the tensor path and through the trajectory collection.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};
use dmq_methods::ptqd::collect::{collect, CollectSpec, Denoiser, SampleSpace};
use dmq_methods::ptqd::StepAccumulator;
use dmq_sched::{build, SamplerKind, ScheduleConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn space(shape: &[usize]) -> SampleSpace {
    SampleSpace {
        shape: shape.to_vec(),
        device: Device::Cpu,
        dtype: DType::F32,
    }
}

/// `[b, c, h, w]` of `f(channel) + noise` with seeded standard normals.
fn normal(rng: &mut ChaCha8Rng, dims: &[usize], mean: &[f64], std: f64) -> Vec<f64> {
    let per_channel: usize = dims[2..].iter().product();
    let mut v = Vec::with_capacity(dims.iter().product());
    for _ in 0..dims[0] {
        for m in mean.iter().take(dims[1]) {
            for _ in 0..per_channel {
                let z: f64 = rng.sample(StandardNormal);
                v.push(m + std * z);
            }
        }
    }
    v
}

#[test]
fn known_slope_bias_and_variance_are_recovered() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let dims = [16usize, 3, 16, 16];
    // ε with channel means away from 0 (a pooled one-intercept slope would be biased by them)
    let eps_means = [0.3, -0.5, 0.1];
    let (k, bias, sigma) = (0.07, [0.02, -0.015, 0.004], 0.05);
    let mut acc = StepAccumulator::default();
    for _ in 0..8 {
        let e = normal(&mut rng, &dims, &eps_means, 1.0);
        let r = normal(&mut rng, &dims, &bias, sigma);
        let q: Vec<f64> = e.iter().zip(&r).map(|(e, r)| (1.0 + k) * e + r).collect();
        let et = Tensor::from_vec(e, &dims, &Device::Cpu).unwrap();
        let qt = Tensor::from_vec(q, &dims, &Device::Cpu).unwrap();
        // f32 outputs, as the models produce them
        acc.add(
            &et.to_dtype(DType::F32).unwrap(),
            &qt.to_dtype(DType::F32).unwrap(),
        )
        .unwrap();
    }
    let f = acc.fit().unwrap();
    let n: f64 = 8.0 * 16.0 * 256.0; // values per channel
                                     // standard errors: slope σ/√(3n), intercepts σ/√n
    assert!(
        (f.k - k).abs() < 4.0 * sigma / (3.0 * n).sqrt(),
        "k {}",
        f.k
    );
    for (c, (got, want)) in f.bias.iter().zip(bias).enumerate() {
        assert!(
            (got - want).abs() < 4.0 * sigma / n.sqrt() * 1.5,
            "bias[{c}] {got} vs {want}"
        );
    }
    assert!(
        (f.sigma_q / sigma - 1.0).abs() < 0.01,
        "sigma {} vs {sigma}",
        f.sigma_q
    );
    assert_eq!(f.elements, 8 * 16 * 3 * 256);
    // what CNC + BC leaves: σ²/(1 + k)²
    let want = sigma * sigma / ((1.0 + k) * (1.0 + k));
    assert!((f.corrected_mse / want - 1.0).abs() < 0.02);
    // the raw error E[Δ²] per channel: k²(1 + μ²) + 2kμb + b² + σ²
    let raw: f64 = (0..3)
        .map(|c| {
            let (m, b) = (eps_means[c], bias[c]);
            k * k * (1.0 + m * m) + 2.0 * k * m * b + b * b + sigma * sigma
        })
        .sum::<f64>()
        / 3.0;
    assert!(
        (f.err_mse / raw - 1.0).abs() < 0.02,
        "{} vs {raw}",
        f.err_mse
    );
    assert!(f.err_mse > 3.0 * f.corrected_mse);
}

#[test]
fn negative_correlation_is_clamped_at_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let dims = [8usize, 3, 8, 8];
    let mut acc = StepAccumulator::default();
    let e = normal(&mut rng, &dims, &[0.0; 3], 1.0);
    let r = normal(&mut rng, &dims, &[0.01; 3], 0.02);
    let q: Vec<f64> = e.iter().zip(&r).map(|(e, r)| 0.95 * e + r).collect();
    acc.add(
        &Tensor::from_vec(e, &dims, &Device::Cpu).unwrap(),
        &Tensor::from_vec(q, &dims, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let f = acc.fit().unwrap();
    assert!((f.k_raw + 0.05).abs() < 0.01, "{}", f.k_raw);
    assert_eq!(f.k, 0.0);
    // with k = 0 the residual keeps the correlated part: σ² + 0.05²·E[ε²]
    let want = (0.02f64 * 0.02 + 0.05 * 0.05).sqrt();
    assert!(
        (f.sigma_q / want - 1.0).abs() < 0.05,
        "{} vs {want}",
        f.sigma_q
    );
}

/// The collection along trajectories: a "full-precision" denoiser, and a "quantized" one
/// `(1 + k_i)·ε + b_i,c + σ_i·z` with known per-step values; every step's fit recovers them and
/// the statistics are measured at the sampler's timesteps.
#[test]
fn collection_recovers_per_step_values() {
    let cfg = ScheduleConfig::default();
    let sched = build(SamplerKind::Ddim { eta: 1.0 }, &cfg, 5).unwrap();
    let ks = [0.0, 0.02, 0.05, 0.1, 0.2];
    let biases = [
        [0.01, 0.0, -0.01],
        [0.0, 0.0, 0.0],
        [0.03, -0.02, 0.01],
        [-0.01, 0.02, 0.0],
        [0.0, 0.05, -0.05],
    ];
    let sigmas = [0.01, 0.02, 0.03, 0.04, 0.05];
    let fp = |x: &Tensor, t: usize, _i: usize| -> dmq_sched::Result<Tensor> {
        Ok(x.affine(0.9, 0.001 * t as f64)?.tanh()?.affine(1.5, 0.0)?)
    };
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(9));
    let quant = |x: &Tensor, t: usize, i: usize| -> dmq_sched::Result<Tensor> {
        let e = fp(x, t, i)?;
        let dims = e.dims().to_vec();
        let r = normal(&mut rng.borrow_mut(), &dims, &biases[i], sigmas[i]);
        let r = Tensor::from_vec(r, dims.as_slice(), &Device::Cpu)?.to_dtype(e.dtype())?;
        Ok((e.affine(1.0 + ks[i], 0.0)? + r)?)
    };
    let spec = CollectSpec {
        samples: 24,
        batch: 8,
        seed: 3,
    };
    let mut calls = 0;
    let q: [&Denoiser; 1] = [&quant];
    let acc = collect(&fp, &q, &*sched, &spec, &space(&[3, 16, 16]), || calls += 1).unwrap();
    assert_eq!(calls, 3 * 5);
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0].len(), 5);
    for (i, a) in acc[0].iter().enumerate() {
        let f = a.fit().unwrap();
        let per_channel = (24 * 256) as f64;
        let tol_k = 5.0 * sigmas[i] / (3.0 * per_channel * 0.5).sqrt();
        assert!(
            (f.k - ks[i]).abs() < tol_k,
            "step {i}: k {} vs {}",
            f.k,
            ks[i]
        );
        for (c, want) in biases[i].iter().enumerate() {
            assert!(
                (f.bias[c] - want).abs() < 6.0 * sigmas[i] / per_channel.sqrt(),
                "step {i} bias[{c}] {} vs {}",
                f.bias[c],
                want
            );
        }
        assert!(
            (f.sigma_q / sigmas[i] - 1.0).abs() < 0.03,
            "step {i}: σ {} vs {}",
            f.sigma_q,
            sigmas[i]
        );
    }
    // bad specs are errors, not panics
    let bad = CollectSpec { samples: 0, ..spec };
    assert!(collect(&fp, &q, &*sched, &bad, &space(&[3, 4, 4]), || {}).is_err());
    assert!(collect(&fp, &[], &*sched, &spec, &space(&[3, 4, 4]), || {}).is_err());
}
