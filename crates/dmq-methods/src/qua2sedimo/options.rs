//! The per-layer search space (spec §A2, §B1): uniform affine per output channel (UAQ, the
//! engine's MSE-range quantizer), k-means per output channel (K-Means-C) and per tensor
//! (K-Means-A), each at 3 and 4 bits, plus UAQ-8 as the safe option. Every option of every layer
//! is computed once: its dequantized weight, its stored size and its weight error.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use dmq_model::UNet2DModel;
use dmq_quant::config::{Granularity, MixedOptions, Override, WeightQuantizer, WeightRange};
use dmq_quant::kmeans::quantize_kmeans;
use dmq_quant::qweight::{init_part_params, QuantWeight};
use serde::{Deserialize, Serialize};

use super::Q2sError;

/// How an option quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Uniform affine, per output channel, MSE range search (the paper's UAQ).
    Uaq,
    /// k-means codebook per output channel (K-Means-C).
    KmeansC,
    /// One k-means codebook for the tensor (K-Means-A).
    KmeansA,
}

/// One quantizer option: a method at a bit width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QOption {
    pub method: Method,
    pub bits: u8,
}

impl QOption {
    pub const fn new(method: Method, bits: u8) -> Self {
        Self { method, bits }
    }

    /// `uaq4`, `kmc3`, `kma4`, ...
    pub fn name(&self) -> String {
        let m = match self.method {
            Method::Uaq => "uaq",
            Method::KmeansC => "kmc",
            Method::KmeansA => "kma",
        };
        format!("{m}{}", self.bits)
    }

    /// Parses [`QOption::name`].
    pub fn parse(s: &str) -> Option<Self> {
        let (m, b) = s.split_at(3.min(s.len()));
        let method = match m {
            "uaq" => Method::Uaq,
            "kmc" => Method::KmeansC,
            "kma" => Method::KmeansA,
            _ => return None,
        };
        let bits: u8 = b.parse().ok()?;
        (2..=8).contains(&bits).then_some(Self { method, bits })
    }

    /// The recipe override that makes the pipeline quantize layer `path` with this option.
    pub fn override_for(&self, path: &str) -> Override {
        let (q, g) = match self.method {
            Method::Uaq => (WeightQuantizer::Uniform, Granularity::PerChannel),
            Method::KmeansC => (WeightQuantizer::Kmeans, Granularity::PerChannel),
            Method::KmeansA => (WeightQuantizer::Kmeans, Granularity::PerTensor),
        };
        Override {
            pattern: glob_escape(path),
            weight_bits: Some(self.bits),
            act_bits: None,
            granularity: Some(g),
            weight_quantizer: Some(q),
            keep_float: None,
        }
    }

    /// The quantized weight of `w` (`f32`); `split`: input-channel split of uniform parts (the
    /// engine's split-skip layers), ignored by k-means (one codebook per row).
    pub fn quantize(&self, w: &Tensor, split: Option<usize>) -> Result<QuantWeight, Q2sError> {
        Ok(match self.method {
            Method::Uaq => {
                let parts = init_part_params(
                    w,
                    self.bits,
                    WeightRange::Mse,
                    Granularity::PerChannel,
                    split,
                )?;
                QuantWeight::round_to_nearest(w, &parts)?
            }
            Method::KmeansC => quantize_kmeans(w, self.bits, Granularity::PerChannel)?,
            Method::KmeansA => quantize_kmeans(w, self.bits, Granularity::PerTensor)?,
        })
    }
}

/// Layer paths are glob patterns in recipes: escape the metacharacters a path could hold.
fn glob_escape(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    for ch in path.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '{' | '}') {
            s.push('[');
            s.push(ch);
            s.push(']');
        } else {
            s.push(ch);
        }
    }
    s
}

/// The options the allocation may choose (`MixedOptions::All`: the 7 of §B1).
pub fn search_space(set: MixedOptions) -> Vec<QOption> {
    use Method::*;
    match set {
        MixedOptions::All => vec![
            QOption::new(Uaq, 4),
            QOption::new(Uaq, 3),
            QOption::new(KmeansC, 4),
            QOption::new(KmeansC, 3),
            QOption::new(KmeansA, 4),
            QOption::new(KmeansA, 3),
            QOption::new(Uaq, 8),
        ],
        MixedOptions::Uniform => vec![
            QOption::new(Uaq, 4),
            QOption::new(Uaq, 3),
            QOption::new(Uaq, 8),
        ],
    }
}

/// One option of one layer, computed.
#[derive(Debug, Clone)]
pub struct LayerOption {
    pub option: QOption,
    /// Stored bits of the layer's weight with this option, codes and codebook/steps included.
    pub bits: u64,
    /// `mean (ŵ − w)² / mean w²`.
    pub rel_mse: f64,
    /// The dequantized weight (`f32`, device of the model).
    pub dequantized: Tensor,
}

/// Every option of one layer.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub path: String,
    pub numel: usize,
    pub options: Vec<LayerOption>,
}

/// Every option of every searched layer, in model order.
#[derive(Debug, Clone)]
pub struct OptionTable {
    pub options: Vec<QOption>,
    pub layers: Vec<LayerOptions>,
}

impl OptionTable {
    /// Total weights of the searched layers.
    pub fn numel(&self) -> usize {
        self.layers.iter().map(|l| l.numel).sum()
    }

    /// Stored bits of configuration `choice` (an option index per layer).
    pub fn bits_of(&self, choice: &[usize]) -> u64 {
        self.layers
            .iter()
            .zip(choice)
            .map(|(l, &o)| l.options[o].bits)
            .sum()
    }

    /// Average stored bits per weight of `choice`.
    pub fn avg_bits(&self, choice: &[usize]) -> f64 {
        self.bits_of(choice) as f64 / self.numel().max(1) as f64
    }
}

fn rel_mse(q: &Tensor, w: &Tensor) -> Result<f64, Q2sError> {
    let w = w.to_dtype(DType::F64)?;
    let d = (q.to_dtype(DType::F64)? - &w)?;
    let num = d.sqr()?.mean_all()?.to_scalar::<f64>()?;
    let den = w.sqr()?.mean_all()?.to_scalar::<f64>()?;
    Ok(if den > 0.0 { num / den } else { num })
}

/// Computes `options` for every layer of `model` in `paths` (model order is kept), calling
/// `tick` after each layer. `splits`: the engine's split points (split-skip layers).
pub fn build_table(
    model: &mut UNet2DModel,
    paths: &[String],
    options: &[QOption],
    splits: &BTreeMap<String, usize>,
    mut tick: impl FnMut(&str),
) -> Result<OptionTable, Q2sError> {
    let mut layers = Vec::new();
    for l in model.layers_mut() {
        if !paths.iter().any(|p| p == l.path()) {
            continue;
        }
        let w_dev = l.layer_ref().weight.clone();
        let w = w_dev
            .to_dtype(DType::F32)?
            .to_device(&candle_core::Device::Cpu)?;
        let mut opts = Vec::with_capacity(options.len());
        for o in options {
            let q = o.quantize(&w, splits.get(l.path()).copied())?;
            let deq = q.dequantize()?;
            opts.push(LayerOption {
                option: *o,
                bits: 8 * q.storage_bytes() as u64,
                rel_mse: rel_mse(&deq, &w)?,
                dequantized: deq.to_dtype(w_dev.dtype())?.to_device(w_dev.device())?,
            });
        }
        tick(l.path());
        layers.push(LayerOptions {
            path: l.path().to_string(),
            numel: w.elem_count(),
            options: opts,
        });
    }
    if layers.len() != paths.len() {
        let have: Vec<&String> = layers.iter().map(|l| &l.path).collect();
        let missing = paths.iter().find(|p| !have.contains(p)).cloned();
        return Err(Q2sError::Input(format!(
            "layer `{}` is not a conv/linear layer of the model",
            missing.unwrap_or_default()
        )));
    }
    Ok(OptionTable {
        options: options.to_vec(),
        layers,
    })
}

/// Operation type of a layer path, for aggregation: `conv1`, `conv2`, `shortcut`, `temb_proj`,
/// `attn_q`, `attn_k`, `attn_v`, `attn_out`, `downsample`, `upsample`, `conv_in`, `conv_out`,
/// `time_embedding`, or `other`.
pub fn op_type(path: &str) -> &'static str {
    let last = path.rsplit('.').next().unwrap_or(path);
    if path.contains(".attentions.") {
        return match last {
            "to_q" | "query" => "attn_q",
            "to_k" | "key" => "attn_k",
            "to_v" | "value" => "attn_v",
            _ => "attn_out",
        };
    }
    if path.contains(".downsamplers.") {
        return "downsample";
    }
    if path.contains(".upsamplers.") {
        return "upsample";
    }
    if path.starts_with("time_embedding") {
        return "time_embedding";
    }
    match last {
        "conv1" => "conv1",
        "conv2" => "conv2",
        "conv_shortcut" => "shortcut",
        "time_emb_proj" => "temb_proj",
        "conv_in" => "conv_in",
        "conv_out" => "conv_out",
        _ => "other",
    }
}

/// Block of a layer path: `down_blocks.1`, `mid_block`, `up_blocks.0`, or the first segment
/// (`conv_in`, `time_embedding`, ...).
pub fn block_of(path: &str) -> String {
    let mut it = path.split('.');
    let first = it.next().unwrap_or(path);
    match (first, it.next()) {
        ("down_blocks" | "up_blocks", Some(i)) => format!("{first}.{i}"),
        _ => first.to_string(),
    }
}
