//! The sampling loop.

use candle_core::Tensor;

use crate::correction::{corrected_step, OutputCorrection};
use crate::error::Result;
use crate::scheduler::Scheduler;

/// Runs `sched` from `x_t` to the end of its timestep list and returns the final sample.
///
/// At each step `i` (timestep `t = sched.timesteps()[i]`): `denoise(x, t, i)` is the model
/// call (the step index lets a caller switch per-step parameters, e.g. quantization
/// calibration); `noise(i)` is called only when [`Scheduler::needs_noise`] is true for `i` and
/// must then return `Some` standard-normal tensor of `x`'s shape; `on_step(i)` is called after
/// the step (progress bars, statistics).
///
/// A denoiser whose error is not a [`SchedError`](crate::SchedError) wraps it with
/// [`SchedError::other`](crate::SchedError::other).
pub fn sample<F, N, S>(
    sched: &dyn Scheduler,
    x_t: Tensor,
    mut denoise: F,
    mut noise: N,
    mut on_step: S,
) -> Result<Tensor>
where
    F: FnMut(&Tensor, usize, usize) -> Result<Tensor>,
    N: FnMut(usize) -> Result<Option<Tensor>>,
    S: FnMut(usize),
{
    sample_corrected(sched, x_t, &mut denoise, &mut noise, &mut on_step, None)
}

/// [`sample`] with the model output corrected at every step (see [`crate::correction`]): the
/// scheduler steps with `correction.correct(..)` of the denoiser's output, its noise calibrated
/// for the correction's residual variance. With `correction = None` this is [`sample`].
///
/// `noise(i)` is asked for exactly at the steps where the uncorrected sampler asks for it (plus
/// any step whose calibrated σ' > 0 at a deterministic scheduled step, which PTQD never
/// produces), so corrected and uncorrected runs from one seed share every noise draw.
pub fn sample_corrected<F, N, S>(
    sched: &dyn Scheduler,
    x_t: Tensor,
    mut denoise: F,
    mut noise: N,
    mut on_step: S,
    correction: Option<&dyn OutputCorrection>,
) -> Result<Tensor>
where
    F: FnMut(&Tensor, usize, usize) -> Result<Tensor>,
    N: FnMut(usize) -> Result<Option<Tensor>>,
    S: FnMut(usize),
{
    let mut x = x_t;
    for (i, &t) in sched.timesteps().iter().enumerate() {
        let model_output = denoise(&x, t, i)?;
        let n = if sched.needs_noise(i) {
            noise(i)?
        } else {
            None
        };
        x = match correction {
            None => sched.step(i, &model_output, &x, n.as_ref())?.prev_sample,
            Some(c) => {
                corrected_step(sched, i, &model_output, &x, n.as_ref(), c)?
                    .0
                    .prev_sample
            }
        };
        on_step(i);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScheduleConfig;
    use crate::noise::NoiseSource;
    use crate::scheduler::{build, SamplerKind};
    use crate::SchedError;
    use candle_core::Device;

    fn fake_eps(x: &Tensor, t: usize) -> Result<Tensor> {
        // any deterministic function of (x, t)
        Ok(x.affine(0.5, t as f64 * 1e-3)?.tanh()?)
    }

    #[test]
    fn loop_calls_hooks_in_order_and_noise_only_when_needed() {
        let cfg = ScheduleConfig::default();
        let sched = build(SamplerKind::Ddpm, &cfg, 5).unwrap();
        let ns = NoiseSource::new(3);
        let shape = [2, 4, 4];
        let x_t = ns.initial(&[0, 1], &shape, &Device::Cpu).unwrap();
        let mut calls = Vec::new();
        let mut noise_calls = Vec::new();
        let mut done = Vec::new();
        let out = sample(
            &*sched,
            x_t.clone(),
            |x, t, i| {
                calls.push((t, i));
                fake_eps(x, t)
            },
            |i| {
                noise_calls.push(i);
                Ok(Some(ns.step_noise(i, &[0, 1], &shape, &Device::Cpu)?))
            },
            |i| done.push(i),
        )
        .unwrap();
        assert_eq!(calls, vec![(800, 0), (600, 1), (400, 2), (200, 3), (0, 4)]);
        assert_eq!(noise_calls, vec![0, 1, 2, 3], "no noise at t = 0");
        assert_eq!(done, vec![0, 1, 2, 3, 4]);

        // the same trajectory by hand
        let mut x = x_t;
        for i in 0..5 {
            let t = sched.timesteps()[i];
            let n = (i < 4).then(|| ns.step_noise(i, &[0, 1], &shape, &Device::Cpu).unwrap());
            x = sched
                .step(i, &fake_eps(&x, t).unwrap(), &x, n.as_ref())
                .unwrap()
                .prev_sample;
        }
        let a = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn deterministic_ddim_never_asks_for_noise_and_errors_propagate() {
        let cfg = ScheduleConfig::default();
        let sched = build(SamplerKind::Ddim { eta: 0.0 }, &cfg, 4).unwrap();
        let x_t = NoiseSource::new(0)
            .initial(&[0], &[1, 2, 2], &Device::Cpu)
            .unwrap();
        let out = sample(
            &*sched,
            x_t.clone(),
            |x, t, _| fake_eps(x, t),
            |_| panic!("eta = 0 needs no noise"),
            |_| {},
        );
        assert!(out.is_ok());
        // a denoiser error stops the loop and comes back unchanged
        let mut steps = 0;
        let err = sample(
            &*sched,
            x_t,
            |x, t, i| {
                if i == 2 {
                    Err(SchedError::other("model failed"))
                } else {
                    fake_eps(x, t)
                }
            },
            |_| Ok(None),
            |_| steps += 1,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "model failed");
        assert_eq!(steps, 2);
    }

    /// Identity output, a fixed residual variance.
    struct Residual(f64);

    impl crate::correction::OutputCorrection for Residual {
        fn correct(&self, _: usize, _: usize, o: &Tensor) -> Result<Tensor> {
            Ok(o.clone())
        }
        fn residual_variance(&self, _: usize, _: usize) -> Result<f64> {
            Ok(self.0)
        }
    }

    #[test]
    fn corrected_loop_draws_the_same_noise_and_is_a_noop_at_eta_zero() {
        let cfg = ScheduleConfig::default();
        let ns = NoiseSource::new(5);
        let shape = [1, 3, 3];
        let run = |eta: f64, correction: Option<&dyn crate::correction::OutputCorrection>| {
            let sched = build(SamplerKind::Ddim { eta }, &cfg, 6).unwrap();
            let mut asked = Vec::new();
            let x = sample_corrected(
                &*sched,
                ns.initial(&[0], &shape, &Device::Cpu).unwrap(),
                |x, t, _| fake_eps(x, t),
                |i| {
                    asked.push(i);
                    Ok(Some(ns.step_noise(i, &[0], &shape, &Device::Cpu)?))
                },
                |_| {},
                correction,
            )
            .unwrap();
            (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), asked)
        };
        // eta 0: variance calibration is a no-op, bit for bit
        let (plain, asked0) = run(0.0, None);
        let (vsc, asked1) = run(0.0, Some(&Residual(0.2)));
        assert_eq!(plain, vsc);
        assert!(asked0.is_empty() && asked1.is_empty());
        // eta 1: same noise draws, a different (less noisy) result
        let (plain, asked0) = run(1.0, None);
        let (vsc, asked1) = run(1.0, Some(&Residual(0.2)));
        let (zero, _) = run(1.0, Some(&Residual(0.0)));
        assert_eq!(asked0, asked1);
        assert_eq!(plain, zero, "a zero residual changes nothing");
        assert_ne!(plain, vsc);
    }

    #[test]
    fn missing_noise_is_an_error() {
        let cfg = ScheduleConfig::default();
        let sched = build(SamplerKind::Ddim { eta: 1.0 }, &cfg, 4).unwrap();
        let x_t = NoiseSource::new(0)
            .initial(&[0], &[1, 2, 2], &Device::Cpu)
            .unwrap();
        let err = sample(&*sched, x_t, |x, t, _| fake_eps(x, t), |_| Ok(None), |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                SchedError::MissingNoise {
                    index: 0,
                    timestep: 750,
                    ..
                }
            ),
            "{err}"
        );
    }
}
