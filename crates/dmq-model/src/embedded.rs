//! The default model compiled into dmq: a small real CIFAR-10 DDPM (see
//! `models/dmq-default-ddpm/README.md`), so every command works with no download and no flag.

use std::path::PathBuf;

use crate::source::{FileRef, Pipeline};

const UNET_CONFIG: &[u8] = include_bytes!("../../../models/dmq-default-ddpm/unet/config.json");
const UNET_WEIGHTS: &[u8] =
    include_bytes!("../../../models/dmq-default-ddpm/unet/diffusion_pytorch_model.safetensors");
const SCHEDULER_CONFIG: &[u8] =
    include_bytes!("../../../models/dmq-default-ddpm/scheduler/scheduler_config.json");

/// Name shown to users and used in errors for the embedded files.
pub const NAME: &str = "embedded:dmq-default-ddpm";

pub fn pipeline() -> Pipeline {
    let label = |rel: &str| PathBuf::from(format!("<{NAME}>/{rel}"));
    Pipeline {
        name: NAME.to_string(),
        class: crate::DenoiserClass::Unet2D,
        unet_config: FileRef::Static {
            label: label("unet/config.json"),
            bytes: UNET_CONFIG,
        },
        unet_weights: FileRef::Static {
            label: label("unet/diffusion_pytorch_model.safetensors"),
            bytes: UNET_WEIGHTS,
        },
        scheduler_config: Some(FileRef::Static {
            label: label("scheduler/scheduler_config.json"),
            bytes: SCHEDULER_CONFIG,
        }),
        vae: None,
    }
}
