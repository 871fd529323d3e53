//! The quantization engine shared by every method in dmq: quantizer arithmetic (uniform, AdaRound),
//! packed integer codes, and `QuantConfig` (recipes with per-layer overrides by checkpoint path).

pub mod act_calib;
pub mod adaround;
pub mod artifact;
pub mod calib;
pub mod config;
pub mod fused;
pub mod kmeans;
pub mod pack;
pub mod ptq;
pub mod qweight;
pub mod recon;
pub mod sim;
pub mod uniform;
