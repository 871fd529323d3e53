//! diffusers' `PixArtTransformer2DModel` (PixArt-α): patch embedding with a fixed 2-D sin-cos
//! table, one shared adaLN-single timestep modulation (plus a learned `scale_shift_table` per
//! block), cross-attention to projected caption embeddings with the caption mask as an additive
//! bias, and a final adaptive layer.

use candle_core::{DType, Device, Tensor};

use crate::config_latent::PatchTransformerConfig;
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{gelu_tanh, LayerMut, LayerNorm, Linear};
use crate::patch::{unpatchify, PatchEmbed};
use crate::transformer::block::{BlockSpec, NormKind};
use crate::transformer::norms::{chunks, modulate, AdaLayerNormSingle, TIME_PROJ_DIM};
use crate::transformer::{BasicTransformerBlock, BlockCond};
use crate::unet2d::embeddings::sinusoidal;
use crate::unet2d::Timesteps;
use crate::weights::WeightStore;

/// Score bias of a masked-out caption token (diffusers uses −10000, not −∞).
pub const MASKED_BIAS: f64 = -10000.0;

/// `PixArtAlphaTextProjection`: linear, GELU (tanh), linear.
pub struct CaptionProjection {
    pub path: String,
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl CaptionProjection {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = gelu_tanh(&self.linear_1.forward(x, ctx)?)?;
        let out = self.linear_2.forward(&h, ctx)?;
        ctx.tap(&self.path, &out);
        Ok(out)
    }
}

pub struct PixArtTransformer2DModel {
    pub config: PatchTransformerConfig,
    pub pos_embed: PatchEmbed,
    pub adaln_single: AdaLayerNormSingle,
    pub caption_projection: Option<CaptionProjection>,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// No affine parameters, eps 1e-6.
    pub norm_out: LayerNorm,
    /// `[2, D]`: shift, scale of the final layer (added to the embedded timestep).
    pub scale_shift_table: Tensor,
    pub proj_out: Linear,
    pub num_params: u64,
    device: Device,
    dtype: DType,
}

impl PixArtTransformer2DModel {
    pub fn load(cfg: PatchTransformerConfig, w: &WeightStore) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = cfg.patch_size;
        let spec = BlockSpec {
            dim: d,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
            cross_attention_dim: cfg.cross_attention_dim,
            attention_bias: cfg.attention_bias,
            activation: cfg.activation,
            norm: NormKind::AdaSingle,
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
                cfg.interpolation_scale,
            )?,
            adaln_single: AdaLayerNormSingle::load(w, "adaln_single", d)?,
            caption_projection: match cfg.caption_channels {
                Some(c) => Some(CaptionProjection {
                    path: "caption_projection".into(),
                    linear_1: Linear::load(w, "caption_projection.linear_1", c, d)?,
                    linear_2: Linear::load(w, "caption_projection.linear_2", d, d)?,
                }),
                None => None,
            },
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| BasicTransformerBlock::load(w, &format!("transformer_blocks.{i}"), spec))
                .collect::<Result<Vec<_>>>()?,
            norm_out: LayerNorm::load(w, "norm_out", d, 1e-6, false)?,
            scale_shift_table: w.get("scale_shift_table", &[2, d])?,
            proj_out: Linear::load(w, "proj_out", d, p * p * cfg.out_channels)?,
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
        let cfg = PatchTransformerConfig::pixart_from_file(&dir.join("config.json"))?;
        let w = WeightStore::open(&crate::source::find_weights(dir)?, device, dtype)?;
        Self::load(cfg, &w)
    }

    /// Every conv and linear layer in forward order.
    pub fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let mut out = vec![LayerMut::Conv(&mut self.pos_embed.proj)];
        self.adaln_single.layers_mut(&mut out);
        if let Some(c) = &mut self.caption_projection {
            out.push(LayerMut::Linear(&mut c.linear_1));
            out.push(LayerMut::Linear(&mut c.linear_2));
        }
        for b in self.transformer_blocks.iter_mut() {
            b.layers_mut(&mut out);
        }
        out.push(LayerMut::Linear(&mut self.proj_out));
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Output `[B, out_channels, H, W]`. `encoder_hidden_states`: `[B, S, caption_channels]`
    /// caption embeddings; `encoder_attention_mask`: `[B, S]`, 1 keep / 0 drop (any dtype).
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        encoder_hidden_states: &Tensor,
        encoder_attention_mask: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        if ch != self.config.in_channels {
            return Err(ModelError::Source(format!(
                "input has {ch} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        let (eb, s, _) = encoder_hidden_states.dims3()?;
        if eb != b {
            return Err(ModelError::Source(format!(
                "encoder hidden states for a batch of {eb}, the input has {b}"
            )));
        }
        let bias = match encoder_attention_mask {
            Some(m) => {
                if m.dims() != [b, s] {
                    return Err(ModelError::Source(format!(
                        "encoder attention mask of shape {:?}, expected [{b}, {s}]",
                        m.dims()
                    )));
                }
                let keep = m.to_dtype(self.dtype)?;
                Some(((1.0 - keep)? * MASKED_BIAS)?.reshape((b, 1, 1, s))?)
            }
            None => None,
        };
        let ts = timesteps.for_batch(b)?;
        let t_proj = Tensor::from_vec(
            sinusoidal(&ts, TIME_PROJ_DIM, true, 0.0),
            (b, TIME_PROJ_DIM),
            &self.device,
        )?
        .to_dtype(self.dtype)?;

        let mut tokens = self.pos_embed.forward(x, ctx)?;
        let (modulation, embedded) = self.adaln_single.forward(&t_proj, ctx)?;
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let context = match &self.caption_projection {
            Some(c) => c.forward(&context, ctx)?,
            None => context,
        };
        let cond = BlockCond::Modulation(&modulation);
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, Some(&context), bias.as_ref(), &cond, ctx)?;
        }
        let ss = chunks(
            &self
                .scale_shift_table
                .unsqueeze(0)?
                .broadcast_add(&embedded.unsqueeze(1)?)?,
            2,
        )?;
        let tokens = modulate(&self.norm_out.forward(&tokens, ctx)?, &ss[0], &ss[1])?;
        let out = self.proj_out.forward(&tokens, ctx)?;
        let p = self.config.patch_size;
        unpatchify(&out, h / p, w / p, p)
    }
}
