//! diffusers' `AutoencoderKL` (the latent-diffusion VAE): the encoder maps images to the mean
//! and log-variance of the latent distribution, the decoder maps latents back to images. Its
//! resnets are the UNet's without time conditioning; every GroupNorm uses eps 1e-6.

pub mod decoder;
pub mod encoder;

use candle_core::{DType, Device, Tensor};

use crate::config_latent::AutoencoderKLConfig;
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, LayerMut};
use crate::unet2d::blocks::AttnSpec;
use crate::unet2d::resnet::ResnetSpec;
use crate::weights::WeightStore;
use decoder::Decoder;
use encoder::Encoder;

/// The epsilon of every VAE GroupNorm (diffusers hard-codes it).
pub const VAE_NORM_EPS: f64 = 1e-6;

pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    pub encoder: Encoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    pub decoder: Decoder,
    pub num_params: u64,
    device: Device,
    dtype: DType,
}

impl AutoencoderKL {
    /// Builds encoder and decoder; every checkpoint tensor must be used.
    pub fn load(cfg: AutoencoderKLConfig, w: &WeightStore) -> Result<Self> {
        let res = ResnetSpec {
            groups: cfg.norm_num_groups,
            eps: VAE_NORM_EPS,
            temb_channels: None,
            time_scale_shift: crate::config::TimeScaleShift::Default,
            output_scale_factor: 1.0,
        };
        let last = *cfg.block_out_channels.last().expect("validated non-empty");
        // One head over all channels (diffusers passes attention_head_dim = the width).
        let attn = AttnSpec {
            head_dim: Some(last),
            groups: Some(cfg.norm_num_groups),
            eps: VAE_NORM_EPS,
        };
        let l2 = 2 * cfg.latent_channels;
        let l = cfg.latent_channels;
        let model = Self {
            encoder: Encoder::load(w, "encoder", &cfg, res, attn)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::load(w, "quant_conv", l2, l2, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::load(w, "post_quant_conv", l, l, 1, 1, 0)?)
            } else {
                None
            },
            decoder: Decoder::load(w, "decoder", &cfg, res, attn)?,
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
        let cfg = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        let w = WeightStore::open(&crate::source::find_weights(dir)?, device, dtype)?;
        Self::load(cfg, &w)
    }

    /// Every conv and linear layer: encoder, `quant_conv`, `post_quant_conv`, decoder.
    pub fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let mut out = Vec::new();
        self.encoder.layers_mut(&mut out);
        if let Some(c) = &mut self.quant_conv {
            out.push(LayerMut::Conv(c));
        }
        if let Some(c) = &mut self.post_quant_conv {
            out.push(LayerMut::Conv(c));
        }
        self.decoder.layers_mut(&mut out);
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Images `[B, C, H, W]` (about [−1, 1]) → `(mean, logvar)` of the latent distribution,
    /// logvar clamped to [−30, 20] as diffusers does.
    pub fn encode(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let ch = x.dims4()?.1;
        if ch != self.config.in_channels {
            return Err(ModelError::Source(format!(
                "image has {ch} channels, the VAE takes {}",
                self.config.in_channels
            )));
        }
        let mut h = self.encoder.forward(x, ctx)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h, ctx)?;
        }
        let l = self.config.latent_channels;
        let mean = h.narrow(1, 0, l)?;
        let logvar = h.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// Latents `z` (already divided by `scaling_factor`, as pipelines do) → images.
    pub fn decode(&self, z: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let ch = z.dims4()?.1;
        if ch != self.config.latent_channels {
            return Err(ModelError::Source(format!(
                "latents have {ch} channels, the VAE takes {}",
                self.config.latent_channels
            )));
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z, ctx)?,
            None => z.clone(),
        };
        self.decoder.forward(&z, ctx)
    }
}
