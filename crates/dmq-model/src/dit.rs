//! diffusers' `DiTTransformer2DModel` (class-conditional DiT): patch embedding with a fixed
//! 2-D sin-cos table, adaLN-Zero transformer blocks (each with its own timestep+class embedding
//! in `norm1.emb`), a final adaptive layer that reuses block 0's embedding, and unpatchify.

use candle_core::{DType, Device, Tensor};

use crate::config_latent::PatchTransformerConfig;
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{silu, LayerMut, LayerNorm, Linear};
use crate::patch::{unpatchify, PatchEmbed};
use crate::transformer::block::{BlockNorm, BlockSpec, NormKind};
use crate::transformer::norms::{chunks, modulate, TIME_PROJ_DIM};
use crate::transformer::{BasicTransformerBlock, BlockCond};
use crate::unet2d::embeddings::sinusoidal;
use crate::unet2d::Timesteps;
use crate::weights::WeightStore;

pub struct DiTTransformer2DModel {
    pub config: PatchTransformerConfig,
    pub pos_embed: PatchEmbed,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// No affine parameters, eps 1e-6.
    pub norm_out: LayerNorm,
    /// `[shift | scale]` of the final layer from block 0's conditioning.
    pub proj_out_1: Linear,
    pub proj_out_2: Linear,
    pub num_params: u64,
    device: Device,
    dtype: DType,
}

impl DiTTransformer2DModel {
    pub fn load(cfg: PatchTransformerConfig, w: &WeightStore) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = cfg.patch_size;
        if cfg.num_layers == 0 {
            return Err(ModelError::config(
                &cfg.path,
                "num_layers",
                "DiT needs at least one block (the final layer uses block 0's embedding)",
            ));
        }
        let spec = BlockSpec {
            dim: d,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
            cross_attention_dim: None,
            attention_bias: cfg.attention_bias,
            activation: cfg.activation,
            // The class table has one more row: the null class of classifier-free guidance.
            norm: NormKind::AdaZero {
                classes: cfg.num_embeds_ada_norm + 1,
            },
            norm_eps: cfg.norm_eps,
            norm_affine: cfg.norm_elementwise_affine,
        };
        let model = Self {
            pos_embed: PatchEmbed::load(
                w,
                "pos_embed",
                cfg.in_channels,
                d,
                p,
                cfg.sample_size,
                1.0,
            )?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| BasicTransformerBlock::load(w, &format!("transformer_blocks.{i}"), spec))
                .collect::<Result<Vec<_>>>()?,
            norm_out: LayerNorm::load(w, "norm_out", d, 1e-6, false)?,
            proj_out_1: Linear::load(w, "proj_out_1", d, 2 * d)?,
            proj_out_2: Linear::load(w, "proj_out_2", d, p * p * cfg.out_channels)?,
            num_params: w.elements_used(),
            device: w.device().clone(),
            dtype: w.dtype(),
            config: cfg,
        };
        w.check_all_used()?;
        Ok(model)
    }

    /// Loads a diffusers component folder (`config.json` and its safetensors checkpoint).
    pub fn from_folder(dir: &std::path::Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = PatchTransformerConfig::dit_from_file(&dir.join("config.json"))?;
        let w = WeightStore::open(&crate::source::find_weights(dir)?, device, dtype)?;
        Self::load(cfg, &w)
    }

    /// Every conv and linear layer in forward order.
    pub fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let mut out = vec![LayerMut::Conv(&mut self.pos_embed.proj)];
        for b in self.transformer_blocks.iter_mut() {
            b.layers_mut(&mut out);
        }
        out.push(LayerMut::Linear(&mut self.proj_out_1));
        out.push(LayerMut::Linear(&mut self.proj_out_2));
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The sinusoidal timestep features every block's embedding starts from (`[cos | sin]`,
    /// 256 wide, frequency shift 1).
    pub fn time_proj(&self, ts: &[f64]) -> Result<Tensor> {
        let t = sinusoidal(ts, TIME_PROJ_DIM, true, 1.0);
        Ok(Tensor::from_vec(t, (ts.len(), TIME_PROJ_DIM), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Output `[B, out_channels, H, W]` (with learned sigma: epsilon, then the variance
    /// channels). `class_labels`: `[B]` integer labels, `num_embeds_ada_norm` being the null class.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        class_labels: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        if ch != self.config.in_channels {
            return Err(ModelError::Source(format!(
                "input has {ch} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        if class_labels.dims() != [b] {
            return Err(ModelError::Source(format!(
                "class labels of shape {:?} for a batch of {b}",
                class_labels.dims()
            )));
        }
        let t_proj = self.time_proj(&timesteps.for_batch(b)?)?;
        let cond = BlockCond::TimestepLabels {
            t_proj: &t_proj,
            labels: class_labels,
        };
        let mut tokens = self.pos_embed.forward(x, ctx)?;
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, None, None, &cond, ctx)?;
        }
        let BlockNorm::AdaZero { norm1, .. } = &self.transformer_blocks[0].norm else {
            unreachable!("DiT blocks are built with adaLN-Zero")
        };
        let emb = norm1.emb.forward(&t_proj, class_labels, ctx)?;
        let ss = chunks(&self.proj_out_1.forward(&silu(&emb)?, ctx)?, 2)?;
        let tokens = modulate(&self.norm_out.forward(&tokens, ctx)?, &ss[0], &ss[1])?;
        let out = self.proj_out_2.forward(&tokens, ctx)?;
        let p = self.config.patch_size;
        unpatchify(&out, h / p, w / p, p)
    }
}
