//! `scheduler_config.json`: parsing, validation, the training noise schedule (betas,
//! alphas_cumprod) and the inference timestep spacing.
//!
//! One [`ScheduleConfig`] serves both samplers. diffusers lets a user build a `DDIMScheduler`
//! from a `DDPMScheduler` config (`DDIMScheduler.from_config(ddpm.config)`) and the other way
//! round; each class then ignores the other's keys and takes its own defaults for keys that are
//! absent. The two classes share every default except their own keys (`variance_type` is
//! DDPM-only, `set_alpha_to_one` DDIM-only), so one parse with the union of the keys reproduces
//! both.
//!
//! `DPMSolverMultistepScheduler` keys (`algorithm_type`, `solver_order`, ...) are read into
//! [`DpmSolverConfig`]; values dmq does not implement are errors naming the field. Two of its
//! defaults differ from DDIM/DDPM's: `timestep_spacing` is `linspace` when the key is absent, and
//! `clip_sample` does not exist (DPM-Solver++ never clips).

use std::path::Path;

use dmq_config::{ConfigError, JsonFields};
use serde_json::Value;

use crate::error::{Result, SchedError};

/// How the training betas are laid out over `0..num_train_timesteps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)²` (latent diffusion).
    ScaledLinear,
    /// The cosine schedule of Improved DDPM ("Glide cosine"), betas capped at 0.999.
    SquaredCosCapV2,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The clean sample x₀.
    Sample,
    /// v = √ᾱ·ε − √(1−ᾱ)·x₀.
    VPrediction,
}

/// DDPM's variance of the ancestral step (ignored by DDIM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// Posterior variance β̃ₜ = (1−ᾱₜ₋₁)/(1−ᾱₜ)·βₜ, clamped below at 1e-20.
    FixedSmall,
    /// The same variance, computed by diffusers as exp(½·log β̃ₜ); numerically equal to
    /// `FixedSmall`.
    FixedSmallLog,
    /// βₜ (the forward-process variance of the step).
    FixedLarge,
}

/// How `num_inference_steps` timesteps are picked out of `0..num_train_timesteps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `(0..n)·(T div n)`, reversed, plus `steps_offset`.
    Leading,
    /// `round(arange(T, 0, −T/n)) − 1`.
    Trailing,
    /// `round(linspace(0, T−1, n))`, reversed.
    Linspace,
}

/// A parsed and validated `scheduler_config.json` (DDPM or DDIM keys, see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// When set, used instead of `beta_schedule` (length `num_train_timesteps`).
    pub trained_betas: Option<Vec<f64>>,
    /// Clip the predicted x₀ to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    /// DDPM only.
    pub variance_type: VarianceType,
    pub timestep_spacing: TimestepSpacing,
    /// Added to the timesteps of `leading` spacing only (as diffusers does).
    pub steps_offset: usize,
    /// DDIM only: ᾱ used after the last step is 1 (true) or ᾱ₀ (false).
    pub set_alpha_to_one: bool,
    /// Accepted and kept, but dynamic thresholding itself is not supported (`thresholding` must
    /// be false).
    pub dynamic_thresholding_ratio: f64,
    /// See `dynamic_thresholding_ratio`.
    pub sample_max_value: f64,
    /// Rescale the betas so that the last ᾱ is exactly 0 (Lin et al. 2023, Algorithm 1).
    pub rescale_betas_zero_snr: bool,
    /// The `DPMSolverMultistepScheduler` settings (used by DPM-Solver++ only).
    pub dpm_solver: DpmSolverConfig,
}

/// The keys of diffusers' `DPMSolverMultistepScheduler` that dmq reads. Only the configuration
/// Stable Diffusion and PixArt pipelines use is implemented: `algorithm_type = "dpmsolver++"`,
/// `solver_type = "midpoint"`, `final_sigmas_type = "zero"`, no Karras/exponential/beta/Lu/flow
/// sigmas, no dynamic shifting, `lambda_min_clipped = -inf`, `variance_type = null`; any other
/// value of those keys is refused when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpmSolverConfig {
    /// `timestep_spacing` as `DPMSolverMultistepScheduler` reads it: the file's value, else
    /// `linspace` (its default, where DDIM and DDPM default to `leading`).
    pub timestep_spacing: TimestepSpacing,
    /// 1 or 2 (diffusers' default 2; 3 is not implemented).
    pub solver_order: usize,
    /// Kept for the record. With `final_sigmas_type = "zero"` the last step is first order
    /// whatever this says, and with `solver_order` ≤ 2 the second-to-last step is second order
    /// either way, so it changes nothing.
    pub lower_order_final: bool,
    /// Kept for the record; it changes nothing for the same reason as `lower_order_final`.
    pub euler_at_final: bool,
}

impl Default for DpmSolverConfig {
    /// diffusers' defaults for `DPMSolverMultistepScheduler`.
    fn default() -> Self {
        Self {
            timestep_spacing: TimestepSpacing::Linspace,
            solver_order: 2,
            lower_order_final: true,
            euler_at_final: false,
        }
    }
}

impl Default for ScheduleConfig {
    /// diffusers' defaults for `DDPMScheduler` / `DDIMScheduler`.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            variance_type: VarianceType::FixedSmall,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            rescale_betas_zero_snr: false,
            dpm_solver: DpmSolverConfig::default(),
        }
    }
}

impl ScheduleConfig {
    /// Reads and validates a diffusers `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(path, &text)
    }

    /// Parses `text` as if it were the file `path_for_errors`.
    ///
    /// Python's JSON writer puts the bare constants `-Infinity`, `Infinity` and `NaN` into the
    /// files diffusers saves (`"lambda_min_clipped": -Infinity` in every
    /// `DPMSolverMultistepScheduler` config); they are read as the strings `"-Infinity"`, ... so
    /// that the one field that may hold one accepts it and any other field names itself in its
    /// error.
    pub fn from_json_str(path_for_errors: &Path, text: &str) -> Result<Self> {
        Self::from_fields(JsonFields::parse(
            path_for_errors,
            &quote_python_constants(text),
        )?)
    }

    fn from_fields(mut f: JsonFields) -> Result<Self> {
        let d = Self::default();
        let num_train_timesteps = f.usize_or("num_train_timesteps", d.num_train_timesteps)?;
        if num_train_timesteps == 0 {
            return Err(f.error("num_train_timesteps", "must be at least 1").into());
        }
        let beta_start = f.f64_or("beta_start", d.beta_start)?;
        let beta_end = f.f64_or("beta_end", d.beta_end)?;
        let beta_schedule = match f
            .choice_or(
                "beta_schedule",
                "linear",
                &["linear", "scaled_linear", "squaredcos_cap_v2"],
            )?
            .as_str()
        {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            _ => BetaSchedule::SquaredCosCapV2,
        };
        let trained_betas = match f.take("trained_betas") {
            None => None,
            Some(Value::Array(items)) => {
                let mut betas = Vec::with_capacity(items.len());
                for v in &items {
                    match v.as_f64() {
                        Some(x) if x.is_finite() => betas.push(x),
                        _ => {
                            return Err(f
                                .error("trained_betas", format!("expected numbers, found {v}"))
                                .into())
                        }
                    }
                }
                if betas.len() != num_train_timesteps {
                    return Err(f
                        .error(
                            "trained_betas",
                            format!(
                                "has {} values but num_train_timesteps is {num_train_timesteps}",
                                betas.len()
                            ),
                        )
                        .into());
                }
                Some(betas)
            }
            Some(v) => {
                return Err(f
                    .error(
                        "trained_betas",
                        format!("expected a list of numbers or null, got {v}"),
                    )
                    .into())
            }
        };
        let clip_sample = f.bool_or("clip_sample", d.clip_sample)?;
        let clip_sample_range = f.f64_or("clip_sample_range", d.clip_sample_range)?;
        if clip_sample_range <= 0.0 {
            return Err(f
                .error(
                    "clip_sample_range",
                    format!("must be positive, got {clip_sample_range}"),
                )
                .into());
        }
        let prediction_type = match f
            .choice_or(
                "prediction_type",
                "epsilon",
                &["epsilon", "sample", "v_prediction"],
            )?
            .as_str()
        {
            "epsilon" => PredictionType::Epsilon,
            "sample" => PredictionType::Sample,
            _ => PredictionType::VPrediction,
        };
        let variance_type = match f
            .choice_or(
                "variance_type",
                "fixed_small",
                &["fixed_small", "fixed_small_log", "fixed_large"],
            )?
            .as_str()
        {
            "fixed_small" => VarianceType::FixedSmall,
            "fixed_small_log" => VarianceType::FixedSmallLog,
            _ => VarianceType::FixedLarge,
        };
        let spacing_given = f.opt_string("timestep_spacing")?.is_some();
        let timestep_spacing = match f
            .choice_or(
                "timestep_spacing",
                "leading",
                &["leading", "trailing", "linspace"],
            )?
            .as_str()
        {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            _ => TimestepSpacing::Linspace,
        };
        let dpm_solver = DpmSolverConfig::from_fields(
            &mut f,
            if spacing_given {
                timestep_spacing
            } else {
                TimestepSpacing::Linspace
            },
        )?;
        let steps_offset = f.usize_or("steps_offset", d.steps_offset)?;
        let set_alpha_to_one = f.bool_or("set_alpha_to_one", d.set_alpha_to_one)?;
        if f.bool_or("thresholding", false)? {
            return Err(f
                .error(
                    "thresholding",
                    "dynamic thresholding (true) is not supported by dmq; set it to false",
                )
                .into());
        }
        let dynamic_thresholding_ratio =
            f.f64_or("dynamic_thresholding_ratio", d.dynamic_thresholding_ratio)?;
        let sample_max_value = f.f64_or("sample_max_value", d.sample_max_value)?;
        let rescale_betas_zero_snr =
            f.bool_or("rescale_betas_zero_snr", d.rescale_betas_zero_snr)?;

        let cfg = Self {
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            clip_sample,
            clip_sample_range,
            prediction_type,
            variance_type,
            timestep_spacing,
            steps_offset,
            set_alpha_to_one,
            dynamic_thresholding_ratio,
            sample_max_value,
            rescale_betas_zero_snr,
            dpm_solver,
        };
        // Every beta of the schedule (before any zero-SNR rescaling) must lie in (0, 1): a zero
        // beta makes 1 − ᾱ vanish (division by zero in every step formula), a beta ≥ 1 makes ᾱ
        // vanish or go negative.
        let field = if cfg.trained_betas.is_some() {
            "trained_betas"
        } else if beta_start <= 0.0 || beta_start >= 1.0 {
            "beta_start"
        } else {
            "beta_end"
        };
        if let Some((t, b)) = cfg
            .raw_betas()
            .into_iter()
            .enumerate()
            .find(|(_, b)| !(*b > 0.0 && *b < 1.0))
        {
            return Err(f
                .error(
                    field,
                    format!("gives beta[{t}] = {b}; every beta must lie strictly between 0 and 1"),
                )
                .into());
        }
        f.finish()?;
        Ok(cfg)
    }

    /// The betas before any zero-SNR rescaling, in f64.
    fn raw_betas(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        if let Some(b) = &self.trained_betas {
            return b.clone();
        }
        match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|x| x * x)
                .collect(),
            BetaSchedule::SquaredCosCapV2 => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let t1 = i as f64 / n as f64;
                        let t2 = (i + 1) as f64 / n as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                    })
                    .collect()
            }
        }
    }

    /// βₜ for t in `0..num_train_timesteps`, computed in f64 (diffusers keeps them in f32).
    pub fn betas(&self) -> Vec<f64> {
        let betas = self.raw_betas();
        if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        }
    }

    /// ᾱₜ = Πₛ≤ₜ (1 − βₛ), accumulated in f64.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        cumprod_alphas(&self.betas())
    }

    /// The `num_inference_steps` timesteps, from noisiest to cleanest, exactly as diffusers'
    /// `set_timesteps` lays them out for `timestep_spacing` (`steps_offset` applies to `leading`
    /// only). Errors when `steps` is 0 or exceeds `num_train_timesteps`, or when `steps_offset`
    /// pushes a timestep past the schedule.
    pub fn inference_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let t_train = self.num_train_timesteps;
        if steps == 0 || steps > t_train {
            return Err(SchedError::Steps {
                steps,
                train: t_train,
            });
        }
        let ts: Vec<usize> = match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = t_train / steps;
                (0..steps)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing_timesteps(t_train, steps)?,
            TimestepSpacing::Linspace => numpy_linspace(0.0, (t_train - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as usize)
                .collect(),
        };
        if let Some(&t) = ts.iter().find(|&&t| t >= t_train) {
            return Err(SchedError::Invalid(format!(
                "timestep {t} (steps_offset = {}, {steps} steps) is outside the training schedule \
                 0..{t_train}",
                self.steps_offset
            )));
        }
        Ok(ts)
    }

    /// The timesteps of `DPMSolverMultistepScheduler.set_timesteps(steps)`, noisiest first. Its
    /// spacings are not DDIM's: `linspace` takes `n + 1` points of `linspace(0, T − 1)` and drops
    /// the last (0); `leading` uses the ratio `T div (n + 1)` and drops 0 before adding
    /// `steps_offset`; `trailing` is DDIM's. The spacing is [`DpmSolverConfig::timestep_spacing`].
    /// Errors where diffusers would repeat a timestep or leave the training schedule.
    pub fn dpm_solver_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let t_train = self.num_train_timesteps;
        if steps == 0 || steps > t_train {
            return Err(SchedError::Steps {
                steps,
                train: t_train,
            });
        }
        let spacing = self.dpm_solver.timestep_spacing;
        let ts: Vec<usize> = match spacing {
            TimestepSpacing::Linspace => numpy_linspace(0.0, (t_train - 1) as f64, steps + 1)
                .into_iter()
                .skip(1)
                .rev()
                .map(|v| v.round_ties_even() as usize)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = t_train / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|k| k * ratio + self.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing_timesteps(t_train, steps)?,
        };
        if let Some(w) = ts.windows(2).find(|w| w[0] <= w[1]) {
            return Err(SchedError::Invalid(format!(
                "DPM-Solver++ with {steps} steps and timestep_spacing {spacing:?}: diffusers \
                 computes the timesteps {} then {} (not strictly decreasing), which dmq does not \
                 reproduce; choose fewer steps",
                w[0], w[1]
            )));
        }
        if let Some(&t) = ts.iter().find(|&&t| t >= t_train) {
            return Err(SchedError::Invalid(format!(
                "timestep {t} (steps_offset = {}, {steps} steps) is outside the training schedule \
                 0..{t_train}",
                self.steps_offset
            )));
        }
        Ok(ts)
    }
}

impl DpmSolverConfig {
    /// Reads the `DPMSolverMultistepScheduler` keys; `timestep_spacing` is already resolved.
    fn from_fields(f: &mut JsonFields, timestep_spacing: TimestepSpacing) -> Result<Self> {
        let d = Self::default();
        f.choice_or("algorithm_type", "dpmsolver++", &["dpmsolver++"])?;
        let solver_order = f.usize_or("solver_order", d.solver_order)?;
        if !(1..=2).contains(&solver_order) {
            return Err(f
                .error(
                    "solver_order",
                    format!("{solver_order} is not supported by dmq (supported: 1, 2)"),
                )
                .into());
        }
        f.choice_or("solver_type", "midpoint", &["midpoint"])?;
        f.choice_or("final_sigmas_type", "zero", &["zero"])?;
        let lower_order_final = f.bool_or("lower_order_final", d.lower_order_final)?;
        let euler_at_final = f.bool_or("euler_at_final", d.euler_at_final)?;
        for key in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ] {
            if f.bool_or(key, false)? {
                return Err(f
                    .error(key, "true is not supported by dmq; set it to false")
                    .into());
            }
        }
        // Only read with use_flow_sigmas / use_dynamic_shifting, which are refused above.
        f.f64_or("flow_shift", 1.0)?;
        f.choice_or("time_shift_type", "exponential", &["exponential"])?;
        match f.take("lambda_min_clipped") {
            None => {}
            Some(Value::String(s)) if s == "-Infinity" => {}
            Some(v) => {
                return Err(f
                    .error(
                        "lambda_min_clipped",
                        format!(
                            "{v} is not supported by dmq: only -Infinity (no clipping of λ) is \
                             implemented"
                        ),
                    )
                    .into())
            }
        }
        Ok(Self {
            timestep_spacing,
            solver_order,
            lower_order_final,
            euler_at_final,
        })
    }
}

/// `text` with Python's bare JSON constants `-Infinity`, `Infinity` and `NaN` (outside strings)
/// turned into the strings `"-Infinity"`, `"Infinity"`, `"NaN"`.
fn quote_python_constants(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("Infinity") || text.contains("NaN")) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

/// ᾱ from betas, accumulated in f64.
pub(crate) fn cumprod_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// `trailing` spacing, `round(arange(T, 0, −T/n)) − 1`, shared by DDIM, DDPM and DPM-Solver++.
fn trailing_timesteps(t_train: usize, steps: usize) -> Result<Vec<usize>> {
    let ts: Vec<i64> = numpy_arange_desc(t_train as f64, t_train as f64 / steps as f64)
        .into_iter()
        .map(|v| v.round_ties_even() as i64 - 1)
        .collect();
    // diffusers bug: for some n (T = 1000: 61, 103, 121, 122, 201, ...) the float
    // arange has n + 1 elements, the last one ≈ 1e-13, which becomes timestep −1
    // (torch then reads alphas_cumprod[−1], the *last* training timestep). That
    // trajectory is meaningless; refuse it rather than deviate silently.
    if ts.len() != steps || ts.iter().any(|&t| t < 0) {
        return Err(SchedError::Invalid(format!(
            "timestep_spacing \"trailing\" with {steps} steps: diffusers computes {} \
                 timesteps ending in {} (a floating-point artefact of its arange), \
                 which dmq does not reproduce; choose another step count",
            ts.len(),
            ts.last().copied().unwrap_or_default()
        )));
    }
    Ok(ts.into_iter().map(|t| t as usize).collect())
}

/// Rescales betas so that the terminal SNR is zero while ᾱ₀ is kept (Lin et al., "Common
/// Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1): shift √ᾱ so its last
/// value is 0, scale it so its first value is unchanged, and turn it back into betas.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let sqrt_ab: Vec<f64> = cumprod_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (Some(&first), Some(&last)) = (sqrt_ab.first(), sqrt_ab.last()) else {
        return Vec::new();
    };
    let scale = first / (first - last);
    let ab: Vec<f64> = sqrt_ab
        .iter()
        .map(|s| {
            let r = (s - last) * scale;
            r * r
        })
        .collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for w in ab.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// `linspace(start, end, n)` with both ends included (torch and numpy agree to rounding).
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    numpy_linspace(start, end, n)
}

/// numpy's `linspace(start, stop, n)`: `k·((stop − start)/(n − 1)) + start`, the last value set to
/// `stop` exactly; `[start]` when n = 1. Reproduced operation by operation because the timestep
/// spacing rounds these values, and half-way cases must fall the way numpy's do.
fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|k| k as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// numpy's `arange(start, 0, -step)` for float arguments: length `ceil(start / step)`, values
/// `start`, `start − step`, then `start + i·d` with `d = (start − step) − start` (numpy's fill
/// loop), reproduced exactly for the same reason as [`numpy_linspace`].
fn numpy_arange_desc(start: f64, step: f64) -> Vec<f64> {
    let neg = -step;
    let len = ((0.0 - start) / neg).ceil().max(0.0) as usize;
    let second = start + neg;
    let d = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * d,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Result<ScheduleConfig> {
        ScheduleConfig::from_json_str(Path::new("sched/scheduler_config.json"), text)
    }

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn with_spacing(spacing: TimestepSpacing) -> ScheduleConfig {
        ScheduleConfig {
            timestep_spacing: spacing,
            ..Default::default()
        }
    }

    #[test]
    fn linear_betas_and_alphas_cumprod() {
        let cfg = ScheduleConfig::default();
        let b = cfg.betas();
        assert_eq!(b.len(), 1000);
        assert_eq!(b[0], 0.0001);
        assert!((b[999] - 0.02).abs() < 1e-16);
        // equal increments of (0.02 − 0.0001)/999
        assert!((b[500] - (0.0001 + 500.0 * 0.0199 / 999.0)).abs() < 1e-16);
        let a = cfg.alphas_cumprod();
        assert_eq!(a[0], 1.0 - 0.0001);
        let hand: f64 = (0..=10)
            .map(|s| 1.0 - (0.0001 + s as f64 * 0.0199 / 999.0))
            .product();
        assert!((a[10] - hand).abs() < 1e-15, "{} vs {hand}", a[10]);
        // ᾱ at the end: exp(Σ log(1 − β)), β linear → about 4.04e-5
        let log_sum: f64 = b.iter().map(|x| (1.0 - x).ln()).sum();
        assert!((a[999] - log_sum.exp()).abs() < 1e-15);
        assert!((a[999] - 4.0358e-5).abs() < 1e-8, "{}", a[999]);
    }

    #[test]
    fn scaled_linear_betas() {
        let cfg = parse(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
        )
        .unwrap();
        let b = cfg.betas();
        assert!((b[0] - 0.00085).abs() < 1e-17);
        assert!((b[999] - 0.012).abs() < 1e-17);
        // midpoint of the square roots, squared: not the linear midpoint
        let s = (0.00085f64.sqrt() * 499.0 + 0.012f64.sqrt() * 500.0) / 999.0;
        assert!((b[500] - s * s).abs() < 1e-15);
        assert!((b[500] - 0.004_814_954_141_711_88).abs() < 1e-12);
        assert!((b[1] - 0.000_854_698_655_405_686).abs() < 1e-12);
    }

    #[test]
    fn squaredcos_cap_v2_betas() {
        let cfg = parse(r#"{"beta_schedule": "squaredcos_cap_v2"}"#).unwrap();
        let b = cfg.betas();
        // 1 − cos²(0.009/1.008·π/2) / cos²(0.008/1.008·π/2), and the next two
        assert!((b[0] - 4.128_422_482_196_914e-5).abs() < 1e-15);
        assert!((b[1] - 4.614_175_273_665_033e-5).abs() < 1e-15);
        assert!((b[2] - 5.099_948_119_891_007e-5).abs() < 1e-15);
        // the last betas hit the 0.999 cap (ᾱ(1) = 0)
        assert_eq!(b[999], 0.999);
        assert!((b[998] - 0.749_999_392_901_116_6).abs() < 1e-12);
    }

    #[test]
    fn trained_betas_override_the_schedule() {
        let cfg = parse(
            r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.5], "beta_schedule": "linear"}"#,
        )
        .unwrap();
        assert_eq!(cfg.betas(), vec![0.1, 0.2, 0.5]);
        let a = cfg.alphas_cumprod();
        assert!((a[2] - 0.9 * 0.8 * 0.5).abs() < 1e-16);
        let e = err_text(r#"{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.5]}"#);
        assert!(e.contains("trained_betas") && e.contains("3 values"), "{e}");
        let e = err_text(r#"{"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]}"#);
        assert!(e.contains("trained_betas") && e.contains("beta[1]"), "{e}");
    }

    #[test]
    fn rescale_zero_terminal_snr_properties() {
        let cfg = parse(r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction"}"#)
            .unwrap();
        let plain = ScheduleConfig::default().alphas_cumprod();
        let a = cfg.alphas_cumprod();
        // ᾱ₀ kept, ᾱ_{T−1} exactly 0, β_{T−1} = 1
        assert!((a[0] - plain[0]).abs() < 1e-15);
        assert_eq!(a[999], 0.0);
        assert_eq!(cfg.betas()[999], 1.0);
        // √ᾱ is an affine function of the original √ᾱ (shift then scale)
        let (s0, st) = (plain[0].sqrt(), plain[999].sqrt());
        for t in [1, 100, 500, 998] {
            let want = (plain[t].sqrt() - st) * s0 / (s0 - st);
            assert!((a[t].sqrt() - want).abs() < 1e-12, "t = {t}");
        }
        // an epsilon model cannot step from ᾱ = 0 (trailing spacing starts at T − 1)
        let eps =
            parse(r#"{"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#).unwrap();
        assert!(crate::Ddim::new(&eps, 10, 0.0).is_err());
        assert!(crate::Ddim::new(
            &ScheduleConfig {
                timestep_spacing: TimestepSpacing::Trailing,
                ..cfg
            },
            10,
            0.0
        )
        .is_ok());
    }

    #[test]
    fn leading_spacing() {
        let cfg = ScheduleConfig::default();
        assert_eq!(
            cfg.inference_timesteps(10).unwrap(),
            vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
        );
        // 1000 div 3 = 333
        assert_eq!(cfg.inference_timesteps(3).unwrap(), vec![666, 333, 0]);
        let off = ScheduleConfig {
            steps_offset: 1,
            ..Default::default()
        };
        assert_eq!(off.inference_timesteps(4).unwrap(), vec![751, 501, 251, 1]);
        assert_eq!(
            ScheduleConfig::default().inference_timesteps(1000).unwrap()[..3],
            [999, 998, 997]
        );
    }

    #[test]
    fn trailing_spacing() {
        let cfg = with_spacing(TimestepSpacing::Trailing);
        assert_eq!(
            cfg.inference_timesteps(10).unwrap(),
            vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
        );
        // 1000 − k·333.33…, rounded, minus 1
        assert_eq!(cfg.inference_timesteps(3).unwrap(), vec![999, 666, 332]);
        assert_eq!(
            cfg.inference_timesteps(7).unwrap(),
            vec![999, 856, 713, 570, 428, 285, 142]
        );
        // steps_offset is ignored by trailing (diffusers)
        let off = ScheduleConfig {
            steps_offset: 1,
            ..cfg.clone()
        };
        assert_eq!(
            off.inference_timesteps(10).unwrap(),
            cfg.inference_timesteps(10).unwrap()
        );
        assert_eq!(cfg.inference_timesteps(1).unwrap(), vec![999]);
        // numpy's arange(1000, 0, -1000/61) has 62 elements, the last ≈ 1e-13 → timestep −1 in
        // diffusers: refused
        let e = cfg.inference_timesteps(61).unwrap_err().to_string();
        assert!(e.contains("62 timesteps ending in -1"), "{e}");
        assert_eq!(cfg.inference_timesteps(60).unwrap().len(), 60);
        assert_eq!(cfg.inference_timesteps(62).unwrap().len(), 62);
    }

    #[test]
    fn linspace_spacing() {
        let cfg = with_spacing(TimestepSpacing::Linspace);
        assert_eq!(
            cfg.inference_timesteps(10).unwrap(),
            vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
        );
        // 999/6 = 166.5 and 5·166.5 = 832.5: numpy rounds half to even (166, 832), 499.5 → 500
        assert_eq!(
            cfg.inference_timesteps(7).unwrap(),
            vec![999, 832, 666, 500, 333, 166, 0]
        );
        assert_eq!(cfg.inference_timesteps(3).unwrap(), vec![999, 500, 0]);
        assert_eq!(cfg.inference_timesteps(1).unwrap(), vec![0]);
    }

    #[test]
    fn step_counts_out_of_range() {
        for spacing in [
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::Linspace,
        ] {
            let cfg = with_spacing(spacing);
            assert!(matches!(
                cfg.inference_timesteps(0),
                Err(SchedError::Steps { steps: 0, .. })
            ));
            assert!(cfg.inference_timesteps(1001).is_err());
            let all = cfg.inference_timesteps(1000).unwrap();
            assert_eq!(all, (0..1000).rev().collect::<Vec<_>>(), "{spacing:?}");
        }
    }

    #[test]
    fn reads_the_example_ddpm_config() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/models/ddpm-cifar10-small/scheduler/scheduler_config.json");
        let cfg = ScheduleConfig::from_file(&path).unwrap();
        // a DDPM file: DDIM's own key takes its default; its explicit "leading" spacing holds
        // for DPM-Solver++ too
        assert_eq!(
            cfg,
            ScheduleConfig {
                set_alpha_to_one: true,
                dpm_solver: DpmSolverConfig {
                    timestep_spacing: TimestepSpacing::Leading,
                    ..Default::default()
                },
                ..Default::default()
            }
        );
    }

    #[test]
    fn defaults_and_all_keys() {
        assert_eq!(parse("{}").unwrap(), ScheduleConfig::default());
        let cfg = parse(
            r#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.42.1",
                "num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.03,
                "beta_schedule": "linear", "trained_betas": null, "clip_sample": false,
                "clip_sample_range": 2.0, "prediction_type": "v_prediction",
                "variance_type": "fixed_large", "timestep_spacing": "trailing",
                "steps_offset": 1, "set_alpha_to_one": false, "thresholding": false,
                "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0,
                "rescale_betas_zero_snr": false}"#,
        )
        .unwrap();
        assert_eq!(cfg.num_train_timesteps, 500);
        assert_eq!((cfg.beta_start, cfg.beta_end), (0.001, 0.03));
        assert!(!cfg.clip_sample && cfg.clip_sample_range == 2.0);
        assert_eq!(cfg.prediction_type, PredictionType::VPrediction);
        assert_eq!(cfg.variance_type, VarianceType::FixedLarge);
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Trailing);
        assert_eq!((cfg.steps_offset, cfg.set_alpha_to_one), (1, false));
        assert_eq!(
            (cfg.dynamic_thresholding_ratio, cfg.sample_max_value),
            (0.9, 3.0)
        );
    }

    #[test]
    fn config_errors_name_file_and_field() {
        let e = err_text(r#"{"beta_start": 0.0001, "skip_prk_steps": true}"#);
        assert!(e.contains("sched/scheduler_config.json"), "{e}");
        assert!(
            e.contains("`skip_prk_steps`") && e.contains("unknown field"),
            "{e}"
        );

        let e = err_text(r#"{"thresholding": true}"#);
        assert!(
            e.contains("scheduler_config.json") && e.contains("`thresholding`"),
            "{e}"
        );

        let e = err_text(r#"{"variance_type": "learned_range"}"#);
        assert!(
            e.contains("`variance_type`") && e.contains("learned_range"),
            "{e}"
        );
        assert!(parse(r#"{"variance_type": "fixed_large_log"}"#).is_err());

        let e = err_text(r#"{"beta_schedule": "sigmoid"}"#);
        assert!(e.contains("`beta_schedule`"), "{e}");
        let e = err_text(r#"{"prediction_type": "v-prediction"}"#);
        assert!(e.contains("`prediction_type`"), "{e}");
        let e = err_text(r#"{"timestep_spacing": "karras"}"#);
        assert!(e.contains("`timestep_spacing`"), "{e}");
        let e = err_text(r#"{"num_train_timesteps": 0}"#);
        assert!(e.contains("`num_train_timesteps`"), "{e}");
        let e = err_text(r#"{"steps_offset": -1}"#);
        assert!(e.contains("`steps_offset`"), "{e}");
        let e = err_text(r#"{"beta_end": 1.5}"#);
        assert!(e.contains("`beta_end`"), "{e}");
        let e = err_text(r#"{"beta_start": 0}"#);
        assert!(e.contains("`beta_start`"), "{e}");
        let e = err_text(r#"{"clip_sample": "yes"}"#);
        assert!(e.contains("`clip_sample`"), "{e}");
        let e = err_text(r#"{"clip_sample_range": 0}"#);
        assert!(e.contains("`clip_sample_range`"), "{e}");
        let e = err_text(r#"{"trained_betas": "none"}"#);
        assert!(e.contains("`trained_betas`"), "{e}");
        let e = err_text("[1, 2]");
        assert!(e.contains("scheduler_config.json"), "{e}");
        let e = ScheduleConfig::from_file(Path::new("/nonexistent/scheduler_config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/scheduler_config.json"), "{e}");
    }

    #[test]
    fn dpm_solver_keys_and_defaults() {
        // absent timestep_spacing: DDIM/DDPM take leading, DPM-Solver++ linspace (diffusers)
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Leading);
        assert_eq!(cfg.dpm_solver, DpmSolverConfig::default());
        assert_eq!(cfg.dpm_solver.timestep_spacing, TimestepSpacing::Linspace);
        let cfg = parse(r#"{"timestep_spacing": "trailing"}"#).unwrap();
        assert_eq!(cfg.dpm_solver.timestep_spacing, TimestepSpacing::Trailing);
        // a full DPMSolverMultistepScheduler file as Python writes it (bare -Infinity)
        let cfg = parse(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
                "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                "dynamic_thresholding_ratio": 0.995, "euler_at_final": true,
                "final_sigmas_type": "zero", "flow_shift": 1.0, "lambda_min_clipped": -Infinity,
                "lower_order_final": false, "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "rescale_betas_zero_snr": false,
                "sample_max_value": 1.0, "solver_order": 1, "solver_type": "midpoint",
                "steps_offset": 0, "thresholding": false, "time_shift_type": "exponential",
                "timestep_spacing": "linspace", "trained_betas": null, "use_beta_sigmas": false,
                "use_dynamic_shifting": false, "use_exponential_sigmas": false,
                "use_flow_sigmas": false, "use_karras_sigmas": false, "use_lu_lambdas": false,
                "variance_type": null}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.dpm_solver,
            DpmSolverConfig {
                timestep_spacing: TimestepSpacing::Linspace,
                solver_order: 1,
                lower_order_final: false,
                euler_at_final: true,
            }
        );
        assert_eq!(cfg.variance_type, VarianceType::FixedSmall);
    }

    #[test]
    fn unsupported_dpm_solver_values_name_the_field() {
        for (json, field) in [
            (r#"{"algorithm_type": "sde-dpmsolver++"}"#, "algorithm_type"),
            (r#"{"algorithm_type": "dpmsolver"}"#, "algorithm_type"),
            (r#"{"solver_order": 3}"#, "solver_order"),
            (r#"{"solver_order": 0}"#, "solver_order"),
            (r#"{"solver_type": "heun"}"#, "solver_type"),
            (r#"{"final_sigmas_type": "sigma_min"}"#, "final_sigmas_type"),
            (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
            (
                r#"{"use_exponential_sigmas": true}"#,
                "use_exponential_sigmas",
            ),
            (r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
            (r#"{"use_lu_lambdas": true}"#, "use_lu_lambdas"),
            (r#"{"use_flow_sigmas": true}"#, "use_flow_sigmas"),
            (r#"{"use_dynamic_shifting": true}"#, "use_dynamic_shifting"),
            (r#"{"lambda_min_clipped": -5.1}"#, "lambda_min_clipped"),
            (r#"{"lambda_min_clipped": Infinity}"#, "lambda_min_clipped"),
            (r#"{"beta_start": NaN}"#, "beta_start"),
            (r#"{"beta_end": -Infinity}"#, "beta_end"),
        ] {
            let e = err_text(json);
            assert!(
                e.contains(&format!("`{field}`")) && e.contains("scheduler_config.json"),
                "{json}: {e}"
            );
        }
        let e = err_text(r#"{"use_karras_sigmas": true}"#);
        assert!(e.contains("not supported"), "{e}");
        let e = err_text(r#"{"solver_order": 3}"#);
        assert!(e.contains("supported: 1, 2"), "{e}");
    }

    #[test]
    fn python_constants_are_quoted_outside_strings_only() {
        assert_eq!(
            quote_python_constants(
                r#"{"a": -Infinity, "b": [NaN, Infinity], "c": "x NaN \" -Infinity"}"#
            ),
            r#"{"a": "-Infinity", "b": ["NaN", "Infinity"], "c": "x NaN \" -Infinity"}"#
        );
        assert!(matches!(
            quote_python_constants(r#"{"a": 1}"#),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn dpm_solver_timesteps_by_spacing() {
        let with = |spacing, offset| ScheduleConfig {
            steps_offset: offset,
            dpm_solver: DpmSolverConfig {
                timestep_spacing: spacing,
                ..Default::default()
            },
            ..Default::default()
        };
        // linspace: round(linspace(0, 999, n + 1)) reversed, 0 dropped
        let cfg = with(TimestepSpacing::Linspace, 0);
        assert_eq!(
            cfg.dpm_solver_timesteps(10).unwrap(),
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(cfg.dpm_solver_timesteps(1).unwrap(), vec![999]);
        assert_eq!(cfg.dpm_solver_timesteps(999).unwrap()[998], 1);
        // leading: ratio 1000 div (n + 1), 0 dropped, then the offset
        let cfg = with(TimestepSpacing::Leading, 1);
        assert_eq!(
            cfg.dpm_solver_timesteps(10).unwrap(),
            vec![901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
        );
        // trailing: DDIM's
        let cfg = with(TimestepSpacing::Trailing, 1);
        assert_eq!(
            cfg.dpm_solver_timesteps(10).unwrap(),
            with_spacing(TimestepSpacing::Trailing)
                .inference_timesteps(10)
                .unwrap()
        );
        assert!(cfg.dpm_solver_timesteps(61).is_err());
        // diffusers repeats timesteps here (ratio 1000 div 1001 = 0, linspace steps < 1)
        let e = with(TimestepSpacing::Leading, 0)
            .dpm_solver_timesteps(1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not strictly decreasing"), "{e}");
        assert!(with(TimestepSpacing::Linspace, 0)
            .dpm_solver_timesteps(1000)
            .is_err());
        assert!(matches!(
            cfg.dpm_solver_timesteps(0),
            Err(SchedError::Steps { steps: 0, .. })
        ));
    }
}
