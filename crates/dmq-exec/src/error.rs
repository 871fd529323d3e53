//! Errors of integer execution: each names what it is about (layer, tensor, file).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Shapes or parameters that the integer kernels cannot take.
    #[error("{0}")]
    Shape(String),
    /// A problem with one layer of a model.
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
    /// A problem with a file of a quantized-model artifact.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Artifact(#[from] dmq_quant::artifact::ArtifactError),
    #[error(transparent)]
    Model(#[from] dmq_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExecError>;

impl ExecError {
    /// The same error, attributed to `layer` (shape errors only; others already say where).
    pub fn in_layer(self, layer: &str) -> Self {
        match self {
            ExecError::Shape(message) => ExecError::Layer {
                layer: layer.to_string(),
                message,
            },
            e => e,
        }
    }
}
