//! Classifier-free guidance: the model runs on a doubled batch (conditional and unconditional
//! halves), the two predictions are combined as `uncond + scale·(cond − uncond)`, and the
//! scheduler steps the single batch with the guided prediction.
//!
//! Pipelines differ only in bookkeeping, which [`Guidance`] states: Stable Diffusion orders the
//! batch `[uncond, cond]`, DiT `[cond, null class]`; DiT's model output has learned-sigma
//! variance channels after the prediction, which DDIM ignores. DiT steps the doubled latents
//! (both halves equal); the step being elementwise, stepping one half gives the same values.

use candle_core::Tensor;

use crate::error::{Result, SchedError};
use crate::scheduler::{Scheduler, StepOutput};

/// Which half of the doubled batch is the unconditional one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfgOrder {
    /// `[uncond…, cond…]` (diffusers' StableDiffusionPipeline, PixArtAlphaPipeline).
    UncondFirst,
    /// `[cond…, uncond…]` (diffusers' DiTPipeline: class labels, then the null class).
    CondFirst,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f64,
    pub order: CfgOrder,
    /// The leading channels of the model output that are the scheduler's prediction
    /// (`Some(C)` with learned sigma, whose output has `2C` channels); `None`: all of them.
    pub prediction_channels: Option<usize>,
}

impl Guidance {
    /// The guided prediction `[B, …]` from a model output `[2B, …]` on the doubled batch.
    pub fn combine(&self, model_output: &Tensor) -> Result<Tensor> {
        let n = model_output.dims()[0];
        if !n.is_multiple_of(2) {
            return Err(SchedError::Invalid(format!(
                "classifier-free guidance needs a doubled batch, got {n} samples"
            )));
        }
        let out = match self.prediction_channels {
            Some(c) => model_output.narrow(1, 0, c)?,
            None => model_output.clone(),
        };
        let first = out.narrow(0, 0, n / 2)?;
        let second = out.narrow(0, n / 2, n / 2)?;
        let (uncond, cond) = match self.order {
            CfgOrder::UncondFirst => (first, second),
            CfgOrder::CondFirst => (second, first),
        };
        Ok((&uncond + ((&cond - &uncond)? * self.scale)?)?)
    }
}

/// Runs `sched` from `x_t` (`[B, …]`) with classifier-free guidance and returns the final sample.
///
/// At step `i` (timestep `t`): `denoise(x2, t, i)` is the model on the doubled batch
/// `x2 = cat([x, x])` (the caller supplies the conditioning of each half, in `guidance.order`);
/// its output is combined by [`Guidance::combine`]; `noise(i)` is asked for as in
/// [`crate::sample`]; `on_step(i, &guided, &step_output)` sees every step (trajectories).
pub fn sample_guided<F, N, S>(
    sched: &dyn Scheduler,
    x_t: Tensor,
    guidance: &Guidance,
    mut denoise: F,
    mut noise: N,
    mut on_step: S,
) -> Result<Tensor>
where
    F: FnMut(&Tensor, usize, usize) -> Result<Tensor>,
    N: FnMut(usize) -> Result<Option<Tensor>>,
    S: FnMut(usize, &Tensor, &StepOutput),
{
    let mut x = x_t;
    for (i, &t) in sched.timesteps().iter().enumerate() {
        let doubled = Tensor::cat(&[&x, &x], 0)?;
        let guided = guidance.combine(&denoise(&doubled, t, i)?)?;
        let n = if sched.needs_noise(i) {
            noise(i)?
        } else {
            None
        };
        let out = sched.step(i, &guided, &x, n.as_ref())?;
        on_step(i, &guided, &out);
        x = out.prev_sample;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn combine_respects_order_and_prediction_channels() {
        // Batch of 2 doubled: [a, b], channels [eps, sigma].
        let v: Vec<f32> = vec![1.0, 10.0, 3.0, 30.0];
        let out = Tensor::from_vec(v, (2, 2), &Device::Cpu).unwrap();
        let g = Guidance {
            scale: 2.0,
            order: CfgOrder::UncondFirst,
            prediction_channels: Some(1),
        };
        // uncond 1, cond 3: 1 + 2·(3 − 1) = 5
        let r: Vec<Vec<f32>> = g.combine(&out).unwrap().to_vec2().unwrap();
        assert_eq!(r, vec![vec![5.0]]);
        let g = Guidance {
            order: CfgOrder::CondFirst,
            ..g
        };
        // uncond 3, cond 1: 3 + 2·(1 − 3) = −1
        let r: Vec<Vec<f32>> = g.combine(&out).unwrap().to_vec2().unwrap();
        assert_eq!(r, vec![vec![-1.0]]);
        let odd = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(g.combine(&odd).is_err());
    }
}
