//! Calibration data: the UNet inputs x_t that the full-precision model itself produces along its
//! own sampling trajectories, at a subset of the sampling steps spread uniformly over them
//! (Q-Diffusion's time-step-aware calibration: every selected step gets the same number of
//! samples, all taken from the same seeded trajectories).
//!
//! Conditional models (SD, DiT, PixArt) are calibrated on their classifier-free-guided
//! trajectories ([`generate_guided`]): every model call sees the doubled batch (conditional and
//! unconditional halves of the same x_t), and the set keeps both halves with their conditioning,
//! exactly as the quantized model will see them when sampling.
//!
//! Generating it costs `trajectories × steps` UNet calls, so it is cached on disk: a folder with
//! `calib.safetensors` (`x` [N, C, H, W] f32, `timesteps` [N] and `step_index` [N] as u32, and
//! the conditioning rows `cond.*` when there are any) and
//! `manifest.json` (the spec, the model's fingerprint, the sampling timesteps), written to a
//! temporary folder and renamed. A cache is reused only when spec and fingerprint match exactly.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmq_model::{Conditioning, Ctx, DenoiserModel, Timesteps};
use dmq_sched::{CfgOrder, Guidance, NoiseSource, SchedError, Scheduler};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("calibration spec: {0}")]
    Spec(String),
    #[error(transparent)]
    Sched(#[from] SchedError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] dmq_model::ModelError),
}

pub type Result<T> = std::result::Result<T, CalibError>;

/// What calibration data is drawn: which sampling steps, how many trajectories, which seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibSpec {
    /// How many of the sampler's steps are calibrated (spread uniformly; 20 in Q-Diffusion/DMQ).
    pub steps_sampled: usize,
    /// Trajectories, i.e. samples per calibrated step (256 in the papers).
    pub samples_per_step: usize,
    /// Seed of the trajectories' noise (independent of any sampling seed a user picks).
    pub seed: u64,
    /// Trajectories run together.
    pub batch: usize,
}

/// Indices of `k` of `n` sampling steps, uniformly spread and starting at the first:
/// `floor(i·n/k)` (for n = 100, k = 20: 0, 5, …, 95, as Q-Diffusion's `range(0, n, n // k)`).
pub fn selected_steps(n: usize, k: usize) -> Result<Vec<usize>> {
    if k == 0 || k > n {
        return Err(CalibError::Spec(format!(
            "steps_sampled = {k} must be between 1 and the number of sampling steps ({n})"
        )));
    }
    Ok((0..k).map(|i| i * n / k).collect())
}

/// The calibration set: every model input, its timestep, its sampling-step index and its
/// conditioning (one row per input; empty for unconditional models).
pub struct CalibSet {
    pub x: Tensor,
    pub timesteps: Vec<u32>,
    pub step_index: Vec<u32>,
    pub cond: Conditioning,
}

impl CalibSet {
    /// Rows `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<CalibSet> {
        Ok(CalibSet {
            x: self.x.narrow(0, start, len)?,
            timesteps: self.timesteps[start..start + len].to_vec(),
            step_index: self.step_index[start..start + len].to_vec(),
            cond: self.cond.narrow(start, len)?,
        })
    }

    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// Row indices of the samples of sampling step `step`.
    pub fn rows_of_step(&self, step: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.step_index[i] as usize == step)
            .collect()
    }
}

/// Runs the model's own trajectories and keeps x_t at the selected steps.
/// `on_call` is called once per UNet call (progress).
pub fn generate(
    unet: &dyn DenoiserModel,
    sched: &dyn Scheduler,
    spec: &CalibSpec,
    on_call: impl FnMut(),
) -> Result<CalibSet> {
    generate_inner(unet, sched, spec, None, on_call)
}

/// How the calibration trajectories of a conditional model are conditioned and guided.
pub struct CalibGuidance {
    pub guidance: Guidance,
    /// Conditional rows: trajectory `j` uses row `j mod rows`.
    pub cond: Conditioning,
    /// Unconditional rows (negative prompt, null class), as many as `cond`.
    pub uncond: Conditioning,
}

impl CalibGuidance {
    /// The conditioning of the doubled batch of trajectories `idx`, in the guidance's order.
    pub fn doubled(&self, idx: &[usize]) -> Result<Conditioning> {
        let rows = self.cond.rows()?.unwrap_or(1).max(1);
        let pick: Vec<u32> = idx.iter().map(|&j| (j % rows) as u32).collect();
        let pick = Tensor::from_vec(pick, idx.len(), &Device::Cpu)?;
        let c = self.cond.index_select(&pick)?;
        let u = self.uncond.index_select(&pick)?;
        Ok(match self.guidance.order {
            CfgOrder::UncondFirst => Conditioning::cat(&[u, c])?,
            CfgOrder::CondFirst => Conditioning::cat(&[c, u])?,
        })
    }
}

/// [`generate`] for a conditional model: classifier-free-guided trajectories, keeping the
/// doubled batch the model sees at the selected steps (both halves, with their conditioning).
pub fn generate_guided(
    model: &dyn DenoiserModel,
    sched: &dyn Scheduler,
    spec: &CalibSpec,
    guide: &CalibGuidance,
    on_call: impl FnMut(),
) -> Result<CalibSet> {
    if guide.cond.rows()? != guide.uncond.rows()? {
        return Err(CalibError::Spec(
            "conditional and unconditional calibration inputs differ in rows".into(),
        ));
    }
    generate_inner(model, sched, spec, Some(guide), on_call)
}

fn generate_inner(
    unet: &dyn DenoiserModel,
    sched: &dyn Scheduler,
    spec: &CalibSpec,
    guide: Option<&CalibGuidance>,
    mut on_call: impl FnMut(),
) -> Result<CalibSet> {
    if spec.samples_per_step == 0 || spec.batch == 0 {
        return Err(CalibError::Spec(
            "samples_per_step and batch must be at least 1".into(),
        ));
    }
    let n_steps = sched.timesteps().len();
    let keep = selected_steps(n_steps, spec.steps_sampled)?;
    let shape = unet
        .sample_shape()
        .ok_or_else(|| CalibError::Spec("the model's config has no sample_size".into()))?;
    let noise = NoiseSource::new(spec.seed);
    // per selected step, the batches of (x_t, conditioning) in trajectory order
    let mut per_step: Vec<Vec<(Tensor, Conditioning)>> = vec![Vec::new(); keep.len()];
    let all: Vec<usize> = (0..spec.samples_per_step).collect();
    for idx in all.chunks(spec.batch) {
        let x = noise
            .initial(idx, &shape, unet.device())?
            .to_dtype(unet.dtype())?;
        let step_noise = |i: usize| Ok(Some(noise.step_noise(i, idx, &shape, unet.device())?));
        match guide {
            None => {
                dmq_sched::sample(
                    sched,
                    x,
                    |x, t, i| {
                        if let Ok(k) = keep.binary_search(&i) {
                            per_step[k].push((
                                x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                                Conditioning::none(),
                            ));
                        }
                        let eps = unet
                            .forward_cond(
                                x,
                                Timesteps::Shared(t as f64),
                                &Conditioning::none(),
                                &Ctx::at_step(i),
                            )
                            .map_err(SchedError::other)?;
                        on_call();
                        Ok(eps)
                    },
                    step_noise,
                    |_| {},
                )?;
            }
            Some(g) => {
                let cpu_cond = g.doubled(idx)?;
                let cond = cpu_cond.to_device(unet.device())?;
                dmq_sched::sample_guided(
                    sched,
                    x,
                    &g.guidance,
                    |x2, t, i| {
                        if let Ok(k) = keep.binary_search(&i) {
                            per_step[k].push((
                                x2.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                                cpu_cond.clone(),
                            ));
                        }
                        let out = unet
                            .forward_cond(x2, Timesteps::Shared(t as f64), &cond, &Ctx::at_step(i))
                            .map_err(SchedError::other)?;
                        on_call();
                        Ok(out)
                    },
                    step_noise,
                    |_, _, _| {},
                )?;
            }
        }
    }
    let mut xs = Vec::new();
    let mut conds = Vec::new();
    let mut timesteps = Vec::new();
    let mut step_index = Vec::new();
    for (k, batches) in per_step.into_iter().enumerate() {
        let step = keep[k];
        for (b, c) in batches {
            let n = b.dims()[0];
            timesteps.extend(std::iter::repeat_n(sched.timesteps()[step] as u32, n));
            step_index.extend(std::iter::repeat_n(step as u32, n));
            xs.push(b);
            conds.push(c);
        }
    }
    Ok(CalibSet {
        x: Tensor::cat(&xs, 0)?,
        timesteps,
        step_index,
        cond: Conditioning::cat(&conds)?,
    })
}

/// What a cache folder must match to be reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibManifest {
    pub format_version: u32,
    pub spec: CalibSpec,
    /// Identifies the model's weights and config (see [`fingerprint`]).
    pub model_fingerprint: String,
    /// The sampler's full timestep list and its settings, as the caller describes them.
    pub sampler: serde_json::Value,
    pub samples: usize,
}

const FORMAT_VERSION: u32 = 1;

/// sha256 over byte slices (weights, config), hex: a model's identity for caches and artifacts.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn file_err(path: &Path, message: impl ToString) -> CalibError {
    CalibError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Writes the set and its manifest to `dir` (atomically: a sibling temporary folder, renamed).
pub fn save(dir: &Path, set: &CalibSet, manifest: &CalibManifest) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| file_err(parent, e))?;
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    let n = set.len();
    let tensors = [
        ("x".to_string(), set.x.clone()),
        (
            "timesteps".to_string(),
            Tensor::from_vec(set.timesteps.clone(), n, &Device::Cpu)?,
        ),
        (
            "step_index".to_string(),
            Tensor::from_vec(set.step_index.clone(), n, &Device::Cpu)?,
        ),
    ];
    let mut tensors: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    tensors.extend(set.cond.named());
    candle_core::safetensors::save(&tensors, tmp.join("calib.safetensors"))?;
    let text = serde_json::to_string_pretty(manifest).map_err(|e| file_err(dir, e))?;
    std::fs::write(tmp.join("manifest.json"), text + "\n").map_err(|e| file_err(&tmp, e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| file_err(dir, e))?;
    Ok(())
}

/// Loads a cached set if its manifest equals `expected`; `Ok(None)` when absent or different.
pub fn load_if_matching(dir: &Path, expected: &CalibManifest) -> Result<Option<CalibSet>> {
    let mpath = dir.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&mpath) else {
        return Ok(None);
    };
    let found: CalibManifest = serde_json::from_str(&text)
        .map_err(|e| file_err(&mpath, format!("corrupt manifest: {e}")))?;
    if &found != expected {
        return Ok(None);
    }
    let spath = dir.join("calib.safetensors");
    let t =
        candle_core::safetensors::load(&spath, &Device::Cpu).map_err(|e| file_err(&spath, e))?;
    let get = |k: &str| {
        t.get(k)
            .cloned()
            .ok_or_else(|| file_err(&spath, format!("tensor `{k}` is missing")))
    };
    let set = CalibSet {
        x: get("x")?,
        timesteps: get("timesteps")?.to_vec1::<u32>()?,
        step_index: get("step_index")?.to_vec1::<u32>()?,
        cond: Conditioning::from_named(&t),
    };
    if set.x.dims()[0] != expected.samples || set.timesteps.len() != expected.samples {
        return Err(file_err(
            &spath,
            format!(
                "holds {} samples, the manifest says {}",
                set.x.dims()[0],
                expected.samples
            ),
        ));
    }
    Ok(Some(set))
}

/// The cache folder for a manifest under `root`: named by a hash of the manifest.
pub fn cache_folder(root: &Path, manifest: &CalibManifest) -> PathBuf {
    let text = serde_json::to_string(manifest).expect("manifest serialises");
    root.join(format!("calib-{}", &fingerprint(&[text.as_bytes()])[..24]))
}

/// The manifest this spec, model and sampler produce (`format_version` filled in).
pub fn manifest_for(
    spec: &CalibSpec,
    model_fingerprint: &str,
    sampler: serde_json::Value,
) -> CalibManifest {
    CalibManifest {
        format_version: FORMAT_VERSION,
        spec: spec.clone(),
        model_fingerprint: model_fingerprint.to_string(),
        sampler,
        samples: spec.samples_per_step * spec.steps_sampled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_steps_are_uniform_and_checked() {
        assert_eq!(
            selected_steps(100, 20).unwrap(),
            (0..20).map(|i| i * 5).collect::<Vec<_>>()
        );
        assert_eq!(selected_steps(10, 3).unwrap(), vec![0, 3, 6]);
        assert_eq!(selected_steps(5, 5).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(selected_steps(5, 6).is_err());
        assert!(selected_steps(5, 0).is_err());
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"x"]), fingerprint(&[b"x"]));
    }
}
