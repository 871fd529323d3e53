//! DDIM (Song et al. 2020), as diffusers' `DDIMScheduler` computes it.

use candle_core::Tensor;

use crate::config::ScheduleConfig;
use crate::error::{Result, SchedError};
use crate::scheduler::{
    check_alpha_positive, check_std, clip, noise_like, output_derivatives, predict_x0_eps,
    Scheduler, StepOutput, StepTerms,
};

/// The f64 coefficients of one DDIM step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    pub timestep: usize,
    /// The timestep stepped to; negative after the end of the schedule (see [`Ddim`]).
    pub prev_timestep: i64,
    pub alpha_prod_t: f64,
    pub alpha_prod_t_prev: f64,
    /// σₜ = η·√((1−ᾱₜ₋₁)/(1−ᾱₜ)·(1−ᾱₜ/ᾱₜ₋₁)).
    pub std_dev: f64,
    /// √(1 − ᾱₜ₋₁ − σₜ²), the weight of ε in the "direction pointing to xₜ".
    pub direction: f64,
}

/// DDIM sampler over `num_inference_steps` timesteps.
///
/// diffusers quirk, reproduced: the step goes from `t` to `t − T div n` whatever the
/// `timestep_spacing`. With `leading` spacing that is the next timestep of the list; with
/// `trailing` or `linspace` it may not be (T=1000, n=3, trailing: timesteps 999, 666, 332 but
/// the step from 666 lands on 333; linspace n=10: 999 steps to 899, the next timestep is 888).
/// When `t − T div n < 0`, ᾱₜ₋₁ is 1 with `set_alpha_to_one`, else ᾱ₀.
/// `use_clipped_model_output` is false: ε is never recomputed from the clipped x₀.
#[derive(Debug, Clone)]
pub struct Ddim {
    cfg: ScheduleConfig,
    eta: f64,
    timesteps: Vec<usize>,
    coefs: Vec<DdimCoefficients>,
}

impl Ddim {
    pub fn new(cfg: &ScheduleConfig, num_inference_steps: usize, eta: f64) -> Result<Self> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(SchedError::Invalid(format!(
                "DDIM eta must be a finite number ≥ 0, got {eta}"
            )));
        }
        let timesteps = cfg.inference_timesteps(num_inference_steps)?;
        let acp = cfg.alphas_cumprod();
        let final_alpha = if cfg.set_alpha_to_one { 1.0 } else { acp[0] };
        let ratio = (cfg.num_train_timesteps / num_inference_steps) as i64;
        let mut coefs = Vec::with_capacity(timesteps.len());
        for &t in &timesteps {
            let prev = t as i64 - ratio;
            let a_t = acp[t];
            check_alpha_positive(cfg, "DDIM", t, a_t)?;
            let a_prev = if prev >= 0 {
                acp[prev as usize]
            } else {
                final_alpha
            };
            let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
            let std_dev = eta * variance.sqrt();
            let dir2 = 1.0 - a_prev - std_dev * std_dev;
            // Mathematically ≥ 0 for eta ≤ 1; tolerate rounding, refuse a real negative.
            if dir2 < -1e-12 {
                return Err(SchedError::Invalid(format!(
                    "DDIM eta = {eta} is too large at timestep {t}: 1 - alpha_prev - sigma^2 = \
                     {dir2} < 0 (diffusers would produce NaN)"
                )));
            }
            coefs.push(DdimCoefficients {
                timestep: t,
                prev_timestep: prev,
                alpha_prod_t: a_t,
                alpha_prod_t_prev: a_prev,
                std_dev,
                direction: dir2.max(0.0).sqrt(),
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            eta,
            timesteps,
            coefs,
        })
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The coefficients of step `index`.
    pub fn coefficients(&self, index: usize) -> Option<&DdimCoefficients> {
        self.coefs.get(index)
    }
}

impl Scheduler for Ddim {
    fn name(&self) -> &'static str {
        "DDIM"
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, index: usize) -> bool {
        // diffusers draws noise at every step when eta > 0 (at the last step σ may be 0).
        index < self.timesteps.len() && self.eta > 0.0
    }

    fn step_terms(&self, index: usize) -> Result<StepTerms> {
        let c = self.coefs.get(index).ok_or(SchedError::StepIndex {
            index,
            len: self.coefs.len(),
        })?;
        // x_{t−1} = √ᾱ_{t−1}·x₀ + dir·ε + σz, with x₀ and ε affine in the output.
        let (dx0, deps) = output_derivatives(self.cfg.prediction_type, c.alpha_prod_t);
        Ok(StepTerms {
            timestep: c.timestep,
            alpha_prod_t: c.alpha_prod_t,
            std_dev: c.std_dev,
            output_weight: c.alpha_prod_t_prev.sqrt() * dx0 + c.direction * deps,
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
        let (std_dev, direction) = match std_dev {
            None => (c.std_dev, c.direction),
            Some(s) => {
                check_std("DDIM", index, s)?;
                let dir2 = 1.0 - c.alpha_prod_t_prev - s * s;
                if dir2 < -1e-12 {
                    return Err(SchedError::Invalid(format!(
                        "DDIM step {index}: noise standard deviation {s} exceeds \
                         √(1 − ᾱ_prev) = {}",
                        (1.0 - c.alpha_prod_t_prev).sqrt()
                    )));
                }
                (s, dir2.max(0.0).sqrt())
            }
        };
        let (x0, eps) = predict_x0_eps(
            self.cfg.prediction_type,
            c.alpha_prod_t,
            model_output,
            sample,
        )?;
        let x0 = clip(&self.cfg, x0)?;
        let mut prev =
            (x0.affine(c.alpha_prod_t_prev.sqrt(), 0.0)? + eps.affine(direction, 0.0)?)?;
        // The scheduled step draws noise whenever eta > 0 (diffusers); a replacement σ > 0 at
        // eta = 0 needs noise too.
        if self.needs_noise(index) || std_dev > 0.0 {
            let noise = noise.ok_or(SchedError::MissingNoise {
                sampler: "DDIM",
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
    use candle_core::DType;

    use crate::test_util::{acp, close, t, v, E, N, X};

    /// The DDIM update written out in full, independently of the implementation.
    fn ddim_by_hand(
        a_t: f64,
        a_prev: f64,
        eta: f64,
        clip: Option<f64>,
        x: &[f64],
        e: &[f64],
        n: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt();
        let mut prev = Vec::new();
        let mut x0s = Vec::new();
        for i in 0..x.len() {
            let mut x0 = (x[i] - (1.0 - a_t).sqrt() * e[i]) / a_t.sqrt();
            if let Some(r) = clip {
                x0 = x0.clamp(-r, r);
            }
            let p =
                a_prev.sqrt() * x0 + (1.0 - a_prev - sigma * sigma).sqrt() * e[i] + sigma * n[i];
            prev.push(p);
            x0s.push(x0);
        }
        (prev, x0s)
    }

    #[test]
    fn eta_zero_step_matches_formula() {
        let cfg = ScheduleConfig {
            clip_sample: false,
            ..Default::default()
        };
        let d = Ddim::new(&cfg, 10, 0.0).unwrap();
        assert_eq!(d.timesteps()[2], 700);
        assert!(!d.needs_noise(2));
        // index 2: t = 700 → 600
        let out = d.step(2, &t(&E), &t(&X), None).unwrap();
        let (prev, x0) = ddim_by_hand(acp(700), acp(600), 0.0, None, &X, &E, &[0.0; 4]);
        close(&v(&out.prev_sample), &prev, 1e-12);
        close(&v(&out.pred_original_sample), &x0, 1e-12);
    }

    #[test]
    fn eta_one_step_matches_formula_and_needs_noise() {
        let cfg = ScheduleConfig::default(); // clip_sample = true, range 1
        let d = Ddim::new(&cfg, 10, 1.0).unwrap();
        assert!(d.needs_noise(0) && d.needs_noise(9));
        let out = d.step(2, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        let (prev, x0) = ddim_by_hand(acp(700), acp(600), 1.0, Some(1.0), &X, &E, &N);
        close(&v(&out.prev_sample), &prev, 1e-12);
        close(&v(&out.pred_original_sample), &x0, 1e-12);
        // the clip is active for this input (|x0| > 1 somewhere), so the test covers it
        let unclipped = ddim_by_hand(acp(700), acp(600), 1.0, None, &X, &E, &N).1;
        assert!(unclipped.iter().any(|x| x.abs() > 1.0));
        // missing noise is an error, not a silent deterministic step
        assert!(matches!(
            d.step(2, &t(&E), &t(&X), None),
            Err(SchedError::MissingNoise { index: 2, .. })
        ));
    }

    #[test]
    fn last_step_uses_final_alpha() {
        // set_alpha_to_one = true: ᾱ_prev = 1 after t = 0 → prev = x0 exactly, for any eta
        let cfg = ScheduleConfig {
            clip_sample: false,
            ..Default::default()
        };
        let d = Ddim::new(&cfg, 10, 0.5).unwrap();
        let c = d.coefficients(9).unwrap();
        assert_eq!((c.timestep, c.prev_timestep), (0, -100));
        assert_eq!(c.alpha_prod_t_prev, 1.0);
        assert_eq!(c.std_dev, 0.0);
        let out = d.step(9, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        close(&v(&out.prev_sample), &v(&out.pred_original_sample), 1e-12);

        // set_alpha_to_one = false: ᾱ_prev = ᾱ₀
        let cfg = ScheduleConfig {
            clip_sample: false,
            set_alpha_to_one: false,
            ..Default::default()
        };
        let d = Ddim::new(&cfg, 10, 0.0).unwrap();
        assert_eq!(d.coefficients(9).unwrap().alpha_prod_t_prev, acp(0));
        let out = d.step(9, &t(&E), &t(&X), None).unwrap();
        // t = 0 and ᾱ_prev = ᾱ₀ = ᾱₜ: the step returns the sample unchanged
        close(&v(&out.prev_sample), &X, 1e-12);
        let (prev, _) = ddim_by_hand(acp(0), acp(0), 0.0, None, &X, &E, &[0.0; 4]);
        close(&v(&out.prev_sample), &prev, 1e-12);
    }

    #[test]
    fn steps_offset_shifts_timesteps_and_alphas() {
        let cfg = ScheduleConfig {
            clip_sample: false,
            steps_offset: 1,
            set_alpha_to_one: false,
            ..Default::default()
        };
        let d = Ddim::new(&cfg, 10, 0.0).unwrap();
        assert_eq!(
            d.timesteps(),
            &[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        let c = d.coefficients(2).unwrap();
        assert_eq!((c.timestep, c.prev_timestep), (701, 601));
        let out = d.step(2, &t(&E), &t(&X), None).unwrap();
        let (prev, _) = ddim_by_hand(acp(701), acp(601), 0.0, None, &X, &E, &[0.0; 4]);
        close(&v(&out.prev_sample), &prev, 1e-12);
        // last step: t = 1 → −99 → ᾱ₀ (set_alpha_to_one = false, as Stable Diffusion)
        assert_eq!(d.coefficients(9).unwrap().alpha_prod_t_prev, acp(0));
    }

    #[test]
    fn prev_timestep_is_t_minus_ratio_even_for_trailing() {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..Default::default()
        };
        let d = Ddim::new(&cfg, 3, 0.0).unwrap();
        assert_eq!(d.timesteps(), &[999, 666, 332]);
        let prevs: Vec<i64> = (0..3)
            .map(|i| d.coefficients(i).unwrap().prev_timestep)
            .collect();
        assert_eq!(prevs, vec![666, 333, -1]);
    }

    #[test]
    fn v_prediction_and_sample_prediction() {
        let (a_t, a_prev) = (acp(500), acp(400));
        let sa = a_t.sqrt();
        let sb = (1.0 - a_t).sqrt();
        for pt in [PredictionType::VPrediction, PredictionType::Sample] {
            let cfg = ScheduleConfig {
                clip_sample: false,
                prediction_type: pt,
                ..Default::default()
            };
            let d = Ddim::new(&cfg, 10, 0.0).unwrap();
            assert_eq!(d.timesteps()[4], 500);
            let out = d.step(4, &t(&E), &t(&X), None).unwrap();
            let (x0, eps): (Vec<f64>, Vec<f64>) = match pt {
                PredictionType::VPrediction => (0..4)
                    .map(|i| (sa * X[i] - sb * E[i], sa * E[i] + sb * X[i]))
                    .unzip(),
                _ => (0..4).map(|i| (E[i], (X[i] - sa * E[i]) / sb)).unzip(),
            };
            let prev: Vec<f64> = (0..4)
                .map(|i| a_prev.sqrt() * x0[i] + (1.0 - a_prev).sqrt() * eps[i])
                .collect();
            close(&v(&out.pred_original_sample), &x0, 1e-12);
            close(&v(&out.prev_sample), &prev, 1e-12);
        }
    }

    #[test]
    fn f32_arithmetic_stays_f32_and_accepts_f32_noise_for_f64() {
        let cfg = ScheduleConfig::default();
        let d = Ddim::new(&cfg, 10, 1.0).unwrap();
        let x = t(&X).to_dtype(DType::F32).unwrap();
        let e = t(&E).to_dtype(DType::F32).unwrap();
        let n = t(&N).to_dtype(DType::F32).unwrap();
        let out = d.step(3, &e, &x, Some(&n)).unwrap();
        assert_eq!(out.prev_sample.dtype(), DType::F32);
        // f64 sample, f32 noise: the noise is converted
        let out64 = d.step(3, &t(&E), &t(&X), Some(&n)).unwrap();
        assert_eq!(out64.prev_sample.dtype(), DType::F64);
        let a = out.prev_sample.to_dtype(DType::F64).unwrap();
        close(&v(&a), &v(&out64.prev_sample), 1e-5);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let cfg = ScheduleConfig::default();
        assert!(matches!(
            Ddim::new(&cfg, 0, 0.0),
            Err(SchedError::Steps {
                steps: 0,
                train: 1000
            })
        ));
        assert!(matches!(
            Ddim::new(&cfg, 1001, 0.0),
            Err(SchedError::Steps { steps: 1001, .. })
        ));
        assert!(Ddim::new(&cfg, 1000, 0.0).is_ok());
        assert!(Ddim::new(&cfg, 10, -0.1).is_err());
        assert!(Ddim::new(&cfg, 10, f64::NAN).is_err());
        let d = Ddim::new(&cfg, 10, 0.0).unwrap();
        assert!(matches!(
            d.step(10, &t(&E), &t(&X), None),
            Err(SchedError::StepIndex { index: 10, len: 10 })
        ));
        // steps_offset pushing the first timestep past the schedule
        let cfg = ScheduleConfig {
            steps_offset: 1,
            ..Default::default()
        };
        assert!(matches!(
            Ddim::new(&cfg, 1000, 0.0),
            Err(SchedError::Invalid(_))
        ));
    }
}
