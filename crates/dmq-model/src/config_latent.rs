//! `config.json` of the latent, text-conditional and transformer models
//! (`UNet2DConditionModel`, `AutoencoderKL`, `DiTTransformer2DModel`, `PixArtTransformer2DModel`),
//! read strictly like [`crate::config::UNet2DConfig`]: absent keys take diffusers' defaults, and
//! any value dmq does not compute exactly is an error naming the file, the field and the value.

use std::path::{Path, PathBuf};

use dmq_config::JsonFields;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::transformer::Activation;

fn check_class(f: &mut JsonFields, want: &[&str]) -> Result<()> {
    if let Some(class) = f.opt_string("_class_name")? {
        if !want.contains(&class.as_str()) {
            return Err(ModelError::config(
                f.path(),
                "_class_name",
                format!("\"{class}\" is not a {}", want.join(" or ")),
            ));
        }
    }
    Ok(())
}

/// Fields whose only supported value is null (absent).
fn require_null(f: &mut JsonFields, keys: &[&str]) -> Result<()> {
    for &k in keys {
        if let Some(v) = f.take(k) {
            return Err(ModelError::config(
                f.path(),
                k,
                format!("value {v} is not supported (dmq supports only null here)"),
            ));
        }
    }
    Ok(())
}

/// A boolean field whose only supported value is `want`.
fn require_bool(f: &mut JsonFields, key: &str, default: bool, want: bool) -> Result<()> {
    let v = f.bool_or(key, default)?;
    if v != want {
        return Err(ModelError::config(
            f.path(),
            key,
            format!("value {v} is not supported (dmq supports only {want})"),
        ));
    }
    Ok(())
}

/// A number field whose only supported value is `want`.
fn require_f64(f: &mut JsonFields, key: &str, want: f64) -> Result<()> {
    let v = f.f64_or(key, want)?;
    if v != want {
        return Err(ModelError::config(
            f.path(),
            key,
            format!("value {v} is not supported (dmq supports only {want})"),
        ));
    }
    Ok(())
}

fn positive_eps(path: &Path, key: &str, v: f64) -> Result<f64> {
    if v > 0.0 {
        Ok(v)
    } else {
        Err(ModelError::config(
            path,
            key,
            format!("must be positive, got {v}"),
        ))
    }
}

fn activation(f: &mut JsonFields, default: &str) -> Result<Activation> {
    let s = f.choice_or("activation_fn", default, Activation::SUPPORTED)?;
    Ok(Activation::parse(&s).expect("choice_or checked the value"))
}

/// An integer, or a list with one integer per block (`attention_head_dim`).
fn usize_or_list(f: &mut JsonFields, key: &str, default: usize, n: usize) -> Result<Vec<usize>> {
    let path = f.path().to_path_buf();
    match f.take(key) {
        None => Ok(vec![default; n]),
        Some(Value::Number(x)) => match x.as_u64() {
            Some(v) => Ok(vec![v as usize; n]),
            None => Err(ModelError::config(
                &path,
                key,
                format!("expected a positive integer, got {x}"),
            )),
        },
        Some(Value::Array(items)) if items.len() == n => items
            .iter()
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    ModelError::config(&path, key, format!("expected integers, found {v}"))
                })
            })
            .collect(),
        Some(v) => Err(ModelError::config(
            &path,
            key,
            format!("expected an integer or a list of {n} integers (one per block), got {v}"),
        )),
    }
}

fn sample_size(f: &mut JsonFields, default: usize) -> Result<usize> {
    let path = f.path().to_path_buf();
    match f.take("sample_size") {
        None => Ok(default),
        Some(v) => match (v.as_u64(), v.as_array().map(|a| a.as_slice())) {
            (Some(n), _) => Ok(n as usize),
            (None, Some([h, w])) if h == w && h.is_u64() => Ok(h.as_u64().unwrap_or(0) as usize),
            _ => Err(ModelError::config(
                &path,
                "sample_size",
                format!("expected an integer or a square [h, w], got {v}"),
            )),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondDownBlockType {
    Down,
    CrossAttnDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondUpBlockType {
    Up,
    CrossAttnUp,
}

/// `UNet2DConditionModel` (Stable Diffusion 1.x/2.x shape). Defaults are diffusers'.
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConditionConfig {
    pub path: PathBuf,
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<CondDownBlockType>,
    /// `false`: `mid_block_type` null (no mid block).
    pub has_mid_block: bool,
    pub up_block_types: Vec<CondUpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub transformer_layers_per_block: usize,
    /// Heads of each down block's attention (legacy diffusers naming: `attention_head_dim`
    /// holds the number of heads when `num_attention_heads` is null).
    pub heads: Vec<usize>,
    pub use_linear_projection: bool,
}

impl UNet2DConditionConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_fields(JsonFields::read(path)?)
    }

    pub fn from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(path_for_errors, text)?)
    }

    fn from_fields(mut f: JsonFields) -> Result<Self> {
        let path = f.path().to_path_buf();
        let err = |field: &str, msg: String| ModelError::config(&path, field, msg);
        check_class(&mut f, &["UNet2DConditionModel"])?;
        let sample_size = sample_size(&mut f, 64)?;
        let in_channels = f.usize_or("in_channels", 4)?;
        let out_channels = f.usize_or("out_channels", 4)?;
        let center_input_sample = f.bool_or("center_input_sample", false)?;
        let flip_sin_to_cos = f.bool_or("flip_sin_to_cos", true)?;
        let freq_shift = f.f64_or("freq_shift", 0.0)?;
        let down_block_types = f
            .string_list_or(
                "down_block_types",
                &["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            )?
            .iter()
            .map(|s| match s.as_str() {
                "DownBlock2D" => Ok(CondDownBlockType::Down),
                "CrossAttnDownBlock2D" => Ok(CondDownBlockType::CrossAttnDown),
                other => Err(err(
                    "down_block_types",
                    format!("unknown or unsupported block type \"{other}\" (supported: DownBlock2D, CrossAttnDownBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let has_mid_block = match f.opt_string("mid_block_type")? {
            None => false,
            Some(s) if s == "UNetMidBlock2DCrossAttn" => true,
            Some(s) => {
                return Err(err(
                    "mid_block_type",
                    format!(
                        "value \"{s}\" is not supported (supported: UNetMidBlock2DCrossAttn, null)"
                    ),
                ))
            }
        };
        // diffusers' default when the key is absent is UNetMidBlock2DCrossAttn.
        let has_mid_block = has_mid_block || !f.contains("mid_block_type");
        let up_block_types = f
            .string_list_or(
                "up_block_types",
                &["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            )?
            .iter()
            .map(|s| match s.as_str() {
                "UpBlock2D" => Ok(CondUpBlockType::Up),
                "CrossAttnUpBlock2D" => Ok(CondUpBlockType::CrossAttnUp),
                other => Err(err(
                    "up_block_types",
                    format!("unknown or unsupported block type \"{other}\" (supported: UpBlock2D, CrossAttnUpBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        require_bool(&mut f, "only_cross_attention", false, false)?;
        let block_out_channels = f.usize_list_or("block_out_channels", &[320, 640, 1280, 1280])?;
        let n = block_out_channels.len();
        let layers_per_block = f.usize_or("layers_per_block", 2)?;
        let downsample_padding = f.usize_or("downsample_padding", 1)?;
        let mid_block_scale_factor = f.f64_or("mid_block_scale_factor", 1.0)?;
        f.ignore(&["dropout"]);
        f.choice_or("act_fn", "silu", &["silu", "swish"])?;
        let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
        let norm_eps = positive_eps(&path, "norm_eps", f.f64_or("norm_eps", 1e-5)?)?;
        let cross_attention_dim = f.usize_or("cross_attention_dim", 1280)?;
        let transformer_layers_per_block = f.usize_or("transformer_layers_per_block", 1)?;
        require_null(
            &mut f,
            &[
                "reverse_transformer_layers_per_block",
                "encoder_hid_dim",
                "encoder_hid_dim_type",
                "class_embed_type",
                "addition_embed_type",
                "addition_time_embed_dim",
                "num_class_embeds",
                "time_embedding_dim",
                "time_embedding_act_fn",
                "timestep_post_act",
                "time_cond_proj_dim",
                "projection_class_embeddings_input_dim",
                "cross_attention_norm",
            ],
        )?;
        if f.contains("num_attention_heads") {
            require_null(&mut f, &["num_attention_heads"])?;
        }
        let heads = usize_or_list(&mut f, "attention_head_dim", 8, n)?;
        require_bool(&mut f, "dual_cross_attention", false, false)?;
        let use_linear_projection = f.bool_or("use_linear_projection", false)?;
        // Upcasting only changes half-precision arithmetic; dmq computes attention in the
        // model's dtype either way.
        f.bool_or("upcast_attention", false)?;
        f.choice_or("resnet_time_scale_shift", "default", &["default"])?;
        require_bool(&mut f, "resnet_skip_time_act", false, false)?;
        require_f64(&mut f, "resnet_out_scale_factor", 1.0)?;
        f.choice_or("time_embedding_type", "positional", &["positional"])?;
        for k in ["conv_in_kernel", "conv_out_kernel"] {
            if f.usize_or(k, 3)? != 3 {
                return Err(err(k, "only 3 is supported".into()));
            }
        }
        require_bool(&mut f, "class_embeddings_concat", false, false)?;
        if let Some(v) = f.take("mid_block_only_cross_attention") {
            if v != Value::Bool(false) {
                return Err(err(
                    "mid_block_only_cross_attention",
                    format!("value {v} is not supported (dmq supports null or false)"),
                ));
            }
        }
        f.choice_or("attention_type", "default", &["default"])?;
        // Only read when addition_embed_type is set (which dmq refuses above).
        f.ignore(&["addition_embed_type_num_heads"]);
        f.finish()?;

        let cfg = Self {
            path: path.clone(),
            sample_size,
            in_channels,
            out_channels,
            center_input_sample,
            flip_sin_to_cos,
            freq_shift,
            down_block_types,
            has_mid_block,
            up_block_types,
            block_out_channels,
            layers_per_block,
            downsample_padding,
            mid_block_scale_factor,
            norm_num_groups,
            norm_eps,
            cross_attention_dim,
            transformer_layers_per_block,
            heads,
            use_linear_projection,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let err = |field: &str, msg: String| ModelError::config(&self.path, field, msg);
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
        if self.transformer_layers_per_block == 0 {
            return Err(err(
                "transformer_layers_per_block",
                "must be at least 1".into(),
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups) {
                return Err(err(
                    "norm_num_groups",
                    format!(
                        "{} does not divide the block width {c}",
                        self.norm_num_groups
                    ),
                ));
            }
            let h = self.heads[i];
            if h == 0 || !c.is_multiple_of(h) {
                return Err(err(
                    "attention_head_dim",
                    format!("{h} heads do not divide the block width {c}"),
                ));
            }
        }
        Ok(())
    }

    /// Width of the time embedding (`4 · block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }
}

/// `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderKLConfig {
    pub path: PathBuf,
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    /// Latents are `scaling_factor · (z − shift_factor)`; pipelines divide before decoding.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl AutoencoderKLConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_fields(JsonFields::read(path)?)
    }

    pub fn from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(path_for_errors, text)?)
    }

    fn from_fields(mut f: JsonFields) -> Result<Self> {
        let path = f.path().to_path_buf();
        check_class(&mut f, &["AutoencoderKL"])?;
        let in_channels = f.usize_or("in_channels", 3)?;
        let out_channels = f.usize_or("out_channels", 3)?;
        let block_out_channels = f.usize_list_or("block_out_channels", &[64])?;
        let n = block_out_channels.len();
        for (key, want) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let types = f.string_list_or(key, &[want])?;
            if types.len() != n {
                return Err(ModelError::config(
                    &path,
                    key,
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
            if let Some(bad) = types.iter().find(|t| *t != want) {
                return Err(ModelError::config(
                    &path,
                    key,
                    format!("unknown or unsupported block type \"{bad}\" (supported: {want})"),
                ));
            }
        }
        let layers_per_block = f.usize_or("layers_per_block", 1)?;
        f.choice_or("act_fn", "silu", &["silu", "swish"])?;
        let latent_channels = f.usize_or("latent_channels", 4)?;
        let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
        let sample_size = sample_size(&mut f, 32)?;
        let scaling_factor = f.f64_or("scaling_factor", 0.18215)?;
        let shift_factor = f.opt_f64("shift_factor")?;
        // Pipeline metadata (per-channel latent statistics, fp16 policy): no effect on the model.
        f.ignore(&["latents_mean", "latents_std", "force_upcast"]);
        let use_quant_conv = f.bool_or("use_quant_conv", true)?;
        let use_post_quant_conv = f.bool_or("use_post_quant_conv", true)?;
        let mid_block_add_attention = f.bool_or("mid_block_add_attention", true)?;
        f.finish()?;
        if n == 0 {
            return Err(ModelError::config(
                &path,
                "block_out_channels",
                "must not be empty",
            ));
        }
        if layers_per_block == 0 {
            return Err(ModelError::config(
                &path,
                "layers_per_block",
                "must be at least 1",
            ));
        }
        for &c in &block_out_channels {
            if norm_num_groups == 0 || !c.is_multiple_of(norm_num_groups) {
                return Err(ModelError::config(
                    &path,
                    "norm_num_groups",
                    format!("{norm_num_groups} does not divide the block width {c}"),
                ));
            }
        }
        Ok(Self {
            path,
            in_channels,
            out_channels,
            block_out_channels,
            layers_per_block,
            latent_channels,
            norm_num_groups,
            sample_size,
            scaling_factor,
            shift_factor,
            use_quant_conv,
            use_post_quant_conv,
            mid_block_add_attention,
        })
    }
}

/// What DiT and PixArt share: a patch-embedded transformer over latents.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchTransformerConfig {
    pub path: PathBuf,
    pub sample_size: usize,
    pub in_channels: usize,
    /// Channels 0..in_channels are epsilon; with learned sigma the rest is the variance.
    pub out_channels: usize,
    pub patch_size: usize,
    pub num_layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub attention_bias: bool,
    pub activation: Activation,
    pub num_embeds_ada_norm: usize,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// PixArt only.
    pub cross_attention_dim: Option<usize>,
    /// PixArt only: input width of `caption_projection` (`None`: no projection).
    pub caption_channels: Option<usize>,
    pub interpolation_scale: f64,
}

impl PatchTransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `DiTTransformer2DModel` (also `Transformer2DModel` configs with `norm_type` ada_norm_zero,
    /// which diffusers remaps to it).
    pub fn dit_from_file(path: &Path) -> Result<Self> {
        Self::from_fields(JsonFields::read(path)?, false)
    }

    pub fn dit_from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(path_for_errors, text)?, false)
    }

    /// `PixArtTransformer2DModel` (or a `Transformer2DModel` config with ada_norm_single).
    pub fn pixart_from_file(path: &Path) -> Result<Self> {
        Self::from_fields(JsonFields::read(path)?, true)
    }

    pub fn pixart_from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(path_for_errors, text)?, true)
    }

    fn from_fields(mut f: JsonFields, pixart: bool) -> Result<Self> {
        let path = f.path().to_path_buf();
        let (class, norm_type) = if pixart {
            ("PixArtTransformer2DModel", "ada_norm_single")
        } else {
            ("DiTTransformer2DModel", "ada_norm_zero")
        };
        check_class(&mut f, &[class, "Transformer2DModel"])?;
        f.choice_or("norm_type", norm_type, &[norm_type])?;
        let heads = f.usize_or("num_attention_heads", 16)?;
        let head_dim = f.usize_or("attention_head_dim", 72)?;
        let in_channels = f.usize_or("in_channels", 4)?;
        let out_channels = f.opt_usize("out_channels")?.unwrap_or(in_channels);
        let num_layers = f.usize_or("num_layers", 28)?;
        f.ignore(&["dropout", "norm_num_groups"]);
        // Keys of the older `Transformer2DModel` class (real DiT and PixArt checkpoints carry
        // them); diffusers remaps such configs to the patch models, where they mean nothing
        // unless they ask for another code path. `use_linear_projection` only concerns
        // continuous (non-patch) inputs.
        require_null(&mut f, &["num_vector_embeds"])?;
        require_bool(&mut f, "only_cross_attention", false, false)?;
        require_bool(&mut f, "double_self_attention", false, false)?;
        f.bool_or("use_linear_projection", false)?;
        let attention_bias = f.bool_or("attention_bias", true)?;
        let sample_size = sample_size(&mut f, if pixart { 128 } else { 32 })?;
        let patch_size = f.usize_or("patch_size", 2)?;
        let activation = activation(&mut f, "gelu-approximate")?;
        let num_embeds_ada_norm = f.usize_or("num_embeds_ada_norm", 1000)?;
        f.bool_or("upcast_attention", false)?;
        let norm_elementwise_affine = f.bool_or("norm_elementwise_affine", false)?;
        let norm_eps = positive_eps(
            &path,
            "norm_eps",
            f.f64_or("norm_eps", if pixart { 1e-6 } else { 1e-5 })?,
        )?;
        let (cross_attention_dim, caption_channels, interpolation_scale) = if pixart {
            let cross = f.usize_or("cross_attention_dim", 1152)?;
            let caption = f.opt_usize("caption_channels")?;
            let interp = f
                .opt_f64("interpolation_scale")?
                .unwrap_or_else(|| (sample_size / 64).max(1) as f64);
            f.choice_or("attention_type", "default", &["default"])?;
            let additional = match f.take("use_additional_conditions") {
                None => sample_size == 128,
                Some(Value::Bool(b)) => b,
                Some(v) => {
                    return Err(ModelError::config(
                        &path,
                        "use_additional_conditions",
                        format!("expected true, false or null, got {v}"),
                    ))
                }
            };
            if additional {
                return Err(ModelError::config(
                    &path,
                    "use_additional_conditions",
                    "resolution/aspect-ratio conditioning (true, the default at sample_size 128) is not supported",
                ));
            }
            (Some(cross), caption, interp)
        } else {
            require_null(&mut f, &["cross_attention_dim", "caption_channels"])?;
            f.choice_or("attention_type", "default", &["default"])?;
            // DiTTransformer2DModel builds its patch embedding with scale 1 whatever this says.
            f.opt_f64("interpolation_scale")?;
            (None, None, 1.0)
        };
        f.finish()?;
        if patch_size == 0 || !sample_size.is_multiple_of(patch_size) {
            return Err(ModelError::config(
                &path,
                "patch_size",
                format!("{patch_size} does not divide sample_size {sample_size}"),
            ));
        }
        if heads * head_dim == 0 || !(heads * head_dim).is_multiple_of(4) {
            return Err(ModelError::config(&path, "attention_head_dim", "the width heads · head_dim must be a positive multiple of 4 (for the 2-D sin-cos table)"));
        }
        Ok(Self {
            path,
            sample_size,
            in_channels,
            out_channels,
            patch_size,
            num_layers,
            heads,
            head_dim,
            attention_bias,
            activation,
            num_embeds_ada_norm,
            norm_elementwise_affine,
            norm_eps,
            cross_attention_dim,
            caption_channels,
            interpolation_scale,
        })
    }
}
