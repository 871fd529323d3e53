//! Timestep and class embeddings of `UNet2DModel`.
//!
//! The sinusoidal projection is computed on the host in f32 with the same operation order as
//! diffusers' `get_timestep_embedding` (f32 exponent, f32 product, f32 sin/cos), so it matches
//! PyTorch to a few ulp and is identical on every device.

use candle_core::{DType, Device, Tensor};

use crate::config::{ClassEmbedding, TimeEmbeddingType, UNet2DConfig};
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{silu, Linear};
use crate::weights::WeightStore;

/// Sinusoidal embedding of `timesteps`, `[len, dim]`, as diffusers' `Timesteps` module.
pub fn sinusoidal(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Vec<f32> {
    let half = dim / 2;
    let log_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / denom).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let t = t as f32;
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if flip_sin_to_cos {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        };
        out.extend(first);
        out.extend(second);
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// `time_proj`: timestep -> vector fed to `time_embedding`.
pub enum TimeProj {
    Positional {
        dim: usize,
        flip: bool,
        shift: f64,
    },
    /// Gaussian Fourier features: `[sin(2π log(t) W), cos(2π log(t) W)]`.
    Fourier {
        weight: Vec<f32>,
    },
    Learned {
        table: Tensor,
    },
}

impl TimeProj {
    pub fn load(w: &WeightStore, cfg: &UNet2DConfig) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
        Ok(match cfg.time_embedding_type {
            TimeEmbeddingType::Positional => TimeProj::Positional {
                dim: c0,
                flip: cfg.flip_sin_to_cos,
                shift: cfg.freq_shift,
            },
            TimeEmbeddingType::Fourier => TimeProj::Fourier {
                weight: w
                    .get("time_proj.weight", &[c0])?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec1()?,
            },
            TimeEmbeddingType::Learned => {
                let n = cfg.num_train_timesteps.unwrap_or(0);
                TimeProj::Learned {
                    table: w.get("time_proj.weight", &[n, c0])?,
                }
            }
        })
    }

    /// Width of the projected vector.
    pub fn out_dim(&self) -> usize {
        match self {
            TimeProj::Positional { dim, .. } => *dim,
            TimeProj::Fourier { weight } => 2 * weight.len(),
            TimeProj::Learned { table } => table.dims()[1],
        }
    }

    pub fn forward(&self, timesteps: &[f64], device: &Device, dtype: DType) -> Result<Tensor> {
        let n = timesteps.len();
        let t = match self {
            TimeProj::Positional { dim, flip, shift } => Tensor::from_vec(
                sinusoidal(timesteps, *dim, *flip, *shift),
                (n, *dim),
                device,
            )?,
            TimeProj::Fourier { weight } => {
                let mut out = Vec::with_capacity(n * 2 * weight.len());
                for &t in timesteps {
                    let lt = (t as f32).ln();
                    let args: Vec<f32> = weight
                        .iter()
                        .map(|w| lt * w * 2.0 * std::f32::consts::PI)
                        .collect();
                    out.extend(args.iter().map(|a| a.sin()));
                    out.extend(args.iter().map(|a| a.cos()));
                }
                Tensor::from_vec(out, (n, 2 * weight.len()), device)?
            }
            TimeProj::Learned { table } => {
                let rows = table.dims()[0];
                let idx = timesteps
                    .iter()
                    .map(|&t| {
                        if t < 0.0 || t.fract() != 0.0 || t as usize >= rows {
                            Err(ModelError::Source(format!(
                                "timestep {t} is not an integer in 0..{rows}, which the learned time embedding requires"
                            )))
                        } else {
                            Ok(t as u32)
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                let idx = Tensor::from_vec(idx, n, table.device())?;
                return Ok(table.index_select(&idx, 0)?.to_dtype(dtype)?);
            }
        };
        Ok(t.to_dtype(dtype)?)
    }
}

/// `TimestepEmbedding`: linear, SiLU, linear.
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &WeightStore, path: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(w, &format!("{path}.linear_1"), in_dim, out_dim)?,
            linear_2: Linear::load(w, &format!("{path}.linear_2"), out_dim, out_dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = silu(&self.linear_1.forward(x, ctx)?)?;
        self.linear_2.forward(&h, ctx)
    }
}

/// Class conditioning added to the time embedding.
pub enum ClassEmbed {
    Table(Tensor),
    Timestep(TimestepEmbedding),
    Identity,
}

/// Class labels given to a conditional model.
pub enum ClassLabels<'a> {
    /// Integer class indices (table and timestep embeddings).
    Indices(&'a [u32]),
    /// Ready embedding vectors `[B, time_embed_dim]` (identity embedding).
    Vectors(&'a Tensor),
}

impl ClassEmbed {
    pub fn load(w: &WeightStore, cfg: &UNet2DConfig, proj_dim: usize) -> Result<Option<Self>> {
        let temb = cfg.time_embed_dim();
        Ok(match cfg.class_embedding {
            ClassEmbedding::None => None,
            ClassEmbedding::Table(n) => Some(ClassEmbed::Table(
                w.get("class_embedding.weight", &[n, temb])?,
            )),
            ClassEmbedding::Timestep => Some(ClassEmbed::Timestep(TimestepEmbedding::load(
                w,
                "class_embedding",
                proj_dim,
                temb,
            )?)),
            ClassEmbedding::Identity => Some(ClassEmbed::Identity),
        })
    }

    pub fn forward(
        &self,
        labels: &ClassLabels,
        proj: &TimeProj,
        ctx: &Ctx,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        match (self, labels) {
            (ClassEmbed::Table(table), ClassLabels::Indices(idx)) => {
                let rows = table.dims()[0];
                if let Some(bad) = idx.iter().find(|&&i| i as usize >= rows) {
                    return Err(ModelError::Source(format!(
                        "class label {bad} is out of range: the model has {rows} classes"
                    )));
                }
                let idx = Tensor::from_slice(idx, idx.len(), table.device())?;
                Ok(table.index_select(&idx, 0)?)
            }
            (ClassEmbed::Timestep(emb), ClassLabels::Indices(idx)) => {
                let t: Vec<f64> = idx.iter().map(|&i| i as f64).collect();
                emb.forward(&proj.forward(&t, device, dtype)?, ctx)
            }
            (ClassEmbed::Identity, ClassLabels::Vectors(v)) => Ok((*v).clone()),
            (ClassEmbed::Identity, ClassLabels::Indices(_)) => Err(ModelError::Source(
                "this model's identity class embedding takes embedding vectors, not class indices"
                    .into(),
            )),
            (_, ClassLabels::Vectors(_)) => Err(ModelError::Source(
                "this model's class embedding takes class indices, not vectors".into(),
            )),
        }
    }
}
