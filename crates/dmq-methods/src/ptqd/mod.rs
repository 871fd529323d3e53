//! PTQD (He et al., NeurIPS 2023, arXiv 2305.10657): correction of the quantization noise of a
//! diffusion model's noise prediction, in the sampler.
//!
//! * [`stats`]: per sampling step, the fit `ε̂ − ε = k·ε + b_c + Δ'` (slope `k`, per-channel bias
//!   `b_c`, residual standard deviation `σ_q`), accumulated in f64;
//! * [`collect`]: measuring it on full-precision trajectories, FP and quantized network on the
//!   same inputs;
//! * [`correction`]: `ε̃ = (ε̂ − b)/(1 + k)` and the residual variance handed to dmq-sched's
//!   variance schedule calibration, any subset of CNC / BC / VSC;
//! * [`precision`]: step-aware mixed precision of the activations by the SNR criterion;
//! * [`store`]: the statistics in the quantized artifact, keyed by timestep, with the sampling
//!   protocol they are valid for;
//! * [`stage`]: all of it after any quantization (`dmq quantize --ptqd`, `dmq ptqd`).
//!
//! What dmq does and where it differs from the paper and the reference code:
//! `docs/methods-ptqd.md`.

pub mod collect;
pub mod correction;
pub mod precision;
pub mod stage;
pub mod stats;
pub mod store;

pub use collect::{
    collect, collect_indexed, unet_denoiser, CollectSpec, IndexedDenoiser, SampleSpace,
};
pub use correction::{correct_output, residual_variance, Parts, PtqdCorrection};
pub use stage::{measure, measure_indexed, run_after_quantize, AfterQuantize, StageOutcome};
pub use stats::{StepAccumulator, StepFit};
pub use store::{Protocol, PtqdSection, PtqdSet, StepStats};

/// Everything that can go wrong in PTQD; messages name the step, tensor or file.
#[derive(Debug, thiserror::Error)]
pub enum PtqdError {
    /// Statistics that cannot be fitted or applied (empty, non-finite, mismatched shapes).
    #[error("PTQD: {0}")]
    Stats(String),
    /// A sampling protocol the statistics are not valid for, or bad correction switches.
    #[error("{0}")]
    Protocol(String),
    /// A damaged PTQD section or tensor file in an artifact.
    #[error("{path}: {message}")]
    Artifact { path: String, message: String },
    #[error(transparent)]
    Sched(#[from] dmq_sched::SchedError),
    #[error(transparent)]
    Model(#[from] dmq_model::ModelError),
    #[error(transparent)]
    Quant(#[from] dmq_quant::uniform::QuantError),
    #[error(transparent)]
    ArtifactIo(#[from] dmq_quant::artifact::ArtifactError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, PtqdError>;
