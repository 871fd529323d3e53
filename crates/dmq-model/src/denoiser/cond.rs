//! The per-sample conditioning of a denoiser call, kept row-aligned with the batch so that
//! calibration sets can store, slice and shuffle it exactly like the inputs `x_t`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Conditioning of one batch: every present tensor has one row per sample.
#[derive(Debug, Clone, Default)]
pub struct Conditioning {
    /// `[B, S, C]` text embeddings: SD's encoder hidden states, PixArt's caption embeddings
    /// (before its caption projection).
    pub context: Option<Tensor>,
    /// `[B, S]` caption mask, 1 keep / 0 drop (PixArt).
    pub context_mask: Option<Tensor>,
    /// `[B]` u32 class labels (DiT: `num_embeds_ada_norm` is the null class).
    pub class_labels: Option<Tensor>,
}

/// Tensor names of a conditioning in safetensors files (calibration caches).
const NAMES: [&str; 3] = ["cond.context", "cond.context_mask", "cond.class_labels"];

impl Conditioning {
    /// No conditioning (unconditional models).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_none(&self) -> bool {
        self.context.is_none() && self.context_mask.is_none() && self.class_labels.is_none()
    }

    /// Class labels only.
    pub fn labels(labels: &[u32], device: &Device) -> Result<Self> {
        Ok(Self {
            class_labels: Some(Tensor::from_slice(labels, labels.len(), device)?),
            ..Self::default()
        })
    }

    fn parts(&self) -> [Option<&Tensor>; 3] {
        [
            self.context.as_ref(),
            self.context_mask.as_ref(),
            self.class_labels.as_ref(),
        ]
    }

    fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        let g = |t: &Option<Tensor>| t.as_ref().map(&f).transpose();
        Ok(Self {
            context: g(&self.context)?,
            context_mask: g(&self.context_mask)?,
            class_labels: g(&self.class_labels)?,
        })
    }

    /// Rows per tensor (`None` when there is none); the tensors must agree.
    pub fn rows(&self) -> Result<Option<usize>> {
        let mut rows = None;
        for t in self.parts().into_iter().flatten() {
            let r = t.dims().first().copied().unwrap_or(0);
            match rows {
                Some(n) if n != r => {
                    return Err(ModelError::Source(format!(
                        "conditioning tensors disagree on the batch size ({n} vs {r})"
                    )))
                }
                _ => rows = Some(r),
            }
        }
        Ok(rows)
    }

    /// Rows `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        self.map(|t| t.narrow(0, start, len))
    }

    /// The rows `idx` (u32, any device).
    pub fn index_select(&self, idx: &Tensor) -> Result<Self> {
        self.map(|t| t.index_select(&idx.to_device(t.device())?, 0))
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(|t| t.to_device(device))
    }

    /// Without autograd history.
    pub fn detach(&self) -> Result<Self> {
        self.map(|t| Ok(t.detach()))
    }

    /// The parts stacked along the batch (all parts must hold the same tensors).
    pub fn cat(parts: &[Conditioning]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Ok(Self::none());
        };
        let pick = |f: fn(&Conditioning) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            if f(first).is_none() {
                if parts.iter().any(|p| f(p).is_some()) {
                    return Err(ModelError::Source(
                        "conditioning parts of a batch hold different tensors".into(),
                    ));
                }
                return Ok(None);
            }
            let ts: Option<Vec<&Tensor>> = parts.iter().map(f).collect();
            let ts = ts.ok_or_else(|| {
                ModelError::Source("conditioning parts of a batch hold different tensors".into())
            })?;
            Ok(Some(Tensor::cat(&ts, 0)?))
        };
        Ok(Self {
            context: pick(|c| c.context.as_ref())?,
            context_mask: pick(|c| c.context_mask.as_ref())?,
            class_labels: pick(|c| c.class_labels.as_ref())?,
        })
    }

    /// Named tensors for a safetensors file (`cond.*`).
    pub fn named(&self) -> Vec<(String, Tensor)> {
        NAMES
            .iter()
            .zip(self.parts())
            .filter_map(|(n, t)| t.map(|t| (n.to_string(), t.clone())))
            .collect()
    }

    /// Reads back what [`Conditioning::named`] wrote (absent names are absent parts).
    pub fn from_named(tensors: &HashMap<String, Tensor>) -> Self {
        let get = |n: &str| tensors.get(n).cloned();
        Self {
            context: get(NAMES[0]),
            context_mask: get(NAMES[1]),
            class_labels: get(NAMES[2]),
        }
    }
}
