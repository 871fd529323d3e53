//! `UNet2DModel`'s `config.json`, read strictly.
//!
//! Absent keys take the defaults of diffusers' `UNet2DModel.__init__` (that is what diffusers itself
//! does, so it is the model's meaning, not a guess). Values dmq cannot compute exactly are errors that
//! name the file, the field and the value.

use std::path::Path;

use dmq_config::JsonFields;

use crate::error::{ModelError, Result};

/// How the timestep becomes the vector fed to `time_embedding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingType {
    /// Sinusoidal (`Timesteps`), shaped by `flip_sin_to_cos` and `freq_shift`.
    Positional,
    /// `GaussianFourierProjection` (scale 16, log of the timestep); the output is divided by t.
    Fourier,
    /// `nn.Embedding(num_train_timesteps, C0)`.
    Learned,
}

/// How `class_labels` are embedded and added to the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbedding {
    None,
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`.
    Table(usize),
    /// The labels go through `time_proj` and a second `TimestepEmbedding`.
    Timestep,
    /// The labels are already `time_embed_dim` vectors.
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    Down,
    AttnDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    Up,
    AttnUp,
}

/// How a residual block combines the time embedding with its features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// `h + proj(temb)` before the second norm.
    Default,
    /// `norm(h) * (1 + scale) + shift`, the projection giving 2C values.
    ScaleShift,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConfig {
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: TimeEmbeddingType,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub has_mid_block: bool,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: TimeScaleShift,
    pub add_attention: bool,
    pub class_embedding: ClassEmbedding,
    pub num_train_timesteps: Option<usize>,
    /// Width of the time embedding; `None` means `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<usize>,
    /// Training-only; kept so `inspect` can show it.
    pub dropout: f64,
}

impl UNet2DConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let fields = JsonFields::read(path)?;
        Self::from_fields(fields)
    }

    pub fn from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(path_for_errors, text)?)
    }

    fn from_fields(mut f: JsonFields) -> Result<Self> {
        let path = f.path().to_path_buf();
        let err = |field: &str, msg: String| ModelError::config(&path, field, msg);

        if let Some(class) = f.opt_string("_class_name")? {
            if class != "UNet2DModel" {
                return Err(err(
                    "_class_name",
                    format!("\"{class}\" is not a UNet2DModel; dmq supports UNet2DModel here"),
                ));
            }
        }
        let sample_size = match f.take("sample_size") {
            None => None,
            Some(v) if v.is_u64() => v.as_u64().map(|n| n as usize),
            Some(v) => match v.as_array().map(|a| a.as_slice()) {
                Some([h, w]) if h == w && h.is_u64() => h.as_u64().map(|n| n as usize),
                _ => {
                    return Err(err(
                        "sample_size",
                        format!("expected an integer or a square [h, w], got {v}"),
                    ))
                }
            },
        };
        let in_channels = f.usize_or("in_channels", 3)?;
        let out_channels = f.usize_or("out_channels", 3)?;
        let center_input_sample = f.bool_or("center_input_sample", false)?;
        let time_embedding_type = match f
            .choice_or(
                "time_embedding_type",
                "positional",
                &["positional", "fourier", "learned"],
            )?
            .as_str()
        {
            "positional" => TimeEmbeddingType::Positional,
            "fourier" => TimeEmbeddingType::Fourier,
            _ => TimeEmbeddingType::Learned,
        };
        let flip_sin_to_cos = f.bool_or("flip_sin_to_cos", true)?;
        let freq_shift = f.f64_or("freq_shift", 0.0)?;
        let down_block_types = f
            .string_list_or(
                "down_block_types",
                &["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            )?
            .iter()
            .map(|s| match s.as_str() {
                "DownBlock2D" => Ok(DownBlockType::Down),
                "AttnDownBlock2D" => Ok(DownBlockType::AttnDown),
                other => Err(err(
                    "down_block_types",
                    format!("unknown or unsupported block type \"{other}\" (supported: DownBlock2D, AttnDownBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_block_types = f
            .string_list_or(
                "up_block_types",
                &["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            )?
            .iter()
            .map(|s| match s.as_str() {
                "UpBlock2D" => Ok(UpBlockType::Up),
                "AttnUpBlock2D" => Ok(UpBlockType::AttnUp),
                other => Err(err(
                    "up_block_types",
                    format!("unknown or unsupported block type \"{other}\" (supported: UpBlock2D, AttnUpBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        // diffusers' UNet2DModel always builds UNetMidBlock2D; configs written by it carry the key.
        let has_mid_block = match f.opt_string("mid_block_type")? {
            None => true,
            Some(s) if s == "UNetMidBlock2D" => true,
            Some(s) => {
                return Err(err(
                    "mid_block_type",
                    format!("value \"{s}\" is not supported (supported: UNetMidBlock2D)"),
                ))
            }
        };
        let block_out_channels = f.usize_list_or("block_out_channels", &[224, 448, 672, 896])?;
        let layers_per_block = f.usize_or("layers_per_block", 2)?;
        let mid_block_scale_factor = f.f64_or("mid_block_scale_factor", 1.0)?;
        let downsample_padding = f.usize_or("downsample_padding", 1)?;
        f.choice_or("downsample_type", "conv", &["conv"])?;
        f.choice_or("upsample_type", "conv", &["conv"])?;
        let dropout = f.f64_or("dropout", 0.0)?;
        f.choice_or("act_fn", "silu", &["silu", "swish"])?;
        if f.bool_or("attention_legacy_order", false)? {
            return Err(err(
                "attention_legacy_order",
                "value true is not supported".into(),
            ));
        }
        // `attention_head_dim` defaults to 8 when the key is absent, but `null` means one head
        // spanning all channels.
        let attention_head_dim = if f.contains("attention_head_dim") {
            f.opt_usize("attention_head_dim")?
        } else {
            Some(8)
        };
        let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
        let attn_norm_num_groups = f.opt_usize("attn_norm_num_groups")?;
        let norm_eps = f.f64_or("norm_eps", 1e-5)?;
        let resnet_time_scale_shift = match f
            .choice_or(
                "resnet_time_scale_shift",
                "default",
                &["default", "scale_shift"],
            )?
            .as_str()
        {
            "default" => TimeScaleShift::Default,
            _ => TimeScaleShift::ScaleShift,
        };
        let add_attention = f.bool_or("add_attention", true)?;
        let class_embed_type = f.opt_string("class_embed_type")?;
        let num_class_embeds = f.opt_usize("num_class_embeds")?;
        let class_embedding = match (class_embed_type.as_deref(), num_class_embeds) {
            (None, None) => ClassEmbedding::None,
            (None, Some(n)) => ClassEmbedding::Table(n),
            (Some("timestep"), _) => ClassEmbedding::Timestep,
            (Some("identity"), _) => ClassEmbedding::Identity,
            (Some(other), _) => {
                return Err(err(
                    "class_embed_type",
                    format!(
                        "value \"{other}\" is not supported (supported: null, timestep, identity)"
                    ),
                ))
            }
        };
        let num_train_timesteps = f.opt_usize("num_train_timesteps")?;
        let time_embedding_dim = f.opt_usize("time_embedding_dim")?;
        f.finish()?;

        let cfg = UNet2DConfig {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample,
            time_embedding_type,
            flip_sin_to_cos,
            freq_shift,
            down_block_types,
            up_block_types,
            has_mid_block,
            block_out_channels,
            layers_per_block,
            mid_block_scale_factor,
            downsample_padding,
            attention_head_dim,
            time_embedding_dim,
            norm_num_groups,
            attn_norm_num_groups,
            norm_eps,
            resnet_time_scale_shift,
            add_attention,
            class_embedding,
            num_train_timesteps,
            dropout,
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }
}

impl UNet2DConfig {
    /// Width of the time embedding vector that every residual block receives.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Head dimension of an attention layer over `channels` channels.
    pub fn head_dim(&self, channels: usize) -> usize {
        self.attention_head_dim.unwrap_or(channels)
    }

    /// Groups of the attention group norm in the mid block (diffusers: `attn_norm_num_groups`,
    /// else the resnet groups when the time scale shift is "default").
    pub fn mid_attn_groups(&self) -> Option<usize> {
        match (self.attn_norm_num_groups, self.resnet_time_scale_shift) {
            (Some(g), _) => Some(g),
            (None, TimeScaleShift::Default) => Some(self.norm_num_groups),
            (None, TimeScaleShift::ScaleShift) => None,
        }
    }

    /// Cross-field checks diffusers makes at construction time, plus the ones that would
    /// otherwise fail deep inside a forward pass (group counts, head splits).
    fn validate(&self, path: &Path) -> Result<()> {
        let err = |field: &str, msg: String| ModelError::config(path, field, msg);
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(err("block_out_channels", "must not be empty".into()));
        }
        if self.down_block_types.len() != n {
            return Err(err(
                "down_block_types",
                format!(
                    "has {} entries but block_out_channels has {n}",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(err(
                "up_block_types",
                format!(
                    "has {} entries but block_out_channels has {n}",
                    self.up_block_types.len()
                ),
            ));
        }
        if self.layers_per_block == 0 {
            return Err(err("layers_per_block", "must be at least 1".into()));
        }
        if self.norm_num_groups == 0 {
            return Err(err("norm_num_groups", "must be at least 1".into()));
        }
        for &c in &self.block_out_channels {
            if c == 0 || !c.is_multiple_of(self.norm_num_groups) {
                return Err(err(
                    "norm_num_groups",
                    format!(
                        "{} does not divide the block width {c}",
                        self.norm_num_groups
                    ),
                ));
            }
            if let Some(d) = self.attention_head_dim {
                if d == 0 || !c.is_multiple_of(d) {
                    return Err(err(
                        "attention_head_dim",
                        format!("{d} does not divide the block width {c}"),
                    ));
                }
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            let c = self.block_out_channels[n - 1];
            if g == 0 || !c.is_multiple_of(g) {
                return Err(err(
                    "attn_norm_num_groups",
                    format!("{g} does not divide {c}"),
                ));
            }
        }
        if self.time_embedding_type == TimeEmbeddingType::Learned
            && self.num_train_timesteps.is_none()
        {
            return Err(err(
                "num_train_timesteps",
                "is required when time_embedding_type is \"learned\"".into(),
            ));
        }
        if self.time_embedding_type == TimeEmbeddingType::Fourier
            && self.class_embedding == ClassEmbedding::Timestep
        {
            return Err(err(
                "class_embed_type",
                "\"timestep\" with fourier time embedding is not supported".into(),
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(err(
                "norm_eps",
                format!("must be positive, got {}", self.norm_eps),
            ));
        }
        Ok(())
    }
}
