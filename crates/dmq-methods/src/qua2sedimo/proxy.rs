//! The cheap quality label (spec §B3, proxy 1): the noise-prediction error of a weight-quantized
//! model against the full-precision one on fixed calibration points `(x_t, t)` spread over the
//! sampling steps, `L(c) = mean (ε_c − ε_FP)² / mean ε_FP²`, with activations in float (the
//! paper labels weight-only configurations, A16).

use candle_core::{DType, Tensor};
use dmq_model::ctx::Ctx;
use dmq_model::unet2d::Timesteps;
use dmq_model::UNet2DModel;
use dmq_quant::calib::CalibSet;
use dmq_quant::sim::SimQuantExec;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::options::OptionTable;
use super::Q2sError;

/// The fixed evaluation points and the full-precision prediction on them.
pub struct ProxyData {
    pub x: Tensor,
    pub t: Vec<f64>,
    pub eps_fp: Tensor,
    /// `mean ε_FP²`.
    pub eps_power: f64,
    pub batch: usize,
}

/// `per_step` rows of every calibrated step of `set` (seeded choice), with `fp`'s prediction.
pub fn proxy_data(
    fp: &UNet2DModel,
    set: &CalibSet,
    per_step: usize,
    batch: usize,
    seed: u64,
) -> Result<ProxyData, Q2sError> {
    let mut steps: Vec<u32> = set.step_index.clone();
    steps.sort_unstable();
    steps.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for s in steps {
        let mut r = set.rows_of_step(s as usize);
        r.shuffle(&mut rng);
        r.truncate(per_step.max(1));
        r.sort_unstable();
        rows.extend(r);
    }
    if rows.is_empty() {
        return Err(Q2sError::Input("the calibration set is empty".into()));
    }
    let idx = Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        set.x.device(),
    )?;
    let x = set.x.index_select(&idx, 0)?;
    let t: Vec<f64> = rows.iter().map(|&r| f64::from(set.timesteps[r])).collect();
    let mut data = ProxyData {
        x,
        t,
        eps_fp: Tensor::zeros(1, DType::F32, set.x.device())?,
        eps_power: 1.0,
        batch: batch.max(1),
    };
    let eps = predict(fp, &data)?;
    data.eps_power = eps
        .to_dtype(DType::F64)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()?
        .max(f64::MIN_POSITIVE);
    data.eps_fp = eps;
    Ok(data)
}

fn predict(model: &UNet2DModel, d: &ProxyData) -> Result<Tensor, Q2sError> {
    let n = d.x.dims()[0];
    let mut outs = Vec::new();
    let mut i = 0;
    while i < n {
        let b = d.batch.min(n - i);
        let x = d.x.narrow(0, i, b)?.to_dtype(model.dtype())?;
        let y = model.forward(
            &x,
            Timesteps::PerSample(&d.t[i..i + b]),
            None,
            &Ctx::inference(),
        )?;
        outs.push(y.to_dtype(DType::F32)?);
        i += b;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Installs configuration `choice` (an option index per layer of `table`) on `model` as
/// weight-only simulated quantization; every other layer float.
pub fn install(
    model: &mut UNet2DModel,
    table: &OptionTable,
    choice: &[usize],
) -> Result<(), Q2sError> {
    let by_path: std::collections::HashMap<&str, usize> = table
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.path.as_str(), i))
        .collect();
    for mut l in model.layers_mut() {
        let exec = match by_path.get(l.path()) {
            Some(&i) => {
                let w = &table.layers[i].options[choice[i]].dequantized;
                let like = l.layer_ref().weight.clone();
                Some(SimQuantExec::with_weight(Some(w), &like, None)? as _)
            }
            None => None,
        };
        l.set_exec(exec);
    }
    Ok(())
}

/// `L(c)` of configuration `choice`; leaves `model` float again.
pub fn score(
    model: &mut UNet2DModel,
    table: &OptionTable,
    choice: &[usize],
    data: &ProxyData,
) -> Result<f64, Q2sError> {
    install(model, table, choice)?;
    let eps = predict(model, data);
    for mut l in model.layers_mut() {
        l.set_exec(None);
    }
    let d = (eps?.to_dtype(DType::F64)? - data.eps_fp.to_dtype(DType::F64)?)?;
    Ok(d.sqr()?.mean_all()?.to_scalar::<f64>()? / data.eps_power)
}
