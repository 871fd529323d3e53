//! Diffusion model definitions for dmq, driven by diffusers' `config.json`, and their loading from
//! diffusers folders, sharded safetensors, the Hugging Face hub cache and the embedded default model.

pub mod compare;
pub mod config;
pub mod ctx;
pub mod embedded;
pub mod error;
pub mod hub;
pub mod inspect;
pub mod layers;
pub mod source;
pub mod unet2d;
pub mod weights;

pub use config::UNet2DConfig;
pub use ctx::Ctx;
pub use error::{ModelError, Result};
pub use source::{ModelSource, Pipeline};
pub use unet2d::{Timesteps, UNet2DModel};
pub use weights::WeightStore;
