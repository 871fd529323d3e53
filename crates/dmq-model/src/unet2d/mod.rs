//! diffusers' `UNet2DModel`, built from its `config.json` and checkpoint.

pub mod attention;
pub mod blocks;
pub mod embeddings;
pub mod resnet;
pub mod units;

use candle_core::{DType, Device, Tensor};

use crate::config::{DownBlockType, TimeEmbeddingType, UNet2DConfig, UpBlockType};
use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::{silu, Conv2d, GroupNorm, LayerMut};
use crate::weights::WeightStore;
use blocks::{AttnSpec, DownBlock, MidBlock, UpBlock};
use embeddings::{ClassEmbed, ClassLabels, TimeProj, TimestepEmbedding};
use resnet::ResnetSpec;

/// Timesteps of one forward call: one for the whole batch (what samplers pass) or one per sample.
#[derive(Debug, Clone, Copy)]
pub enum Timesteps<'a> {
    Shared(f64),
    PerSample(&'a [f64]),
}

impl Timesteps<'_> {
    /// One timestep per sample of a batch of `b`.
    pub fn for_batch(&self, b: usize) -> Result<Vec<f64>> {
        match self {
            Timesteps::Shared(t) => Ok(vec![*t; b]),
            Timesteps::PerSample(t) if t.len() == b => Ok(t.to_vec()),
            Timesteps::PerSample(t) => Err(ModelError::Source(format!(
                "{} timesteps given for a batch of {b}",
                t.len()
            ))),
        }
    }
}

pub struct UNet2DModel {
    pub config: UNet2DConfig,
    pub conv_in: Conv2d,
    pub time_proj: TimeProj,
    pub time_embedding: TimestepEmbedding,
    pub class_embedding: Option<ClassEmbed>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// Scalar parameters in the checkpoint (all of them are used: see `load`).
    pub num_params: u64,
    device: Device,
    dtype: DType,
}

/// Intermediate outputs of one forward, for localising a divergence (`act.*` in the goldens).
#[derive(Default)]
pub struct Taps {
    pub time_proj: Option<Tensor>,
    pub time_emb: Option<Tensor>,
    pub conv_in: Option<Tensor>,
    pub down_blocks: Vec<Tensor>,
    pub mid_block: Option<Tensor>,
    pub up_blocks: Vec<Tensor>,
    pub conv_norm_out: Option<Tensor>,
}

impl UNet2DModel {
    /// Builds the model; every tensor of the checkpoint must be used, with the shape the config implies.
    pub fn load(cfg: UNet2DConfig, w: &WeightStore) -> Result<Self> {
        let c = &cfg.block_out_channels;
        let n = c.len();
        let temb = cfg.time_embed_dim();
        let time_proj = TimeProj::load(w, &cfg)?;
        let time_embedding =
            TimestepEmbedding::load(w, "time_embedding", time_proj.out_dim(), temb)?;
        let class_embedding = ClassEmbed::load(w, &cfg, time_proj.out_dim())?;
        let block_res = ResnetSpec {
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            temb_channels: Some(temb),
            time_scale_shift: cfg.resnet_time_scale_shift,
            output_scale_factor: 1.0,
        };
        let block_attn = AttnSpec {
            head_dim: cfg.attention_head_dim,
            groups: Some(cfg.norm_num_groups),
            eps: cfg.norm_eps,
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = c[0];
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = c[i];
            down_blocks.push(DownBlock::load(
                w,
                &format!("down_blocks.{i}"),
                in_c,
                out_c,
                cfg.layers_per_block,
                *ty == DownBlockType::AttnDown,
                i + 1 < n,
                cfg.downsample_padding,
                block_res,
                block_attn,
            )?);
        }
        let mid_block = if cfg.has_mid_block {
            Some(MidBlock::load(
                w,
                "mid_block",
                c[n - 1],
                cfg.add_attention,
                ResnetSpec {
                    output_scale_factor: cfg.mid_block_scale_factor,
                    ..block_res
                },
                AttnSpec {
                    groups: cfg.mid_attn_groups(),
                    ..block_attn
                },
            )?)
        } else {
            None
        };
        let rev: Vec<usize> = c.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = rev[0];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let prev = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(n - 1)];
            up_blocks.push(UpBlock::load(
                w,
                &format!("up_blocks.{i}"),
                in_c,
                prev,
                out_c,
                cfg.layers_per_block + 1,
                *ty == UpBlockType::AttnUp,
                i + 1 < n,
                block_res,
                block_attn,
            )?);
        }
        let model = Self {
            conv_in: Conv2d::load(w, "conv_in", cfg.in_channels, c[0], 3, 1, 1)?,
            time_proj,
            time_embedding,
            class_embedding,
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

    /// Every conv and linear layer in forward order (time embedding first), each under its
    /// checkpoint path: what quantization passes visit.
    pub fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let mut out = Vec::new();
        out.push(LayerMut::Linear(&mut self.time_embedding.linear_1));
        out.push(LayerMut::Linear(&mut self.time_embedding.linear_2));
        if let Some(ClassEmbed::Timestep(e)) = &mut self.class_embedding {
            out.push(LayerMut::Linear(&mut e.linear_1));
            out.push(LayerMut::Linear(&mut e.linear_2));
        }
        out.push(LayerMut::Conv(&mut self.conv_in));
        for b in self.down_blocks.iter_mut() {
            b.layers_mut(&mut out);
        }
        if let Some(m) = &mut self.mid_block {
            m.layers_mut(&mut out);
        }
        for b in self.up_blocks.iter_mut() {
            b.layers_mut(&mut out);
        }
        out.push(LayerMut::Conv(&mut self.conv_out));
        out
    }

    /// Checkpoint paths of every conv and linear layer, in forward order.
    pub fn layer_paths(&mut self) -> Vec<String> {
        self.layers_mut()
            .iter()
            .map(|l| l.path().to_string())
            .collect()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The noise prediction for `x` (`[B, C, H, W]`) at `timesteps`.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        class_labels: Option<&ClassLabels>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        self.forward_tapped(x, timesteps, class_labels, ctx, None)
    }

    /// The time embedding (`time_embedding(time_proj(t))`) for each timestep.
    pub fn time_embed(&self, timesteps: &[f64], ctx: &Ctx) -> Result<Tensor> {
        let proj = self
            .time_proj
            .forward(timesteps, &self.device, self.dtype)?;
        self.time_embedding.forward(&proj, ctx)
    }

    pub fn forward_tapped(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        class_labels: Option<&ClassLabels>,
        ctx: &Ctx,
        mut taps: Option<&mut Taps>,
    ) -> Result<Tensor> {
        let (b, ch, _, _) = x.dims4()?;
        if ch != self.config.in_channels {
            return Err(ModelError::Source(format!(
                "input has {ch} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        let ts = timesteps.for_batch(b)?;
        let x = if self.config.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let proj = self.time_proj.forward(&ts, &self.device, self.dtype)?;
        let mut emb = self.time_embedding.forward(&proj, ctx)?;
        match (&self.class_embedding, class_labels) {
            (Some(ce), Some(labels)) => {
                let c = ce.forward(labels, &self.time_proj, ctx, self.dtype, &self.device)?;
                emb = (emb + c.to_dtype(self.dtype)?)?;
            }
            (Some(_), None) => {
                return Err(ModelError::Source(
                    "this model is class-conditional: pass class labels".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ModelError::Source(
                    "class labels given, but this model has no class embedding".into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(t) = taps.as_deref_mut() {
            t.time_proj = Some(proj.clone());
            t.time_emb = Some(emb.clone());
        }
        let temb_act = silu(&emb)?;

        let mut h = self.conv_in.forward(&x, ctx)?;
        if let Some(t) = taps.as_deref_mut() {
            t.conv_in = Some(h.clone());
        }
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, Some(&temb_act), ctx)?;
            h = out;
            skips.extend(states);
            if let Some(t) = taps.as_deref_mut() {
                t.down_blocks.push(h.clone());
            }
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, Some(&temb_act), ctx)?;
            if let Some(t) = taps.as_deref_mut() {
                t.mid_block = Some(h.clone());
            }
        }
        for block in &self.up_blocks {
            h = block.forward(&h, &mut skips, Some(&temb_act), ctx)?;
            if let Some(t) = taps.as_deref_mut() {
                t.up_blocks.push(h.clone());
            }
        }
        let h = self.conv_norm_out.forward(&h)?;
        if let Some(t) = taps {
            t.conv_norm_out = Some(h.clone());
        }
        let out = self.conv_out.forward(&silu(&h)?, ctx)?;
        if self.config.time_embedding_type == TimeEmbeddingType::Fourier {
            let t = Tensor::from_vec(
                ts.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                (b, 1, 1, 1),
                &self.device,
            )?
            .to_dtype(self.dtype)?;
            return Ok(out.broadcast_div(&t)?);
        }
        Ok(out)
    }
}
