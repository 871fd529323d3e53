//! DDPM ancestral sampling (Ho et al. 2020), as diffusers' `DDPMScheduler` computes it.

use candle_core::Tensor;

use crate::config::{ScheduleConfig, VarianceType};
use crate::error::{Result, SchedError};
use crate::scheduler::{
    check_alpha_positive, check_std, clip, noise_like, output_derivatives, predict_x0_eps,
    Scheduler, StepOutput, StepTerms,
};

/// The f64 coefficients of one DDPM step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdpmCoefficients {
    pub timestep: usize,
    /// The next timestep of the list, −1 after the last.
    pub prev_timestep: i64,
    pub alpha_prod_t: f64,
    pub alpha_prod_t_prev: f64,
    /// Weight of x₀ in the posterior mean: √ᾱₜ₋₁·β′ₜ/(1−ᾱₜ), with β′ₜ = 1 − ᾱₜ/ᾱₜ₋₁.
    pub x0_coef: f64,
    /// Weight of xₜ in the posterior mean: √(1−β′ₜ)·(1−ᾱₜ₋₁)/(1−ᾱₜ).
    pub sample_coef: f64,
    /// Standard deviation of the added noise (per `variance_type`).
    pub std_dev: f64,
    /// diffusers adds noise when t > 0.
    pub adds_noise: bool,
}

/// DDPM sampler over `num_inference_steps` timesteps.
///
/// Unlike DDIM, a step goes to the next timestep of the list (−1, i.e. ᾱₜ₋₁ = 1, after the last),
/// and β′ₜ = 1 − ᾱₜ/ᾱₜ₋₁ is the beta of that (possibly multi-timestep) jump. Noise is added
/// whenever t > 0, which includes the last step of `trailing` spacing (t = T/n − 1) and of
/// `leading` spacing with `steps_offset` > 0 — as in diffusers.
#[derive(Debug, Clone)]
pub struct Ddpm {
    cfg: ScheduleConfig,
    timesteps: Vec<usize>,
    coefs: Vec<DdpmCoefficients>,
}

impl Ddpm {
    pub fn new(cfg: &ScheduleConfig, num_inference_steps: usize) -> Result<Self> {
        let timesteps = cfg.inference_timesteps(num_inference_steps)?;
        let acp = cfg.alphas_cumprod();
        let mut coefs = Vec::with_capacity(timesteps.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let prev = timesteps.get(i + 1).map_or(-1, |&p| p as i64);
            let a_t = acp[t];
            check_alpha_positive(cfg, "DDPM", t, a_t)?;
            let a_prev = if prev >= 0 { acp[prev as usize] } else { 1.0 };
            let beta_prod_t = 1.0 - a_t;
            let beta_prod_prev = 1.0 - a_prev;
            let cur_alpha = a_t / a_prev;
            let cur_beta = 1.0 - cur_alpha;
            let variance = match cfg.variance_type {
                // diffusers clamps at 1e-20 (it may take a log); fixed_small_log is
                // exp(½·log v) = √v, the same standard deviation.
                VarianceType::FixedSmall | VarianceType::FixedSmallLog => {
                    (beta_prod_prev / beta_prod_t * cur_beta).max(1e-20)
                }
                VarianceType::FixedLarge => cur_beta,
            };
            coefs.push(DdpmCoefficients {
                timestep: t,
                prev_timestep: prev,
                alpha_prod_t: a_t,
                alpha_prod_t_prev: a_prev,
                x0_coef: a_prev.sqrt() * cur_beta / beta_prod_t,
                sample_coef: cur_alpha.sqrt() * beta_prod_prev / beta_prod_t,
                std_dev: variance.sqrt(),
                adds_noise: t > 0,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            timesteps,
            coefs,
        })
    }

    /// The coefficients of step `index`.
    pub fn coefficients(&self, index: usize) -> Option<&DdpmCoefficients> {
        self.coefs.get(index)
    }
}

impl Scheduler for Ddpm {
    fn name(&self) -> &'static str {
        "DDPM"
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, index: usize) -> bool {
        self.coefs.get(index).is_some_and(|c| c.adds_noise)
    }

    fn step_terms(&self, index: usize) -> Result<StepTerms> {
        let c = self.coefs.get(index).ok_or(SchedError::StepIndex {
            index,
            len: self.coefs.len(),
        })?;
        // x_{t−1} = x0_coef·x₀ + sample_coef·xₜ + σz: only x₀ depends on the output.
        let (dx0, _) = output_derivatives(self.cfg.prediction_type, c.alpha_prod_t);
        Ok(StepTerms {
            timestep: c.timestep,
            alpha_prod_t: c.alpha_prod_t,
            std_dev: if c.adds_noise { c.std_dev } else { 0.0 },
            output_weight: c.x0_coef * dx0,
        })
    }

    fn step_with_std(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
        std_dev: Option<f64>,
    ) -> Result<StepOutput> {
        let c = self.coefs.get(index).ok_or(SchedError::StepIndex {
            index,
            len: self.coefs.len(),
        })?;
        if let Some(s) = std_dev {
            check_std("DDPM", index, s)?;
        }
        let std_dev = std_dev.unwrap_or(c.std_dev);
        let (x0, _) = predict_x0_eps(
            self.cfg.prediction_type,
            c.alpha_prod_t,
            model_output,
            sample,
        )?;
        let x0 = clip(&self.cfg, x0)?;
        let mut prev = (x0.affine(c.x0_coef, 0.0)? + sample.affine(c.sample_coef, 0.0)?)?;
        if c.adds_noise {
            let noise = noise.ok_or(SchedError::MissingNoise {
                sampler: "DDPM",
                index,
                timestep: c.timestep,
            })?;
            prev = (prev + noise_like(noise, sample)?.affine(std_dev, 0.0)?)?;
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PredictionType, TimestepSpacing};

    use crate::test_util::{acp, close, t, v, E, N, X};

    /// Posterior mean and std written out by hand for a jump t → p (p < 0: ᾱ = 1).
    fn ddpm_by_hand(t: usize, p: i64, large: bool, clip: bool, pred: PredictionType) -> Vec<f64> {
        let a_t = acp(t);
        let a_p = if p >= 0 { acp(p as usize) } else { 1.0 };
        let beta_jump = 1.0 - a_t / a_p;
        let var = if large {
            beta_jump
        } else {
            ((1.0 - a_p) / (1.0 - a_t) * beta_jump).max(1e-20)
        };
        (0..4)
            .map(|i| {
                let mut x0 = match pred {
                    PredictionType::Epsilon => (X[i] - (1.0 - a_t).sqrt() * E[i]) / a_t.sqrt(),
                    PredictionType::Sample => E[i],
                    PredictionType::VPrediction => a_t.sqrt() * X[i] - (1.0 - a_t).sqrt() * E[i],
                };
                if clip {
                    x0 = x0.clamp(-1.0, 1.0);
                }
                // μ̃ = √ᾱₚ β′/(1−ᾱₜ) x₀ + √(1−β′) (1−ᾱₚ)/(1−ᾱₜ) xₜ
                let mean = a_p.sqrt() * beta_jump / (1.0 - a_t) * x0
                    + (1.0 - beta_jump).sqrt() * (1.0 - a_p) / (1.0 - a_t) * X[i];
                mean + if t > 0 { var.sqrt() * N[i] } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn posterior_mean_and_fixed_small_variance() {
        let cfg = ScheduleConfig::default();
        let d = Ddpm::new(&cfg, 10).unwrap();
        assert_eq!(d.timesteps()[3], 600);
        let c = d.coefficients(3).unwrap();
        assert_eq!(c.prev_timestep, 500);
        // fixed_small std is the posterior std of the 600 → 500 jump
        let bj = 1.0 - acp(600) / acp(500);
        let var = (1.0 - acp(500)) / (1.0 - acp(600)) * bj;
        assert!((c.std_dev - var.sqrt()).abs() < 1e-15);
        let out = d.step(3, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        let want = ddpm_by_hand(600, 500, false, true, PredictionType::Epsilon);
        close(&v(&out.prev_sample), &want, 1e-12);
        // without noise, the result is the posterior mean: check it separately
        let mean_only: Vec<f64> = v(&out.prev_sample)
            .iter()
            .zip(N)
            .map(|(p, n)| p - c.std_dev * n)
            .collect();
        let x0 = v(&out.pred_original_sample);
        for i in 0..4 {
            let m = c.x0_coef * x0[i] + c.sample_coef * X[i];
            assert!((m - mean_only[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn fixed_large_variance_is_the_jump_beta() {
        for (vt, large) in [
            (VarianceType::FixedLarge, true),
            (VarianceType::FixedSmallLog, false),
        ] {
            let cfg = ScheduleConfig {
                variance_type: vt,
                clip_sample: false,
                ..Default::default()
            };
            let d = Ddpm::new(&cfg, 10).unwrap();
            let c = d.coefficients(3).unwrap();
            if large {
                assert!((c.std_dev - (1.0 - acp(600) / acp(500)).sqrt()).abs() < 1e-15);
            }
            let out = d.step(3, &t(&E), &t(&X), Some(&t(&N))).unwrap();
            let want = ddpm_by_hand(600, 500, large, false, PredictionType::Epsilon);
            close(&v(&out.prev_sample), &want, 1e-12);
        }
        // fixed_large and fixed_small differ (the test above would not notice a mix-up otherwise)
        let small = Ddpm::new(&ScheduleConfig::default(), 10).unwrap();
        let large = Ddpm::new(
            &ScheduleConfig {
                variance_type: VarianceType::FixedLarge,
                ..Default::default()
            },
            10,
        )
        .unwrap();
        assert!(
            large.coefficients(3).unwrap().std_dev > small.coefficients(3).unwrap().std_dev * 1.01
        );
    }

    #[test]
    fn last_step_adds_no_noise_at_t0() {
        let cfg = ScheduleConfig::default();
        let d = Ddpm::new(&cfg, 10).unwrap();
        let c = d.coefficients(9).unwrap();
        assert_eq!(
            (c.timestep, c.prev_timestep, c.alpha_prod_t_prev),
            (0, -1, 1.0)
        );
        assert!(!d.needs_noise(9) && d.needs_noise(8));
        // t = 0 → −1: β′ = β₀, mean = x₀ (coefficient 1 on x₀, 0 on xₜ)
        assert!((c.x0_coef - 1.0).abs() < 1e-12 && c.sample_coef.abs() < 1e-15);
        let out = d.step(9, &t(&E), &t(&X), None).unwrap();
        close(
            &v(&out.prev_sample),
            &ddpm_by_hand(0, -1, false, true, PredictionType::Epsilon),
            1e-12,
        );
        // noise at a step that needs it must be given
        assert!(matches!(
            d.step(8, &t(&E), &t(&X), None),
            Err(SchedError::MissingNoise {
                index: 8,
                timestep: 100,
                ..
            })
        ));
    }

    #[test]
    fn trailing_last_step_still_adds_noise() {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            variance_type: VarianceType::FixedLarge,
            clip_sample: false,
            ..Default::default()
        };
        let d = Ddpm::new(&cfg, 10).unwrap();
        assert_eq!(d.timesteps()[9], 99);
        assert!(d.needs_noise(9));
        let c = d.coefficients(9).unwrap();
        assert!((c.std_dev - (1.0 - acp(99)).sqrt()).abs() < 1e-15);
        let out = d.step(9, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        close(
            &v(&out.prev_sample),
            &ddpm_by_hand(99, -1, true, false, PredictionType::Epsilon),
            1e-12,
        );
    }

    #[test]
    fn steps_offset_and_prediction_types() {
        for pt in [PredictionType::Sample, PredictionType::VPrediction] {
            let cfg = ScheduleConfig {
                steps_offset: 1,
                prediction_type: pt,
                ..Default::default()
            };
            let d = Ddpm::new(&cfg, 10).unwrap();
            assert_eq!(d.timesteps()[0], 901);
            assert_eq!(d.coefficients(0).unwrap().prev_timestep, 801);
            assert_eq!(d.timesteps()[9], 1);
            assert!(d.needs_noise(9), "t = 1 > 0 adds noise");
            let out = d.step(0, &t(&E), &t(&X), Some(&t(&N))).unwrap();
            close(
                &v(&out.prev_sample),
                &ddpm_by_hand(901, 801, false, true, pt),
                1e-12,
            );
        }
    }

    #[test]
    fn step_count_errors() {
        let cfg = ScheduleConfig::default();
        assert!(matches!(
            Ddpm::new(&cfg, 0),
            Err(SchedError::Steps { steps: 0, .. })
        ));
        assert!(matches!(
            Ddpm::new(&cfg, 1001),
            Err(SchedError::Steps { .. })
        ));
        let d = Ddpm::new(&cfg, 1000).unwrap();
        assert_eq!(d.timesteps().len(), 1000);
        assert_eq!(d.coefficients(0).unwrap().prev_timestep, 998);
    }
}
