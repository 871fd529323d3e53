//! A general hook for correcting the model output inside the sampling loop, and the variance
//! schedule calibration that goes with it (PTQD, He et al. 2023, §2.3 of
//! `docs/methods/ptqd.md`).
//!
//! A correction sees the denoiser's output at every step and returns what the scheduler steps
//! with (PTQD: `ε̃ = (ε̂ − bias)/(1 + k)`). What it cannot remove, it reports as a residual
//! variance per element of the corrected output; that error reaches `x_{t−1}` with the weight of
//! the output in the update ([`StepTerms::output_weight`], `c_t` in the spec), so it adds
//! `c_t²·v` of variance. Variance schedule calibration takes that much out of the sampler's own
//! gaussian noise, so that the total stays what the schedule prescribes:
//!
//! ```text
//! σ'² = σ² − c²·v    if c²·v < σ²
//! σ'  = 0            otherwise (the residual alone exceeds the scheduled variance)
//! ```
//!
//! This is the DDIM formula of the reference code (`ddim.py:652-660`) and the DDPM formula of the
//! paper (`c² = β²/(α(1−ᾱ))` for ε prediction); for DDIM the new σ' also enters the direction
//! term √(1 − ᾱ_{t−1} − σ'²), as the reference sampler does ([`Scheduler::step_with_std`]).
//!
//! With deterministic sampling (DDIM eta = 0) there is no noise to give up: σ = 0, so σ' = 0 and
//! the calibration is a documented no-op — the step is bit for bit the uncalibrated one. Only the
//! output correction itself acts there.

use candle_core::Tensor;

use crate::error::{Result, SchedError};
use crate::scheduler::{Scheduler, StepOutput, StepTerms};

/// Corrects the denoiser's output before the scheduler steps with it.
pub trait OutputCorrection {
    /// The output the scheduler should use at step `index` (timestep `timestep`) instead of
    /// `output`.
    fn correct(&self, index: usize, timestep: usize, output: &Tensor) -> Result<Tensor>;

    /// Per-element variance of the error left in the corrected output at this step; 0 asks for
    /// no variance calibration.
    fn residual_variance(&self, index: usize, timestep: usize) -> Result<f64>;
}

/// What variance schedule calibration did at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VarianceCalibration {
    /// σ as scheduled.
    pub scheduled_std: f64,
    /// c, the weight of the model output in x_{t−1}.
    pub output_weight: f64,
    /// v, the residual variance of the corrected output.
    pub residual_variance: f64,
    /// c²·v: variance the residual adds to x_{t−1}.
    pub added_variance: f64,
    /// σ' actually used.
    pub std_dev: f64,
    /// The part of `added_variance` the schedule could not absorb (σ' = 0 and c²·v > σ²; all of
    /// it for deterministic steps).
    pub unabsorbed_variance: f64,
}

impl VarianceCalibration {
    /// Whether the step's σ changes at all.
    pub fn is_noop(&self) -> bool {
        self.std_dev == self.scheduled_std
    }
}

/// Variance schedule calibration of one step: σ' from the scheduled σ, the output weight c and
/// the residual variance v (see the module docs). `residual_variance` must be finite and ≥ 0.
/// When c²·v is 0, σ' is σ exactly (not √(σ² − 0), which may differ in the last bit).
pub fn calibrate_variance(
    terms: &StepTerms,
    residual_variance: f64,
) -> Result<VarianceCalibration> {
    if !(residual_variance.is_finite() && residual_variance >= 0.0) {
        return Err(SchedError::Invalid(format!(
            "step at timestep {}: residual variance must be finite and ≥ 0, got {residual_variance}",
            terms.timestep
        )));
    }
    let sigma = terms.std_dev;
    let added = terms.output_weight * terms.output_weight * residual_variance;
    let (std_dev, unabsorbed) = if added == 0.0 {
        (sigma, 0.0)
    } else if added < sigma * sigma {
        ((sigma * sigma - added).sqrt(), 0.0)
    } else {
        (0.0, added - sigma * sigma)
    };
    Ok(VarianceCalibration {
        scheduled_std: sigma,
        output_weight: terms.output_weight,
        residual_variance,
        added_variance: added,
        std_dev,
        unabsorbed_variance: unabsorbed,
    })
}

/// One step of `sched` with `correction` applied: the output is corrected, σ is calibrated for
/// the residual variance, and the step runs with the new σ (with the scheduled one, bit for bit,
/// when calibration changes nothing).
pub fn corrected_step(
    sched: &dyn Scheduler,
    index: usize,
    model_output: &Tensor,
    sample: &Tensor,
    noise: Option<&Tensor>,
    correction: &dyn OutputCorrection,
) -> Result<(StepOutput, VarianceCalibration)> {
    let terms = sched.step_terms(index)?;
    let corrected = correction.correct(index, terms.timestep, model_output)?;
    let cal = calibrate_variance(&terms, correction.residual_variance(index, terms.timestep)?)?;
    let std = (!cal.is_noop()).then_some(cal.std_dev);
    let out = sched.step_with_std(index, &corrected, sample, noise, std)?;
    Ok((out, cal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PredictionType, ScheduleConfig};
    use crate::ddim::Ddim;
    use crate::ddpm::Ddpm;
    use crate::test_util::{acp, close, t, v, E, N, X};

    fn no_clip() -> ScheduleConfig {
        ScheduleConfig {
            clip_sample: false,
            ..Default::default()
        }
    }

    /// DDPM, spec §2.3: the residual of ε̃ enters x_{t−1} with weight β/(√α·√(1−ᾱ)), so
    /// σ'² = σ² − β²/(α(1−ᾱ))·σ_q'² (β, α of the jump t → prev).
    #[test]
    fn ddpm_weight_and_calibration_match_the_paper_formula() {
        let d = Ddpm::new(&no_clip(), 10).unwrap();
        // index 3: 600 → 500
        let terms = d.step_terms(3).unwrap();
        let (a_t, a_p) = (acp(600), acp(500));
        let alpha = a_t / a_p;
        let b = 1.0 - alpha;
        let c2 = b * b / (alpha * (1.0 - a_t));
        assert!(
            (terms.output_weight.powi(2) - c2).abs() < 1e-12 * c2,
            "{} vs {c2}",
            terms.output_weight.powi(2)
        );
        let sigma2 = (1.0 - a_p) / (1.0 - a_t) * b; // fixed_small
        assert!((terms.std_dev.powi(2) - sigma2).abs() < 1e-15);
        assert_eq!(terms.alpha_prod_t, a_t);

        // Hand-computed case: σ_q' = 0.05.
        let v = 0.05f64 * 0.05;
        let cal = calibrate_variance(&terms, v).unwrap();
        let want = (sigma2 - c2 * v).sqrt();
        assert!(c2 * v < sigma2, "the case keeps some noise");
        assert!(
            (cal.std_dev - want).abs() < 1e-12,
            "{} vs {want}",
            cal.std_dev
        );
        assert_eq!(cal.unabsorbed_variance, 0.0);
        assert!((cal.added_variance - c2 * v).abs() < 1e-12 * c2 * v);

        // Residual variance above the schedule: σ' = 0 and the excess is reported.
        let v_big = 2.0 * sigma2 / c2;
        let cal = calibrate_variance(&terms, v_big).unwrap();
        assert_eq!(cal.std_dev, 0.0);
        assert!((cal.unabsorbed_variance - sigma2).abs() < 1e-12 * sigma2);
        // Exactly at the limit the spec's strict inequality also gives 0.
        let limit = sigma2 / c2;
        assert!(
            calibrate_variance(&terms, limit * (1.0 + 1e-12))
                .unwrap()
                .std_dev
                == 0.0
        );
    }

    /// DDIM, spec §2.3: c_t = √(1 − ᾱ_prev − σ²) − √(ᾱ_prev(1 − ᾱ_t)/ᾱ_t).
    #[test]
    fn ddim_weight_and_calibration_match_the_spec_formula() {
        for eta in [0.0, 0.5, 1.0] {
            let d = Ddim::new(&no_clip(), 10, eta).unwrap();
            let terms = d.step_terms(2).unwrap(); // 700 → 600
            let (a_t, a_p) = (acp(700), acp(600));
            let sigma = eta * ((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)).sqrt();
            let c = (1.0 - a_p - sigma * sigma).sqrt() - (a_p * (1.0 - a_t) / a_t).sqrt();
            assert!((terms.output_weight - c).abs() < 1e-14, "eta {eta}");
            assert!((terms.std_dev - sigma).abs() < 1e-15);
            let v = 0.3f64 * 0.3;
            let cal = calibrate_variance(&terms, v).unwrap();
            if eta == 0.0 {
                // no-op: σ stays 0, all of c²v is unabsorbed
                assert_eq!(cal.std_dev, 0.0);
                assert!(cal.is_noop());
                assert!((cal.unabsorbed_variance - c * c * v).abs() < 1e-15);
            } else {
                let want2 = sigma * sigma - c * c * v;
                assert!(want2 > 0.0, "the hand case keeps noise at eta {eta}");
                assert!((cal.std_dev - want2.sqrt()).abs() < 1e-15);
            }
        }
        // Hand numbers at eta = 1, step 700 → 600, v = 0.09, computed separately (Python, the
        // spec's formulas on the default linear schedule), so that a change in the schedule or
        // the formula shows up as a number, not only as a mismatch of two codes.
        let d = Ddim::new(&no_clip(), 10, 1.0).unwrap();
        let terms = d.step_terms(2).unwrap();
        let cal = calibrate_variance(&terms, 0.09).unwrap();
        assert!(
            (terms.std_dev - 0.847_110_484_9).abs() < 1e-9,
            "{}",
            terms.std_dev
        );
        assert!(
            (terms.output_weight + 1.415_962_928_1).abs() < 1e-9,
            "{}",
            terms.output_weight
        );
        assert!(
            (cal.std_dev - 0.732_905_575_4).abs() < 1e-9,
            "{}",
            cal.std_dev
        );
    }

    /// The output weight is the derivative of the step in its output, for every prediction type,
    /// checked by differencing two real steps (clipping off, no noise).
    #[test]
    fn output_weight_is_the_derivative_of_the_step() {
        for pt in [
            PredictionType::Epsilon,
            PredictionType::Sample,
            PredictionType::VPrediction,
        ] {
            let cfg = ScheduleConfig {
                prediction_type: pt,
                ..no_clip()
            };
            let scheds: Vec<Box<dyn Scheduler>> = vec![
                Box::new(Ddim::new(&cfg, 10, 0.0).unwrap()),
                Box::new(Ddim::new(&cfg, 10, 0.7).unwrap()),
                Box::new(Ddpm::new(&cfg, 10).unwrap()),
            ];
            for s in &scheds {
                for index in [0, 4, 9] {
                    let w = s.step_terms(index).unwrap().output_weight;
                    let zero = t(&[0.0; 4]);
                    let a = s
                        .step_with_std(index, &t(&E), &t(&X), Some(&zero), None)
                        .unwrap();
                    let shifted: Vec<f64> = E.iter().map(|e| e + 0.25).collect();
                    let b = s
                        .step_with_std(index, &t(&shifted), &t(&X), Some(&zero), None)
                        .unwrap();
                    for (pa, pb) in v(&a.prev_sample).iter().zip(v(&b.prev_sample)) {
                        let dw = (pb - pa) / 0.25;
                        assert!(
                            (dw - w).abs() < 1e-9,
                            "{} {pt:?} index {index}: {dw} vs {w}",
                            s.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn replaced_std_enters_noise_and_ddim_direction() {
        let d = Ddim::new(&no_clip(), 10, 1.0).unwrap();
        let c = *d.coefficients(2).unwrap();
        let s = 0.1;
        let out = d
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), Some(s))
            .unwrap();
        let want: Vec<f64> = (0..4)
            .map(|i| {
                let x0 = (X[i] - (1.0 - c.alpha_prod_t).sqrt() * E[i]) / c.alpha_prod_t.sqrt();
                c.alpha_prod_t_prev.sqrt() * x0
                    + (1.0 - c.alpha_prod_t_prev - s * s).sqrt() * E[i]
                    + s * N[i]
            })
            .collect();
        close(&v(&out.prev_sample), &want, 1e-12);
        // None is the scheduled step, bit for bit
        let a = d.step(2, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        let b = d
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), None)
            .unwrap();
        assert_eq!(v(&a.prev_sample), v(&b.prev_sample));
        // DDPM: only the noise weight changes
        let p = Ddpm::new(&no_clip(), 10).unwrap();
        let full = p.step(3, &t(&E), &t(&X), Some(&t(&N))).unwrap();
        let zero = p
            .step_with_std(3, &t(&E), &t(&X), Some(&t(&N)), Some(0.0))
            .unwrap();
        let sd = p.coefficients(3).unwrap().std_dev;
        let diff: Vec<f64> = v(&full.prev_sample)
            .iter()
            .zip(v(&zero.prev_sample))
            .map(|(a, b)| a - b)
            .collect();
        close(&diff, &N.map(|n| sd * n), 1e-12);
        // bad replacements are errors
        assert!(d
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), Some(-0.1))
            .is_err());
        assert!(d
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), Some(f64::NAN))
            .is_err());
        assert!(d
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), Some(1.5))
            .is_err());
        // σ' > 0 at eta 0 needs noise
        let d0 = Ddim::new(&no_clip(), 10, 0.0).unwrap();
        assert!(matches!(
            d0.step_with_std(2, &t(&E), &t(&X), None, Some(0.1)),
            Err(SchedError::MissingNoise { index: 2, .. })
        ));
        assert!(calibrate_variance(&d.step_terms(2).unwrap(), -1.0).is_err());
        assert!(calibrate_variance(&d.step_terms(2).unwrap(), f64::INFINITY).is_err());
    }

    /// Shifts the output and reports a fixed residual variance.
    struct Shift(f64, f64);

    impl OutputCorrection for Shift {
        fn correct(&self, _: usize, _: usize, o: &Tensor) -> Result<Tensor> {
            Ok(o.affine(1.0, self.0)?)
        }
        fn residual_variance(&self, _: usize, _: usize) -> Result<f64> {
            Ok(self.1)
        }
    }

    #[test]
    fn corrected_step_is_a_noop_at_eta_zero_and_calibrates_at_eta_one() {
        // eta 0: a residual variance changes nothing, bit for bit.
        let d0 = Ddim::new(&no_clip(), 10, 0.0).unwrap();
        let (with_v, cal) = corrected_step(&d0, 2, &t(&E), &t(&X), None, &Shift(0.1, 0.5)).unwrap();
        let (without, _) = corrected_step(&d0, 2, &t(&E), &t(&X), None, &Shift(0.1, 0.0)).unwrap();
        assert!(cal.is_noop());
        assert_eq!(v(&with_v.prev_sample), v(&without.prev_sample));
        let shifted: Vec<f64> = E.iter().map(|e| e + 0.1).collect();
        let plain = d0.step(2, &t(&shifted), &t(&X), None).unwrap();
        assert_eq!(v(&with_v.prev_sample), v(&plain.prev_sample));

        // eta 1: the step uses σ' from calibrate_variance.
        let d1 = Ddim::new(&no_clip(), 10, 1.0).unwrap();
        let (out, cal) =
            corrected_step(&d1, 2, &t(&E), &t(&X), Some(&t(&N)), &Shift(0.0, 0.01)).unwrap();
        assert!(cal.std_dev < cal.scheduled_std && cal.std_dev > 0.0);
        let want = d1
            .step_with_std(2, &t(&E), &t(&X), Some(&t(&N)), Some(cal.std_dev))
            .unwrap();
        assert_eq!(v(&out.prev_sample), v(&want.prev_sample));
    }
}
