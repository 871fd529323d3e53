//! What a model is made of: parameters, every compute layer with its shapes, and the
//! multiply-adds of one forward pass, counted by tracing a real forward on one sample.

use serde::Serialize;

use crate::ctx::{Ctx, OpKind};
use crate::denoiser::DenoiserModel;
use crate::error::{ModelError, Result};
use crate::unet2d::UNet2DModel;

#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub path: String,
    pub kind: &'static str,
    pub weight_shape: Vec<usize>,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// Multiply-adds for one sample.
    pub macs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub params: u64,
    pub resolution: usize,
    pub layers: Vec<LayerInfo>,
    pub macs_total: u64,
    pub macs_conv: u64,
    pub macs_linear: u64,
    pub macs_attention_matmul: u64,
}

fn kind_name(k: OpKind) -> &'static str {
    match k {
        OpKind::Conv2d => "conv2d",
        OpKind::Linear => "linear",
        OpKind::ActMatmul => "act_matmul",
    }
}

/// Traces one forward at `resolution` (default: the config's `sample_size`).
pub fn inspect(model: &UNet2DModel, resolution: Option<usize>) -> Result<Inspection> {
    inspect_denoiser(model, resolution)
}

/// [`inspect`] for any denoiser (placeholder conditioning: see
/// [`DenoiserModel::example_forward`]).
pub fn inspect_denoiser(
    model: &dyn DenoiserModel,
    resolution: Option<usize>,
) -> Result<Inspection> {
    let res = resolution
        .or(model.sample_shape().map(|s| s[1]))
        .ok_or_else(|| {
            ModelError::Source("config.json has no sample_size: pass the image resolution".into())
        })?;
    let ctx = Ctx::tracing();
    model.example_forward(res, &ctx)?;
    let layers: Vec<LayerInfo> = ctx
        .take_trace()
        .into_iter()
        .map(|r| LayerInfo {
            path: r.path,
            kind: kind_name(r.kind),
            weight_shape: r.weight_shape,
            input_shape: r.input_shape,
            output_shape: r.output_shape,
            macs: r.macs,
        })
        .collect();
    let sum = |k: &str| {
        layers
            .iter()
            .filter(|l| l.kind == k)
            .map(|l| l.macs)
            .sum::<u64>()
    };
    Ok(Inspection {
        params: model.num_params(),
        resolution: res,
        macs_total: layers.iter().map(|l| l.macs).sum(),
        macs_conv: sum("conv2d"),
        macs_linear: sum("linear"),
        macs_attention_matmul: sum("act_matmul"),
        layers,
    })
}
