//! The quantized-model artifact: a self-contained folder that every `dmq` command loads with
//! `--model Q`.
//!
//! ```text
//! Q/manifest.json          format, version, model class, recipe, calibration, per-layer bits
//!                          and errors
//! Q/config.json            the denoiser's config (unchanged; UNet or transformer)
//! Q/vae/                   latent models: the base model's VAE folder, copied (it stays float)
//! Q/scheduler_config.json  the scheduler config of the base model (when it has one)
//! Q/quant.safetensors      per quantized layer and part k:
//!                            {path}.w{k}.codes       u8, bit-packed integer codes
//!                            {path}.w{k}.scale       f32 [C_out]  step per output channel
//!                            {path}.w{k}.zero_point  i64 [C_out]
//!                            {path}.w{k}.codebook    f32 [rows, 2^b]  instead of scale and
//!                                                    zero point for k-means parts (rows = C_out
//!                                                    per channel, 1 per tensor; Qua²SeDiMo)
//!                            {path}.a{k}.scale       f32 [S]      activation step per sampling step
//!                            {path}.a{k}.zero_point  i64 [S]
//!                            {path}.a{k}.shift       u8 [S, C_k]  PTS: channel c of part k at
//!                                                    step s uses step Δ_s·2^(−shift) (DMQ)
//!                            {path}.les.gamma        f32 [C_in]   LES: the layer quantizes x/γ
//!                                                    (per-input-channel factor of the
//!                                                    activation step; codes are of W·γ)
//! Q/float.safetensors      every other tensor of the checkpoint (biases, norms, float layers), f32
//! Q/ptqd.safetensors       optional: PTQD's noise statistics (manifest section `ptqd`, written by
//!                          dmq-methods' `ptqd::store`); artifacts without it load as before
//! ```
//!
//! Activation parameters may differ in bit width from step to step (PTQD's step-aware mixed
//! precision): the manifest then lists each step's width in `activation.step_bits`, and
//! `activation.bits` is the widest.
//!
//! Written to a temporary folder and renamed, so a folder named Q is always complete. Loading
//! dequantizes with the same function calibration used ([`QuantWeight::dequantize`]), so the
//! loaded model computes exactly what the in-memory quantized model computed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmq_model::{Denoiser, DenoiserClass, DenoiserModel, UNet2DModel, WeightStore};
use serde::{Deserialize, Serialize};

use crate::pack;
use crate::qweight::{Codebook, QuantWeight, WeightPart};
use crate::sim::{LayerActivation, PerStepActivation, SimQuantExec};
use crate::uniform::UniformParams;

pub const FORMAT: &str = "dmq-quantized";
/// Version 2 added PTS shifts and LES scales (optional), version 3 k-means codebooks (optional);
/// version 1 and 2 artifacts still load.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this code reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: layer `{layer}`: {message}")]
    Layer {
        path: PathBuf,
        layer: String,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] dmq_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ArtifactError>;

fn file_err(path: &Path, message: impl ToString) -> ArtifactError {
    ArtifactError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// One input-channel part of a quantized weight, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    pub start: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightEntry {
    pub bits: u8,
    /// Whether steps are per output channel (`true`) or one per part.
    pub per_channel: bool,
    pub parts: Vec<PartEntry>,
    /// Codes index a k-means lookup table (`{path}.w{k}.codebook`) instead of `Δ·(q − z)`
    /// (format version 3; absent, i.e. `false`, before).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub codebook: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationEntry {
    /// The bit width of every step, or the widest when `step_bits` is given.
    pub bits: u8,
    pub split: Option<usize>,
    /// Calibrated sampling-step indices of each part (same for every part in practice).
    pub steps: Vec<Vec<usize>>,
    /// Per-channel power-of-two step factors per step (`{path}.a{k}.shift`).
    #[serde(default)]
    pub pts: bool,
    /// Bit width of each step of each part, when they differ (step-aware mixed precision);
    /// absent otherwise, and in artifacts written before mixed precision existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_bits: Option<Vec<Vec<u8>>>,
}

/// One conv/linear layer of the model in the manifest (float layers are listed too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerEntry {
    pub path: String,
    /// Shape of the weight.
    pub shape: Vec<usize>,
    pub weight: Option<WeightEntry>,
    pub activation: Option<ActivationEntry>,
    /// `‖Ŵ − W‖ / ‖W‖` of the quantized weight.
    pub weight_rel_error: Option<f64>,
    /// LES: the layer computes on `x/γ` with `{path}.les.gamma`, its codes are of `W·γ`.
    #[serde(default)]
    pub equivalent_scale: bool,
    /// LES `γ` of this layer folded into another layer (`to_out.0` into `to_v`): nothing to do
    /// at run time, recorded for the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_folded_into: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub dmq_version: String,
    /// The model that was quantized, as the user named it.
    pub base_model: String,
    /// The denoiser's diffusers class (`UNet2DConditionModel`, ...); absent in artifacts
    /// written before latent models, which are all `UNet2DModel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_class: Option<String>,
    /// The recipe, in full (a `QuantConfig` as JSON).
    pub recipe: serde_json::Value,
    /// Calibration data and the sampling protocol the activation parameters are valid for:
    /// `steps`, `sampler`, `eta`, `timesteps`, `fingerprint`, `samples`.
    pub calibration: serde_json::Value,
    pub layers: Vec<LayerEntry>,
    /// Anything a method adds (reconstruction losses, timings): free-form.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// PTQD's statistics and the sampling protocols they are valid for, with its tensors in
    /// [`PTQD_FILE`]; its layout belongs to `dmq_methods::ptqd::store`. `None` for artifacts
    /// without PTQD (and every artifact written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptqd: Option<serde_json::Value>,
}

/// The file of PTQD's tensors in an artifact folder.
pub const PTQD_FILE: &str = "ptqd.safetensors";

/// What a quantized layer holds in memory.
#[derive(Debug, Clone)]
pub struct QuantLayer {
    pub weight: Option<QuantWeight>,
    pub activation: Option<LayerActivation>,
    /// LES `γ` (`[C_in]`, f32, CPU): the layer quantizes `x/γ`; its weight codes are of `W·γ`.
    pub equivalent_scale: Option<Tensor>,
}

/// Serialises the quantized layers into the tensors of `quant.safetensors`.
pub fn layer_tensors(layers: &BTreeMap<String, QuantLayer>) -> Result<HashMap<String, Tensor>> {
    let cpu = Device::Cpu;
    let mut out = HashMap::new();
    let bad = |layer: &str, m: String| ArtifactError::Layer {
        path: PathBuf::from("quant.safetensors"),
        layer: layer.to_string(),
        message: m,
    };
    for (path, l) in layers {
        if let Some(w) = &l.weight {
            for (k, part) in w.parts.iter().enumerate() {
                let codes: Vec<u8> = part.codes.flatten_all()?.to_device(&cpu)?.to_vec1()?;
                let packed =
                    pack::pack(&codes, part.params.bits).map_err(|e| bad(path, e.to_string()))?;
                let n = packed.len();
                out.insert(
                    format!("{path}.w{k}.codes"),
                    Tensor::from_vec(packed, n, &cpu)?,
                );
                match &part.codebook {
                    None => insert_params(&mut out, &format!("{path}.w{k}"), &part.params)?,
                    Some(cb) => {
                        let rows = part.params.num_channels();
                        let levels = cb.values.len() / rows.max(1);
                        out.insert(
                            format!("{path}.w{k}.codebook"),
                            Tensor::from_vec(cb.values.clone(), (rows, levels), &cpu)?,
                        );
                    }
                }
            }
        }
        if let Some(a) = &l.activation {
            for (k, part) in a.parts.iter().enumerate() {
                // One (Δ, z) per calibrated step, stored like per-channel parameters (and read
                // back that way by `layer_from`).
                let per_step = UniformParams {
                    scale: part.params.iter().map(|p| p.scale[0]).collect(),
                    zero_point: part.params.iter().map(|p| p.zero_point[0]).collect(),
                    bits: part.params[0].bits,
                    axis: Some(0),
                };
                insert_params(&mut out, &format!("{path}.a{k}"), &per_step)?;
                if let Some(shifts) = &part.shifts {
                    let c = shifts.first().map_or(0, |v| v.len());
                    if shifts.len() != part.params.len() || shifts.iter().any(|v| v.len() != c) {
                        return Err(bad(path, format!("part {k}: ragged PTS shifts")));
                    }
                    let flat: Vec<u8> = shifts.concat();
                    out.insert(
                        format!("{path}.a{k}.shift"),
                        Tensor::from_vec(flat, (shifts.len(), c), &cpu)?,
                    );
                }
            }
        }
        if let Some(g) = &l.equivalent_scale {
            out.insert(
                format!("{path}.les.gamma"),
                g.to_dtype(DType::F32)?.to_device(&cpu)?,
            );
        }
    }
    Ok(out)
}

fn insert_params(out: &mut HashMap<String, Tensor>, prefix: &str, p: &UniformParams) -> Result<()> {
    let c = p.scale.len();
    out.insert(
        format!("{prefix}.scale"),
        Tensor::from_vec(p.scale.clone(), c, &Device::Cpu)?,
    );
    let zp: Vec<i64> = p.zero_point.iter().map(|&z| i64::from(z)).collect();
    out.insert(
        format!("{prefix}.zero_point"),
        Tensor::from_vec(zp, c, &Device::Cpu)?,
    );
    Ok(())
}

/// The manifest entry of a layer (the tensors go through [`layer_tensors`]).
pub fn layer_entry(path: &str, shape: &[usize], l: Option<&QuantLayer>) -> Result<LayerEntry> {
    let mut e = LayerEntry {
        path: path.to_string(),
        shape: shape.to_vec(),
        weight: None,
        activation: None,
        weight_rel_error: None,
        equivalent_scale: false,
        scale_folded_into: None,
    };
    let Some(l) = l else { return Ok(e) };
    e.equivalent_scale = l.equivalent_scale.is_some();
    if let Some(w) = &l.weight {
        e.weight = Some(WeightEntry {
            bits: w.bits(),
            per_channel: w.parts[0].params.axis.is_some(),
            parts: w
                .parts
                .iter()
                .map(|p| PartEntry {
                    start: p.start,
                    len: p.len,
                })
                .collect(),
            codebook: w.has_codebook(),
        });
    }
    if let Some(a) = &l.activation {
        let step_bits: Vec<Vec<u8>> = a
            .parts
            .iter()
            .map(|p| p.params.iter().map(|q| q.bits).collect())
            .collect();
        let widest = step_bits.iter().flatten().copied().max();
        let first = a
            .parts
            .first()
            .and_then(|p| p.params.first())
            .map(|p| p.bits);
        let (Some(widest), Some(first)) = (widest, first) else {
            return Err(ArtifactError::Layer {
                path: PathBuf::from("manifest.json"),
                layer: path.to_string(),
                message: "activation quantizer without parameter sets".into(),
            });
        };
        let mixed = step_bits.iter().flatten().any(|&b| b != first);
        e.activation = Some(ActivationEntry {
            bits: widest,
            split: a.split,
            steps: a.parts.iter().map(|p| p.steps.clone()).collect(),
            pts: a.parts.iter().any(|p| p.shifts.is_some()),
            step_bits: mixed.then_some(step_bits),
        });
    }
    Ok(e)
}

fn take(tensors: &HashMap<String, Tensor>, file: &Path, layer: &str, name: &str) -> Result<Tensor> {
    tensors
        .get(name)
        .cloned()
        .ok_or_else(|| ArtifactError::Layer {
            path: file.to_path_buf(),
            layer: layer.to_string(),
            message: format!("tensor `{name}` is missing"),
        })
}

fn params_from(
    tensors: &HashMap<String, Tensor>,
    file: &Path,
    layer: &str,
    prefix: &str,
    bits: u8,
    axis: Option<usize>,
) -> Result<UniformParams> {
    let scale: Vec<f32> = take(tensors, file, layer, &format!("{prefix}.scale"))?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let zp: Vec<i64> = take(tensors, file, layer, &format!("{prefix}.zero_point"))?
        .to_dtype(DType::I64)?
        .to_vec1()?;
    let zp = zp
        .iter()
        .map(|&z| i32::try_from(z))
        .collect::<std::result::Result<Vec<i32>, _>>()
        .map_err(|_| ArtifactError::Layer {
            path: file.to_path_buf(),
            layer: layer.to_string(),
            message: format!("`{prefix}.zero_point` holds a value outside i32"),
        })?;
    UniformParams::new(scale, zp, bits, axis).map_err(|e| ArtifactError::Layer {
        path: file.to_path_buf(),
        layer: layer.to_string(),
        message: format!("`{prefix}`: {e}"),
    })
}

/// Rebuilds one layer from its manifest entry and the tensors of `quant.safetensors`.
pub fn layer_from(
    e: &LayerEntry,
    tensors: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<QuantLayer> {
    let bad = |m: String| ArtifactError::Layer {
        path: file.to_path_buf(),
        layer: e.path.clone(),
        message: m,
    };
    let weight = match &e.weight {
        None => None,
        Some(w) => {
            let mut parts = Vec::new();
            for (k, p) in w.parts.iter().enumerate() {
                let mut shape = e.shape.clone();
                if shape.len() < 2 {
                    return Err(bad(format!("weight shape {:?} has no input axis", e.shape)));
                }
                shape[1] = p.len;
                let n: usize = shape.iter().product();
                let packed: Vec<u8> =
                    take(tensors, file, &e.path, &format!("{}.w{k}.codes", e.path))?
                        .to_dtype(DType::U8)?
                        .to_vec1()?;
                if packed.len() != pack::packed_len(n, w.bits) {
                    return Err(bad(format!(
                        "part {k}: {} bytes of codes, {n} codes of {} bits need {}",
                        packed.len(),
                        w.bits,
                        pack::packed_len(n, w.bits)
                    )));
                }
                let codes = pack::unpack(&packed, w.bits, n).map_err(|e| bad(e.to_string()))?;
                let axis = w.per_channel.then_some(0);
                let (params, codebook) = if w.codebook {
                    let name = format!("{}.w{k}.codebook", e.path);
                    let t = take(tensors, file, &e.path, &name)?;
                    let levels = 1usize << w.bits;
                    let rows = if w.per_channel { shape[0] } else { 1 };
                    if t.dims() != [rows, levels] {
                        return Err(bad(format!(
                            "`{name}` has shape {:?}, expected [{rows}, {levels}]",
                            t.dims()
                        )));
                    }
                    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let params = UniformParams::new(vec![1.0; rows], vec![0; rows], w.bits, axis)
                        .map_err(|e| bad(e.to_string()))?;
                    (params, Some(Codebook { values }))
                } else {
                    let params = params_from(
                        tensors,
                        file,
                        &e.path,
                        &format!("{}.w{k}", e.path),
                        w.bits,
                        axis,
                    )?;
                    (params, None)
                };
                parts.push(WeightPart {
                    start: p.start,
                    len: p.len,
                    params,
                    codes: Tensor::from_vec(codes, shape, &Device::Cpu)?,
                    codebook,
                });
            }
            Some(QuantWeight::new(e.shape.clone(), parts).map_err(|e| bad(e.to_string()))?)
        }
    };
    let activation = match &e.activation {
        None => None,
        Some(a) => {
            let want = if a.split.is_some() { 2 } else { 1 };
            if a.steps.len() != want {
                return Err(bad(format!(
                    "activation has {} parts, split {:?} needs {want}",
                    a.steps.len(),
                    a.split
                )));
            }
            if let Some(sb) = &a.step_bits {
                let ok = sb.len() == a.steps.len()
                    && sb.iter().zip(&a.steps).all(|(b, s)| b.len() == s.len())
                    && sb.iter().flatten().all(|&b| b <= a.bits);
                if !ok {
                    return Err(bad(format!(
                        "activation.step_bits {sb:?} does not match its steps {:?} (or exceeds \
                         bits = {})",
                        a.steps, a.bits
                    )));
                }
            }
            let mut parts = Vec::new();
            for (k, steps) in a.steps.iter().enumerate() {
                let prefix = format!("{}.a{k}", e.path);
                let all = params_from(tensors, file, &e.path, &prefix, a.bits, Some(0))?;
                if all.scale.len() != steps.len() {
                    return Err(bad(format!(
                        "`{prefix}` has {} parameter sets for {} steps",
                        all.scale.len(),
                        steps.len()
                    )));
                }
                let bits_of = |i: usize| a.step_bits.as_ref().map_or(a.bits, |sb| sb[k][i]);
                let params = all
                    .scale
                    .iter()
                    .zip(&all.zero_point)
                    .enumerate()
                    .map(|(i, (&s, &z))| UniformParams::per_tensor(s, z, bits_of(i)))
                    .collect::<crate::uniform::Result<Vec<_>>>()
                    .map_err(|e| bad(e.to_string()))?;
                let mut act = PerStepActivation::new(steps.clone(), params);
                if a.pts {
                    let t = take(tensors, file, &e.path, &format!("{prefix}.shift"))?;
                    let (rows, c) = t.dims2().map_err(|_| {
                        bad(format!("`{prefix}.shift` must be 2-D [steps, channels]"))
                    })?;
                    if rows != steps.len() {
                        return Err(bad(format!(
                            "`{prefix}.shift` has {rows} rows for {} steps",
                            steps.len()
                        )));
                    }
                    let v: Vec<Vec<u8>> = t.to_dtype(DType::U8)?.to_vec2()?;
                    if v.iter().flatten().any(|&s| s > 7) {
                        return Err(bad(format!("`{prefix}.shift` holds a shift above 7")));
                    }
                    let _ = c;
                    act.shifts = Some(v);
                }
                parts.push(act);
            }
            Some(LayerActivation::new(a.split, parts))
        }
    };
    let equivalent_scale = if e.equivalent_scale {
        let g =
            take(tensors, file, &e.path, &format!("{}.les.gamma", e.path))?.to_dtype(DType::F32)?;
        let c_in = e.shape.get(1).copied().unwrap_or(0);
        if g.dims() != [c_in] {
            return Err(bad(format!(
                "`{}.les.gamma` has shape {:?}, the layer has {c_in} input channels",
                e.path,
                g.dims()
            )));
        }
        let v: Vec<f32> = g.to_vec1()?;
        if v.iter().any(|x| !x.is_finite() || *x == 0.0) {
            return Err(bad(format!(
                "`{}.les.gamma` holds zero or non-finite values",
                e.path
            )));
        }
        Some(g)
    } else {
        None
    };
    Ok(QuantLayer {
        weight,
        activation,
        equivalent_scale,
    })
}

/// Writes the artifact to `dir` (which must not exist, unless `overwrite`): `float` is the
/// base checkpoint (every tensor not replaced by a quantized weight is copied, as f32).
pub fn save(
    dir: &Path,
    manifest: &Manifest,
    layers: &BTreeMap<String, QuantLayer>,
    unet_config_json: &str,
    scheduler_config_json: Option<&str>,
    float: &WeightStore,
    overwrite: bool,
) -> Result<()> {
    save_with(
        dir,
        manifest,
        layers,
        unet_config_json,
        scheduler_config_json,
        float,
        None,
        overwrite,
    )
}

/// [`save`], also copying the base model's VAE folder (`config.json` and its safetensors)
/// into `vae/` of the artifact, so latent models decode without their base folder.
#[allow(clippy::too_many_arguments)]
pub fn save_with(
    dir: &Path,
    manifest: &Manifest,
    layers: &BTreeMap<String, QuantLayer>,
    unet_config_json: &str,
    scheduler_config_json: Option<&str>,
    float: &WeightStore,
    vae: Option<&Path>,
    overwrite: bool,
) -> Result<()> {
    if dir.exists() && !overwrite {
        return Err(file_err(
            dir,
            "already exists; pass --overwrite to replace it",
        ));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| file_err(parent, e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| file_err(dir, "not a folder name"))?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;

    let quantized: std::collections::BTreeSet<String> = layers
        .iter()
        .filter(|(_, l)| l.weight.is_some())
        .map(|(p, _)| format!("{p}.weight"))
        .collect();
    let mut float_tensors = HashMap::new();
    for n in float.names() {
        if !quantized.contains(&n) {
            float_tensors.insert(
                n.clone(),
                float
                    .get_any(&n)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            );
        }
    }
    candle_core::safetensors::save(&float_tensors, tmp.join("float.safetensors"))?;
    candle_core::safetensors::save(&layer_tensors(layers)?, tmp.join("quant.safetensors"))?;
    let write = |file: &str, text: &str| -> Result<()> {
        std::fs::write(tmp.join(file), text).map_err(|e| file_err(&tmp.join(file), e))
    };
    write("config.json", unet_config_json)?;
    if let Some(s) = scheduler_config_json {
        write("scheduler_config.json", s)?;
    }
    if let Some(vae) = vae {
        let to = tmp.join("vae");
        std::fs::create_dir_all(&to).map_err(|e| file_err(&to, e))?;
        let weights = dmq_model::source::find_weights(vae)?;
        for from in [vae.join("config.json"), weights] {
            let name = from.file_name().expect("a file name").to_owned();
            std::fs::copy(&from, to.join(&name)).map_err(|e| file_err(&from, e))?;
        }
    }
    let text = serde_json::to_string_pretty(manifest).map_err(|e| file_err(dir, e))?;
    write("manifest.json", &text)?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| file_err(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| file_err(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

/// Whether `dir` is meant to be a dmq artifact: it has a `manifest.json` (diffusers folders
/// have none). Whether that manifest is valid is for [`read_manifest`] to say, so a damaged
/// artifact gets an error about its manifest rather than about missing diffusers files.
pub fn is_artifact(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// Reads and checks `manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
    if m.format != FORMAT {
        return Err(file_err(
            &path,
            format!("field `format` is `{}`, expected `{FORMAT}`", m.format),
        ));
    }
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&m.format_version) {
        return Err(file_err(
            &path,
            format!(
                "field `format_version` is {}, this dmq reads versions \
                 {MIN_FORMAT_VERSION} to {FORMAT_VERSION}",
                m.format_version
            ),
        ));
    }
    Ok(m)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Replaces the PTQD part of the artifact in `dir`: [`PTQD_FILE`] holds `tensors`, and the
/// manifest's `ptqd` section becomes `section`. The tensor file is written first and the
/// manifest last (each through a temporary file and a rename), so an interrupted update leaves
/// the previous manifest; writers keep the tensor names of sets they do not change, so that
/// manifest still finds its tensors. Returns the new manifest.
pub fn write_ptqd(
    dir: &Path,
    section: serde_json::Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<Manifest> {
    let mut m = read_manifest(dir)?;
    let file = dir.join(PTQD_FILE);
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, &tmp).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, &file).map_err(|e| file_err(&file, e))?;
    m.ptqd = Some(section);
    let text = serde_json::to_string_pretty(&m).map_err(|e| file_err(dir, e))?;
    replace_file(&dir.join("manifest.json"), text.as_bytes())?;
    Ok(m)
}

/// The tensors of [`PTQD_FILE`] in `dir`, on the CPU (an error naming the file when it is
/// missing or unreadable: call this only for manifests with a `ptqd` section).
pub fn read_ptqd_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let file = dir.join(PTQD_FILE);
    candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| file_err(&file, e))
}

/// The quantized layers of the artifact in `dir`, on the CPU.
pub fn read_layers(dir: &Path, m: &Manifest) -> Result<BTreeMap<String, QuantLayer>> {
    let file = dir.join("quant.safetensors");
    let tensors =
        candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| file_err(&file, e))?;
    let mut out = BTreeMap::new();
    for e in &m.layers {
        if e.weight.is_some() || e.activation.is_some() {
            out.insert(e.path.clone(), layer_from(e, &tensors, &file)?);
        }
    }
    Ok(out)
}

/// Builds the model of the artifact in `dir` on `device` in `dtype`, with every quantized layer
/// executing its simulated quantization (a `UNet2DModel` artifact only: [`load_denoiser`]
/// loads any class).
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(Manifest, UNet2DModel)> {
    let (m, model) = load_denoiser(dir, device, dtype)?;
    match model.into_unet2d() {
        Ok(unet) => Ok((m, unet)),
        Err(other) => Err(file_err(
            &dir.join("manifest.json"),
            format!(
                "holds a {}; this command handles UNet2DModel artifacts only so far",
                other.class()
            ),
        )),
    }
}

/// The denoiser class of the artifact in `dir`: the manifest's `model_class`, which must agree
/// with `config.json` (older artifacts have no `model_class`: the config says).
pub fn model_class(dir: &Path, m: &Manifest) -> Result<DenoiserClass> {
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
    let from_config = DenoiserClass::of_config(&cfg_path, &cfg_text)?;
    if let Some(name) = &m.model_class {
        if name != from_config.name() {
            return Err(file_err(
                &dir.join("manifest.json"),
                format!("field `model_class` is `{name}`, but config.json holds a {from_config}"),
            ));
        }
    }
    Ok(from_config)
}

/// Builds the denoiser (any class) of the artifact in `dir`, with every quantized layer
/// executing its simulated quantization.
pub fn load_denoiser(dir: &Path, device: &Device, dtype: DType) -> Result<(Manifest, Denoiser)> {
    let m = read_manifest(dir)?;
    let class = model_class(dir, &m)?;
    let layers = read_layers(dir, &m)?;
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
    let mut store = WeightStore::open(&dir.join("float.safetensors"), device, dtype)?;
    for (path, l) in &layers {
        if let Some(w) = &l.weight {
            let deq = w.dequantize().map_err(|e| ArtifactError::Layer {
                path: dir.join("quant.safetensors"),
                layer: path.clone(),
                message: e.to_string(),
            })?;
            store.insert(&format!("{path}.weight"), deq)?;
        }
    }
    let mut model = Denoiser::load(class, &cfg_path, &cfg_text, &store)?;
    install(&mut model, &layers, dir)?;
    Ok((m, model))
}

/// Installs simulated execution for `layers` on a model whose quantized layers already hold
/// their dequantized weights (as [`load`] builds it).
fn install(
    model: &mut dyn DenoiserModel,
    layers: &BTreeMap<String, QuantLayer>,
    dir: &Path,
) -> Result<()> {
    let mut seen = 0;
    for mut layer in model.layers_mut() {
        if let Some(l) = layers.get(layer.path()) {
            seen += 1;
            let like = layer.layer_ref().weight.clone();
            if let Some(g) = &l.equivalent_scale {
                let g = g.to_dtype(like.dtype())?.to_device(like.device())?;
                layer.set_input_scale(Some(g))?;
            }
            let exec = SimQuantExec::with_weight(None, &like, l.activation.clone())
                .map_err(|e| file_err(dir, e))?;
            layer.set_exec(Some(exec));
        }
    }
    if seen != layers.len() {
        let names: Vec<String> = model.layer_paths();
        let missing = layers
            .keys()
            .find(|k| !names.contains(k))
            .cloned()
            .unwrap_or_default();
        return Err(ArtifactError::Layer {
            path: dir.join("manifest.json"),
            layer: missing,
            message: "is not a layer of the model built from config.json".into(),
        });
    }
    Ok(())
}
