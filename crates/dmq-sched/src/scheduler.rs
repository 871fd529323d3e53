//! The scheduler interface shared by DDIM, DDPM and DPM-Solver++, and the prediction-type
//! conversions.

use candle_core::Tensor;

use crate::config::{PredictionType, ScheduleConfig};
use crate::ddim::Ddim;
use crate::ddpm::Ddpm;
use crate::dpm::DpmSolverPp;
use crate::error::{Result, SchedError};

/// The result of one denoising step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// x at the next (less noisy) timestep: the next input of the denoiser.
    pub prev_sample: Tensor,
    /// The scheduler's estimate of x₀ at this step (after clipping, if the config clips).
    pub pred_original_sample: Tensor,
}

/// The scalars of one step that a correction of the model output needs (PTQD's variance schedule
/// calibration, [`crate::correction`]): ᾱₜ, the standard deviation of the gaussian noise the step
/// adds, and the weight of the model output in x_{t−1}.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTerms {
    pub timestep: usize,
    /// ᾱ at this step's timestep.
    pub alpha_prod_t: f64,
    /// σₜ of the added noise as scheduled (0 when the step adds none, e.g. DDIM with eta 0 or
    /// DDPM at t = 0).
    pub std_dev: f64,
    /// ∂x_{t−1}/∂(model output), elementwise, of the step without x₀ clipping: an error of
    /// variance v in the model output adds `output_weight² · v` to the variance of x_{t−1}.
    /// The sign is kept (it is negative for ε prediction) but only its square matters.
    pub output_weight: f64,
}

/// A sampler over a fixed list of timesteps, stepped by index into that list.
///
/// Steps are addressed by their index `0..timesteps().len()` (0 is the noisiest), not by the
/// timestep value: quantization keeps per-step parameters keyed by this index.
///
/// DDIM and DDPM steps are independent of each other. A multistep solver (DPM-Solver++)
/// remembers the previous step's prediction: its steps must run in order from index 0, each on
/// the sample the step before returned, one trajectory at a time per scheduler (it returns an
/// error otherwise). [`crate::sample`] and [`crate::sample_guided`] do exactly that.
pub trait Scheduler: Send + Sync {
    /// "DDIM", "DDPM" or "DPM-Solver++", for messages.
    fn name(&self) -> &'static str;

    /// The timesteps the denoiser is called at, from noisiest to cleanest.
    fn timesteps(&self) -> &[usize];

    /// Whether step `index` adds gaussian noise (and so needs a `noise` tensor in [`step`]).
    ///
    /// [`step`]: Scheduler::step
    fn needs_noise(&self, index: usize) -> bool;

    /// One step from `sample` (x at `timesteps()[index]`) given the denoiser's `model_output`.
    ///
    /// `noise` must be a standard-normal tensor of the sample's shape when
    /// [`needs_noise`](Scheduler::needs_noise) is true for `index` (it is converted to the
    /// sample's dtype if it differs); it is ignored otherwise.
    fn step(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<StepOutput> {
        self.step_with_std(index, model_output, sample, noise, None)
    }

    /// The scalars of step `index` that output corrections need (see [`StepTerms`]).
    fn step_terms(&self, index: usize) -> Result<StepTerms>;

    /// [`step`](Scheduler::step) with the standard deviation of the added noise replaced by
    /// `std_dev` (`None`: the scheduled one, bit for bit what `step` computes). This is how
    /// variance schedule calibration lowers the sampler's own noise; for DDIM the replaced σ
    /// also enters the direction term √(1 − ᾱ_{t−1} − σ²), as in PTQD's reference sampler.
    ///
    /// A replacement `std_dev` must be finite, ≥ 0 and (DDIM) at most √(1 − ᾱ_{t−1}). Noise is
    /// needed whenever the step adds noise with the σ used, and a replacement never makes a
    /// step that adds no noise (DDPM at t = 0) add some.
    fn step_with_std(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
        std_dev: Option<f64>,
    ) -> Result<StepOutput>;
}

/// Checks a replacement standard deviation given to [`Scheduler::step_with_std`].
pub(crate) fn check_std(sampler: &str, index: usize, std_dev: f64) -> Result<()> {
    if !(std_dev.is_finite() && std_dev >= 0.0) {
        return Err(SchedError::Invalid(format!(
            "{sampler} step {index}: the noise standard deviation must be finite and ≥ 0, got {std_dev}"
        )));
    }
    Ok(())
}

/// ∂x₀/∂(model output) and ∂ε/∂(model output) of [`predict_x0_eps`] at ᾱₜ = `alpha_prod_t`
/// (both conversions are affine in the output).
pub(crate) fn output_derivatives(prediction_type: PredictionType, alpha_prod_t: f64) -> (f64, f64) {
    let sa = alpha_prod_t.sqrt();
    let sb = (1.0 - alpha_prod_t).sqrt();
    match prediction_type {
        PredictionType::Epsilon => (-sb / sa, 1.0),
        PredictionType::Sample => (1.0, -sa / sb),
        PredictionType::VPrediction => (-sb, sa),
    }
}

/// Which sampler to build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// DDIM with noise weight `eta` (0: deterministic, 1: DDPM-like variance).
    Ddim { eta: f64 },
    /// DDPM ancestral sampling with the config's `variance_type`.
    Ddpm,
    /// DPM-Solver++ multistep (deterministic), with the config's `DPMSolverMultistepScheduler`
    /// settings ([`crate::DpmSolverConfig`]: order 2, midpoint, final σ = 0 by default).
    DpmSolverPp,
}

impl SamplerKind {
    /// The name used on the command line and in protocol records: `ddim`, `ddpm`,
    /// `dpm-solver++`.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerKind::Ddim { .. } => "ddim",
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::DpmSolverPp => "dpm-solver++",
        }
    }

    /// The timestep spacing this sampler uses with `cfg` (DPM-Solver++ defaults to `linspace`
    /// when the file has no `timestep_spacing`, DDIM and DDPM to `leading`).
    pub fn timestep_spacing(&self, cfg: &ScheduleConfig) -> crate::config::TimestepSpacing {
        match self {
            SamplerKind::DpmSolverPp => cfg.dpm_solver.timestep_spacing,
            _ => cfg.timestep_spacing,
        }
    }
}

/// Builds the sampler `kind` for `steps` inference steps.
pub fn build(kind: SamplerKind, cfg: &ScheduleConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SamplerKind::Ddim { eta } => Box::new(Ddim::new(cfg, steps, eta)?),
        SamplerKind::Ddpm => Box::new(Ddpm::new(cfg, steps)?),
        SamplerKind::DpmSolverPp => Box::new(DpmSolverPp::new(cfg, steps)?),
    })
}

/// `Err` unless ᾱₜ > 0 at every timestep used: with zero terminal SNR (`rescale_betas_zero_snr`)
/// ᾱ at the last training timestep is exactly 0 and an ε prediction cannot be turned into x₀
/// (diffusers divides by zero there and produces inf/NaN).
pub(crate) fn check_alpha_positive(
    cfg: &ScheduleConfig,
    sampler: &str,
    t: usize,
    alpha_prod_t: f64,
) -> Result<()> {
    if cfg.prediction_type == PredictionType::Epsilon && alpha_prod_t <= 0.0 {
        return Err(SchedError::Invalid(format!(
            "{sampler}: alphas_cumprod[{t}] = {alpha_prod_t} (zero terminal SNR): an epsilon \
             prediction cannot be converted to x0 at this timestep; use a v_prediction or sample \
             model, or a spacing that avoids the last training timestep"
        )));
    }
    Ok(())
}

/// (x₀, ε) predicted from the model output at a timestep with ᾱₜ = `alpha_prod_t`, before any
/// clipping. Arithmetic in the tensors' dtype, scalars in f64.
pub(crate) fn predict_x0_eps(
    prediction_type: PredictionType,
    alpha_prod_t: f64,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let sa = alpha_prod_t.sqrt();
    let sb = (1.0 - alpha_prod_t).sqrt();
    Ok(match prediction_type {
        PredictionType::Epsilon => {
            let x0 = ((sample - model_output.affine(sb, 0.0)?)? / sa)?;
            (x0, model_output.clone())
        }
        PredictionType::Sample => {
            let eps = ((sample - model_output.affine(sa, 0.0)?)? / sb)?;
            (model_output.clone(), eps)
        }
        PredictionType::VPrediction => {
            let x0 = (sample.affine(sa, 0.0)? - model_output.affine(sb, 0.0)?)?;
            let eps = (model_output.affine(sa, 0.0)? + sample.affine(sb, 0.0)?)?;
            (x0, eps)
        }
    })
}

/// Clips x₀ to ±`clip_sample_range` when the config asks for it.
pub(crate) fn clip(cfg: &ScheduleConfig, x0: Tensor) -> Result<Tensor> {
    if cfg.clip_sample {
        let r = cfg.clip_sample_range;
        Ok(x0.clamp(-r, r)?)
    } else {
        Ok(x0)
    }
}

/// `noise` in the dtype of `like`.
pub(crate) fn noise_like(noise: &Tensor, like: &Tensor) -> Result<Tensor> {
    if noise.dtype() == like.dtype() {
        Ok(noise.clone())
    } else {
        Ok(noise.to_dtype(like.dtype())?)
    }
}
