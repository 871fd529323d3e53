//! Errors of schedule reading, scheduler construction and sampling.

use dmq_config::ConfigError;

/// Everything that can go wrong in this crate. Config problems name the file and the field
/// (through [`ConfigError`]); the others name the value that is out of range.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// `scheduler_config.json` is unreadable, malformed, or has an unknown or unsupported field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `num_inference_steps` outside `1..=num_train_timesteps`.
    #[error(
        "{steps} inference steps requested: must be between 1 and num_train_timesteps = {train}"
    )]
    Steps { steps: usize, train: usize },
    /// A sampler setting that cannot work with this schedule (eta, steps_offset, zero SNR, ...).
    #[error("{0}")]
    Invalid(String),
    /// `step` was called with an index past the end of the timestep list.
    #[error("step index {index} is out of range: the schedule has {len} steps")]
    StepIndex { index: usize, len: usize },
    /// The scheduler needs gaussian noise at this step but the caller gave none.
    #[error(
        "{sampler} step {index} (timestep {timestep}) adds noise, but no noise tensor was given"
    )]
    MissingNoise {
        sampler: &'static str,
        index: usize,
        timestep: usize,
    },
    /// An error raised by a caller's closure in [`crate::sample`] (the denoiser, usually).
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl SchedError {
    /// Wraps any error (a model error, an `anyhow::Error`, a `String`) so that a closure passed
    /// to [`crate::sample`] can return it: `unet.forward(x, t).map_err(SchedError::other)`.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Other(e.into())
    }
}

pub type Result<T> = std::result::Result<T, SchedError>;
