//! The integer path as a model hook: [`IntExec`] is a `dmq_model::layers::LayerExec`, installed
//! on a layer exactly where the simulated path installs `dmq_quant::sim::SimQuantExec`, so the
//! same UNet code runs either way (`dmq sample --exec sim|int`).
//!
//! Which layers compute in integers: those whose weights *and* inputs are quantized. A layer with
//! only one of the two (weight-only or activation-only recipes) keeps the simulated computation,
//! and layers the recipe keeps in float stay float, as do group norms, SiLU and the attention
//! matmuls (not quantized by any dmq recipe).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerKind, LayerMut, LayerRef};
use dmq_model::{ModelError, UNet2DConfig, UNet2DModel, WeightStore};
use dmq_quant::artifact::{self, Manifest, QuantLayer};
use dmq_quant::qweight::QuantWeight;
use dmq_quant::sim::{LayerActivation, SimQuantExec};

use crate::error::{ExecError, Result};
use crate::isa::Isa;
use crate::layer::{Geometry, IntLayer, PartWeight, SegmentSpec};
use crate::quantize::ActQuant;

/// Integer execution of one layer: the packed layer plus its per-step activation quantizers.
///
/// DMQ's power-of-two scaling gives every calibrated step set its own per-channel shifts. The
/// kernels take shifts per segment of contiguous input channels, packed with the weights, so the
/// layer is packed once per distinct shift pattern (for the 1×1 shortcut convolutions PTS
/// applies to by default, a few copies of a small weight) and each step set uses its pattern's.
pub struct IntExec {
    /// One packed layer per distinct shift pattern (one without PTS).
    pub layers: Vec<IntLayer>,
    /// `[set]`: index into `layers`.
    layer_of_set: Vec<usize>,
    /// `[part][set]`: the activation quantizer of each part for each calibrated step set (with
    /// PTS: the step of the part's finest channel, the segments' shifts coarsen it).
    acts: Vec<Vec<ActQuant>>,
    /// Sampling-step index of each set (the same for every part).
    steps: Vec<usize>,
    isa: Isa,
}

impl IntExec {
    /// Builds the integer layer for `layer` (its geometry and bias) from the quantized weight and
    /// activation quantizers of an artifact.
    pub fn new(
        layer: &LayerRef,
        weight: &QuantWeight,
        activation: &LayerActivation,
        isa: Isa,
    ) -> Result<Self> {
        Self::build(layer, weight, activation, isa).map_err(|e| e.in_layer(layer.path))
    }

    fn build(
        layer: &LayerRef,
        weight: &QuantWeight,
        activation: &LayerActivation,
        isa: Isa,
    ) -> Result<Self> {
        let dims = layer.weight.dims();
        if weight.shape != dims {
            return Err(ExecError::Shape(format!(
                "quantized weight has shape {:?}, the layer {:?}",
                weight.shape, dims
            )));
        }
        let geometry = match layer.kind {
            LayerKind::Conv2d { stride, padding } => {
                if dims.len() != 4 || dims[2] != dims[3] {
                    return Err(ExecError::Shape(format!(
                        "convolution weight {dims:?} is not [C_out, C_in, k, k]"
                    )));
                }
                Geometry::Conv {
                    kernel: dims[2],
                    stride,
                    padding,
                }
            }
            LayerKind::Linear => {
                if dims.len() != 2 {
                    return Err(ExecError::Shape(format!(
                        "linear weight {dims:?} is not [C_out, C_in]"
                    )));
                }
                Geometry::Linear
            }
        };
        let (out_c, in_c) = (dims[0], dims[1]);
        let taps: usize = dims[2..].iter().product();
        // Weight parts (input-channel ranges with their own quantizer) and activation parts
        // (split at the same channel for split layers) must line up: one dequantization scale
        // per part.
        let act_ranges: Vec<(usize, usize)> = match activation.split {
            None => vec![(0, in_c)],
            Some(s) => vec![(0, s), (s, in_c - s)],
        };
        let w_ranges: Vec<(usize, usize)> = weight.parts.iter().map(|p| (p.start, p.len)).collect();
        if activation.parts.len() != act_ranges.len() {
            return Err(ExecError::Shape(format!(
                "{} activation parts for split {:?}",
                activation.parts.len(),
                activation.split
            )));
        }
        // Segments: the common refinement of both splits (each segment one weight part, one
        // activation part); dequantization parts: the (weight part, activation part) pairs.
        let mut cuts: Vec<usize> = act_ranges
            .iter()
            .chain(&w_ranges)
            .flat_map(|&(s, l)| [s, s + l])
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut segments: Vec<SegmentSpec> = Vec::new();
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for w in cuts.windows(2) {
            let (start, end) = (w[0], w[1]);
            let wp = w_ranges
                .iter()
                .position(|&(s, l)| start >= s && start < s + l)
                .ok_or_else(|| {
                    ExecError::Shape(format!("input channel {start} has no weight part"))
                })?;
            let ap = act_ranges
                .iter()
                .position(|&(s, l)| start >= s && start < s + l)
                .ok_or_else(|| {
                    ExecError::Shape(format!("input channel {start} has no activation part"))
                })?;
            let part = match pairs.iter().position(|&p| p == (wp, ap)) {
                Some(i) => i,
                None => {
                    pairs.push((wp, ap));
                    pairs.len() - 1
                }
            };
            segments.push((start, end - start, 0, part));
        }
        // Activation-step sets and their PTS shifts over all input channels.
        let steps = activation.parts[0].steps.clone();
        if activation.parts.iter().any(|p| p.steps != steps) {
            return Err(ExecError::Shape(
                "the activation parts were calibrated at different steps".into(),
            ));
        }
        let n_sets = steps.len();
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut layer_of_set = Vec::with_capacity(n_sets);
        for set in 0..n_sets {
            let mut pattern = vec![0u8; in_c];
            for (ap, part) in activation.parts.iter().enumerate() {
                let Some(shifts) = &part.shifts else { continue };
                let (start, len) = act_ranges[ap];
                let row = shifts.get(set).filter(|r| r.len() == len).ok_or_else(|| {
                    ExecError::Shape(format!(
                        "PTS shifts of activation part {ap} do not have {n_sets} rows of {len} channels"
                    ))
                })?;
                pattern[start..start + len].copy_from_slice(row);
            }
            let i = match patterns.iter().position(|p| *p == pattern) {
                Some(i) => i,
                None => {
                    patterns.push(pattern);
                    patterns.len() - 1
                }
            };
            layer_of_set.push(i);
        }
        // Per pattern: each segment split into runs of equal shift; a part's quantizer takes
        // the step of its finest channel (largest shift s), a run the shift `s_max − s` above it.
        let finest = |pattern: &[u8], part: usize| -> u8 {
            segments
                .iter()
                .filter(|sg| sg.3 == part)
                .flat_map(|sg| pattern[sg.0..sg.0 + sg.1].iter().copied())
                .max()
                .unwrap_or(0)
        };
        let segments_of = |pattern: &[u8]| -> Vec<SegmentSpec> {
            let mut out = Vec::new();
            for &(start, len, _, part) in &segments {
                let top = finest(pattern, part);
                let mut a = start;
                while a < start + len {
                    let mut b = a + 1;
                    while b < start + len && pattern[b] == pattern[a] {
                        b += 1;
                    }
                    out.push((a, b - a, top - pattern[a], part));
                    a = b;
                }
            }
            out
        };
        // Codes of the whole weight in [C_out][C_in][taps] order.
        let mut codes = vec![0u8; out_c * in_c * taps];
        for p in &weight.parts {
            let pc: Vec<u8> = p.codes.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
            for n in 0..out_c {
                let src = &pc[n * p.len * taps..(n + 1) * p.len * taps];
                let dst = (n * in_c + p.start) * taps;
                codes[dst..dst + p.len * taps].copy_from_slice(src);
            }
        }
        let parts: Vec<PartWeight> = pairs
            .iter()
            .map(|&(wp, _)| PartWeight {
                scale: weight.parts[wp].params.scale.clone(),
                zero_point: weight.parts[wp].params.zero_point.clone(),
            })
            .collect();
        let bias = match layer.bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()?),
            None => None,
        };
        let layers = patterns
            .iter()
            .map(|pattern| {
                IntLayer::new(
                    layer.path,
                    geometry,
                    &codes,
                    weight.bits(),
                    out_c,
                    in_c,
                    &segments_of(pattern),
                    parts.clone(),
                    bias.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // Activation quantizers per dequantization part, per step set.
        let acts = pairs
            .iter()
            .enumerate()
            .map(|(pair, &(_, ap))| {
                activation.parts[ap]
                    .params
                    .iter()
                    .enumerate()
                    .map(|(set, p)| {
                        if p.scale.len() != 1 {
                            return Err(ExecError::Shape(format!(
                                "activation quantizer has {} steps; integer execution takes per-tensor ones",
                                p.scale.len()
                            )));
                        }
                        // Δ·2^(−s_max): exact in f32 (a power of two), as the simulation's
                        // per-channel steps Δ·2^(−s) are.
                        let top = finest(&patterns[layer_of_set[set]], pair);
                        ActQuant::new(p.scale[0] / (1u32 << top) as f32, p.zero_point[0], p.bits)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            layer_of_set,
            acts,
            steps,
            isa,
        })
    }

    /// The index of the parameter set for `ctx` (nearest calibrated step, ties to the earlier,
    /// as in the simulated path).
    fn set_for(&self, ctx: &Ctx) -> std::result::Result<usize, ModelError> {
        match (ctx.step, self.steps.len()) {
            (Some(step), _) => {
                let mut best = 0;
                for (i, &s) in self.steps.iter().enumerate() {
                    if s.abs_diff(step) < self.steps[best].abs_diff(step) {
                        best = i;
                    }
                }
                Ok(best)
            }
            (None, 1) => Ok(0),
            (None, _) => Err(ModelError::Source(format!(
                "{}: per-step activation parameters need the sampling-step index; call the model inside a sampler",
                self.layers[0].name
            ))),
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held by the packed layers (every shift pattern's copy).
    pub fn resident_bytes(&self) -> usize {
        self.layers.iter().map(IntLayer::resident_bytes).sum()
    }
}

impl LayerExec for IntExec {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        _float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        let err = |m: String| ModelError::Source(format!("{}: {m}", layer.path));
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return Err(err(format!(
                "integer execution runs on the CPU in f32; the input is {:?} on {:?}",
                x.dtype(),
                x.device().location()
            )));
        }
        let set = self.set_for(ctx)?;
        let acts: Vec<ActQuant> = self.acts.iter().map(|a| a[set]).collect();
        let x = x.contiguous()?;
        let (storage, l) = x.storage_and_layout();
        let data: &[f32] = match &*storage {
            candle_core::Storage::Cpu(cpu) => {
                let all = cpu.as_slice::<f32>()?;
                match l.contiguous_offsets() {
                    Some((a, b)) => &all[a..b],
                    None => return Err(err("input is not contiguous".into())),
                }
            }
            _ => return Err(err("input is not in CPU memory".into())),
        };
        let (out, dims) = self.layers[self.layer_of_set[set]]
            .forward(self.isa, data, x.dims(), &acts)
            .map_err(|e| ModelError::Source(e.to_string()))?;
        drop(storage);
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
    }
}

/// What [`load_int`] built.
#[derive(Debug, Clone, Default)]
pub struct IntModelInfo {
    /// Layers computing in integers.
    pub int_layers: Vec<String>,
    /// Quantized layers left to the simulated computation (weight-only, activation-only, or
    /// k-means codebook weights).
    pub sim_layers: Vec<String>,
    /// Bytes of the integer layers (packed codes, steps, zero points, weight sums, biases).
    pub packed_bytes: usize,
    /// Float weight and bias elements the integer layers replaced (no longer held as tensors).
    pub replaced_float_elements: usize,
    /// Instruction set of the kernels.
    pub isa: Option<Isa>,
}

impl IntModelInfo {
    /// Bytes of weights the model holds: f32 tensors of every parameter not replaced plus the
    /// integer layers (packed codes, steps, zero points, weight sums and their f32 biases).
    pub fn resident_weight_bytes(&self, num_params: u64) -> u64 {
        let float = num_params.saturating_sub(self.replaced_float_elements as u64);
        4 * float + self.packed_bytes as u64
    }
}

/// Builds the artifact's model on the CPU in f32 with every layer whose weights and inputs are
/// quantized computing in integers, the rest as [`artifact::load`] builds them. The float weights
/// of the integer layers are dropped once their packed form exists.
pub fn load_int(dir: &Path, isa: Isa) -> Result<(Manifest, UNet2DModel, IntModelInfo)> {
    let m = artifact::read_manifest(dir)?;
    let layers = artifact::read_layers(dir, &m)?;
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| ExecError::File {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    let cfg = UNet2DConfig::from_json_str(&cfg_path, &cfg_text)?;
    let device = Device::Cpu;
    let mut store = WeightStore::open(&dir.join("float.safetensors"), &device, DType::F32)?;
    for (path, l) in &layers {
        if let Some(w) = &l.weight {
            let deq = w.dequantize().map_err(|e| ExecError::Layer {
                layer: path.clone(),
                message: format!("{}: {e}", dir.join("quant.safetensors").display()),
            })?;
            store.insert(&format!("{path}.weight"), deq)?;
        }
    }
    let mut model = UNet2DModel::load(cfg, &store)?;
    drop(store);
    let info = install_int(&mut model, &layers, isa)?;
    Ok((m, model, info))
}

/// Installs integer execution on every layer of `layers` with both a quantized weight and
/// quantized inputs, and the simulated one on the other quantized layers. The model's quantized
/// layers must hold their dequantized weights (as [`artifact::load`] builds them).
pub fn install_int(
    model: &mut UNet2DModel,
    layers: &BTreeMap<String, QuantLayer>,
    isa: Isa,
) -> Result<IntModelInfo> {
    let mut info = IntModelInfo {
        isa: Some(isa),
        ..Default::default()
    };
    let mut seen = 0;
    for mut layer in model.layers_mut() {
        let path = layer.path().to_string();
        let Some(l) = layers.get(&path) else { continue };
        seen += 1;
        // LES: the layer divides its input by γ before the exec sees it, exactly as in the
        // simulated path (the weights already hold W·γ), so both quantize the same values.
        if let Some(g) = &l.equivalent_scale {
            layer.set_input_scale(Some(g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?))?;
        }
        match (&l.weight, &l.activation) {
            // k-means (codebook) weights keep the simulated computation: the kernels take
            // uniform codes with a per-channel step and zero point, not a lookup table.
            (Some(w), Some(a)) if w.parts.iter().all(|p| p.codebook.is_none()) => {
                let exec = IntExec::new(&layer.layer_ref(), w, a, isa)?;
                info.packed_bytes += exec.resident_bytes();
                info.replaced_float_elements += layer.layer_ref().weight.elem_count()
                    + layer.layer_ref().bias.map_or(0, |b| b.elem_count());
                drop_float_weight(&mut layer)?;
                layer.set_exec(Some(Arc::new(exec)));
                info.int_layers.push(path);
            }
            (w, a) => {
                let like = layer.layer_ref().weight.clone();
                let exec = SimQuantExec::with_weight(None, &like, a.clone()).map_err(|e| {
                    ExecError::Layer {
                        layer: path.clone(),
                        message: e.to_string(),
                    }
                })?;
                layer.set_exec(Some(exec));
                if w.is_some() || a.is_some() {
                    info.sim_layers.push(path);
                }
            }
        }
    }
    if seen != layers.len() {
        let names = model.layer_paths();
        let missing = layers
            .keys()
            .find(|k| !names.contains(k))
            .cloned()
            .unwrap_or_default();
        return Err(ExecError::Layer {
            layer: missing,
            message: "is not a layer of the model built from config.json".into(),
        });
    }
    Ok(info)
}

/// Replaces a layer's float weight and bias by zero-stride views of one element with the same
/// shapes: the layer keeps reporting its shapes (tracing, `inspect`) while the f32 copies are
/// freed.
fn drop_float_weight(layer: &mut LayerMut) -> Result<()> {
    let dims = layer.layer_ref().weight.dims().to_vec();
    let dtype = layer.layer_ref().weight.dtype();
    let placeholder = Tensor::zeros(1, dtype, &Device::Cpu)?
        .reshape(vec![1usize; dims.len()])?
        .broadcast_as(dims)?;
    // The bias lives on in the integer layer (f32, added in its epilogue).
    let bias = match layer.layer_ref().bias {
        Some(b) => Some(Tensor::zeros(1, b.dtype(), &Device::Cpu)?.broadcast_as(b.dims())?),
        None => None,
    };
    match layer {
        LayerMut::Conv(c) => {
            c.weight = placeholder;
            c.bias = bias;
        }
        LayerMut::Linear(l) => {
            l.weight = placeholder;
            l.bias = bias;
        }
    }
    Ok(())
}
