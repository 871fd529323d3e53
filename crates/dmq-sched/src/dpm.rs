//! DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models"), multistep, as diffusers' `DPMSolverMultistepScheduler` computes it
//! with the settings Stable Diffusion and PixArt use: `algorithm_type = "dpmsolver++"`,
//! `solver_order = 2`, `solver_type = "midpoint"`, `final_sigmas_type = "zero"`, no thresholding.
//!
//! With αₛ = √ᾱₛ, σₛ = √(1 − ᾱₛ), λₛ = log(αₛ/σₛ), the data prediction mₛ (x₀ from the model
//! output) and h = λₜ − λₛ for a step from timestep s to the next timestep t:
//!
//! ```text
//! first order:   xₜ = (σₜ/σₛ)·xₛ + αₜ(1 − e^{−h})·mₛ                       (= DDIM, eta 0)
//! second order:  xₜ = (σₜ/σₛ)·xₛ + αₜ(1 − e^{−h})·(mₛ + (mₛ − m_{s'})/(2r)),
//!                r = (λₛ − λ_{s'})/h, s' the timestep before s
//! ```
//!
//! The step after the last timestep goes to σ = 0 (α = 1, λ = +∞): xₜ is the last x₀ prediction.
//! diffusers steps the first step with first order (no earlier prediction yet) and the last one
//! too (`final_sigmas_type = "zero"`); every other step is second order (`solver_order = 2`).
//!
//! The schedule (α, σ, λ and the step coefficients) is computed in f64, where diffusers keeps
//! its sigmas in f32; the tensor arithmetic runs in the sample's dtype (f16 and bf16 samples are
//! combined in f32 and cast back, as diffusers does).
//!
//! **Multistep state.** A step needs the x₀ prediction of the step before, so a [`DpmSolverPp`]
//! remembers it between calls of [`Scheduler::step`] (behind a mutex, the trait taking
//! `&self`): steps must run in order from index 0 (which starts a new trajectory), on the sample
//! the previous step returned. Anything else (a skipped or repeated step, two trajectories
//! interleaved on one scheduler) is an error, never a silently wrong step. A batch of images is
//! one trajectory (one tensor); run separate trajectories one after the other, or with one
//! scheduler each.

use std::sync::Mutex;

use candle_core::{DType, Tensor};

use crate::config::{PredictionType, ScheduleConfig};
use crate::error::{Result, SchedError};
use crate::scheduler::{
    check_std, output_derivatives, predict_x0_eps, Scheduler, StepOutput, StepTerms,
};

/// The f64 coefficients of one DPM-Solver++ step:
/// `x_next = sample_coef·x + x0_coef·m + prev_x0_coef·m_prev`, with m the x₀ prediction of this
/// step and m_prev that of the step before (unused at first order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmSolverCoefficients {
    pub timestep: usize,
    /// The timestep stepped to; `None` after the last one (σ = 0).
    pub next_timestep: Option<usize>,
    /// ᾱ at `timestep` (the model output is converted to x₀ with it).
    pub alpha_prod_t: f64,
    /// λ = log(α/σ) at `timestep`.
    pub lambda: f64,
    /// λ at the next timestep (+∞ after the last).
    pub lambda_next: f64,
    /// 1 or 2.
    pub order: usize,
    pub sample_coef: f64,
    pub x0_coef: f64,
    pub prev_x0_coef: f64,
}

/// What the solver remembers between steps.
#[derive(Debug, Default)]
struct History {
    /// The index the next step must have (0 always starts over).
    next: usize,
    /// The x₀ prediction of step `next − 1`.
    prev_x0: Option<Tensor>,
    /// The sample step `next − 1` returned, which step `next` must be given.
    last_sample: Option<Tensor>,
}

/// DPM-Solver++ (2M) over `num_inference_steps` timesteps (see the module docs).
#[derive(Debug)]
pub struct DpmSolverPp {
    prediction_type: PredictionType,
    timesteps: Vec<usize>,
    coefs: Vec<DpmSolverCoefficients>,
    history: Mutex<History>,
}

impl DpmSolverPp {
    pub fn new(cfg: &ScheduleConfig, num_inference_steps: usize) -> Result<Self> {
        let timesteps = cfg.dpm_solver_timesteps(num_inference_steps)?;
        let mut acp = cfg.alphas_cumprod();
        if cfg.rescale_betas_zero_snr {
            // diffusers: "close to 0 without being 0 so first sigma is not inf" (2⁻²⁴)
            if let Some(last) = acp.last_mut() {
                *last = 2f64.powi(-24);
            }
        }
        // (α, σ, λ) at each timestep, then σ = 0 after the last.
        let mut points: Vec<(f64, f64, f64)> = timesteps
            .iter()
            .map(|&t| {
                let (a, s) = (acp[t].sqrt(), (1.0 - acp[t]).sqrt());
                (a, s, a.ln() - s.ln())
            })
            .collect();
        points.push((1.0, 0.0, f64::INFINITY));
        let n = timesteps.len();
        let mut coefs = Vec::with_capacity(n);
        for (i, &t) in timesteps.iter().enumerate() {
            let (_, sigma_s, lambda_s) = points[i];
            let (alpha_t, sigma_t, lambda_t) = points[i + 1];
            let h = lambda_t - lambda_s;
            // αₜ(1 − e^{−h}); h = +∞ at the last step gives αₜ = 1.
            let phi = -alpha_t * (-h).exp_m1();
            let order = if cfg.dpm_solver.solver_order == 1 || i == 0 || i == n - 1 {
                1
            } else {
                2
            };
            let (x0_coef, prev_x0_coef) = if order == 1 {
                (phi, 0.0)
            } else {
                let r = (lambda_s - points[i - 1].2) / h;
                (phi * (1.0 + 0.5 / r), -phi * 0.5 / r)
            };
            coefs.push(DpmSolverCoefficients {
                timestep: t,
                next_timestep: timesteps.get(i + 1).copied(),
                alpha_prod_t: acp[t],
                lambda: lambda_s,
                lambda_next: lambda_t,
                order,
                sample_coef: sigma_t / sigma_s,
                x0_coef,
                prev_x0_coef,
            });
        }
        if let Some(c) = coefs.iter().find(|c| {
            ![c.sample_coef, c.x0_coef, c.prev_x0_coef]
                .iter()
                .all(|v| v.is_finite())
        }) {
            return Err(SchedError::Invalid(format!(
                "DPM-Solver++: the step at timestep {} has non-finite coefficients {c:?}",
                c.timestep
            )));
        }
        Ok(Self {
            prediction_type: cfg.prediction_type,
            timesteps,
            coefs,
            history: Mutex::new(History::default()),
        })
    }

    /// The coefficients of step `index`.
    pub fn coefficients(&self, index: usize) -> Option<&DpmSolverCoefficients> {
        self.coefs.get(index)
    }

    fn coef(&self, index: usize) -> Result<&DpmSolverCoefficients> {
        self.coefs.get(index).ok_or(SchedError::StepIndex {
            index,
            len: self.coefs.len(),
        })
    }
}

/// Whether `a` is `b` (the same tensor, or equal shape, dtype and values).
fn same_sample(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.id() == b.id() {
        return Ok(true);
    }
    if a.dims() != b.dims()
        || a.dtype() != b.dtype()
        || a.device().location() != b.device().location()
    {
        return Ok(false);
    }
    let differing = a
        .ne(b)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(differing == 0.0)
}

/// `t` in f32 when it is a half-precision tensor (diffusers upcasts before combining).
fn upcast(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
        _ => t.clone(),
    })
}

impl Scheduler for DpmSolverPp {
    fn name(&self) -> &'static str {
        "DPM-Solver++"
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, _index: usize) -> bool {
        false
    }

    fn step_terms(&self, index: usize) -> Result<StepTerms> {
        let c = self.coef(index)?;
        // Only m (this step's x₀) depends on this step's output; the earlier prediction
        // m_prev is fixed by then (its error entered at the step before).
        let (dx0, _) = output_derivatives(self.prediction_type, c.alpha_prod_t);
        Ok(StepTerms {
            timestep: c.timestep,
            alpha_prod_t: c.alpha_prod_t,
            std_dev: 0.0,
            output_weight: c.x0_coef * dx0,
        })
    }

    fn step_with_std(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        _noise: Option<&Tensor>,
        std_dev: Option<f64>,
    ) -> Result<StepOutput> {
        let c = self.coef(index)?;
        if let Some(s) = std_dev {
            check_std("DPM-Solver++", index, s)?;
            if s != 0.0 {
                return Err(SchedError::Invalid(format!(
                    "DPM-Solver++ step {index}: a noise standard deviation of {s} was requested, \
                     but this solver is deterministic (it adds no noise), so variance schedule \
                     calibration has no noise to lower; only 0 is accepted"
                )));
            }
        }
        let mut history = self
            .history
            .lock()
            .map_err(|_| SchedError::Invalid("DPM-Solver++: state poisoned by a panic".into()))?;
        if index == 0 {
            *history = History::default();
        } else {
            if history.next != index {
                return Err(SchedError::Invalid(format!(
                    "DPM-Solver++ step {index} requested, but the next step of the current \
                     trajectory is {}: the multistep solver remembers the previous step's x0 \
                     prediction, so steps must run in order from step 0",
                    history.next
                )));
            }
            let last = history
                .last_sample
                .as_ref()
                .expect("a finished step leaves its sample");
            if !same_sample(sample, last)? {
                return Err(SchedError::Invalid(format!(
                    "DPM-Solver++ step {index} was given a sample that is not what step {} \
                     returned: the multistep solver combines it with that step's x0 \
                     prediction, so one scheduler runs one trajectory at a time",
                    index - 1
                )));
            }
        }
        let (x0, _) = predict_x0_eps(self.prediction_type, c.alpha_prod_t, model_output, sample)?;
        let mut next =
            (upcast(sample)?.affine(c.sample_coef, 0.0)? + upcast(&x0)?.affine(c.x0_coef, 0.0)?)?;
        if c.order == 2 {
            let prev_x0 = history
                .prev_x0
                .as_ref()
                .expect("step index > 0 follows a finished step");
            next = (next + upcast(prev_x0)?.affine(c.prev_x0_coef, 0.0)?)?;
        }
        let next = next.to_dtype(sample.dtype())?;
        *history = History {
            next: index + 1,
            prev_x0: Some(x0.clone()),
            last_sample: Some(next.clone()),
        };
        Ok(StepOutput {
            prev_sample: next,
            pred_original_sample: x0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimestepSpacing;
    use crate::correction::OutputCorrection;
    use crate::test_util::{acp, close, t, v, E, X};

    fn lambda(t: usize) -> f64 {
        (acp(t).sqrt() / (1.0 - acp(t)).sqrt()).ln()
    }

    /// x₀ from an ε prediction, by hand.
    fn x0_eps(t: usize, x: &[f64], e: &[f64]) -> Vec<f64> {
        let a = acp(t);
        (0..x.len())
            .map(|i| (x[i] - (1.0 - a).sqrt() * e[i]) / a.sqrt())
            .collect()
    }

    /// The default config (linear betas, `clip_sample` true, which DPM-Solver++ must ignore).
    fn cfg() -> ScheduleConfig {
        ScheduleConfig::default()
    }

    const E2: [f64; 4] = [0.5, -0.1, 0.8, 1.3];
    const E3: [f64; 4] = [-0.2, 0.6, 0.3, -0.9];

    /// Two steps: both first order (the first has no earlier prediction, the last goes to
    /// σ = 0). A first-order DPM-Solver++ step is a deterministic DDIM step, and the last step
    /// returns its x₀ prediction.
    #[test]
    fn two_steps_are_first_order_by_hand() {
        let d = DpmSolverPp::new(&cfg(), 2).unwrap();
        // linspace(0, 999, 3) = [0, 499.5, 999]; 499.5 rounds half to even → 500; 0 dropped
        assert_eq!(d.timesteps(), &[999, 500]);
        assert_eq!(d.coefficients(0).unwrap().order, 1);
        assert_eq!(d.coefficients(1).unwrap().order, 1);

        let out = d.step(0, &t(&E), &t(&X), None).unwrap();
        let m0 = x0_eps(999, &X, &E);
        // no clipping although clip_sample is true: |x0| ≫ 1 here
        assert!(m0.iter().any(|v| v.abs() > 10.0));
        close(&v(&out.pred_original_sample), &m0, 1e-9);
        let a = acp(500);
        let x1: Vec<f64> = (0..4)
            .map(|i| a.sqrt() * m0[i] + (1.0 - a).sqrt() * E[i])
            .collect();
        close(&v(&out.prev_sample), &x1, 1e-9);

        let out = d.step(1, &t(&E2), &out.prev_sample, None).unwrap();
        let m1 = x0_eps(500, &x1, &E2);
        close(&v(&out.prev_sample), &m1, 1e-12);
        close(&v(&out.pred_original_sample), &m1, 1e-12);
    }

    /// Three steps: first order, then second order (midpoint), then first order to σ = 0.
    #[test]
    fn three_steps_second_order_in_the_middle_by_hand() {
        let d = DpmSolverPp::new(&cfg(), 3).unwrap();
        // linspace(0, 999, 4) = [0, 333, 666, 999]
        assert_eq!(d.timesteps(), &[999, 666, 333]);
        let orders: Vec<usize> = (0..3).map(|i| d.coefficients(i).unwrap().order).collect();
        assert_eq!(orders, vec![1, 2, 1]);

        let o0 = d.step(0, &t(&E), &t(&X), None).unwrap();
        let m0 = x0_eps(999, &X, &E);
        let x1 = v(&o0.prev_sample);
        let o1 = d.step(1, &t(&E2), &o0.prev_sample, None).unwrap();
        let m1 = x0_eps(666, &x1, &E2);
        // xₜ = (σₜ/σₛ)·x + αₜ(1 − e^{−h})·(m₁ + (m₁ − m₀)/(2r)), r = (λ₆₆₆ − λ₉₉₉)/h
        let h = lambda(333) - lambda(666);
        let r = (lambda(666) - lambda(999)) / h;
        let (a_t, s_t, s_s) = (
            acp(333).sqrt(),
            (1.0 - acp(333)).sqrt(),
            (1.0 - acp(666)).sqrt(),
        );
        let x2: Vec<f64> = (0..4)
            .map(|i| {
                s_t / s_s * x1[i] + a_t * (1.0 - (-h).exp()) * (m1[i] + (m1[i] - m0[i]) / (2.0 * r))
            })
            .collect();
        close(&v(&o1.prev_sample), &x2, 1e-9);
        let o2 = d.step(2, &t(&E3), &o1.prev_sample, None).unwrap();
        close(&v(&o2.prev_sample), &x0_eps(333, &x2, &E3), 1e-9);
    }

    #[test]
    fn solver_order_one_is_first_order_everywhere() {
        let mut c = cfg();
        c.dpm_solver.solver_order = 1;
        let d = DpmSolverPp::new(&c, 5).unwrap();
        assert!((0..5).all(|i| d.coefficients(i).unwrap().order == 1));
        // first order = DDIM (eta 0) between consecutive timesteps
        let o0 = d.step(0, &t(&E), &t(&X), None).unwrap();
        let o1 = d.step(1, &t(&E2), &o0.prev_sample, None).unwrap();
        let (t0, t1, t2) = (d.timesteps()[0], d.timesteps()[1], d.timesteps()[2]);
        let x1 = v(&o0.prev_sample);
        let m1 = x0_eps(t1, &x1, &E2);
        let a = acp(t2);
        let want: Vec<f64> = (0..4)
            .map(|i| a.sqrt() * m1[i] + (1.0 - a).sqrt() * E2[i])
            .collect();
        close(&v(&o1.prev_sample), &want, 1e-9);
        assert_eq!((t0, t1, t2), (999, 799, 599));
    }

    #[test]
    fn steps_out_of_order_or_on_another_sample_are_errors() {
        let d = DpmSolverPp::new(&cfg(), 4).unwrap();
        // a trajectory starts at step 0
        let e = d.step(1, &t(&E), &t(&X), None).unwrap_err().to_string();
        assert!(e.contains("in order from step 0"), "{e}");
        let o0 = d.step(0, &t(&E), &t(&X), None).unwrap();
        // skipping a step
        let e = d
            .step(2, &t(&E2), &o0.prev_sample, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("next step of the current trajectory is 1"),
            "{e}"
        );
        // another sample than the one step 0 returned
        let e = d.step(1, &t(&E2), &t(&X), None).unwrap_err().to_string();
        assert!(e.contains("not what step 0 returned"), "{e}");
        // an equal copy is accepted (e.g. a tensor rebuilt from the same values)
        let copy = t(&v(&o0.prev_sample));
        let o1 = d.step(1, &t(&E2), &copy, None).unwrap();
        // the failed calls did not disturb the state: same as a clean run
        let clean = DpmSolverPp::new(&cfg(), 4).unwrap();
        let c0 = clean.step(0, &t(&E), &t(&X), None).unwrap();
        let c1 = clean.step(1, &t(&E2), &c0.prev_sample, None).unwrap();
        assert_eq!(v(&o1.prev_sample), v(&c1.prev_sample));
        // step 0 again starts a new trajectory
        let again = d.step(0, &t(&E), &t(&X), None).unwrap();
        assert_eq!(v(&again.prev_sample), v(&o0.prev_sample));
        assert!(matches!(
            d.step(4, &t(&E), &t(&X), None),
            Err(SchedError::StepIndex { index: 4, len: 4 })
        ));
    }

    struct Scale(f64, f64);

    impl OutputCorrection for Scale {
        fn correct(&self, _: usize, _: usize, o: &Tensor) -> Result<Tensor> {
            Ok(o.affine(self.0, 0.0)?)
        }
        fn residual_variance(&self, _: usize, _: usize) -> Result<f64> {
            Ok(self.1)
        }
    }

    /// Deterministic: no noise, σ = 0, so variance calibration is a no-op; a requested σ > 0 is
    /// refused. The PTQD path (correction of the output) runs.
    #[test]
    fn deterministic_and_the_correction_path() {
        let d = DpmSolverPp::new(&cfg(), 4).unwrap();
        assert!((0..4).all(|i| !d.needs_noise(i)));
        for i in 0..4 {
            let terms = d.step_terms(i).unwrap();
            let c = d.coefficients(i).unwrap();
            assert_eq!(terms.std_dev, 0.0);
            assert_eq!(terms.timestep, c.timestep);
            let dx0 = -(1.0 - c.alpha_prod_t).sqrt() / c.alpha_prod_t.sqrt();
            assert!((terms.output_weight - c.x0_coef * dx0).abs() < 1e-12);
        }
        let a = d.step_with_std(0, &t(&E), &t(&X), None, Some(0.0)).unwrap();
        let b = d.step(0, &t(&E), &t(&X), None).unwrap();
        assert_eq!(v(&a.prev_sample), v(&b.prev_sample));
        let e = d
            .step_with_std(0, &t(&E), &t(&X), None, Some(0.1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("deterministic"), "{e}");

        // sample_corrected with a correction that halves the output = plain sampling of the
        // halved output; the residual variance changes nothing (σ = 0)
        let run = |corr: Option<&dyn OutputCorrection>, half: bool| {
            crate::sample_corrected(
                &d,
                t(&X),
                |x, tt, _| {
                    let k = if half { 0.5 } else { 1.0 };
                    Ok(x.affine(0.3 * k, k * tt as f64 * 1e-4)?)
                },
                |_| panic!("no noise"),
                |_| {},
                corr,
            )
            .unwrap()
        };
        let corrected = run(Some(&Scale(0.5, 0.3)), false);
        let plain = run(None, true);
        close(&v(&corrected), &v(&plain), 1e-12);
    }

    #[test]
    fn dtypes_are_kept() {
        let d = DpmSolverPp::new(&cfg(), 3).unwrap();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = t(&X).to_dtype(dt).unwrap();
            let o = d.step(0, &t(&E).to_dtype(dt).unwrap(), &x, None).unwrap();
            assert_eq!(o.prev_sample.dtype(), dt);
            let o = d
                .step(1, &t(&E2).to_dtype(dt).unwrap(), &o.prev_sample, None)
                .unwrap();
            assert_eq!(o.prev_sample.dtype(), dt);
        }
    }

    #[test]
    fn zero_snr_uses_diffusers_floor_and_v_prediction() {
        let c = ScheduleConfig {
            rescale_betas_zero_snr: true,
            prediction_type: PredictionType::VPrediction,
            timestep_spacing: TimestepSpacing::Trailing,
            dpm_solver: crate::config::DpmSolverConfig {
                timestep_spacing: TimestepSpacing::Trailing,
                ..Default::default()
            },
            ..Default::default()
        };
        let d = DpmSolverPp::new(&c, 10).unwrap();
        let c0 = d.coefficients(0).unwrap();
        assert_eq!(c0.timestep, 999);
        assert_eq!(c0.alpha_prod_t, 2f64.powi(-24));
        // v prediction: x₀ = √ᾱ·x − √(1−ᾱ)·v
        let o = d.step(0, &t(&E), &t(&X), None).unwrap();
        let (sa, sb) = (2f64.powi(-12), (1.0 - 2f64.powi(-24)).sqrt());
        let x0: Vec<f64> = (0..4).map(|i| sa * X[i] - sb * E[i]).collect();
        close(&v(&o.pred_original_sample), &x0, 1e-12);
    }

    /// Classifier-free guidance steps the single batch with the guided output, in order, so a
    /// guided run equals a plain run of the combined model.
    #[test]
    fn guided_sampling_equals_sampling_the_combined_model() {
        use crate::guidance::{sample_guided, CfgOrder, Guidance};
        let d = DpmSolverPp::new(&cfg(), 5).unwrap();
        let g = Guidance {
            scale: 3.0,
            order: CfgOrder::UncondFirst,
            prediction_channels: None,
        };
        // uncond = 0.2·x, cond = 0.3·x + 0.01: guided = 0.2x + 3·(0.1x + 0.01) = 0.5x + 0.03
        let guided = sample_guided(
            &d,
            t(&X),
            &g,
            |x2, _, _| {
                let half = x2.dims()[0] / 2;
                let u = x2.narrow(0, 0, half)?.affine(0.2, 0.0)?;
                let c = x2.narrow(0, half, half)?.affine(0.3, 0.01)?;
                Ok(Tensor::cat(&[&u, &c], 0)?)
            },
            |_| panic!("no noise"),
            |_, _, _| {},
        )
        .unwrap();
        let plain = crate::sample(
            &d,
            t(&X),
            |x, _, _| Ok(x.affine(0.5, 0.03)?),
            |_| panic!("no noise"),
            |_| {},
        )
        .unwrap();
        close(&v(&guided), &v(&plain), 1e-9);
    }
}
