//! Diffusion samplers for dmq: diffusers-exact DDPM, DDIM and DPM-Solver++ (multistep)
//! schedulers read from `scheduler_config.json`, seeded batch-independent noise, and the
//! sampling loop, with a hook for correcting the model output and calibrating the sampler's
//! variance ([`correction`]).
//!
//! The training schedule (betas, ᾱ) is computed in f64; per-step tensor arithmetic runs in the
//! sample's dtype with f64 scalar coefficients.
//!
//! ```no_run
//! # use candle_core::{Device, Tensor};
//! # use dmq_sched::*;
//! # fn unet(x: &Tensor, t: usize) -> candle_core::Result<Tensor> { Ok(x.clone()) }
//! # fn main() -> Result<()> {
//! let cfg = ScheduleConfig::from_file("model/scheduler/scheduler_config.json".as_ref())?;
//! let sched = build(SamplerKind::Ddim { eta: 0.0 }, &cfg, 50)?;
//! let noise = NoiseSource::new(42);
//! let images = [0, 1, 2, 3];
//! let x_t = noise.initial(&images, &[3, 32, 32], &Device::Cpu)?;
//! let x_0 = sample(
//!     &*sched,
//!     x_t,
//!     |x, t, _step| Ok(unet(x, t)?),
//!     |step| Ok(Some(noise.step_noise(step, &images, &[3, 32, 32], &Device::Cpu)?)),
//!     |_step| {},
//! )?;
//! # Ok(()) }
//! ```

mod config;
pub mod correction;
mod ddim;
mod ddpm;
mod dpm;
mod error;
mod guidance;
mod noise;
mod sample;
mod scheduler;
#[cfg(test)]
mod test_util;

pub use config::{
    rescale_zero_terminal_snr, BetaSchedule, DpmSolverConfig, PredictionType, ScheduleConfig,
    TimestepSpacing, VarianceType,
};
pub use correction::{calibrate_variance, corrected_step, OutputCorrection, VarianceCalibration};
pub use ddim::{Ddim, DdimCoefficients};
pub use ddpm::{Ddpm, DdpmCoefficients};
pub use dpm::{DpmSolverCoefficients, DpmSolverPp};
pub use error::{Result, SchedError};
pub use guidance::{sample_guided, CfgOrder, Guidance};
pub use noise::{NoisePurpose, NoiseSource};
pub use sample::{sample, sample_corrected};
pub use scheduler::{build, SamplerKind, Scheduler, StepOutput, StepTerms};
