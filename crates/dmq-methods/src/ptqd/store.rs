//! PTQD's statistics in the quantized-model artifact, and the sampling protocol they are valid
//! for.
//!
//! The manifest section `ptqd` (see [`dmq_quant::artifact::Manifest::ptqd`]):
//!
//! ```json
//! { "format_version": 1,
//!   "default_parts": ["cnc", "bc", "vsc"],
//!   "sets": [ { "id": "ddim-100-eta0-leading",
//!               "protocol": { "sampler": "ddim", "steps": 100, "eta": 0.0,
//!                             "timestep_spacing": "leading", "guidance": null,
//!                             "timesteps": [990, 980, ...] },
//!               "samples": 64, "seed": 1, "channels": 3, "mixed_act_bits": [] } ] }
//! ```
//!
//! and per set, in `ptqd.safetensors`, tensors `ptqd.<id>.<name>` with one row per sampling
//! step: `timestep`, `step` (i64), `k`, `k_raw`, `sigma_q`, `eps_power`, `err_mse`,
//! `corrected_mse` (f64), `bias` (f64 `[steps, channels]`), `elements` (i64) and `act_bits` (u8,
//! 0 = the recipe's width; only for mixed precision). Statistics are keyed by the actual
//! timestep: a sampler applies a set only when its whole protocol (sampler, steps, eta, spacing,
//! guidance, and the timestep list itself) equals the set's, and otherwise refuses
//! ([`PtqdSection::set_for`]) — re-calibration for another protocol adds a set.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dmq_quant::artifact::{self, Manifest, PTQD_FILE};
use dmq_quant::config::PtqdPart;
use dmq_sched::{SamplerKind, ScheduleConfig, Scheduler};
use serde::{Deserialize, Serialize};

use super::correction::Parts;
use super::stats::StepFit;
use super::{PtqdError, Result};

/// The only section format this code reads and writes.
pub const SECTION_VERSION: u32 = 1;

/// What besides the models determines the inputs the statistics were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// `ddim`, `ddpm` or `dpm-solver++`.
    pub sampler: String,
    pub steps: usize,
    /// DDIM's eta (0 for DDPM).
    pub eta: f64,
    /// The scheduler config's `timestep_spacing`.
    pub timestep_spacing: String,
    /// Classifier-free guidance scale; dmq's samplers have none, so `null` (kept so a guided
    /// sampler can never use unguided statistics).
    pub guidance: Option<f64>,
    /// The sampler's timesteps, noisiest first.
    pub timesteps: Vec<usize>,
}

impl Protocol {
    /// The protocol of `sched`, built as `kind` from `cfg`.
    pub fn of(kind: SamplerKind, cfg: &ScheduleConfig, sched: &dyn Scheduler) -> Self {
        let eta = match kind {
            SamplerKind::Ddim { eta } => eta,
            SamplerKind::Ddpm | SamplerKind::DpmSolverPp => 0.0,
        };
        Self {
            sampler: kind.name().into(),
            steps: sched.timesteps().len(),
            eta,
            timestep_spacing: format!("{:?}", kind.timestep_spacing(cfg)).to_lowercase(),
            guidance: None,
            timesteps: sched.timesteps().to_vec(),
        }
    }

    /// A name usable in tensor and file names: `ddim-100-eta0-leading`, `ddim-100-eta0p5-...`.
    pub fn id(&self) -> String {
        let eta = format!("{}", self.eta).replace('.', "p").replace('-', "m");
        let mut id = format!(
            "{}-{}-eta{eta}-{}",
            self.sampler, self.steps, self.timestep_spacing
        );
        if let Some(g) = self.guidance {
            id.push_str(&format!("-cfg{}", format!("{g}").replace('.', "p")));
        }
        id
    }

    /// `DDIM 100 steps, eta 0, leading spacing`, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} steps, eta {}, {} spacing",
            self.sampler.to_uppercase(),
            self.steps,
            self.eta,
            self.timestep_spacing
        );
        if let Some(g) = self.guidance {
            s.push_str(&format!(", guidance {g}"));
        }
        s
    }

    /// What differs from `other`, as `field: mine vs other` lines.
    pub fn differences(&self, other: &Protocol) -> Vec<String> {
        let mut d = Vec::new();
        if self.sampler != other.sampler {
            d.push(format!("sampler {} vs {}", self.sampler, other.sampler));
        }
        if self.steps != other.steps {
            d.push(format!("steps {} vs {}", self.steps, other.steps));
        }
        if self.eta != other.eta {
            d.push(format!("eta {} vs {}", self.eta, other.eta));
        }
        if self.timestep_spacing != other.timestep_spacing {
            d.push(format!(
                "timestep spacing {} vs {}",
                self.timestep_spacing, other.timestep_spacing
            ));
        }
        if self.guidance != other.guidance {
            d.push(format!(
                "guidance {:?} vs {:?}",
                self.guidance, other.guidance
            ));
        }
        if self.timesteps != other.timesteps && d.is_empty() {
            d.push("the timestep lists differ".into());
        }
        d
    }
}

/// The statistics of one sampling step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Index into the sampler's timesteps (0: noisiest).
    pub step: usize,
    pub timestep: usize,
    #[serde(flatten)]
    pub fit: StepFit,
    /// The activation width the quantized model uses at this step, when step-aware mixed
    /// precision chose it.
    pub act_bits: Option<u8>,
}

/// The statistics of one protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct PtqdSet {
    pub protocol: Protocol,
    /// FP trajectories measured.
    pub samples: usize,
    pub seed: u64,
    /// One entry per sampling step, in sampling order.
    pub steps: Vec<StepStats>,
    /// Lower activation widths mixed precision chose from (empty: no mixed precision).
    pub mixed_act_bits: Vec<u8>,
}

impl PtqdSet {
    pub fn id(&self) -> String {
        self.protocol.id()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetJson {
    id: String,
    protocol: Protocol,
    samples: usize,
    seed: u64,
    channels: usize,
    #[serde(default)]
    mixed_act_bits: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionJson {
    format_version: u32,
    default_parts: Vec<PtqdPart>,
    sets: Vec<SetJson>,
}

/// Every PTQD set of an artifact and the corrections applied by default.
#[derive(Debug, Clone, PartialEq)]
pub struct PtqdSection {
    /// What `dmq sample` applies unless told otherwise.
    pub default_parts: Parts,
    pub sets: Vec<PtqdSet>,
}

const F64_ROWS: [&str; 6] = [
    "k",
    "k_raw",
    "sigma_q",
    "eps_power",
    "err_mse",
    "corrected_mse",
];

impl PtqdSection {
    /// Adds `set`, replacing the set of the same protocol.
    pub fn upsert(&mut self, set: PtqdSet) {
        match self.sets.iter_mut().find(|s| s.protocol == set.protocol) {
            Some(s) => *s = set,
            None => self.sets.push(set),
        }
    }

    /// The set measured with exactly `protocol`; otherwise an error saying which protocols there
    /// are and how to get statistics for this one.
    pub fn set_for(&self, protocol: &Protocol) -> Result<&PtqdSet> {
        if let Some(s) = self.sets.iter().find(|s| &s.protocol == protocol) {
            return Ok(s);
        }
        let have: Vec<String> = self
            .sets
            .iter()
            .map(|s| {
                format!(
                    "{} ({})",
                    s.protocol.describe(),
                    protocol.differences(&s.protocol).join(", ")
                )
            })
            .collect();
        Err(PtqdError::Protocol(format!(
            "the PTQD statistics are valid for {}; sampling with {} would apply them to other \
             inputs. Re-calibrate for it (dmq ptqd --model Q with this sampling protocol), or \
             sample without the correction (--ptqd-parts none)",
            have.join("; "),
            protocol.describe()
        )))
    }

    /// The manifest section and the tensors of [`PTQD_FILE`].
    pub fn to_parts(&self) -> Result<(serde_json::Value, HashMap<String, Tensor>)> {
        let cpu = Device::Cpu;
        let mut tensors = HashMap::new();
        let mut sets = Vec::new();
        for set in &self.sets {
            let id = set.id();
            let n = set.steps.len();
            let channels = set.steps.first().map_or(0, |s| s.fit.bias.len());
            if n == 0 || set.steps.iter().any(|s| s.fit.bias.len() != channels) {
                return Err(PtqdError::Stats(format!(
                    "set {id}: {n} steps with differing channel counts"
                )));
            }
            let p = |name: &str| format!("ptqd.{id}.{name}");
            let ints = |f: &dyn Fn(&StepStats) -> i64| -> Result<Tensor> {
                Ok(Tensor::from_vec(
                    set.steps.iter().map(f).collect::<Vec<i64>>(),
                    n,
                    &cpu,
                )?)
            };
            tensors.insert(p("timestep"), ints(&|s| s.timestep as i64)?);
            tensors.insert(p("step"), ints(&|s| s.step as i64)?);
            tensors.insert(p("elements"), ints(&|s| s.fit.elements as i64)?);
            for name in F64_ROWS {
                let v: Vec<f64> = set
                    .steps
                    .iter()
                    .map(|s| match name {
                        "k" => s.fit.k,
                        "k_raw" => s.fit.k_raw,
                        "sigma_q" => s.fit.sigma_q,
                        "eps_power" => s.fit.eps_power,
                        "err_mse" => s.fit.err_mse,
                        _ => s.fit.corrected_mse,
                    })
                    .collect();
                tensors.insert(p(name), Tensor::from_vec(v, n, &cpu)?);
            }
            let bias: Vec<f64> = set
                .steps
                .iter()
                .flat_map(|s| s.fit.bias.iter().copied())
                .collect();
            tensors.insert(p("bias"), Tensor::from_vec(bias, (n, channels), &cpu)?);
            if set.steps.iter().any(|s| s.act_bits.is_some()) {
                let bits: Vec<u8> = set.steps.iter().map(|s| s.act_bits.unwrap_or(0)).collect();
                tensors.insert(p("act_bits"), Tensor::from_vec(bits, n, &cpu)?);
            }
            sets.push(SetJson {
                id,
                protocol: set.protocol.clone(),
                samples: set.samples,
                seed: set.seed,
                channels,
                mixed_act_bits: set.mixed_act_bits.clone(),
            });
        }
        let json = SectionJson {
            format_version: SECTION_VERSION,
            default_parts: self.default_parts.to_list(),
            sets,
        };
        let value = serde_json::to_value(&json)
            .map_err(|e| PtqdError::Stats(format!("serialising the PTQD section: {e}")))?;
        Ok((value, tensors))
    }

    /// Rebuilds the section from the manifest's JSON and the tensors; `file` names the tensor
    /// file in errors.
    pub fn from_parts(
        value: &serde_json::Value,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<Self> {
        let bad = |m: String| PtqdError::Artifact {
            path: file.display().to_string(),
            message: m,
        };
        let json: SectionJson = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("manifest section `ptqd`: {e}")))?;
        if json.format_version != SECTION_VERSION {
            return Err(bad(format!(
                "manifest section `ptqd` has format_version {}, this dmq reads {SECTION_VERSION}",
                json.format_version
            )));
        }
        let mut sets = Vec::new();
        for sj in &json.sets {
            let n = sj.protocol.timesteps.len();
            let name = |t: &str| format!("ptqd.{}.{t}", sj.id);
            let get = |t: &str| -> Result<&Tensor> {
                tensors
                    .get(&name(t))
                    .ok_or_else(|| bad(format!("tensor `{}` is missing", name(t))))
            };
            let vec_of = |t: &str, dt: DType| -> Result<Tensor> {
                let x = get(t)?;
                if x.dims() != [n] {
                    return Err(bad(format!(
                        "tensor `{}` has shape {:?}, the protocol has {n} steps",
                        name(t),
                        x.dims()
                    )));
                }
                Ok(x.to_dtype(dt)?)
            };
            let timesteps: Vec<i64> = vec_of("timestep", DType::I64)?.to_vec1()?;
            let steps_idx: Vec<i64> = vec_of("step", DType::I64)?.to_vec1()?;
            let elements: Vec<i64> = vec_of("elements", DType::I64)?.to_vec1()?;
            let want: Vec<i64> = sj.protocol.timesteps.iter().map(|&t| t as i64).collect();
            if timesteps != want || steps_idx != (0..n as i64).collect::<Vec<_>>() {
                return Err(bad(format!(
                    "set `{}`: tensors `timestep`/`step` do not list the protocol's timesteps in \
                     sampling order",
                    sj.id
                )));
            }
            let mut rows: HashMap<&str, Vec<f64>> = HashMap::new();
            for r in F64_ROWS {
                let v: Vec<f64> = vec_of(r, DType::F64)?.to_vec1()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(bad(format!(
                        "tensor `{}` has a non-finite value at step {i}",
                        name(r)
                    )));
                }
                rows.insert(r, v);
            }
            if let Some(i) = rows["k"].iter().position(|&k| k < 0.0) {
                return Err(bad(format!(
                    "tensor `{}` is negative at step {i}",
                    name("k")
                )));
            }
            if let Some(i) = rows["sigma_q"].iter().position(|&s| s < 0.0) {
                return Err(bad(format!(
                    "tensor `{}` is negative at step {i}",
                    name("sigma_q")
                )));
            }
            let bias_t = get("bias")?;
            if bias_t.dims() != [n, sj.channels] {
                return Err(bad(format!(
                    "tensor `{}` has shape {:?}, expected [{n}, {}]",
                    name("bias"),
                    bias_t.dims(),
                    sj.channels
                )));
            }
            let bias: Vec<Vec<f64>> = bias_t.to_dtype(DType::F64)?.to_vec2()?;
            if bias.iter().flatten().any(|b| !b.is_finite()) {
                return Err(bad(format!(
                    "tensor `{}` has a non-finite value",
                    name("bias")
                )));
            }
            let act_bits: Option<Vec<u8>> = match tensors.get(&name("act_bits")) {
                None => None,
                Some(_) => Some(vec_of("act_bits", DType::U8)?.to_vec1()?),
            };
            let steps = (0..n)
                .map(|i| StepStats {
                    step: i,
                    timestep: sj.protocol.timesteps[i],
                    fit: StepFit {
                        k_raw: rows["k_raw"][i],
                        k: rows["k"][i],
                        bias: bias[i].clone(),
                        sigma_q: rows["sigma_q"][i],
                        eps_power: rows["eps_power"][i],
                        err_mse: rows["err_mse"][i],
                        corrected_mse: rows["corrected_mse"][i],
                        elements: elements[i].max(0) as u64,
                    },
                    act_bits: act_bits.as_ref().and_then(|b| (b[i] > 0).then_some(b[i])),
                })
                .collect();
            let set = PtqdSet {
                protocol: sj.protocol.clone(),
                samples: sj.samples,
                seed: sj.seed,
                steps,
                mixed_act_bits: sj.mixed_act_bits.clone(),
            };
            if set.id() != sj.id {
                return Err(bad(format!(
                    "set `{}` is named for another protocol ({})",
                    sj.id,
                    set.id()
                )));
            }
            sets.push(set);
        }
        Ok(Self {
            default_parts: Parts::from_list(&json.default_parts),
            sets,
        })
    }

    /// The section of the artifact in `dir` (`None` when its manifest has none).
    pub fn read(dir: &Path, manifest: &Manifest) -> Result<Option<Self>> {
        let Some(value) = &manifest.ptqd else {
            return Ok(None);
        };
        let tensors = artifact::read_ptqd_tensors(dir)?;
        Ok(Some(Self::from_parts(
            value,
            &tensors,
            &dir.join(PTQD_FILE),
        )?))
    }

    /// Writes the section into the artifact in `dir` (tensors, then the manifest).
    pub fn write(&self, dir: &Path) -> Result<Manifest> {
        let (value, tensors) = self.to_parts()?;
        Ok(artifact::write_ptqd(dir, value, &tensors)?)
    }
}
