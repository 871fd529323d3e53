//! DMQ (Lee et al., ICCV 2025, arXiv 2507.12933; spec `docs/methods/dmq.md` §4, §6) as hooks
//! into the engine's PTQ pipeline ([`dmq_quant::ptq::quantize_with`]):
//!
//! 1. before weight initialisation, Learned Equivalent Scaling layer by layer ([`les`]) with the
//!    time-step weighting of [`weighting`]; each layer then holds `W·γ` and divides its input by
//!    `γ`, which every later stage (MSE init, AdaRound, activation ranges) sees;
//! 2. during activation calibration, Power-of-Two Scaling chosen by voting ([`pts`]);
//! 3. at the end, scales folded into producing layers where the graph allows ([`fold`]).

pub mod fold;
pub mod les;
pub mod pts;
pub mod weighting;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dmq_model::DenoiserModel;
use dmq_quant::act_calib::ShiftVoter;
use dmq_quant::calib::CalibSet;
use dmq_quant::config::{LayerPlan, QuantConfig};
use dmq_quant::ptq::{self, NoHooks, Progress, PtqError, PtqHooks, PtqOptions, PtqOutcome};
use dmq_quant::recon;

use les::{learn_scale, LesLayer, LesReport};

/// The hooks a recipe needs: DMQ's when it has `[les]` or `[pts]` enabled, else none.
pub fn hooks_for(cfg: &QuantConfig) -> Box<dyn PtqHooks> {
    let les = cfg.les.as_ref().is_some_and(|l| l.enabled);
    let pts = cfg.pts.as_ref().is_some_and(|p| p.enabled);
    if les || pts {
        Box::new(DmqHooks::default())
    } else {
        Box::new(NoHooks)
    }
}

/// DMQ's passes and what they did.
#[derive(Default)]
pub struct DmqHooks {
    pub les: Vec<LesReport>,
    pub folded: BTreeMap<String, String>,
    pts: Option<Arc<pts::PtsVoter>>,
    /// `les.fold` of the recipe.
    fold: bool,
}

fn model_err(e: dmq_model::ModelError) -> PtqError {
    PtqError::Model(e)
}

fn ckpt_err(path: &Path, m: impl ToString) -> PtqError {
    PtqError::Checkpoint {
        path: path.to_path_buf(),
        message: m.to_string(),
    }
}

/// `les/<layer>.safetensors` (γ) and `les/<layer>.json` (its report), the JSON written last.
fn les_paths(dir: &Path, layer: &str) -> (PathBuf, PathBuf) {
    let d = dir.join("les");
    (
        d.join(format!("{layer}.safetensors")),
        d.join(format!("{layer}.json")),
    )
}

fn load_les(dir: &Path, layer: &str) -> Result<Option<(Tensor, LesReport)>, PtqError> {
    let (st, js) = les_paths(dir, layer);
    let Ok(text) = std::fs::read_to_string(&js) else {
        return Ok(None);
    };
    let mut rep: LesReport = serde_json::from_str(&text).map_err(|e| ckpt_err(&js, e))?;
    rep.resumed = true;
    let mut t = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| ckpt_err(&st, e))?;
    let g = t
        .remove("gamma")
        .ok_or_else(|| ckpt_err(&st, "tensor `gamma` is missing"))?;
    Ok(Some((g, rep)))
}

fn save_les(dir: &Path, layer: &str, g: &Tensor, rep: &LesReport) -> Result<(), PtqError> {
    let (st, js) = les_paths(dir, layer);
    let parent = st.parent().expect("les folder");
    std::fs::create_dir_all(parent).map_err(|e| ckpt_err(parent, e))?;
    let tmp = st.with_extension("safetensors.tmp");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("gamma".to_string(), g.clone())]),
        &tmp,
    )?;
    std::fs::rename(&tmp, &st).map_err(|e| ckpt_err(&st, e))?;
    let text = serde_json::to_string_pretty(rep).map_err(|e| ckpt_err(&js, e))?;
    ptq::write_atomic(&js, text.as_bytes())
}

impl DmqHooks {
    #[allow(clippy::too_many_arguments)]
    fn run_les(
        &mut self,
        model: &mut dyn DenoiserModel,
        cfg: &QuantConfig,
        set: &CalibSet,
        plans: &BTreeMap<String, LayerPlan>,
        splits: &BTreeMap<String, usize>,
        opts: &PtqOptions,
        progress: &mut dyn Progress,
    ) -> Result<(), PtqError> {
        let les = cfg.les.clone().expect("checked");
        let paths: Vec<String> = model
            .layer_paths()
            .into_iter()
            .filter(|p| plans[p].weight_bits.is_some())
            .collect();
        if let Some(dir) = &opts.checkpoint_dir {
            ptq::claim_checkpoint_dir(dir, &opts.run_fingerprint)?;
        }
        let (buckets, n_buckets) = weighting::step_buckets(&set.step_index);
        progress.stage("equivalent scaling", (paths.len() * les.iters) as u64);
        // Bytes per sample of each layer's input, to capture as many layers at once as fit.
        let one = set
            .narrow(0, 1)
            .map_err(|e| model_err(dmq_model::ModelError::Source(e.to_string())))?;
        let sizes = recon::capture_inputs(model, &paths, &one, 1, |_| {}).map_err(model_err)?;
        let n = set.len();
        let mut next = 0;
        while next < paths.len() {
            let mut end = next;
            let mut bytes = 0usize;
            while end < paths.len() {
                let t = &sizes[&paths[end]][0];
                let b = n * t.elem_count() * 4;
                if end > next && bytes + b > opts.capture_budget_bytes {
                    break;
                }
                bytes += b;
                end += 1;
            }
            let chunk: Vec<String> = paths[next..end].to_vec();
            // Layers restored from checkpoints need no inputs.
            let mut todo = Vec::new();
            let mut restored = BTreeMap::new();
            for p in &chunk {
                match opts
                    .checkpoint_dir
                    .as_deref()
                    .map(|d| load_les(d, p))
                    .transpose()?
                    .flatten()
                {
                    Some(found) => {
                        restored.insert(p.clone(), found);
                    }
                    None => todo.push(p.clone()),
                }
            }
            let mut inputs = if todo.is_empty() {
                BTreeMap::new()
            } else {
                recon::capture_inputs(model, &todo, set, opts.capture_batch, |_| {})
                    .map_err(model_err)?
            };
            for p in &chunk {
                let (gamma, report) = match restored.remove(p) {
                    Some(found) => {
                        progress.inc(les.iters as u64);
                        found
                    }
                    None => {
                        let x = inputs
                            .remove(p)
                            .and_then(|mut v| v.pop())
                            .expect("captured")
                            .to_dtype(DType::F32)?;
                        let (w, b, kind) = {
                            let l = model
                                .layers_mut()
                                .into_iter()
                                .find(|l| l.path() == p)
                                .expect("layer exists");
                            let r = l.layer_ref();
                            (
                                r.weight.to_dtype(DType::F32)?,
                                r.bias.map(|b| b.to_dtype(DType::F32)).transpose()?,
                                r.kind,
                            )
                        };
                        let plan = plans[p];
                        let layer = LesLayer {
                            path: p,
                            kind,
                            weight: &w,
                            bias: b.as_ref(),
                            weight_bits: plan.weight_bits.expect("filtered"),
                            weight_granularity: plan.granularity,
                            act_bits: plan.act_bits,
                            split: splits.get(p).copied(),
                        };
                        let index = paths.iter().position(|q| q == p).unwrap_or(0) as u64;
                        let seed =
                            cfg.calibration.seed ^ 0xD1B5_4A32_D192_ED03u64.wrapping_mul(index + 1);
                        let mut done = 0usize;
                        let (g, rep) =
                            learn_scale(&layer, &x, &buckets, n_buckets, &les, seed, |it| {
                                if it % 50 == 0 || it == les.iters {
                                    progress.inc((it - done) as u64);
                                    done = it;
                                }
                            })
                            .map_err(model_err)?;
                        progress.message(&format!(
                            "{p}: LES loss {:.4e} -> {:.4e}, gamma in [{:.3}, {:.3}], {:.1} s",
                            rep.loss_start,
                            rep.loss_learned,
                            rep.gamma_min,
                            rep.gamma_max,
                            rep.seconds
                        ));
                        if let Some(d) = &opts.checkpoint_dir {
                            save_les(d, p, &g, &rep)?;
                        }
                        (g, rep)
                    }
                };
                apply_scale(model, p, &gamma)?;
                self.les.push(report);
            }
            next = end;
        }
        Ok(())
    }
}

/// Makes layer `path` compute `f(x/γ, W·γ)`: weight `W·γ`, input scale `γ` (on the model's
/// device and dtype). Float-equivalent to the layer before (up to rounding).
pub fn apply_scale(
    model: &mut dyn DenoiserModel,
    path: &str,
    gamma: &Tensor,
) -> Result<(), PtqError> {
    let mut layer = model
        .layers_mut()
        .into_iter()
        .find(|l| l.path() == path)
        .ok_or_else(|| model_err(dmq_model::ModelError::Source(format!("no layer `{path}`"))))?;
    let w = layer.layer_ref().weight.clone();
    let g = gamma.to_device(w.device())?.to_dtype(w.dtype())?;
    let c = g.elem_count();
    let gw = if w.rank() == 4 {
        g.reshape((1, c, 1, 1))?
    } else {
        g.reshape((1, c))?
    };
    layer.set_weight(w.broadcast_mul(&gw)?).map_err(model_err)?;
    layer.set_input_scale(Some(g)).map_err(model_err)?;
    Ok(())
}

impl PtqHooks for DmqHooks {
    fn before_weights(
        &mut self,
        model: &mut dyn DenoiserModel,
        cfg: &QuantConfig,
        set: &CalibSet,
        plans: &BTreeMap<String, LayerPlan>,
        splits: &BTreeMap<String, usize>,
        opts: &PtqOptions,
        progress: &mut dyn Progress,
    ) -> Result<(), PtqError> {
        if let Some(p) = cfg.pts.as_ref().filter(|p| p.enabled) {
            self.pts = Some(Arc::new(pts::PtsVoter {
                max_shift: p.max_shift,
                threshold: p.threshold,
            }));
        }
        self.fold = cfg.les.as_ref().is_some_and(|l| l.enabled && l.fold);
        if cfg.les.as_ref().is_some_and(|l| l.enabled) {
            self.run_les(model, cfg, set, plans, splits, opts, progress)?;
        }
        Ok(())
    }

    fn shift_voter(&self) -> Option<Arc<dyn ShiftVoter>> {
        self.pts.clone().map(|v| v as Arc<dyn ShiftVoter>)
    }

    fn finish(
        &mut self,
        model: &mut dyn DenoiserModel,
        outcome: &mut PtqOutcome,
    ) -> Result<(), PtqError> {
        if self.fold {
            self.folded = fold::fold_scales(model, outcome).map_err(model_err)?;
            outcome.scale_folded.extend(self.folded.clone());
        }
        Ok(())
    }

    fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "les": self.les,
            "folded": self.folded,
        })
    }
}
