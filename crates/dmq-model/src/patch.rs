//! Patch embedding (`PatchEmbed`: patchify conv, tokens, + 2-D sin-cos table) and its inverse
//! (`unpatchify`) for DiT and PixArt.

use candle_core::Tensor;

use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::Conv2d;
use crate::pos_embed::sincos_2d;
use crate::weights::WeightStore;

pub struct PatchEmbed {
    pub path: String,
    /// `pos_embed.proj`: kernel and stride `patch`.
    pub proj: Conv2d,
    pub patch: usize,
    /// `sample_size / patch`: the grid the position table is laid out for.
    pub base_size: usize,
    pub interpolation_scale: f64,
}

impl PatchEmbed {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        dim: usize,
        patch: usize,
        sample_size: usize,
        interpolation_scale: f64,
    ) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            proj: Conv2d::load(w, &format!("{path}.proj"), in_c, dim, patch, patch, 0)?,
            patch,
            base_size: sample_size / patch,
            interpolation_scale,
        })
    }

    /// The position table `[1, gh·gw, D]` for a `gh × gw` patch grid.
    pub fn table(&self, gh: usize, gw: usize, x: &Tensor) -> Result<Tensor> {
        let dim = self.proj.out_channels();
        let t = sincos_2d(dim, gh, gw, self.base_size, self.interpolation_scale);
        Ok(Tensor::from_vec(t, (1, gh * gw, dim), x.device())?.to_dtype(x.dtype())?)
    }

    /// `[B, C, H, W]` → tokens `[B, (H/p)·(W/p), D]` with the position table added.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if !h.is_multiple_of(self.patch) || !w.is_multiple_of(self.patch) {
            return Err(ModelError::Source(format!(
                "input of {h}x{w} is not a multiple of the patch size {}",
                self.patch
            )));
        }
        let y = self.proj.forward(x, ctx)?;
        let (b, d, gh, gw) = y.dims4()?;
        let tokens = y.reshape((b, d, gh * gw))?.transpose(1, 2)?;
        let out = tokens.broadcast_add(&self.table(gh, gw, x)?)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}

/// Tokens `[B, gh·gw, p·p·C]` → image `[B, C, gh·p, gw·p]` (`einsum("nhwpqc->nchpwq")`).
pub fn unpatchify(x: &Tensor, gh: usize, gw: usize, p: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let c = d / (p * p);
    if n != gh * gw || c * p * p != d {
        return Err(ModelError::Source(format!(
            "cannot unpatchify [{b}, {n}, {d}] into a {gh}x{gw} grid of {p}x{p} patches"
        )));
    }
    Ok(x.reshape(vec![b, gh, gw, p, p, c])?
        .permute(vec![0, 5, 1, 3, 2, 4])?
        .contiguous()?
        .reshape((b, c, gh * p, gw * p))?)
}
