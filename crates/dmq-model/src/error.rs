//! Errors of model loading and execution. Each names the file and the field or tensor involved,
//! so a user can find what is wrong without reading our code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("model weights: tensor `{tensor}` is missing (looked in {files})")]
    MissingTensor { tensor: String, files: String },
    #[error("{path}: {count} tensor(s) are not used by the model built from config.json, e.g. {examples}: the config and the weights do not match")]
    UnusedTensors {
        path: PathBuf,
        count: usize,
        examples: String,
    },
    #[error("{0}")]
    Source(String),
    /// Not a failure: a capturing forward (`Ctx::capturing`) reached its unit and stopped.
    #[error("forward stopped after capturing the inputs of `{0}`")]
    Captured(String),
    #[error("hub model `{id}`: {message}")]
    Hub { id: String, message: String },
    #[error(transparent)]
    ConfigFile(#[from] dmq_config::ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ModelError::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}
