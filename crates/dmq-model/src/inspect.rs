//! What a model is made of: parameters, every compute layer with its shapes, and the
//! multiply-adds of one forward pass, counted by tracing a real forward on one sample.

use candle_core::Tensor;
use serde::Serialize;

use crate::config::ClassEmbedding;
use crate::ctx::{Ctx, OpKind};
use crate::error::{ModelError, Result};
use crate::unet2d::embeddings::ClassLabels;
use crate::unet2d::{Timesteps, UNet2DModel};

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
    let res = resolution.or(model.config.sample_size).ok_or_else(|| {
        ModelError::Source("config.json has no sample_size: pass the image resolution".into())
    })?;
    let x = Tensor::zeros(
        (1, model.config.in_channels, res, res),
        model.dtype(),
        model.device(),
    )?;
    let ctx = Ctx::tracing();
    // A class-conditional model needs some label to run; which one does not change the count.
    let label = [0u32];
    let vector = Tensor::zeros(
        (1, model.config.time_embed_dim()),
        model.dtype(),
        model.device(),
    )?;
    let labels = match model.config.class_embedding {
        ClassEmbedding::None => None,
        ClassEmbedding::Identity => Some(ClassLabels::Vectors(&vector)),
        _ => Some(ClassLabels::Indices(&label)),
    };
    model.forward(&x, Timesteps::Shared(500.0), labels.as_ref(), &ctx)?;
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
        params: model.num_params,
        resolution: res,
        macs_total: layers.iter().map(|l| l.macs).sum(),
        macs_conv: sum("conv2d"),
        macs_linear: sum("linear"),
        macs_attention_matmul: sum("act_matmul"),
        layers,
    })
}
