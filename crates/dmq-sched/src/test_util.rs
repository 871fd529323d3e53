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
