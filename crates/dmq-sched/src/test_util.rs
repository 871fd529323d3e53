//! Small fixtures shared by the DDIM and DDPM unit tests.

use candle_core::{Device, Tensor};

/// A sample, a model output and a noise draw, four elements each.
pub const X: [f64; 4] = [0.3, -1.2, 2.5, 0.05];
pub const E: [f64; 4] = [-0.7, 0.4, 1.1, -2.0];
pub const N: [f64; 4] = [0.9, -0.3, 0.2, 1.5];

pub fn t(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

pub fn v(x: &Tensor) -> Vec<f64> {
    x.to_vec1::<f64>().unwrap()
}

pub fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// β of the default linear schedule (1e-4 → 0.02 over 1000 steps), by hand.
pub fn beta(s: usize) -> f64 {
    0.0001 + (0.02 - 0.0001) * s as f64 / 999.0
}

/// ᾱ by hand: Π (1 − βₛ) for the default linear schedule.
pub fn acp(t: usize) -> f64 {
    (0..=t).map(|s| 1.0 - beta(s)).product()
}
