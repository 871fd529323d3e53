//! Statistics collection (spec §3.2): full-precision trajectories of the sampling protocol; at
//! every step the full-precision network and each quantized network get the same input `x_t`,
//! their outputs go into that step's accumulator, and the trajectory advances with the
//! full-precision output. The statistics therefore describe the quantization error on FP
//! states, as the reference code measures it.

use candle_core::{DType, Device, Tensor};
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_sched::{NoiseSource, SchedError, Scheduler};

use super::stats::StepAccumulator;
use super::{PtqdError, Result};

/// Which trajectories are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectSpec {
    /// Trajectories (images); image `i` gets the seeded noise of image `i` of `seed`.
    pub samples: usize,
    /// Trajectories run together.
    pub batch: usize,
    pub seed: u64,
}

/// What one trajectory's sample looks like: `[C, H, W]` (no batch axis), where and in which
/// dtype the networks run.
#[derive(Debug, Clone)]
pub struct SampleSpace {
    pub shape: Vec<usize>,
    pub device: Device,
    pub dtype: DType,
}

/// A network as the statistics see it: `(x_t, timestep, step index) → output`.
pub type Denoiser<'a> = dyn Fn(&Tensor, usize, usize) -> dmq_sched::Result<Tensor> + 'a;

/// A network whose output also depends on which trajectories (images) the batch holds:
/// `(x_t, timestep, step index, image indices) → output`. Conditional models pick each image's
/// prompt or class label by its index (and return the guided prediction).
pub type IndexedDenoiser<'a> =
    dyn Fn(&Tensor, usize, usize, &[usize]) -> dmq_sched::Result<Tensor> + 'a;

/// `unet` as a [`Denoiser`]: the input is cast to the model's dtype, the step index goes into
/// the forward's context (per-step activation parameters).
pub fn unet_denoiser(
    unet: &UNet2DModel,
) -> impl Fn(&Tensor, usize, usize) -> dmq_sched::Result<Tensor> + '_ {
    move |x, t, i| {
        let x = x.to_dtype(unet.dtype())?;
        unet.forward(&x, Timesteps::Shared(t as f64), None, &Ctx::at_step(i))
            .map_err(SchedError::other)
    }
}

/// Runs `spec.samples` trajectories of `sched` with `fp` from seeded noise in `space`, and
/// returns, per quantized network
/// and per sampling step, the accumulated `(ε_fp, ε_q − ε_fp)` statistics. `on_call` is
/// called after every step of every batch.
pub fn collect(
    fp: &Denoiser,
    quantized: &[&Denoiser],
    sched: &dyn Scheduler,
    spec: &CollectSpec,
    space: &SampleSpace,
    on_call: impl FnMut(),
) -> Result<Vec<Vec<StepAccumulator>>> {
    let fpi = |x: &Tensor, t, i, _: &[usize]| fp(x, t, i);
    let qs: Vec<Box<IndexedDenoiser>> = quantized
        .iter()
        .map(|q| Box::new(move |x: &Tensor, t, i, _: &[usize]| q(x, t, i)) as Box<IndexedDenoiser>)
        .collect();
    let refs: Vec<&IndexedDenoiser> = qs.iter().map(|q| q.as_ref()).collect();
    collect_indexed(&fpi, &refs, sched, spec, space, on_call)
}

/// [`collect`] for networks that need the batch's image indices (conditional models).
pub fn collect_indexed(
    fp: &IndexedDenoiser,
    quantized: &[&IndexedDenoiser],
    sched: &dyn Scheduler,
    spec: &CollectSpec,
    space: &SampleSpace,
    mut on_call: impl FnMut(),
) -> Result<Vec<Vec<StepAccumulator>>> {
    if spec.samples == 0 || spec.batch == 0 {
        return Err(PtqdError::Stats(
            "the statistics need at least one trajectory and a batch of at least 1".into(),
        ));
    }
    if quantized.is_empty() {
        return Err(PtqdError::Stats("no quantized network to measure".into()));
    }
    let steps = sched.timesteps().len();
    let mut acc = vec![vec![StepAccumulator::default(); steps]; quantized.len()];
    let (shape, device) = (space.shape.as_slice(), &space.device);
    let noise = NoiseSource::new(spec.seed);
    let images: Vec<usize> = (0..spec.samples).collect();
    for idx in images.chunks(spec.batch) {
        let x = noise.initial(idx, shape, device)?.to_dtype(space.dtype)?;
        dmq_sched::sample(
            sched,
            x,
            |x, t, i| {
                let e_fp = fp(x, t, i, idx)?;
                for (m, q) in quantized.iter().enumerate() {
                    let e_q = q(x, t, i, idx)?.to_dtype(e_fp.dtype())?;
                    acc[m][i].add(&e_fp, &e_q).map_err(SchedError::other)?;
                }
                on_call();
                Ok(e_fp)
            },
            |i| Ok(Some(noise.step_noise(i, idx, shape, device)?)),
            |_| {},
        )?;
    }
    Ok(acc)
}
