//! [`Denoiser`]: any of the four classes, built from a component's `config.json` and weights,
//! and the [`DenoiserModel`] implementations (the UNet2DModel one delegates to its own code,
//! so the DDPM path computes exactly what it did before the abstraction).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::units::{dit_units, pixart_units, unet_condition_units, UnitRef};
use super::{Conditioning, DenoiserClass, DenoiserModel};
use crate::config::{ClassEmbedding, UNet2DConfig};
use crate::config_latent::{PatchTransformerConfig, UNet2DConditionConfig};
use crate::ctx::Ctx;
use crate::dit::DiTTransformer2DModel;
use crate::error::{ModelError, Result};
use crate::layers::LayerMut;
use crate::pixart::PixArtTransformer2DModel;
use crate::unet2d::embeddings::ClassLabels;
use crate::unet2d::units::Unit;
use crate::unet2d::{Timesteps, UNet2DModel};
use crate::unet2d_condition::blocks::CondUpBlock;
use crate::unet2d_condition::UNet2DConditionModel;
use crate::weights::WeightStore;

/// Text length of the placeholder embeddings `inspect` traces with: CLIP's 77 tokens (SD) and
/// the 120 T5 tokens of diffusers' PixArt-α pipeline.
const SD_TOKENS: usize = 77;
const PIXART_TOKENS: usize = 120;

/// The network of a [`Denoiser`].
pub enum Net {
    Unet2D(Box<UNet2DModel>),
    Unet2DCondition(Box<UNet2DConditionModel>),
    DiT(Box<DiTTransformer2DModel>),
    PixArt(Box<PixArtTransformer2DModel>),
}

/// A denoiser of any supported class, with its layer paths listed once (they never change
/// after loading; units are described from them).
pub struct Denoiser {
    net: Net,
    layer_paths: Vec<String>,
}

impl Denoiser {
    pub fn new(mut net: Net) -> Self {
        let layer_paths = match &mut net {
            Net::Unet2D(m) => UNet2DModel::layer_paths(m),
            Net::Unet2DCondition(m) => paths(m.layers_mut()),
            Net::DiT(m) => paths(m.layers_mut()),
            Net::PixArt(m) => paths(m.layers_mut()),
        };
        Self { net, layer_paths }
    }

    /// Builds the class `class` from its config text (`cfg_path` names it in errors) and
    /// checkpoint; every checkpoint tensor must be used.
    pub fn load(
        class: DenoiserClass,
        cfg_path: &Path,
        cfg_text: &str,
        w: &WeightStore,
    ) -> Result<Self> {
        let net = match class {
            DenoiserClass::Unet2D => Net::Unet2D(Box::new(UNet2DModel::load(
                UNet2DConfig::from_json_str(cfg_path, cfg_text)?,
                w,
            )?)),
            DenoiserClass::Unet2DCondition => {
                Net::Unet2DCondition(Box::new(UNet2DConditionModel::load(
                    UNet2DConditionConfig::from_json_str(cfg_path, cfg_text)?,
                    w,
                )?))
            }
            DenoiserClass::DiT => Net::DiT(Box::new(DiTTransformer2DModel::load(
                PatchTransformerConfig::dit_from_json_str(cfg_path, cfg_text)?,
                w,
            )?)),
            DenoiserClass::PixArt => Net::PixArt(Box::new(PixArtTransformer2DModel::load(
                PatchTransformerConfig::pixart_from_json_str(cfg_path, cfg_text)?,
                w,
            )?)),
        };
        Ok(Self::new(net))
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The pixel-space UNet, for code that only handles `UNet2DModel` yet (PTQD, integer
    /// execution, Qua²SeDiMo).
    pub fn as_unet2d(&self) -> Option<&UNet2DModel> {
        match &self.net {
            Net::Unet2D(m) => Some(m),
            _ => None,
        }
    }

    pub fn into_unet2d(self) -> std::result::Result<UNet2DModel, Self> {
        match self.net {
            Net::Unet2D(m) => Ok(*m),
            net => Err(Self {
                net,
                layer_paths: self.layer_paths,
            }),
        }
    }

    /// Width `C` of the text embeddings `[B, S, C]` the model takes (SD: `cross_attention_dim`,
    /// PixArt: `caption_channels`); `None` for models without text conditioning.
    pub fn context_width(&self) -> Option<usize> {
        match &self.net {
            Net::Unet2DCondition(m) => Some(m.config.cross_attention_dim),
            Net::PixArt(m) => m.config.caption_channels.or(m.config.cross_attention_dim),
            Net::Unet2D(_) | Net::DiT(_) => None,
        }
    }

    /// DiT: the number of classes, whose index is also the null class of classifier-free
    /// guidance (`num_embeds_ada_norm`).
    pub fn num_classes(&self) -> Option<usize> {
        match &self.net {
            Net::DiT(m) => Some(m.config.num_embeds_ada_norm),
            _ => None,
        }
    }

    fn unit_refs(&self) -> Vec<UnitRef<'_>> {
        match &self.net {
            Net::Unet2D(_) => Vec::new(),
            Net::Unet2DCondition(m) => unet_condition_units(m),
            Net::DiT(m) => dit_units(m),
            Net::PixArt(m) => pixart_units(m),
        }
    }
}

fn paths(layers: Vec<LayerMut<'_>>) -> Vec<String> {
    layers.iter().map(|l| l.path().to_string()).collect()
}

fn no_cond(cond: &Conditioning, class: DenoiserClass, what: &str) -> Result<()> {
    if cond.context.is_some() || cond.context_mask.is_some() {
        return Err(ModelError::Source(format!(
            "{class} takes no {what}: text embeddings were given"
        )));
    }
    Ok(())
}

fn need<'a>(t: Option<&'a Tensor>, class: DenoiserClass, what: &str) -> Result<&'a Tensor> {
    t.ok_or_else(|| ModelError::Source(format!("{class} is conditioned on {what}: pass them")))
}

impl DenoiserModel for UNet2DModel {
    fn class(&self) -> DenoiserClass {
        DenoiserClass::Unet2D
    }

    fn forward_cond(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        cond: &Conditioning,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        no_cond(cond, DenoiserClass::Unet2D, "text conditioning")?;
        match &cond.class_labels {
            None => self.forward(x, timesteps, None, ctx),
            Some(l) => {
                let idx: Vec<u32> = l.to_dtype(DType::U32)?.to_vec1()?;
                self.forward(x, timesteps, Some(&ClassLabels::Indices(&idx)), ctx)
            }
        }
    }

    fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        UNet2DModel::layers_mut(self)
    }

    fn units(&self) -> Vec<Unit> {
        UNet2DModel::units(self)
    }

    fn unit_forward(&self, unit: &str, inputs: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        UNet2DModel::unit_forward(self, unit, inputs, ctx)
    }

    fn split_points(&self) -> BTreeMap<String, usize> {
        UNet2DModel::split_points(self)
    }

    fn device(&self) -> &Device {
        UNet2DModel::device(self)
    }

    fn dtype(&self) -> DType {
        UNet2DModel::dtype(self)
    }

    fn sample_shape(&self) -> Option<[usize; 3]> {
        self.config
            .sample_size
            .map(|s| [self.config.in_channels, s, s])
    }

    fn prediction_channels(&self) -> usize {
        self.config.out_channels
    }

    fn num_params(&self) -> u64 {
        self.num_params
    }

    fn example_forward(&self, res: usize, ctx: &Ctx) -> Result<Tensor> {
        let x = Tensor::zeros(
            (1, self.config.in_channels, res, res),
            self.dtype(),
            self.device(),
        )?;
        // A class-conditional model needs some label to run; which one does not change the count.
        let label = [0u32];
        let vector = Tensor::zeros(
            (1, self.config.time_embed_dim()),
            self.dtype(),
            self.device(),
        )?;
        let labels = match self.config.class_embedding {
            ClassEmbedding::None => None,
            ClassEmbedding::Identity => Some(ClassLabels::Vectors(&vector)),
            _ => Some(ClassLabels::Indices(&label)),
        };
        self.forward(&x, Timesteps::Shared(500.0), labels.as_ref(), ctx)
    }
}

impl DenoiserModel for Denoiser {
    fn class(&self) -> DenoiserClass {
        match &self.net {
            Net::Unet2D(_) => DenoiserClass::Unet2D,
            Net::Unet2DCondition(_) => DenoiserClass::Unet2DCondition,
            Net::DiT(_) => DenoiserClass::DiT,
            Net::PixArt(_) => DenoiserClass::PixArt,
        }
    }

    fn forward_cond(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        cond: &Conditioning,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let class = self.class();
        match &self.net {
            Net::Unet2D(m) => m.forward_cond(x, timesteps, cond, ctx),
            Net::Unet2DCondition(m) => {
                let c = need(cond.context.as_ref(), class, "text embeddings")?;
                m.forward(x, timesteps, c, ctx)
            }
            Net::DiT(m) => {
                no_cond(cond, class, "text conditioning")?;
                let l = need(cond.class_labels.as_ref(), class, "class labels")?;
                m.forward(x, timesteps, l, ctx)
            }
            Net::PixArt(m) => {
                let c = need(cond.context.as_ref(), class, "caption embeddings")?;
                m.forward(x, timesteps, c, cond.context_mask.as_ref(), ctx)
            }
        }
    }

    fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        match &mut self.net {
            Net::Unet2D(m) => UNet2DModel::layers_mut(m),
            Net::Unet2DCondition(m) => m.layers_mut(),
            Net::DiT(m) => m.layers_mut(),
            Net::PixArt(m) => m.layers_mut(),
        }
    }

    fn layer_paths(&mut self) -> Vec<String> {
        self.layer_paths.clone()
    }

    fn units(&self) -> Vec<Unit> {
        match &self.net {
            Net::Unet2D(m) => UNet2DModel::units(m),
            _ => self
                .unit_refs()
                .iter()
                .map(|u| u.describe(&self.layer_paths))
                .collect(),
        }
    }

    fn unit_forward(&self, unit: &str, inputs: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        if let Net::Unet2D(m) = &self.net {
            return UNet2DModel::unit_forward(m, unit, inputs, ctx);
        }
        self.unit_refs()
            .into_iter()
            .find(|u| u.path() == unit)
            .ok_or_else(|| ModelError::Source(format!("the model has no unit `{unit}`")))?
            .run(inputs, ctx)
    }

    fn split_points(&self) -> BTreeMap<String, usize> {
        match &self.net {
            Net::Unet2D(m) => UNet2DModel::split_points(m),
            // SD's decoder resnets take `cat([h, skip])` like the DDPM's.
            Net::Unet2DCondition(m) => {
                let mut out = BTreeMap::new();
                for b in &m.up_blocks {
                    let resnets = match b {
                        CondUpBlock::Plain(b) => &b.resnets,
                        CondUpBlock::CrossAttn(b) => &b.resnets,
                    };
                    for r in resnets {
                        if let (Some(s), Some(split)) = (&r.conv_shortcut, r.input_split) {
                            out.insert(s.path.clone(), split);
                        }
                    }
                }
                out
            }
            Net::DiT(_) | Net::PixArt(_) => BTreeMap::new(),
        }
    }

    fn device(&self) -> &Device {
        match &self.net {
            Net::Unet2D(m) => UNet2DModel::device(m),
            Net::Unet2DCondition(m) => m.device(),
            Net::DiT(m) => m.device(),
            Net::PixArt(m) => m.device(),
        }
    }

    fn dtype(&self) -> DType {
        match &self.net {
            Net::Unet2D(m) => UNet2DModel::dtype(m),
            Net::Unet2DCondition(m) => m.dtype(),
            Net::DiT(m) => m.dtype(),
            Net::PixArt(m) => m.dtype(),
        }
    }

    fn sample_shape(&self) -> Option<[usize; 3]> {
        match &self.net {
            Net::Unet2D(m) => m.sample_shape(),
            Net::Unet2DCondition(m) => {
                let c = &m.config;
                Some([c.in_channels, c.sample_size, c.sample_size])
            }
            Net::DiT(m) => Some([
                m.config.in_channels,
                m.config.sample_size,
                m.config.sample_size,
            ]),
            Net::PixArt(m) => Some([
                m.config.in_channels,
                m.config.sample_size,
                m.config.sample_size,
            ]),
        }
    }

    fn prediction_channels(&self) -> usize {
        match &self.net {
            Net::Unet2D(m) => m.prediction_channels(),
            Net::Unet2DCondition(m) => m.config.out_channels,
            // Learned sigma: epsilon first, then as many variance channels.
            Net::DiT(m) => m.config.in_channels.min(m.config.out_channels),
            Net::PixArt(m) => m.config.in_channels.min(m.config.out_channels),
        }
    }

    fn num_params(&self) -> u64 {
        match &self.net {
            Net::Unet2D(m) => m.num_params,
            Net::Unet2DCondition(m) => m.num_params,
            Net::DiT(m) => m.num_params,
            Net::PixArt(m) => m.num_params,
        }
    }

    fn example_forward(&self, res: usize, ctx: &Ctx) -> Result<Tensor> {
        let (dtype, device) = (self.dtype(), self.device().clone());
        let in_c = self.sample_shape().map_or(4, |s| s[0]);
        let x = Tensor::zeros((1, in_c, res, res), dtype, &device)?;
        let cond = match &self.net {
            Net::Unet2D(m) => return m.example_forward(res, ctx),
            Net::Unet2DCondition(m) => Conditioning {
                context: Some(Tensor::zeros(
                    (1, SD_TOKENS, m.config.cross_attention_dim),
                    dtype,
                    &device,
                )?),
                ..Conditioning::none()
            },
            Net::DiT(_) => Conditioning::labels(&[0], &device)?,
            Net::PixArt(m) => {
                let width = m
                    .config
                    .caption_channels
                    .or(m.config.cross_attention_dim)
                    .unwrap_or(m.config.inner_dim());
                Conditioning {
                    context: Some(Tensor::zeros((1, PIXART_TOKENS, width), dtype, &device)?),
                    ..Conditioning::none()
                }
            }
        };
        self.forward_cond(&x, Timesteps::Shared(500.0), &cond, ctx)
    }
}
