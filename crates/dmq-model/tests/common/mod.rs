//! Shared helpers of the dmq-model integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// `../shared` beside the repository, where the golden files live.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn ddpm_small() -> PathBuf {
    shared().join("models/ddpm-cifar10-small")
}

/// max |a - b| / max |b|: the relative error measure of the golden README.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}
