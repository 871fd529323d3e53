//! Diffusion model definitions for dmq, driven by diffusers' `config.json`, and their loading from
//! diffusers folders, sharded safetensors, the Hugging Face hub cache and the embedded default model.

pub mod compare;
pub mod config;
pub mod config_latent;
pub mod conv_grad;
pub mod ctx;
pub mod denoiser;
pub mod dit;
pub mod embedded;
pub mod error;
pub mod hub;
pub mod inspect;
pub mod layers;
pub mod patch;
pub mod pixart;
pub mod pos_embed;
pub mod source;
pub mod transformer;
pub mod unet2d;
pub mod unet2d_condition;
pub mod vae;
pub mod weights;

pub use config::UNet2DConfig;
pub use config_latent::{AutoencoderKLConfig, PatchTransformerConfig, UNet2DConditionConfig};
pub use ctx::Ctx;
pub use denoiser::{Conditioning, Denoiser, DenoiserClass, DenoiserModel, Net};
pub use dit::DiTTransformer2DModel;
pub use error::{ModelError, Result};
pub use pixart::PixArtTransformer2DModel;
pub use source::{ModelSource, Pipeline};
pub use unet2d::{Timesteps, UNet2DModel};
pub use unet2d_condition::UNet2DConditionModel;
pub use vae::AutoencoderKL;
pub use weights::WeightStore;
