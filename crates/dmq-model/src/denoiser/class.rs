//! Which denoiser class a diffusers component holds, read from its `config.json` `_class_name`
//! (and `model_index.json`), so folders load without the user naming the class.

use std::path::Path;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenoiserClass {
    /// Pixel-space unconditional (or class-conditional) DDPM UNet.
    Unet2D,
    /// Stable Diffusion's text-conditional latent UNet.
    Unet2DCondition,
    /// Class-conditional latent transformer (adaLN-Zero).
    DiT,
    /// Text-conditional latent transformer (adaLN-single, cross-attention).
    PixArt,
}

impl DenoiserClass {
    /// The diffusers class name, as configs and artifacts store it.
    pub fn name(self) -> &'static str {
        match self {
            DenoiserClass::Unet2D => "UNet2DModel",
            DenoiserClass::Unet2DCondition => "UNet2DConditionModel",
            DenoiserClass::DiT => "DiTTransformer2DModel",
            DenoiserClass::PixArt => "PixArtTransformer2DModel",
        }
    }

    /// The class of a `_class_name`; `Transformer2DModel` (the older name of DiT and PixArt
    /// checkpoints) is told apart by the config's `norm_type`, as diffusers does.
    pub fn from_name(name: &str, config: &serde_json::Value) -> Option<Self> {
        Some(match name {
            "UNet2DModel" => DenoiserClass::Unet2D,
            "UNet2DConditionModel" => DenoiserClass::Unet2DCondition,
            "DiTTransformer2DModel" => DenoiserClass::DiT,
            "PixArtTransformer2DModel" => DenoiserClass::PixArt,
            "Transformer2DModel" => match config.get("norm_type").and_then(|v| v.as_str()) {
                Some("ada_norm_zero") => DenoiserClass::DiT,
                Some("ada_norm_single") => DenoiserClass::PixArt,
                _ => return None,
            },
            _ => return None,
        })
    }

    /// The class of a component `config.json` (its text, `path` for errors). A config without
    /// `_class_name` is a `UNet2DModel` (older DDPM repositories omit it).
    pub fn of_config(path: &Path, text: &str) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Some(name) = json.get("_class_name").and_then(|v| v.as_str()) else {
            return Ok(DenoiserClass::Unet2D);
        };
        Self::from_name(name, &json).ok_or_else(|| {
            ModelError::config(
                path,
                "_class_name",
                format!(
                    "\"{name}\" is not a denoiser dmq can build (supported: UNet2DModel, \
                     UNet2DConditionModel, DiTTransformer2DModel, PixArtTransformer2DModel)"
                ),
            )
        })
    }

    /// Whether the model denoises VAE latents (its images need a decoder).
    pub fn is_latent(self) -> bool {
        self != DenoiserClass::Unet2D
    }

    /// The guidance scale diffusers' pipeline of this class uses by default (SD 7.5,
    /// DiT 4.0, PixArt-α 4.5); `None` for unguided models.
    pub fn default_guidance_scale(self) -> Option<f64> {
        match self {
            DenoiserClass::Unet2D => None,
            DenoiserClass::Unet2DCondition => Some(7.5),
            DenoiserClass::DiT => Some(4.0),
            DenoiserClass::PixArt => Some(4.5),
        }
    }
}

impl std::fmt::Display for DenoiserClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
