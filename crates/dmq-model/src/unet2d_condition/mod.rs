//! diffusers' `UNet2DConditionModel` (Stable Diffusion's denoiser), built from its
//! `config.json` and checkpoint: the `UNet2DModel` resnets, samplers and time embedding, plus
//! spatial transformers that cross-attend to the text embeddings.

pub mod blocks;

use candle_core::{DType, Device, Tensor};

use crate::config_latent::{CondDownBlockType, CondUpBlockType, UNet2DConditionConfig};
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{silu, Conv2d, GroupNorm, LayerMut};
use crate::transformer::block::{BlockSpec, NormKind};
use crate::transformer::Activation;
use crate::unet2d::blocks::{AttnSpec, DownBlock, UpBlock};
use crate::unet2d::embeddings::{TimeProj, TimestepEmbedding};
use crate::unet2d::resnet::ResnetSpec;
use crate::unet2d::Timesteps;
use crate::weights::WeightStore;
use blocks::{
    CondDownBlock, CondUpBlock, CrossAttnDownBlock, CrossAttnMidBlock, CrossAttnUpBlock,
    TransformerSpec,
};

pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    pub conv_in: Conv2d,
    pub time_proj: TimeProj,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<CondDownBlock>,
    pub mid_block: Option<CrossAttnMidBlock>,
    pub up_blocks: Vec<CondUpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// Scalar parameters in the checkpoint (all of them are used).
    pub num_params: u64,
    device: Device,
    dtype: DType,
}

impl UNet2DConditionModel {
    /// Builds the model; every checkpoint tensor must be used, with the shape the config implies.
    pub fn load(cfg: UNet2DConditionConfig, w: &WeightStore) -> Result<Self> {
        let c = cfg.block_out_channels.clone();
        let n = c.len();
        let temb = cfg.time_embed_dim();
        let time_proj = TimeProj::Positional {
            dim: c[0],
            flip: cfg.flip_sin_to_cos,
            shift: cfg.freq_shift,
        };
        let time_embedding = TimestepEmbedding::load(w, "time_embedding", c[0], temb)?;
        let res = ResnetSpec {
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            temb_channels: Some(temb),
            time_scale_shift: crate::config::TimeScaleShift::Default,
            output_scale_factor: 1.0,
        };
        // Unused by plain blocks (they have no attention).
        let no_attn = AttnSpec {
            head_dim: None,
            groups: None,
            eps: cfg.norm_eps,
        };
        let tf = TransformerSpec {
            groups: cfg.norm_num_groups,
            layers: cfg.transformer_layers_per_block,
            linear_projection: cfg.use_linear_projection,
            block: BlockSpec {
                dim: 0,
                heads: 0,
                head_dim: 0,
                cross_attention_dim: Some(cfg.cross_attention_dim),
                attention_bias: false,
                activation: Activation::Geglu,
                norm: NormKind::LayerNorm,
                norm_eps: 1e-5,
                norm_affine: true,
            },
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = c[0];
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = c[i];
            let path = format!("down_blocks.{i}");
            let last = i + 1 == n;
            down_blocks.push(match ty {
                CondDownBlockType::Down => CondDownBlock::Plain(DownBlock::load(
                    w,
                    &path,
                    in_c,
                    out_c,
                    cfg.layers_per_block,
                    false,
                    !last,
                    cfg.downsample_padding,
                    res,
                    no_attn,
                )?),
                CondDownBlockType::CrossAttnDown => {
                    CondDownBlock::CrossAttn(CrossAttnDownBlock::load(
                        w,
                        &path,
                        in_c,
                        out_c,
                        cfg.layers_per_block,
                        cfg.heads[i],
                        (!last).then_some(cfg.downsample_padding),
                        res,
                        tf,
                    )?)
                }
            });
        }
        let mid_block = if cfg.has_mid_block {
            Some(CrossAttnMidBlock::load(
                w,
                "mid_block",
                c[n - 1],
                cfg.heads[n - 1],
                ResnetSpec {
                    output_scale_factor: cfg.mid_block_scale_factor,
                    ..res
                },
                tf,
            )?)
        } else {
            None
        };
        let rev: Vec<usize> = c.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = cfg.heads.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = rev[0];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let prev = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(n - 1)];
            let path = format!("up_blocks.{i}");
            let add_upsample = i + 1 < n;
            up_blocks.push(match ty {
                CondUpBlockType::Up => CondUpBlock::Plain(UpBlock::load(
                    w,
                    &path,
                    in_c,
                    prev,
                    out_c,
                    cfg.layers_per_block + 1,
                    false,
                    add_upsample,
                    res,
                    no_attn,
                )?),
                CondUpBlockType::CrossAttnUp => CondUpBlock::CrossAttn(CrossAttnUpBlock::load(
                    w,
                    &path,
                    in_c,
                    prev,
                    out_c,
                    cfg.layers_per_block + 1,
                    rev_heads[i],
                    add_upsample,
                    res,
                    tf,
                )?),
            });
        }
        let model = Self {
            conv_in: Conv2d::load(w, "conv_in", cfg.in_channels, c[0], 3, 1, 1)?,
            time_proj,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                w,
                "conv_norm_out",
                cfg.norm_num_groups,
                c[0],
                cfg.norm_eps,
            )?,
            conv_out: Conv2d::load(w, "conv_out", c[0], cfg.out_channels, 3, 1, 1)?,
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
        let cfg = UNet2DConditionConfig::from_file(&dir.join("config.json"))?;
        let w = WeightStore::open(&crate::source::find_weights(dir)?, device, dtype)?;
        Self::load(cfg, &w)
    }

    /// Every conv and linear layer in forward order (time embedding first), under its
    /// checkpoint path.
    pub fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let mut out = vec![
            LayerMut::Linear(&mut self.time_embedding.linear_1),
            LayerMut::Linear(&mut self.time_embedding.linear_2),
            LayerMut::Conv(&mut self.conv_in),
        ];
        for b in self.down_blocks.iter_mut() {
            match b {
                CondDownBlock::Plain(b) => b.layers_mut(&mut out),
                CondDownBlock::CrossAttn(b) => b.layers_mut(&mut out),
            }
        }
        if let Some(m) = &mut self.mid_block {
            m.layers_mut(&mut out);
        }
        for b in self.up_blocks.iter_mut() {
            match b {
                CondUpBlock::Plain(b) => b.layers_mut(&mut out),
                CondUpBlock::CrossAttn(b) => b.layers_mut(&mut out),
            }
        }
        out.push(LayerMut::Conv(&mut self.conv_out));
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The noise prediction for latents `x` (`[B, C, H, W]`) at `timesteps`, conditioned on
    /// `encoder_hidden_states` (`[B, S, cross_attention_dim]`, e.g. CLIP text hidden states).
    /// With [`Ctx::with_taps`], module outputs are kept under diffusers' module paths
    /// (`time_proj`, `time_embedding`, `down_blocks.0`, ..., `conv_norm_out`).
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        encoder_hidden_states: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, ch, _, _) = x.dims4()?;
        if ch != self.config.in_channels {
            return Err(ModelError::Source(format!(
                "input has {ch} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        let (eb, _, ec) = encoder_hidden_states.dims3()?;
        if eb != b || ec != self.config.cross_attention_dim {
            return Err(ModelError::Source(format!(
                "encoder hidden states of shape {:?} for a batch of {b}: expected [{b}, S, {}]",
                encoder_hidden_states.dims(),
                self.config.cross_attention_dim
            )));
        }
        let ts = timesteps.for_batch(b)?;
        let x = if self.config.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let proj = self.time_proj.forward(&ts, &self.device, self.dtype)?;
        let emb = self.time_embedding.forward(&proj, ctx)?;
        ctx.tap("time_proj", &proj);
        ctx.tap("time_embedding", &emb);
        let temb_act = silu(&emb)?;

        let mut h = self.conv_in.forward(&x, ctx)?;
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, states) = match block {
                CondDownBlock::Plain(b) => b.forward(&h, Some(&temb_act), ctx)?,
                CondDownBlock::CrossAttn(b) => b.forward(&h, &temb_act, &context, ctx)?,
            };
            h = out;
            skips.extend(states);
            ctx.tap(&format!("down_blocks.{i}"), &h);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &temb_act, &context, ctx)?;
            ctx.tap("mid_block", &h);
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            h = match block {
                CondUpBlock::Plain(b) => b.forward(&h, &mut skips, Some(&temb_act), ctx)?,
                CondUpBlock::CrossAttn(b) => b.forward(&h, &mut skips, &temb_act, &context, ctx)?,
            };
            ctx.tap(&format!("up_blocks.{i}"), &h);
        }
        let h = self.conv_norm_out.forward(&h)?;
        ctx.tap("conv_norm_out", &h);
        self.conv_out.forward(&silu(&h)?, ctx)
    }
}
