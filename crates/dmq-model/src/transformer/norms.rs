//! The conditioning of DiT (adaLN-Zero) and PixArt (adaLN-single) blocks.

use candle_core::{DType, Tensor};

use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{silu, LayerMut, LayerNorm, Linear};
use crate::unet2d::embeddings::TimestepEmbedding;
use crate::weights::WeightStore;

/// Width of the sinusoidal timestep features of DiT and PixArt (`Timesteps(256, ...)`).
pub const TIME_PROJ_DIM: usize = 256;

/// `x · (1 + scale) + shift`, the adaptive modulation of a normalised activation.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

/// Splits `[B, k·D]` (or `[B, k, D]`) into `k` tensors `[B, 1, D]`, in order.
pub fn chunks(t: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let b = t.dims()[0];
    let d = t.elem_count() / (b * k);
    let t = t.reshape((b, k, d))?;
    (0..k)
        .map(|i| Ok(t.narrow(1, i, 1)?))
        .collect::<Result<Vec<_>>>()
}

/// `CombinedTimestepLabelEmbeddings` (DiT's `norm1.emb`): `timestep_embedder(t features)` plus a
/// row of `class_embedder.embedding_table` (the last row is the null class of
/// classifier-free guidance).
pub struct TimestepLabelEmbedding {
    pub path: String,
    pub timestep_embedder: TimestepEmbedding,
    pub class_table: Tensor,
}

impl TimestepLabelEmbedding {
    pub fn load(w: &WeightStore, path: &str, rows: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            timestep_embedder: TimestepEmbedding::load(
                w,
                &format!("{path}.timestep_embedder"),
                TIME_PROJ_DIM,
                dim,
            )?,
            class_table: w.get(
                &format!("{path}.class_embedder.embedding_table.weight"),
                &[rows, dim],
            )?,
        })
    }

    /// `t_proj`: `[B, 256]` timestep features; `labels`: `[B]` integer class indices.
    pub fn forward(&self, t_proj: &Tensor, labels: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let rows = self.class_table.dims()[0];
        let idx = labels.to_dtype(DType::U32)?;
        if let Some(bad) = idx.to_vec1::<u32>()?.iter().find(|&&i| i as usize >= rows) {
            return Err(ModelError::Source(format!(
                "{}: class label {bad} is out of range: the table has {rows} rows",
                self.path
            )));
        }
        let t = self.timestep_embedder.forward(t_proj, ctx)?;
        let c = self
            .class_table
            .index_select(&idx.to_device(self.class_table.device())?, 0)?;
        let out = (t + c)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}

/// `AdaLayerNormZero` (DiT's `norm1`): its own conditioning embedding, then
/// `linear(silu(emb))` gives six modulation vectors; the norm has no affine parameters, eps 1e-6.
pub struct AdaLayerNormZero {
    pub emb: TimestepLabelEmbedding,
    pub linear: Linear,
    pub norm: LayerNorm,
}

impl AdaLayerNormZero {
    pub fn load(w: &WeightStore, path: &str, dim: usize, classes: usize) -> Result<Self> {
        Ok(Self {
            emb: TimestepLabelEmbedding::load(w, &format!("{path}.emb"), classes, dim)?,
            linear: Linear::load(w, &format!("{path}.linear"), dim, 6 * dim)?,
            norm: LayerNorm::load(w, &format!("{path}.norm"), dim, 1e-6, false)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Linear(&mut self.emb.timestep_embedder.linear_1));
        out.push(LayerMut::Linear(&mut self.emb.timestep_embedder.linear_2));
        out.push(LayerMut::Linear(&mut self.linear));
    }

    /// The six modulation vectors `[B, 1, D]`: shift_msa, scale_msa, gate_msa, shift_mlp,
    /// scale_mlp, gate_mlp.
    pub fn modulation(&self, t_proj: &Tensor, labels: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let emb = self.emb.forward(t_proj, labels, ctx)?;
        chunks(&self.linear.forward(&silu(&emb)?, ctx)?, 6)
    }
}

/// `AdaLayerNormSingle` (PixArt's `adaln_single`): computed once per forward, shared by all
/// blocks. Returns `(timestep [B, 6D], embedded_timestep [B, D])`.
pub struct AdaLayerNormSingle {
    pub path: String,
    pub timestep_embedder: TimestepEmbedding,
    pub linear: Linear,
}

impl AdaLayerNormSingle {
    pub fn load(w: &WeightStore, path: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            timestep_embedder: TimestepEmbedding::load(
                w,
                &format!("{path}.emb.timestep_embedder"),
                TIME_PROJ_DIM,
                dim,
            )?,
            linear: Linear::load(w, &format!("{path}.linear"), dim, 6 * dim)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        out.push(LayerMut::Linear(&mut self.timestep_embedder.linear_1));
        out.push(LayerMut::Linear(&mut self.timestep_embedder.linear_2));
        out.push(LayerMut::Linear(&mut self.linear));
    }

    pub fn forward(&self, t_proj: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let embedded = self.timestep_embedder.forward(t_proj, ctx)?;
        let timestep = self.linear.forward(&silu(&embedded)?, ctx)?;
        ctx.tap(&format!("{}.timestep", self.path), &timestep);
        ctx.tap(&format!("{}.embedded_timestep", self.path), &embedded);
        Ok((timestep, embedded))
    }
}
