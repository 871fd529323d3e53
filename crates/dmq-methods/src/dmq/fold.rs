//! Folding LES scales where the graph allows (issue #6): an attention block's output projection
//! `to_out.0` reads `softmax(QKᵀ)·V`, which is linear in the value projection's output channels,
//! so its `1/γ` moves into `to_v`: each output channel `o` of `to_v` gets step `Δ_o/γ_o` and bias
//! `b_o/γ_o` (when it has one), and `to_out.0` reads its input unscaled. Integer codes do not change (per-channel
//! quantization is scale-equivariant). Everywhere else (inputs behind SiLU, residual sums,
//! skip concatenations, layers sharing one input with different `γ`) the scale stays a
//! per-input-channel factor of the activation step, stored as `{path}.les.gamma`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use dmq_model::DenoiserModel;
use dmq_quant::ptq::PtqOutcome;
use dmq_quant::sim::SimQuantExec;

/// The value projection that can take `path`'s scale, if `path` is an attention output
/// projection whose sibling `to_v` has a per-output-channel quantized weight of one part.
fn host_of(path: &str, outcome: &PtqOutcome) -> Option<String> {
    let prefix = path.strip_suffix(".to_out.0")?;
    let v = format!("{prefix}.to_v");
    let w = outcome.layers.get(&v)?.weight.as_ref()?;
    (w.parts.len() == 1 && w.parts[0].params.axis == Some(0) && !w.has_codebook()).then_some(v)
}

/// Folds every foldable scale of `outcome` and updates `model` to match. Returns the folded
/// layers (folded → host).
pub fn fold_scales(
    model: &mut dyn DenoiserModel,
    outcome: &mut PtqOutcome,
) -> dmq_model::Result<BTreeMap<String, String>> {
    let err = |p: &str, e: dmq_quant::uniform::QuantError| {
        dmq_model::ModelError::Source(format!("{p}: {e}"))
    };
    let candidates: Vec<(String, String)> = outcome
        .layers
        .iter()
        .filter(|(_, l)| l.equivalent_scale.is_some())
        .filter_map(|(p, _)| host_of(p, outcome).map(|h| (p.clone(), h)))
        .collect();
    let mut folded = BTreeMap::new();
    for (path, host) in candidates {
        let gamma = outcome
            .layers
            .get_mut(&path)
            .and_then(|l| l.equivalent_scale.take())
            .expect("candidate has a scale");
        let g: Vec<f32> = gamma.to_dtype(DType::F32)?.to_vec1()?;
        // Host weight: per-output-channel steps divided by γ.
        let hl = outcome.layers.get_mut(&host).expect("host is quantized");
        let hw = hl.weight.as_mut().expect("host has a weight");
        if hw.shape[0] != g.len() {
            return Err(dmq_model::ModelError::Source(format!(
                "{path}: {} input channels, but {host} has {} outputs",
                g.len(),
                hw.shape[0]
            )));
        }
        for (s, gi) in hw.parts[0].params.scale.iter_mut().zip(&g) {
            *s /= gi;
        }
        let deq = hw.dequantize().map_err(|e| err(&host, e))?;
        let act = hl.activation.clone();
        for mut layer in model.layers_mut() {
            if layer.path() == host {
                let like = layer.layer_ref().weight.clone();
                // A value projection without bias (SD's attention: q/k/v have none) has only
                // its steps to divide.
                if let Some(bias) = layer.layer_ref().bias.cloned() {
                    let gb = Tensor::from_vec(g.clone(), g.len(), bias.device())?
                        .to_dtype(bias.dtype())?;
                    let nb = bias.broadcast_div(&gb)?;
                    outcome.float_replaced.insert(
                        format!("{host}.bias"),
                        nb.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                    );
                    layer.set_bias(nb)?;
                }
                let exec = SimQuantExec::with_weight(Some(&deq), &like, act.clone())
                    .map_err(|e| err(&host, e))?;
                layer.set_exec(Some(exec));
            } else if layer.path() == path {
                layer.set_input_scale(None)?;
            }
        }
        folded.insert(path, host);
    }
    Ok(folded)
}
