//! Learned Equivalent Scaling (spec `dmq.md` §4): per quantized layer, a scale `γ` per input
//! channel such that the layer computes `f(Q_a(x/γ), Q_w(W·γ))`, learned against the layer's
//! full-precision output on full-precision inputs with Adam and a cosine-annealed learning rate,
//! the loss weighted over sampling steps ([`super::weighting`]). During learning both quantizers
//! take their range from the current tensors (per-batch min/max of `x/γ`, per-output-channel
//! min/max of `W·γ`), with straight-through rounding, as the reference does.

use candle_core::{DType, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use dmq_model::layers::{LayerKind, LayerRef};
use dmq_quant::config::{Granularity, LesConfig};
use dmq_quant::uniform::{dynamic_fake_quant_ste, ZeroPointRule};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::weighting::TimeWeights;

/// One layer as LES sees it.
pub struct LesLayer<'a> {
    pub path: &'a str,
    pub kind: LayerKind,
    /// The full-precision weight `W` (f32).
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub weight_bits: u8,
    pub weight_granularity: Granularity,
    /// `None`: the input stays float.
    pub act_bits: Option<u8>,
    /// Split point of the input channels (two quantizers each side, spec §5.2).
    pub split: Option<usize>,
}

/// What learning one layer's `γ` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LesReport {
    pub path: String,
    /// Mean per-sample loss (unweighted) on the evaluation rows with `γ = 1`.
    pub loss_start: f64,
    /// The same with the learned `γ`.
    pub loss_learned: f64,
    /// Range of the learned `γ`.
    pub gamma_min: f64,
    pub gamma_max: f64,
    pub seconds: f64,
    #[serde(default)]
    pub resumed: bool,
}

fn channel_axis_out(kind: LayerKind, rank: usize) -> usize {
    match kind {
        LayerKind::Conv2d { .. } => 1,
        LayerKind::Linear => rank - 1,
    }
}

/// Per-sample loss `ℓ_i`: squared error summed over the output-channel axis, averaged over the
/// remaining non-batch axes (spec §4.2; the channel axis for linear outputs too, pitfall §8.5).
pub fn per_sample_loss(
    pred: &Tensor,
    target: &Tensor,
    kind: LayerKind,
) -> candle_core::Result<Tensor> {
    let e = (pred - target)?.sqr()?;
    let e = e.sum(channel_axis_out(kind, e.rank()))?;
    if e.rank() == 1 {
        return Ok(e);
    }
    let b = e.dims()[0];
    e.reshape((b, ()))?.mean(1)
}

impl LesLayer<'_> {
    fn layer_ref<'b>(&'b self, weight: &'b Tensor) -> LayerRef<'b> {
        LayerRef {
            path: self.path,
            kind: self.kind,
            weight,
            bias: self.bias,
            input_scale: None,
        }
    }

    /// The layer's output on `x` with scale `gamma` (`[C_in]`) and both dynamic quantizers.
    pub fn quantized_forward(&self, x: &Tensor, gamma: &Tensor) -> dmq_model::Result<Tensor> {
        let lr = self.layer_ref(self.weight);
        let xs = x.broadcast_div(&lr.channel_shaped(gamma, x.rank())?)?;
        let c = gamma.elem_count();
        let gw = match self.kind {
            LayerKind::Conv2d { .. } => gamma.reshape((1, c, 1, 1))?,
            LayerKind::Linear => gamma.reshape((1, c))?,
        };
        let ws = self.weight.broadcast_mul(&gw)?;
        let x_axis = match self.kind {
            LayerKind::Conv2d { .. } => 1,
            LayerKind::Linear => x.rank() - 1,
        };
        let split = |t: &Tensor, axis: usize| -> candle_core::Result<Vec<Tensor>> {
            match self.split {
                None => Ok(vec![t.clone()]),
                Some(s) => Ok(vec![t.narrow(axis, 0, s)?, t.narrow(axis, s, c - s)?]),
            }
        };
        let err = |e: dmq_quant::uniform::QuantError| {
            dmq_model::ModelError::Source(format!("{}: {e}", self.path))
        };
        let xq = match self.act_bits {
            None => xs,
            Some(b) => {
                let parts = split(&xs, x_axis)?
                    .iter()
                    .map(|p| dynamic_fake_quant_ste(p, b, None, ZeroPointRule::Unclamped))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                Tensor::cat(&parts, x_axis)?
            }
        };
        let w_axis = match self.weight_granularity {
            Granularity::PerChannel => Some(0),
            Granularity::PerTensor => None,
        };
        let wparts = split(&ws, 1)?
            .iter()
            .map(|p| dynamic_fake_quant_ste(p, self.weight_bits, w_axis, ZeroPointRule::Clamped))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let wq = Tensor::cat(&wparts, 1)?;
        match self.kind {
            LayerKind::Conv2d { stride, padding } => {
                let y = conv2d_im2col(&xq, &wq, stride, padding)?;
                Ok(match self.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.dims()[0], 1, 1))?)?,
                    None => y,
                })
            }
            LayerKind::Linear => lr.float_op(&xq, &wq),
        }
    }

    /// The full-precision output on `x`.
    pub fn float_forward(&self, x: &Tensor) -> dmq_model::Result<Tensor> {
        self.layer_ref(self.weight).float_op(x, self.weight)
    }
}

/// A convolution as shifted slices and one matrix product. Equal to `conv2d` up to summation
/// order; used where gradients must reach the *input*: candle's CPU backward of `conv2d` with
/// respect to its input is a direct `conv_transpose2d` loop, which made LES (whose `γ` scales the
/// input) ~10× slower than its forward, while slices and a matmul differentiate cheaply.
pub fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (wd + 2 * padding - k) / stride + 1;
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    // Rows/columns ky + stride·i, i < ho, of the padded input.
    let take = |t: &Tensor, axis: usize, start: usize, n: usize| -> candle_core::Result<Tensor> {
        if stride == 1 {
            return t.narrow(axis, start, n);
        }
        let len = t.dims()[axis];
        let avail = (len - start).min(n * stride);
        let t = t.narrow(axis, start, avail)?;
        let t = if avail < n * stride {
            t.pad_with_zeros(axis, 0, n * stride - avail)?
        } else {
            t
        };
        let mut shape = t.dims().to_vec();
        shape[axis] = n;
        shape.insert(axis + 1, stride);
        t.reshape(shape)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)
    };
    let mut patches = Vec::with_capacity(k * k);
    for ky in 0..k {
        let rows = take(&xp, 2, ky, ho)?;
        for kx in 0..k {
            patches.push(take(&rows, 3, kx, wo)?);
        }
    }
    // [B, C, k·k, Ho, Wo] → [B·Ho·Wo, C·k·k] (channel-major, then ky, kx: W's layout).
    let cols = Tensor::stack(&patches, 2)?
        .permute((0, 3, 4, 1, 2))?
        .reshape((b * ho * wo, c * k * k))?;
    let y = cols.matmul(&w.reshape((o, c * k * k))?.t()?)?;
    y.reshape((b, ho, wo, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// Learning-rate of the cosine schedule at 0-based iteration `k` of `total` (PyTorch's
/// `CosineAnnealingLR` with `eta_min = 0`, stepped after every iteration).
pub fn cosine_lr(lr: f64, k: usize, total: usize) -> f64 {
    0.5 * lr * (1.0 + (std::f64::consts::PI * k as f64 / total.max(1) as f64).cos())
}

/// Rows on which the start and end losses are measured: up to 256 spread over all samples.
fn eval_rows(n: usize) -> Vec<u32> {
    let m = n.min(256);
    (0..m).map(|i| (i * n / m) as u32).collect()
}

fn mean_loss(
    layer: &LesLayer,
    x_all: &Tensor,
    gamma: &Tensor,
    rows: &[u32],
    batch: usize,
) -> dmq_model::Result<f64> {
    let mut total = 0.0;
    for chunk in rows.chunks(batch.max(1)) {
        let idx = Tensor::from_vec(chunk.to_vec(), chunk.len(), x_all.device())?;
        let x = x_all.index_select(&idx, 0)?;
        let y = layer.float_forward(&x)?;
        let yq = layer.quantized_forward(&x, gamma)?;
        let l = per_sample_loss(&yq, &y, layer.kind)?.to_dtype(DType::F64)?;
        total += l.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(total / rows.len().max(1) as f64)
}

/// Learns `γ` of `layer` on its full-precision inputs `x_all` (`[N, ..]`, f32, on the compute
/// device) whose calibrated-step buckets are `buckets` (of `n_buckets`). Returns `γ` (`[C_in]`,
/// f32, on the CPU) and a report. `seed` decorrelates the mini-batch draws of layers.
pub fn learn_scale(
    layer: &LesLayer,
    x_all: &Tensor,
    buckets: &[usize],
    n_buckets: usize,
    cfg: &LesConfig,
    seed: u64,
    mut on_iter: impl FnMut(usize),
) -> dmq_model::Result<(Tensor, LesReport)> {
    let started = std::time::Instant::now();
    let n = x_all.dims()[0];
    if n == 0 || buckets.len() != n {
        return Err(dmq_model::ModelError::Source(format!(
            "{}: LES needs one step bucket per calibration sample ({} samples, {} buckets)",
            layer.path,
            n,
            buckets.len()
        )));
    }
    let c_in = layer.weight.dims()[1];
    let dev = x_all.device().clone();
    let gamma = Var::ones(c_in, DType::F32, &dev)?;
    let rows_eval = eval_rows(n);
    let loss_start = mean_loss(layer, x_all, gamma.as_tensor(), &rows_eval, cfg.batch * 4)?;
    let mut opt = AdamW::new(
        vec![gamma.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let mut weights = TimeWeights::new(cfg.weighting, n_buckets, cfg.momentum, cfg.r);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let b = cfg.batch.min(n);
    for it in 0..cfg.iters {
        opt.set_learning_rate(cosine_lr(cfg.lr, it, cfg.iters));
        let rows: Vec<u32> = rand::seq::index::sample(&mut rng, n, b)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let idx = Tensor::from_vec(rows.clone(), b, &dev)?;
        let x = x_all.index_select(&idx, 0)?;
        let y = layer.float_forward(&x)?.detach();
        let yq = layer.quantized_forward(&x, gamma.as_tensor())?;
        let per = per_sample_loss(&yq, &y, layer.kind)?;
        let host: Vec<f64> = per.to_dtype(DType::F64)?.to_vec1()?;
        let bk: Vec<usize> = rows.iter().map(|&r| buckets[r as usize]).collect();
        let w = weights.weights(&host, &bk);
        let w = Tensor::from_vec(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), b, &dev)?;
        let loss = (per * w)?.mean_all()?;
        opt.backward_step(&loss)?;
        on_iter(it + 1);
    }
    // γ is unconstrained (as in the reference); a channel driven to 0 would divide by zero, so
    // such channels (never seen in practice, pitfall §8.8) go back to 1.
    let mut g: Vec<f32> = gamma.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
    for v in &mut g {
        if !v.is_finite() || v.abs() < 1e-6 {
            *v = 1.0;
        }
    }
    let learned = Tensor::from_vec(g.clone(), c_in, &candle_core::Device::Cpu)?;
    let loss_learned = mean_loss(
        layer,
        x_all,
        &learned.to_device(&dev)?,
        &rows_eval,
        cfg.batch * 4,
    )?;
    let report = LesReport {
        path: layer.path.to_string(),
        loss_start,
        loss_learned,
        gamma_min: g.iter().fold(f64::INFINITY, |a, &v| a.min(f64::from(v))),
        gamma_max: g
            .iter()
            .fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v))),
        seconds: started.elapsed().as_secs_f64(),
        resumed: false,
    };
    Ok((learned, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Shape};
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// Seeded normal tensor: candle's CPU `randn` cannot be seeded, and an unseeded test flakes.
    fn randn<S: Into<Shape>>(seed: u64, std: f32, shape: S) -> Tensor {
        let shape = shape.into();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0f32, std).unwrap();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| normal.sample(&mut rng))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn im2col_convolution_equals_conv2d() {
        let dev = Device::Cpu;
        for (k, stride, padding, h) in [
            (3, 1, 1, 7),
            (3, 2, 1, 8),
            (3, 2, 0, 9),
            (1, 1, 0, 5),
            (1, 2, 0, 6),
        ] {
            let x = randn(1, 1.0, (2, 3, h, h + 1));
            let w = randn(2, 1.0, (4, 3, k, k));
            let want = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let got = conv2d_im2col(&x, &w, stride, padding).unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} s {stride} p {padding}");
            let d = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                d.to_scalar::<f32>().unwrap() < 1e-4,
                "k {k} s {stride} p {padding}"
            );
        }
    }

    #[test]
    fn cosine_schedule_ends_near_zero() {
        assert_eq!(cosine_lr(1e-3, 0, 100), 1e-3);
        assert!((cosine_lr(1e-3, 50, 100) - 5e-4).abs() < 1e-12);
        assert!(cosine_lr(1e-3, 99, 100) < 1e-6);
    }

    /// With 8-bit quantizers, LES lowers the loss of a conv whose input has an outlier channel.
    #[test]
    fn learning_lowers_the_loss_on_an_outlier_channel() {
        let dev = Device::Cpu;
        let n = 64;
        let x = randn(3, 1.0, (n, 4, 6, 6));
        // Channel 0 is 50× larger than the others.
        let scale = Tensor::new(&[50f32, 1.0, 1.0, 1.0], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let x = x.broadcast_mul(&scale).unwrap();
        let w = randn(4, 0.5, (3, 4, 3, 3));
        let layer = LesLayer {
            path: "conv",
            kind: LayerKind::Conv2d {
                stride: 1,
                padding: 1,
            },
            weight: &w,
            bias: None,
            weight_bits: 8,
            weight_granularity: Granularity::PerChannel,
            act_bits: Some(8),
            split: None,
        };
        let cfg = LesConfig {
            iters: 300,
            batch: 16,
            lr: 0.05,
            ..LesConfig::default()
        };
        let buckets: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let (g, rep) = learn_scale(&layer, &x, &buckets, 4, &cfg, 1, |_| {}).unwrap();
        assert_eq!(g.dims(), [4]);
        assert!(
            rep.loss_learned < 0.5 * rep.loss_start,
            "loss {} -> {}",
            rep.loss_start,
            rep.loss_learned
        );
    }

    /// Without quantization, `f(x/γ, W·γ)` is the float layer for any γ (conv and linear).
    #[test]
    fn scaling_alone_is_the_float_layer() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[0.5f32, 2.0, 3.0, 0.25], &dev).unwrap();
        for kind in [
            LayerKind::Conv2d {
                stride: 2,
                padding: 1,
            },
            LayerKind::Linear,
        ] {
            let (x, w) = match kind {
                LayerKind::Conv2d { .. } => {
                    (randn(5, 1.0, (2, 4, 5, 5)), randn(6, 1.0, (3, 4, 3, 3)))
                }
                LayerKind::Linear => (randn(7, 1.0, (2, 7, 4)), randn(8, 1.0, (3, 4))),
            };
            let b = randn(9, 1.0, 3);
            let lr = LayerRef {
                path: "l",
                kind,
                weight: &w,
                bias: Some(&b),
                input_scale: None,
            };
            let y = lr.float_op(&x, &w).unwrap();
            let gw = match kind {
                LayerKind::Conv2d { .. } => g.reshape((1, 4, 1, 1)).unwrap(),
                LayerKind::Linear => g.reshape((1, 4)).unwrap(),
            };
            let ws = w.broadcast_mul(&gw).unwrap();
            let scaled = LayerRef {
                path: "l",
                kind,
                weight: &ws,
                bias: Some(&b),
                input_scale: Some(&g),
            };
            let ys = scaled
                .float_op(&scaled.scale_input(&x).unwrap(), &ws)
                .unwrap();
            let d = (&ys - &y).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }
}
