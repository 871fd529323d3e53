//! The scheduler interface shared by DDIM and DDPM, and the prediction-type conversions.

use candle_core::Tensor;

use crate::config::{PredictionType, ScheduleConfig};
use crate::ddim::Ddim;
use crate::ddpm::Ddpm;
use crate::error::{Result, SchedError};

/// The result of one denoising step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// x at the next (less noisy) timestep: the next input of the denoiser.
    pub prev_sample: Tensor,
    /// The scheduler's estimate of x₀ at this step (after clipping, if the config clips).
    pub pred_original_sample: Tensor,
}

/// A sampler over a fixed list of timesteps, stepped by index into that list.
///
/// Steps are addressed by their index `0..timesteps().len()` (0 is the noisiest), not by the
/// timestep value: quantization keeps per-step parameters keyed by this index.
pub trait Scheduler: Send + Sync {
    /// "DDIM" or "DDPM", for messages.
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
    ) -> Result<StepOutput>;
}

/// Which sampler to build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// DDIM with noise weight `eta` (0: deterministic, 1: DDPM-like variance).
    Ddim { eta: f64 },
    /// DDPM ancestral sampling with the config's `variance_type`.
    Ddpm,
}

/// Builds the sampler `kind` for `steps` inference steps.
pub fn build(kind: SamplerKind, cfg: &ScheduleConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SamplerKind::Ddim { eta } => Box::new(Ddim::new(cfg, steps, eta)?),
        SamplerKind::Ddpm => Box::new(Ddpm::new(cfg, steps)?),
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
