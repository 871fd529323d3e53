//! Qua²SeDiMo (Mills et al., AAAI 2025; spec `docs/methods/qua2sedimo.md`, Part B): per-layer
//! quantization sensitivity and mixed-precision weight allocation under an average-bits budget.
//!
//! 1. [`options`]: every weight layer's options (UAQ / K-Means-C / K-Means-A × {3, 4} bits,
//!    UAQ-8), with honest stored sizes;
//! 2. [`sample_configs`]: seeded random configurations (the paper's sampler, §A3, plus UAQ-8 and
//!    one anchor per option), each labelled by [`proxy`] (noise-prediction error against FP);
//! 3. [`predictor`]: an additive ridge model of `ln L` with held-out Spearman/NDCG@10; its
//!    coefficients are the sensitivity scores, aggregated by op type and block ([`aggregate`]);
//! 4. [`allocate`]: the exact budgeted allocation (integer programme) or the paper's
//!    `quality − λ·bits`.
//!
//! What differs from the paper is in `docs/methods-qua2sedimo.md`.

pub mod allocate;
pub mod options;
pub mod predictor;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dmq_quant::config::BitObjective;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use options::{block_of, op_type, Method, OptionTable, QOption};

#[derive(Debug, thiserror::Error)]
pub enum Q2sError {
    #[error(transparent)]
    Quant(#[from] dmq_quant::uniform::QuantError),
    #[error(transparent)]
    Model(#[from] dmq_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("bit allocation: {0}")]
    Solver(String),
}

pub fn file_err(path: &Path, m: impl ToString) -> Q2sError {
    Q2sError::File {
        path: path.display().to_string(),
        message: m.to_string(),
    }
}

/// The `n` configurations of a sensitivity run (option indices into `options`, per layer), in a
/// fixed order determined by `seed`: first one anchor per option (every layer on it), then random
/// ones drawn as in the paper (§A3): `p ~ U(0,1)`, each layer 3-bit with probability `p` else
/// 4-bit, method uniform among those offered at that width; additionally, with `q ~ U(0, 0.25)`
/// per configuration, a layer takes UAQ-8 with probability `q` (when offered).
pub fn sample_configs(options: &[QOption], layers: usize, n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = (0..options.len().min(n)).map(|o| vec![o; layers]).collect();
    let at = |b: u8| -> Vec<usize> {
        (0..options.len())
            .filter(|&i| options[i].bits == b)
            .collect()
    };
    let (three, four, eight) = (at(3), at(4), at(8));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while out.len() < n {
        let p: f64 = rng.gen();
        let q: f64 = rng.gen::<f64>() * 0.25;
        let c = (0..layers)
            .map(|_| {
                let eight_draw: f64 = rng.gen();
                let bit_draw: f64 = rng.gen();
                let pool = if !eight.is_empty() && eight_draw < q {
                    &eight
                } else if !three.is_empty() && bit_draw < p {
                    &three
                } else if !four.is_empty() {
                    &four
                } else {
                    &eight
                };
                pool[rng.gen_range(0..pool.len())]
            })
            .collect();
        out.push(c);
    }
    out
}

/// One labelled configuration, as a line of `labels.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Label {
    pub index: usize,
    pub choice: Vec<usize>,
    pub avg_bits: f64,
    /// `L(c)`.
    pub proxy: f64,
}

/// Labels of `configs` in `file` (JSON lines; the first line is a header naming `fingerprint`):
/// existing labels of the same fingerprint are kept and only the missing ones computed, each
/// appended (and flushed) as soon as it is known, so an interrupted run resumes.
pub fn label_all(
    file: &Path,
    fingerprint: &str,
    configs: &[Vec<usize>],
    table: &OptionTable,
    mut score: impl FnMut(&[usize]) -> Result<f64, Q2sError>,
    mut tick: impl FnMut(usize, bool),
) -> Result<Vec<Label>, Q2sError> {
    let mut done: BTreeMap<usize, Label> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(file) {
        let mut lines = text.lines();
        let header: Option<serde_json::Value> =
            lines.next().and_then(|l| serde_json::from_str(l).ok());
        if header.as_ref().and_then(|h| h["fingerprint"].as_str()) == Some(fingerprint) {
            for l in lines {
                // A torn last line (interrupted write) is recomputed.
                if let Ok(lab) = serde_json::from_str::<Label>(l) {
                    if configs.get(lab.index) == Some(&lab.choice) {
                        done.insert(lab.index, lab);
                    }
                }
            }
        }
    }
    // Rewrite the file with the kept labels (drops torn lines and other fingerprints).
    let tmp = file.with_extension("jsonl.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
        let header = serde_json::json!({ "fingerprint": fingerprint, "configs": configs.len() });
        writeln!(f, "{header}").map_err(|e| file_err(&tmp, e))?;
        for l in done.values() {
            let s = serde_json::to_string(l).map_err(|e| file_err(&tmp, e))?;
            writeln!(f, "{s}").map_err(|e| file_err(&tmp, e))?;
        }
        f.sync_all().map_err(|e| file_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, file).map_err(|e| file_err(file, e))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .map_err(|e| file_err(file, e))?;
    let mut out = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        if let Some(l) = done.remove(&i) {
            tick(i, true);
            out.push(l);
            continue;
        }
        let proxy = score(c)?;
        if !proxy.is_finite() {
            return Err(Q2sError::Input(format!(
                "configuration {i}: the proxy is {proxy}"
            )));
        }
        let lab = Label {
            index: i,
            choice: c.clone(),
            avg_bits: table.avg_bits(c),
            proxy,
        };
        let s = serde_json::to_string(&lab).map_err(|e| file_err(file, e))?;
        writeln!(f, "{s}").map_err(|e| file_err(file, e))?;
        f.flush().map_err(|e| file_err(file, e))?;
        tick(i, false);
        out.push(lab);
    }
    Ok(out)
}

/// The sensitivity of one layer: the predictor's coefficient of every option (relative to
/// option 0) and a summary score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerSensitivity {
    pub path: String,
    pub op_type: String,
    pub block: String,
    pub numel: usize,
    /// Per option (same order as the report's `options`): stored bits.
    pub bits: Vec<u64>,
    /// Per option: `mean (ŵ − w)² / mean w²`.
    pub rel_mse: Vec<f64>,
    /// Per option: predicted change of `ln L` against option 0.
    pub theta: Vec<f64>,
    /// Mean `θ` of the 3-bit options minus `θ` of the 8-bit option (or of the widest option):
    /// how much `ln L` grows when this layer alone goes to 3 bits.
    pub sensitivity: f64,
}

/// Per-layer sensitivities from a fitted model.
pub fn layer_sensitivities(
    table: &OptionTable,
    model: &predictor::Additive,
) -> Vec<LayerSensitivity> {
    let widest = (0..table.options.len())
        .max_by_key(|&i| table.options[i].bits)
        .unwrap_or(0);
    let three: Vec<usize> = (0..table.options.len())
        .filter(|&i| table.options[i].bits == 3)
        .collect();
    table
        .layers
        .iter()
        .zip(&model.theta)
        .map(|(l, th)| {
            let mean3 = if three.is_empty() {
                0.0
            } else {
                three.iter().map(|&i| th[i]).sum::<f64>() / three.len() as f64
            };
            LayerSensitivity {
                path: l.path.clone(),
                op_type: op_type(&l.path).to_string(),
                block: block_of(&l.path),
                numel: l.numel,
                bits: l.options.iter().map(|o| o.bits).collect(),
                rel_mse: l.options.iter().map(|o| o.rel_mse).collect(),
                theta: th.clone(),
                sensitivity: mean3 - th[widest],
            }
        })
        .collect()
}

/// Mean sensitivity and mean `θ` per option of the layers in each group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSensitivity {
    pub group: String,
    pub layers: usize,
    pub sensitivity: f64,
    pub theta: Vec<f64>,
}

/// Groups layers by `key` (op type or block), in first-seen order.
pub fn aggregate(
    layers: &[LayerSensitivity],
    key: impl Fn(&LayerSensitivity) -> String,
) -> Vec<GroupSensitivity> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<&LayerSensitivity>> = BTreeMap::new();
    for l in layers {
        let k = key(l);
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(l);
    }
    order
        .into_iter()
        .map(|g| {
            let ls = &groups[&g];
            let n = ls.len() as f64;
            let k = ls[0].theta.len();
            GroupSensitivity {
                layers: ls.len(),
                sensitivity: ls.iter().map(|l| l.sensitivity).sum::<f64>() / n,
                theta: (0..k)
                    .map(|o| ls.iter().map(|l| l.theta[o]).sum::<f64>() / n)
                    .collect(),
                group: g,
            }
        })
        .collect()
}

/// An allocation: the option of every layer path, the predicted `ln L` change against option 0
/// everywhere, and the achieved average bits.
pub type Allocation = (Vec<(String, QOption)>, f64, f64);

/// The `sensitivity.json` a run writes and `dmq quantize --sensitivity` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensitivityReport {
    pub format: String,
    pub model: String,
    pub model_fingerprint: String,
    /// Option names (`uaq4`, ...), the index order of every per-option list.
    pub options: Vec<String>,
    pub layers: Vec<LayerSensitivity>,
    pub by_op_type: Vec<GroupSensitivity>,
    pub by_block: Vec<GroupSensitivity>,
    /// Predictor: kind, λ, held-out Spearman/NDCG, held-out (measured, predicted) pairs.
    pub predictor: serde_json::Value,
    /// Proxy and sampling settings, label statistics.
    pub labels: serde_json::Value,
}

pub const REPORT_FORMAT: &str = "dmq-sensitivity-1";

impl SensitivityReport {
    /// Reads and checks a report.
    pub fn read(path: &Path) -> Result<Self, Q2sError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let r: Self = serde_json::from_str(&text).map_err(|e| file_err(path, e))?;
        if r.format != REPORT_FORMAT {
            return Err(file_err(
                path,
                format!(
                    "field `format` is `{}`, expected `{REPORT_FORMAT}`",
                    r.format
                ),
            ));
        }
        for l in &r.layers {
            if l.bits.len() != r.options.len() || l.theta.len() != r.options.len() {
                return Err(file_err(
                    path,
                    format!(
                        "layer `{}`: `bits`/`theta` do not have one entry per option",
                        l.path
                    ),
                ));
            }
        }
        for o in &r.options {
            if QOption::parse(o).is_none() {
                return Err(file_err(path, format!("unknown option `{o}` in `options`")));
            }
        }
        Ok(r)
    }

    /// Parsed options.
    pub fn parsed_options(&self) -> Vec<QOption> {
        self.options
            .iter()
            .filter_map(|o| QOption::parse(o))
            .collect()
    }

    /// The allocator's items per layer, restricted to options `allowed` (indices kept).
    pub fn items(&self, allowed: impl Fn(&QOption) -> bool) -> Vec<Vec<(usize, allocate::Item)>> {
        let opts = self.parsed_options();
        self.layers
            .iter()
            .map(|l| {
                (0..opts.len())
                    .filter(|&o| allowed(&opts[o]))
                    .map(|o| {
                        (
                            o,
                            allocate::Item {
                                cost: l.theta[o],
                                bits: l.bits[o],
                            },
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// The best configuration of the layers `paths` (each must be in the report) under
    /// `avg_bits` over those layers: option per layer path, predicted `ln L` change against
    /// option 0 everywhere, achieved average bits.
    pub fn allocate(
        &self,
        paths: &[String],
        avg_bits: f64,
        uniform_only: bool,
    ) -> Result<Allocation, Q2sError> {
        self.allocate_for(paths, BitObjective::Budget(avg_bits), uniform_only)
    }

    /// As [`Self::allocate`], for either objective: a budget (exact, by the ILP of
    /// [`allocate::allocate_budget`]) or the paper's cost + λ·(average bits) (exact per layer,
    /// [`allocate::allocate_lagrangian`]).
    pub fn allocate_for(
        &self,
        paths: &[String],
        objective: BitObjective,
        uniform_only: bool,
    ) -> Result<Allocation, Q2sError> {
        if let Some(p) = paths
            .iter()
            .find(|p| !self.layers.iter().any(|l| &l.path == *p))
        {
            return Err(Q2sError::Input(format!(
                "layer `{p}` is quantized by the recipe but has no sensitivity in the report"
            )));
        }
        let keep = |l: &LayerSensitivity| paths.contains(&l.path);
        let all_items = self.items(|o| !uniform_only || o.method == Method::Uaq);
        let (layers, items): (Vec<&LayerSensitivity>, Vec<_>) = self
            .layers
            .iter()
            .zip(all_items)
            .filter(|(l, _)| keep(l))
            .unzip();
        let numel: usize = layers.iter().map(|l| l.numel).sum();
        let plain: Vec<Vec<allocate::Item>> = items
            .iter()
            .map(|l| l.iter().map(|(_, i)| *i).collect())
            .collect();
        let choice = match objective {
            BitObjective::Budget(avg_bits) => {
                let budget = (avg_bits * numel as f64).floor() as u64;
                allocate::allocate_budget(&plain, budget)?
            }
            BitObjective::Lagrangian(lambda) => {
                allocate::allocate_lagrangian(&plain, lambda, numel)
            }
        };
        let opts = self.parsed_options();
        let mut out = Vec::new();
        let mut cost = 0.0;
        let mut bits = 0u64;
        for ((l, its), &c) in layers.iter().zip(&items).zip(&choice) {
            let (o, it) = its[c];
            cost += it.cost;
            bits += it.bits;
            out.push((l.path.clone(), opts[o]));
        }
        Ok((out, cost, bits as f64 / numel.max(1) as f64))
    }
}
