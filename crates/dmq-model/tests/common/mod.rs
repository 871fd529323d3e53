//! Shared helpers of the dmq-model integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

/// `../shared` beside the repository, where the golden files live.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn ddpm_small() -> PathBuf {
    shared().join("models/ddpm-cifar10-small")
}

/// max |a - b| / max |b|: the relative error measure of the golden README.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    dmq_model::compare::max_rel_err(a, b).unwrap()
}
