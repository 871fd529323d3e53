//! Straight-through fake quantization: candle autograd against the analytic gradient, on the CPU
//! and, when the crate is built with `--features candle-core/cuda,candle-nn/cuda` on a GPU
//! machine, on CUDA too.

use candle_core::{DType, Device, Tensor, Var};
use dmq_quant::uniform::{
    dynamic_fake_quant_ste, round_half_even, round_ste, UniformParams, ZeroPointRule,
};

mod common;
use common::{devices, host, Rng};

#[test]
fn round_ste_rounds_forward_and_passes_gradient() {
    for dev in devices() {
        let x = Var::new(&[-2.5f64, -0.5, 0.4, 0.5, 1.5, 2.5, 2.6, 7.0], &dev).unwrap();
        let y = round_ste(x.as_tensor()).unwrap();
        assert_eq!(
            host(&y),
            vec![-2.0, -0.0, 0.0, 0.0, 2.0, 2.0, 3.0, 7.0],
            "{dev:?}"
        );
        assert_eq!(host(&round_half_even(x.as_tensor()).unwrap()), host(&y));
        let g = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &dev).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(host(grads.get(&x).unwrap()), host(&g), "{dev:?}");
    }
}

#[test]
fn static_ste_gradient_is_one_inside_and_zero_where_clamped() {
    // Δ = 0.5, z = 3, 4 bits: the code before the clamp is round(2x) + 3 (ties to even).
    let p = UniformParams::per_tensor(0.5, 3, 4).unwrap();
    let xs = [
        -3.0f32, -1.76, -1.75, -1.5, -1.2, 0.0, 0.26, 3.3, 6.0, 6.2, 6.25, 6.3, 9.0,
    ];
    let expected_mask: Vec<f64> = xs
        .iter()
        .map(|&x| {
            let q = (f64::from(x) / 0.5).round_ties_even() + 3.0;
            if (0.0..=15.0).contains(&q) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    // By hand: −1.75 → round(−3.5) = −4 → −1, clamped; −1.5 → 0 exactly, passes (PyTorch clamp
    // semantics: the bounds are inside); 6.0 → 15 exactly, passes; 6.25 → round(12.5) = 12 → 15,
    // passes; 6.3 → 13 → 16, clamped.
    assert_eq!(
        expected_mask,
        vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    );
    for dev in devices() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&Tensor::new(&xs, &dev).unwrap().to_dtype(dtype).unwrap())
                .unwrap();
            let g: Vec<f64> = (0..xs.len()).map(|i| 0.5 + i as f64).collect();
            let gt = Tensor::new(g.as_slice(), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let y = p.fake_quant_ste(x.as_tensor()).unwrap();
            assert_eq!(y.dtype(), dtype);
            // Same forward value as the plain fake quantizer.
            assert_eq!(host(&y), host(&p.fake_quant(x.as_tensor()).unwrap()));
            let grads = (y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
            let want: Vec<f64> = g.iter().zip(&expected_mask).map(|(g, m)| g * m).collect();
            assert_eq!(host(grads.get(&x).unwrap()), want, "{dev:?} {dtype:?}");
        }
    }
}

#[test]
fn plain_fake_quant_is_outside_the_graph() {
    let p = UniformParams::per_tensor(0.5, 3, 4).unwrap();
    let x = Var::new(&[0.3f32, 1.0], &Device::Cpu).unwrap();
    let y = p.fake_quant(x.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
}

/// Forward value and gradient of `Σ g·fq(x)` for the dynamic quantizer, written out by hand for
/// the rows (channels) of a matrix: with `Δ = (max − min)/(2^b − 1)`, `z` a constant,
/// `c_i = clamp(round(x_i/Δ) + z)` and `m_i = 1[0 ≤ round(x_i/Δ) + z ≤ 2^b − 1]`:
/// `∂/∂x_j = g_j·m_j + (∂Δ/∂x_j)·Σ_i g_i·((c_i − z) − m_i·x_i/Δ)`, `∂Δ/∂x_j = (1[j = argmax] −
/// 1[j = argmin])/(2^b − 1)`.
fn dynamic_reference(
    rows: &[Vec<f64>],
    g: &[Vec<f64>],
    bits: u8,
    clamp_z: bool,
) -> (Vec<f64>, Vec<f64>) {
    let qmax = f64::from((1u32 << bits) - 1);
    let mut fwd = Vec::new();
    let mut grad = Vec::new();
    for (x, g) in rows.iter().zip(g) {
        let (mut imin, mut imax) = (0, 0);
        for (i, &v) in x.iter().enumerate() {
            if v < x[imin] {
                imin = i;
            }
            if v > x[imax] {
                imax = i;
            }
        }
        let delta = (x[imax] - x[imin]) / qmax;
        let mut z = (-x[imin] / delta).round_ties_even();
        if clamp_z {
            z = z.clamp(0.0, qmax);
        }
        let mut d_delta = 0.0;
        let mut gr = vec![0.0; x.len()];
        for i in 0..x.len() {
            let r = (x[i] / delta).round_ties_even() + z;
            let m = if (0.0..=qmax).contains(&r) { 1.0 } else { 0.0 };
            let c = r.clamp(0.0, qmax);
            fwd.push((c - z) * delta);
            d_delta += g[i] * ((c - z) - m * x[i] / delta);
            gr[i] = g[i] * m;
        }
        gr[imax] += d_delta / qmax;
        gr[imin] -= d_delta / qmax;
        grad.extend(gr);
    }
    (fwd, grad)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn dynamic_per_tensor_gradient_flows_through_the_step() {
    let mut rng = Rng(21);
    let (n, bits) = (64usize, 4u8);
    let x: Vec<f64> = (0..n).map(|_| rng.uniform(-0.7, 1.9)).collect();
    let g: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let (fwd, want) = dynamic_reference(
        std::slice::from_ref(&x),
        std::slice::from_ref(&g),
        bits,
        false,
    );
    for dev in devices() {
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (4, 16), &dev).unwrap()).unwrap();
        let gt = Tensor::from_vec(g.clone(), (4, 16), &dev).unwrap();
        let y =
            dynamic_fake_quant_ste(xv.as_tensor(), bits, None, ZeroPointRule::Unclamped).unwrap();
        assert_close(&host(&y), &fwd, 1e-12, "forward");
        let grads = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        let got = host(grads.get(&xv).unwrap());
        assert_close(&got, &want, 1e-10, &format!("gradient on {dev:?}"));
        // The step's share is not zero: the extreme elements differ from g.
        let imax = (0..n).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap();
        assert!((got[imax] - g[imax]).abs() > 1e-3);
    }
}

#[test]
fn dynamic_per_channel_with_clamped_zero_point() {
    // Weights per output channel (axis 0); channel 1 is all-positive, so its zero point is clamped
    // to 0 and its top codes are clamped: the gradient is 0 there and the step's share changes.
    let mut rng = Rng(8);
    let bits = 3u8;
    let rows: Vec<Vec<f64>> = vec![
        (0..12).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        (0..12).map(|_| rng.uniform(1.0, 3.0)).collect(),
        (0..12).map(|_| rng.uniform(-2.0, -0.5)).collect(),
    ];
    let g: Vec<Vec<f64>> = (0..3)
        .map(|_| (0..12).map(|_| rng.uniform(-1.0, 1.0)).collect())
        .collect();
    let (fwd, want) = dynamic_reference(&rows, &g, bits, true);
    // Channel 1 really has clamped codes.
    let clamped_in_ch1 = want[12..24]
        .iter()
        .zip(&g[1])
        .filter(|(w, g)| (**w - **g).abs() > 1e-12 && w.abs() < 1e-12)
        .count();
    assert!(clamped_in_ch1 > 0);
    for dev in devices() {
        let flat: Vec<f64> = rows.concat();
        let xv = Var::from_tensor(&Tensor::from_vec(flat, (3, 3, 4), &dev).unwrap()).unwrap();
        let gt = Tensor::from_vec(g.concat(), (3, 3, 4), &dev).unwrap();
        let y =
            dynamic_fake_quant_ste(xv.as_tensor(), bits, Some(0), ZeroPointRule::Clamped).unwrap();
        assert_close(&host(&y), &fwd, 1e-12, "forward");
        let grads = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(
            &host(grads.get(&xv).unwrap()),
            &want,
            1e-10,
            &format!("gradient on {dev:?}"),
        );
    }
}

#[test]
fn dynamic_gradient_reaches_a_scale_parameter_les_style() {
    // LES: W' = W ⊙ γ is fake-quantized with its own per-channel min/max, so the loss reaches γ
    // both through W' directly and through each channel's step. Compare with the chain rule
    // applied to the hand-written gradient of `dynamic_reference`.
    let dev = Device::Cpu;
    let bits = 4u8;
    let w = Tensor::new(&[[0.3f64, -0.8, 0.5], [1.2, 0.1, -0.4]], &dev).unwrap();
    let gamma = Var::new(&[[1.0f64, 1.5, 0.7]], &dev).unwrap();
    let wg = w.broadcast_mul(gamma.as_tensor()).unwrap();
    let y = dynamic_fake_quant_ste(&wg, bits, Some(0), ZeroPointRule::Clamped).unwrap();
    let g = Tensor::new(&[[0.2f64, -0.5, 1.0], [0.7, 0.3, -0.9]], &dev).unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let got = host(grads.get(&gamma).unwrap());
    // Chain rule by hand: ∂L/∂γ_k = Σ_c ∂L/∂W'_{c,k} · W_{c,k}.
    let wv = host(&w);
    let wgv = host(&wg);
    let gv = host(&g);
    let rows: Vec<Vec<f64>> = wgv.chunks(3).map(<[f64]>::to_vec).collect();
    let grows: Vec<Vec<f64>> = gv.chunks(3).map(<[f64]>::to_vec).collect();
    let (_, dwg) = dynamic_reference(&rows, &grows, bits, true);
    let want: Vec<f64> = (0..3)
        .map(|k| dwg[k] * wv[k] + dwg[3 + k] * wv[3 + k])
        .collect();
    assert_close(&got, &want, 1e-12, "dL/dγ");
}
