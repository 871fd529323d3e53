//! Uniform affine quantization: codes, dequantization, fake quantization, range initialisation
//! (min/max, MSE search against a plainly written brute force, percentile) and the EMA observer.

// The brute force is written with index loops on purpose, to read like the reference.
#![allow(clippy::needless_range_loop)]

use candle_core::{DType, Device, Tensor};
use dmq_quant::uniform::{
    mse_range_search, ActRangeObserver, QuantError, UniformParams, MSE_CANDIDATES,
};

mod common;
use common::Rng;

fn vec_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
fn vec_u8(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn grid_values_round_trip_exactly() {
    // Δ = 0.5, z = 3, 4 bits: the grid is 0.5·(q − 3) for q = 0..=15.
    let p = UniformParams::per_tensor(0.5, 3, 4).unwrap();
    let grid: Vec<f32> = (0..=15).map(|q| 0.5 * (q as f32 - 3.0)).collect();
    let x = Tensor::from_vec(grid.clone(), 16, &Device::Cpu).unwrap();
    let codes = p.quantize_codes(&x).unwrap();
    assert_eq!(codes.dtype(), DType::U8);
    assert_eq!(vec_u8(&codes), (0..=15).collect::<Vec<u8>>());
    assert_eq!(vec_f32(&p.dequantize(&codes).unwrap()), grid);
    assert_eq!(vec_f32(&p.fake_quant(&x).unwrap()), grid);
    // Codes of dequantized codes are the codes again.
    let again = p.quantize_codes(&p.dequantize(&codes).unwrap()).unwrap();
    assert_eq!(vec_u8(&again), vec_u8(&codes));
}

#[test]
fn off_grid_values_endpoints_and_clamping() {
    let p = UniformParams::per_tensor(0.5, 3, 4).unwrap();
    // Representable range: [0.5·(0−3), 0.5·(15−3)] = [−1.5, 6].
    let x = Tensor::new(
        &[-1.5f32, 6.0, -1.74, -1.76, 6.2, -100.0, 100.0, 0.26, 0.24],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        vec_u8(&p.quantize_codes(&x).unwrap()),
        vec![0, 15, 0, 0, 15, 0, 15, 4, 3]
    );
    assert_eq!(
        vec_f32(&p.fake_quant(&x).unwrap()),
        vec![-1.5, 6.0, -1.5, -1.5, 6.0, -1.5, 6.0, 0.5, 0.0]
    );
}

#[test]
fn ties_round_half_to_even_like_torch_round() {
    let p = UniformParams::per_tensor(1.0, 0, 8).unwrap();
    let x = Tensor::new(&[0.5f32, 1.5, 2.5, 3.5, 2.4999, 2.5001], &Device::Cpu).unwrap();
    assert_eq!(
        vec_u8(&p.quantize_codes(&x).unwrap()),
        vec![0, 2, 2, 4, 2, 3]
    );
    // Negative ties through a zero point: x/Δ = −2.5 → −2, + z.
    let p = UniformParams::per_tensor(1.0, 10, 8).unwrap();
    let x = Tensor::new(&[-2.5f32, -1.5, -0.5], &Device::Cpu).unwrap();
    assert_eq!(vec_u8(&p.quantize_codes(&x).unwrap()), vec![8, 8, 10]);
}

#[test]
fn zero_point_outside_the_code_range_clamps_q_not_z() {
    // z = 20 > 15: x = 0 gives round(0) + 20 = 20 → q = 15 → x̂ = 1·(15 − 20) = −5.
    let p = UniformParams::per_tensor(1.0, 20, 4).unwrap();
    assert!(!p.zero_point_representable());
    let x = Tensor::new(&[0.0f32, -5.0, -20.0, -21.0, -3.0], &Device::Cpu).unwrap();
    assert_eq!(
        vec_u8(&p.quantize_codes(&x).unwrap()),
        vec![15, 15, 0, 0, 15]
    );
    assert_eq!(
        vec_f32(&p.fake_quant(&x).unwrap()),
        vec![-5.0, -5.0, -20.0, -20.0, -5.0]
    );
    // z = −3 < 0: representable values 1·(q + 3) = 3..=18 (an all-positive tensor's grid).
    let p = UniformParams::per_tensor(1.0, -3, 4).unwrap();
    let x = Tensor::new(&[0.0f32, 3.0, 7.0, 18.0, 30.0], &Device::Cpu).unwrap();
    assert_eq!(
        vec_u8(&p.quantize_codes(&x).unwrap()),
        vec![0, 0, 4, 15, 15]
    );
    assert_eq!(
        vec_f32(&p.fake_quant(&x).unwrap()),
        vec![3.0, 3.0, 7.0, 18.0, 18.0]
    );
    assert_eq!(
        vec_f32(&p.dequantize(&p.quantize_codes(&x).unwrap()).unwrap()),
        vec![3.0, 3.0, 7.0, 18.0, 18.0]
    );
    // Min/max of an all-positive tensor gives such an unclamped zero point.
    let x = Tensor::new(&[2.0f32, 5.0, 17.0], &Device::Cpu).unwrap();
    let p = UniformParams::init_minmax(&x, 4, None).unwrap();
    assert_eq!(p.scale, vec![1.0]);
    assert_eq!(p.zero_point, vec![-2]);
    assert_eq!(vec_f32(&p.fake_quant(&x).unwrap()), vec![2.0, 5.0, 17.0]);
}

#[test]
fn per_channel_on_either_axis() {
    // Axis 0: rows with their own Δ and z.
    let p = UniformParams::new(vec![1.0, 0.25], vec![0, 8], 4, Some(0)).unwrap();
    let x = Tensor::new(
        &[[0.0f32, 3.0, 15.0, 16.0], [-2.0, 0.0, 1.75, 2.0]],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        vec_u8(&p.quantize_codes(&x).unwrap()),
        vec![0, 3, 15, 15, 0, 8, 15, 15]
    );
    assert_eq!(
        vec_f32(&p.fake_quant(&x).unwrap()),
        vec![0.0, 3.0, 15.0, 15.0, -2.0, 0.0, 1.75, 1.75]
    );
    // Axis 1 of a 3-D tensor [2, 2, 1].
    let p = UniformParams::new(vec![1.0, 0.5], vec![0, 0], 2, Some(1)).unwrap();
    let x = Tensor::new(&[[[3.0f32], [1.0]], [[2.0], [0.5]]], &Device::Cpu).unwrap();
    assert_eq!(vec_u8(&p.quantize_codes(&x).unwrap()), vec![3, 2, 2, 1]);
    // Channel count must match the axis.
    let bad = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
    let p = UniformParams::new(vec![1.0, 0.25], vec![0, 8], 4, Some(0)).unwrap();
    let err = p.quantize_codes(&bad).unwrap_err();
    assert!(matches!(err, QuantError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("3 channels"), "{err}");
}

#[test]
fn f64_and_bf16_inputs() {
    let p = UniformParams::per_tensor(0.5, 3, 4).unwrap();
    let x = Tensor::new(&[0.26f64, -10.0, 1.0], &Device::Cpu).unwrap();
    let y = p.fake_quant(&x).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert_eq!(y.to_vec1::<f64>().unwrap(), vec![0.5, -1.5, 1.0]);
    let xb = x.to_dtype(DType::BF16).unwrap();
    let yb = p.fake_quant(&xb).unwrap();
    assert_eq!(yb.dtype(), DType::BF16);
    assert_eq!(
        yb.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
        vec![0.5, -1.5, 1.0]
    );
}

#[test]
fn parameters_are_validated() {
    for bits in [0u8, 1, 9, 16] {
        assert!(matches!(
            UniformParams::per_tensor(1.0, 0, bits),
            Err(QuantError::UnsupportedBits(b)) if b == bits
        ));
    }
    for bits in 2u8..=8 {
        assert!(UniformParams::per_tensor(1.0, 0, bits).is_ok());
    }
    assert!(UniformParams::per_tensor(0.0, 0, 4).is_err());
    assert!(UniformParams::per_tensor(f32::NAN, 0, 4).is_err());
    assert!(UniformParams::per_tensor(-1.0, 0, 4).is_err());
    assert!(UniformParams::new(vec![1.0, 1.0], vec![0], 4, Some(0)).is_err());
    assert!(UniformParams::new(vec![1.0, 1.0], vec![0, 0], 4, None).is_err());
    assert!(UniformParams::new(vec![], vec![], 4, Some(0)).is_err());
    let msg = UniformParams::per_tensor(0.0, 0, 4)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("finite and positive"), "{msg}");
    let x = Tensor::new(&[1.0f32, f32::NAN], &Device::Cpu).unwrap();
    assert!(matches!(
        UniformParams::init_minmax(&x, 4, None),
        Err(QuantError::NonFinite { .. })
    ));
}

#[test]
fn minmax_init_per_output_channel() {
    let w = Tensor::new(
        &[[-1.0f32, 0.5, 2.0], [0.1, 0.2, 0.4], [-3.0, -1.0, -2.0]],
        &Device::Cpu,
    )
    .unwrap();
    let p = UniformParams::init_minmax(&w, 4, Some(0)).unwrap();
    assert_eq!(p.axis, Some(0));
    let ranges = [(-1.0f64, 2.0f64), (0.1, 0.4), (-3.0, -1.0)];
    for (c, (lo, hi)) in ranges.iter().enumerate() {
        // Ranges as the f32 tensor holds them.
        let (lo, hi) = (f64::from(*lo as f32), f64::from(*hi as f32));
        let d = (hi - lo) / 15.0;
        assert_eq!(p.scale[c], d as f32, "channel {c}");
        assert_eq!(
            p.zero_point[c] as f64,
            (-lo / d).round_ties_even(),
            "channel {c}"
        );
    }
    // A constant (all-zero) channel gets a usable step instead of Δ = 0.
    let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let p = UniformParams::init_minmax(&z, 4, Some(0)).unwrap();
    assert_eq!(p.scale, vec![1.0, 1.0]);
    assert_eq!(vec_f32(&p.fake_quant(&z).unwrap()), vec![0.0; 6]);
    // A constant non-zero channel is represented exactly.
    let c = Tensor::new(&[[0.75f32, 0.75]], &Device::Cpu).unwrap();
    let p = UniformParams::init_minmax(&c, 4, Some(0)).unwrap();
    assert_eq!(vec_f32(&p.fake_quant(&c).unwrap()), vec![0.75, 0.75]);
}

/// The reference search written out plainly, independent of the library.
fn brute_force(w: &[f64], bits: u8) -> (usize, Vec<f64>, Vec<(f64, f64)>) {
    let n_levels = (2u32.pow(bits as u32) - 1) as f64;
    let x_min = w.iter().cloned().fold(f64::INFINITY, f64::min);
    let x_max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut errs = Vec::new();
    let mut params = Vec::new();
    for i in 0..80 {
        let new_min = x_min * (1.0 - 0.01 * i as f64);
        let new_max = x_max * (1.0 - 0.01 * i as f64);
        let delta = (new_max - new_min) / n_levels;
        let zp = (-new_min / delta).round_ties_even();
        let mut s = 0.0;
        for &x in w {
            let q = ((x / delta).round_ties_even() + zp).max(0.0).min(n_levels);
            s += (delta * (q - zp) - x).abs().powf(2.4);
        }
        errs.push(s / w.len() as f64);
        params.push((delta, zp));
    }
    let mut best = 0;
    for i in 1..80 {
        if errs[i] < errs[best] {
            best = i;
        }
    }
    (best, errs, params)
}

fn check_against_brute_force(w: &[f64], bits: u8) -> usize {
    let s = mse_range_search(w, bits).unwrap();
    let (best, errs, params) = brute_force(w, bits);
    assert_eq!(s.errors.len(), MSE_CANDIDATES);
    for i in 0..80 {
        let tol = 1e-12 * errs[i].abs().max(1e-300);
        assert!(
            (s.errors[i] - errs[i]).abs() <= tol,
            "candidate {i}: {} vs {}",
            s.errors[i],
            errs[i]
        );
    }
    assert_eq!(s.best, best);
    assert_eq!((s.delta, s.zero_point), params[best]);
    best
}

#[test]
fn mse_search_keeps_the_full_range_when_nothing_is_gained_by_clipping() {
    // Values exactly on the 16 levels of [−1.5, 6]: candidate 0 has zero error, every shrunk one
    // clips the end points.
    let w: Vec<f64> = (0..=15).flat_map(|q| [0.5 * (q as f64 - 3.0); 3]).collect();
    let s = mse_range_search(&w, 4).unwrap();
    assert_eq!(s.best, 0);
    assert_eq!(s.errors[0], 0.0);
    assert!(s.errors[1..].iter().all(|&e| e > 0.0));
    assert_eq!(check_against_brute_force(&w, 4), 0);
    // A dense uniform sample with no outliers at 8 bits.
    let mut rng = Rng(3);
    let w: Vec<f64> = (0..4000).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let best = check_against_brute_force(&w, 8);
    assert_eq!(best, 0, "uniform data at 8 bits should not be clipped");
}

#[test]
fn mse_search_shrinks_when_one_outlier_dominates() {
    let mut rng = Rng(11);
    let mut w: Vec<f64> = (0..2000).map(|_| rng.uniform(-1.0, 1.0)).collect();
    w.push(12.0);
    for bits in [2u8, 3, 4] {
        let best = check_against_brute_force(&w, bits);
        assert!(
            best > 0,
            "bits {bits}: the outlier should be clipped, best = {best}"
        );
    }
    // At 8 bits the grid is fine enough that keeping the outlier is cheaper than clipping it; the
    // search must agree with the brute force either way.
    check_against_brute_force(&w, 8);
    // The chosen grid's top code lies below the outlier: it is clipped.
    let s = mse_range_search(&w, 4).unwrap();
    let top = s.delta * (15.0 - s.zero_point);
    assert!(
        top < 11.5,
        "4 bits: top of the grid {top} (candidate {})",
        s.best
    );
}

#[test]
fn mse_init_per_channel_matches_the_brute_force() {
    let mut rng = Rng(5);
    let c_out = 6;
    let per = 3 * 3 * 4;
    let mut vals = Vec::new();
    for c in 0..c_out {
        for k in 0..per {
            let mut v = rng.uniform(-0.3, 0.5) * (c + 1) as f64;
            if c % 2 == 1 && k == 7 {
                v = 4.0 * (c + 1) as f64; // an outlier in every other channel
            }
            vals.push(v as f32);
        }
    }
    let w = Tensor::from_vec(vals.clone(), (c_out, 4, 3, 3), &Device::Cpu).unwrap();
    let p = UniformParams::init_mse(&w, 4, Some(0)).unwrap();
    assert_eq!(p.axis, Some(0));
    assert_eq!(p.num_channels(), c_out);
    for c in 0..c_out {
        let row: Vec<f64> = vals[c * per..(c + 1) * per]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (best, _, params) = brute_force(&row, 4);
        assert_eq!(p.scale[c], params[best].0 as f32, "channel {c}");
        assert_eq!(p.zero_point[c] as f64, params[best].1, "channel {c}");
        if c % 2 == 1 {
            assert!(best > 0, "channel {c} has an outlier");
        }
    }
    // Along axis 1 the same as along axis 0 of the transposed tensor.
    let wt = w.transpose(0, 1).unwrap().contiguous().unwrap();
    let pt = UniformParams::init_mse(&wt, 4, Some(1)).unwrap();
    assert_eq!(pt.scale, p.scale);
    assert_eq!(pt.zero_point, p.zero_point);
}

#[test]
fn percentile_range() {
    // 0, 1, ..., 10000: the 99.99th percentile is 9999 and the 0.01th is 1 (linear interpolation).
    let v: Vec<f32> = (0..=10_000).map(|i| i as f32).collect();
    let x = Tensor::from_vec(v, 10_001, &Device::Cpu).unwrap();
    let p = UniformParams::init_percentile(&x, 8, 99.99).unwrap();
    let d = (9999.0f64 - 1.0) / 255.0;
    assert!((f64::from(p.scale[0]) - d).abs() < 1e-4);
    assert_eq!(p.zero_point[0] as f64, (-1.0 / d).round_ties_even());
    let full = UniformParams::init_percentile(&x, 8, 100.0).unwrap();
    assert_eq!(full, UniformParams::init_minmax(&x, 8, None).unwrap());
    // Interpolation between order statistics: 5 values, 90th percentile at position 3.6.
    let x = Tensor::new(&[0.0f32, 10.0, 20.0, 30.0, 40.0], &Device::Cpu).unwrap();
    let p = UniformParams::init_percentile(&x, 4, 90.0).unwrap();
    assert!((f64::from(p.scale[0]) - (36.0 - 4.0) / 15.0).abs() < 1e-6);
    assert!(UniformParams::init_percentile(&x, 4, 40.0).is_err());
}

#[test]
fn ema_observer_initialises_then_mixes() {
    let dev = Device::Cpu;
    let mut obs = ActRangeObserver::new();
    assert_eq!(obs.momentum, 0.95);
    assert!(obs.range().is_none());
    assert!(obs.params(8).is_err());
    let a = Tensor::new(&[[-1.0f32, 0.5], [2.0, 0.0]], &dev).unwrap();
    assert_eq!(obs.observe(&a).unwrap(), (-1.0, 2.0));
    let b = Tensor::new(&[-3.0f32, 1.0, 0.0], &dev).unwrap();
    let (mn, mx) = obs.observe(&b).unwrap();
    let (a_min, a_max, b_min, b_max) = (-1.0, 2.0, -3.0, 1.0);
    let (emn, emx) = (0.95 * a_min + 0.05 * b_min, 0.95 * a_max + 0.05 * b_max);
    assert!(
        (mn - emn).abs() < 1e-12 && (mx - emx).abs() < 1e-12,
        "{mn} {mx}"
    );
    let c = Tensor::new(&[0.25f32, 0.75], &dev).unwrap();
    let (mn2, mx2) = obs.observe(&c).unwrap();
    assert!((mn2 - (0.95 * emn + 0.05 * 0.25)).abs() < 1e-12);
    assert!((mx2 - (0.95 * emx + 0.05 * 0.75)).abs() < 1e-12);
    // Parameters of the running range (z unclamped).
    let p = obs.params(8).unwrap();
    let d = (mx2 - mn2) / 255.0;
    assert_eq!(p.scale, vec![d as f32]);
    assert_eq!(p.zero_point, vec![(-mn2 / d).round_ties_even() as i32]);
    // Reset: the next batch initialises again.
    obs.reset();
    assert_eq!(obs.observe(&c).unwrap(), (0.25, 0.75));
    // f64 accumulation: many tiny EMA steps do not drift as f32 would.
    let mut o = ActRangeObserver::with_momentum(0.5).unwrap();
    o.observe(&Tensor::new(&[0.0f64, 1.0], &dev).unwrap())
        .unwrap();
    o.observe(&Tensor::new(&[0.0f64, 3.0], &dev).unwrap())
        .unwrap();
    assert_eq!(o.range(), Some((0.0, 2.0)));
    assert!(ActRangeObserver::with_momentum(1.5).is_err());
    let nan = Tensor::new(&[f32::NAN, 1.0], &dev).unwrap();
    assert!(ActRangeObserver::new().observe(&nan).is_err());
}
