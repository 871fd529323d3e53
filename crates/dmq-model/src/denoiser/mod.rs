//! One face for every denoiser dmq can quantize (`UNet2DModel`, `UNet2DConditionModel`,
//! `DiTTransformer2DModel`, `PixArtTransformer2DModel`): the quantization engine, the methods
//! and the CLI see a [`DenoiserModel`] and never which class it is. What differs between the
//! classes (their conditioning, their reconstruction units) is stated here once.

mod any;
mod class;
mod cond;
mod units;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

pub use any::{Denoiser, Net};
pub use class::DenoiserClass;
pub use cond::Conditioning;

use crate::ctx::Ctx;
use crate::error::{ModelError, Result};
use crate::layers::LayerMut;
use crate::unet2d::units::Unit;
use crate::unet2d::Timesteps;

/// What the engine needs of a denoiser. Object safe: passes take `&mut dyn DenoiserModel`.
pub trait DenoiserModel {
    /// The diffusers class name (`UNet2DModel`, `UNet2DConditionModel`, ...).
    fn class(&self) -> DenoiserClass;

    /// The model output for `x` (`[B, C, H, W]`) at `timesteps` under `cond` (one row per
    /// sample). With learned sigma the output has the variance channels after the prediction:
    /// see [`DenoiserModel::prediction_channels`].
    fn forward_cond(
        &self,
        x: &Tensor,
        timesteps: Timesteps,
        cond: &Conditioning,
        ctx: &Ctx,
    ) -> Result<Tensor>;

    /// Every conv and linear layer in traced forward order, under its checkpoint path.
    fn layers_mut(&mut self) -> Vec<LayerMut<'_>>;

    /// Checkpoint paths of every conv and linear layer, in forward order.
    fn layer_paths(&mut self) -> Vec<String> {
        self.layers_mut()
            .iter()
            .map(|l| l.path().to_string())
            .collect()
    }

    /// The reconstruction units in forward order (they cover every layer exactly once).
    fn units(&self) -> Vec<Unit>;

    /// Runs one unit alone on inputs captured by a capturing forward.
    fn unit_forward(&self, unit: &str, inputs: &[Tensor], ctx: &Ctx) -> Result<Tensor>;

    /// Layers whose input is a raw skip concatenation, with the channels of its first part.
    fn split_points(&self) -> BTreeMap<String, usize> {
        BTreeMap::new()
    }

    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;

    /// `[C, H, W]` of one model input at the config's sample size (`None`: no sample size).
    fn sample_shape(&self) -> Option<[usize; 3]>;

    /// The leading output channels that are the scheduler's prediction (the rest, with learned
    /// sigma, is the variance DDIM/DDPM here ignore).
    fn prediction_channels(&self) -> usize;

    /// Scalar parameters of the checkpoint.
    fn num_params(&self) -> u64;

    /// One forward on a zero input of resolution `res` with placeholder conditioning (a class
    /// label 0, zero text embeddings): what `inspect` traces to count layers and multiply-adds.
    fn example_forward(&self, res: usize, ctx: &Ctx) -> Result<Tensor>;

    /// The inputs of each of `units` in one forward, stopping at the last of them in forward
    /// order (a unit the forward never reaches is an error).
    fn capture_inputs_with(
        &self,
        units: &[String],
        x: &Tensor,
        timesteps: Timesteps,
        cond: &Conditioning,
        step: Option<usize>,
    ) -> Result<BTreeMap<String, Vec<Tensor>>> {
        capture_many(self.units(), units, step, |ctx| {
            self.forward_cond(x, timesteps, cond, ctx)
        })
    }
}

/// Shared by every denoiser: one capturing forward (`run`) keeping the inputs of `units`.
pub(crate) fn capture_many(
    all_units: Vec<Unit>,
    units: &[String],
    step: Option<usize>,
    run: impl FnOnce(&Ctx) -> Result<Tensor>,
) -> Result<BTreeMap<String, Vec<Tensor>>> {
    // Stop after the last requested point in forward order: units and layers are ordered
    // separately (a unit may share its path with its only layer), so a mixed request runs
    // the whole forward.
    let unit_order: Vec<String> = all_units.iter().map(|u| u.path.clone()).collect();
    let layer_order: Vec<String> = all_units.into_iter().flat_map(|u| u.layers).collect();
    let last_in = |order: &[String]| -> Option<String> {
        let pos: Option<Vec<usize>> = units
            .iter()
            .map(|u| order.iter().position(|o| o == u))
            .collect();
        pos.and_then(|p| p.into_iter().max())
            .map(|i| order[i].clone())
    };
    let last = last_in(&unit_order).or_else(|| last_in(&layer_order));
    let ctx = Ctx::capturing_many(units, last.as_deref(), step);
    match run(&ctx) {
        Err(ModelError::Captured(_)) | Ok(_) => {}
        Err(e) => return Err(e),
    }
    let found = ctx.take_all_captured();
    if let Some(missing) = units.iter().find(|u| !found.contains_key(*u)) {
        return Err(ModelError::Source(format!(
            "the forward pass never reached unit `{missing}`"
        )));
    }
    Ok(found)
}
