//! Fidelity to the full-precision model: per-image PSNR and SSIM between images sampled from
//! the same seeds, and per-time-step noise-prediction error (MSE, cosine similarity).
//!
//! Definitions (all in f64):
//! - PSNR = 10·log10(255² / MSE) over all pixels and channels of one image pair; identical
//!   images give +∞, which aggregates count as [`PSNR_CAP_DB`] (and report how many there were).
//! - SSIM (Wang et al. 2004) as scikit-image's `structural_similarity(a, b, channel_axis=-1,
//!   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`:
//!   Gaussian window σ = 1.5 truncated at 3.5σ (11×11), K1 = 0.01, K2 = 0.03, the SSIM map
//!   averaged over the pixels whose window lies inside the image (5-pixel border cropped), then
//!   over the three channels.

use candle_core::{DType, Tensor};
use image::RgbImage;

/// Value used for identical pairs when PSNRs are averaged.
pub const PSNR_CAP_DB: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum FidelityError {
    #[error("image {index}: sizes differ ({a:?} vs {b:?})")]
    SizeMismatch {
        index: usize,
        a: (u32, u32),
        b: (u32, u32),
    },
    #[error("{0} reference images but {1} test images: pairs are formed by seed index")]
    CountMismatch(usize, usize),
    #[error("step {step}: noise predictions have different shapes {a:?} and {b:?}")]
    Shape {
        step: usize,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    #[error("SSIM needs images of at least 11x11 pixels, got {0}x{1}")]
    TooSmall(u32, u32),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, FidelityError>;

/// PSNR in dB of one image pair (8-bit data range).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = a.as_raw().len() as f64;
    let sse: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    if sse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / (sse / n)).log10()
    }
}

fn gaussian_kernel() -> [f64; 11] {
    let sigma = 1.5f64;
    let mut k = [0.0; 11];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - 5.0;
        *v = (-x * x / (2.0 * sigma * sigma)).exp();
    }
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Separable Gaussian filter evaluated only where the window fits ("valid" region).
fn filter_valid(x: &[f64], w: usize, h: usize, k: &[f64; 11]) -> (Vec<f64>, usize, usize) {
    let (ow, oh) = (w - 10, h - 10);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for ox in 0..ow {
            rows[y * ow + ox] = (0..11).map(|i| k[i] * x[y * w + ox + i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for oy in 0..oh {
        for ox in 0..ow {
            out[oy * ow + ox] = (0..11).map(|i| k[i] * rows[(oy + i) * ow + ox]).sum();
        }
    }
    (out, ow, oh)
}

/// Mean SSIM of one image pair over the three channels.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    let (w, h) = a.dimensions();
    if w < 11 || h < 11 {
        return Err(FidelityError::TooSmall(w, h));
    }
    let (w, h) = (w as usize, h as usize);
    let k = gaussian_kernel();
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let mut total = 0.0;
    for c in 0..3 {
        let x: Vec<f64> = a
            .as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let y: Vec<f64> = b
            .as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
        let (ux, _, _) = filter_valid(&x, w, h, &k);
        let (uy, _, _) = filter_valid(&y, w, h, &k);
        let (uxx, _, _) = filter_valid(&xx, w, h, &k);
        let (uyy, _, _) = filter_valid(&yy, w, h, &k);
        let (uxy, _, _) = filter_valid(&xy, w, h, &k);
        let n = ux.len();
        let mut sum = 0.0;
        for i in 0..n {
            let vx = uxx[i] - ux[i] * ux[i];
            let vy = uyy[i] - uy[i] * uy[i];
            let vxy = uxy[i] - ux[i] * uy[i];
            sum += ((2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2))
                / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
        }
        total += sum / n as f64;
    }
    Ok(total / 3.0)
}

/// PSNR/SSIM of a test set against a reference set, paired by index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairReport {
    pub pairs: usize,
    pub psnr_mean_db: f64,
    pub psnr_min_db: f64,
    /// Pairs that are pixel-identical (PSNR +∞, counted as `PSNR_CAP_DB` in the mean).
    pub identical: usize,
    pub ssim_mean: f64,
    pub ssim_min: f64,
    pub psnr_db: Vec<f64>,
    pub ssim: Vec<f64>,
}

pub fn compare_sets(reference: &[RgbImage], test: &[RgbImage]) -> Result<PairReport> {
    if reference.len() != test.len() {
        return Err(FidelityError::CountMismatch(reference.len(), test.len()));
    }
    let mut psnrs = Vec::with_capacity(reference.len());
    let mut ssims = Vec::with_capacity(reference.len());
    for (i, (a, b)) in reference.iter().zip(test).enumerate() {
        if a.dimensions() != b.dimensions() {
            return Err(FidelityError::SizeMismatch {
                index: i,
                a: a.dimensions(),
                b: b.dimensions(),
            });
        }
        psnrs.push(psnr(a, b).min(PSNR_CAP_DB));
        ssims.push(ssim(a, b)?);
    }
    let n = psnrs.len().max(1) as f64;
    Ok(PairReport {
        pairs: psnrs.len(),
        psnr_mean_db: psnrs.iter().sum::<f64>() / n,
        psnr_min_db: psnrs.iter().cloned().fold(f64::INFINITY, f64::min),
        identical: psnrs.iter().filter(|&&p| p >= PSNR_CAP_DB).count(),
        ssim_mean: ssims.iter().sum::<f64>() / n,
        ssim_min: ssims.iter().cloned().fold(f64::INFINITY, f64::min),
        psnr_db: psnrs,
        ssim: ssims,
    })
}

/// Noise-prediction error of a test model against the reference, per sampling step.
#[derive(Debug, Clone, Default)]
pub struct StepErrors {
    /// Per step: (sum of squared errors, element count, sum of per-sample cosines, sample count).
    acc: Vec<(f64, u64, f64, u64)>,
    /// Per step: sum of `test − reference` per channel (axis 1), for the mean error per channel.
    channel_sum: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StepErrorRow {
    pub step: usize,
    pub mse: f64,
    pub cosine: f64,
    pub samples: u64,
    /// Mean of `test − reference` per channel (axis 1): a systematic offset that a deterministic
    /// sampler integrates over the steps into a colour cast, while adding little to `mse`.
    pub channel_bias: Vec<f64>,
}

impl StepErrors {
    /// Adds one batch of predictions `[B, ...]` at step `step`.
    pub fn add(&mut self, step: usize, reference: &Tensor, test: &Tensor) -> Result<()> {
        if reference.dims() != test.dims() {
            return Err(FidelityError::Shape {
                step,
                a: reference.dims().to_vec(),
                b: test.dims().to_vec(),
            });
        }
        if self.acc.len() <= step {
            self.acc.resize(step + 1, (0.0, 0, 0.0, 0));
        }
        let b = reference.dims()[0];
        let r = reference.to_dtype(DType::F64)?.reshape((b, ()))?;
        let t = test.to_dtype(DType::F64)?.reshape((b, ()))?;
        let sse = (&r - &t)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let dot = (&r * &t)?.sum(1)?.to_vec1::<f64>()?;
        let nr = r.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
        let nt = t.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
        let cos: f64 = (0..b)
            .map(|i| {
                let d = nr[i] * nt[i];
                if d == 0.0 {
                    if nr[i] == nt[i] {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    dot[i] / d
                }
            })
            .sum();
        if self.channel_sum.len() <= step {
            self.channel_sum.resize(step + 1, Vec::new());
        }
        if reference.rank() >= 2 {
            let c = reference.dims()[1];
            let d = (test.to_dtype(DType::F64)? - reference.to_dtype(DType::F64)?)?
                .reshape((b, c, ()))?
                .sum(2)?
                .sum(0)?
                .to_vec1::<f64>()?;
            let sums = &mut self.channel_sum[step];
            if sums.len() != c {
                *sums = vec![0.0; c];
            }
            for (s, v) in sums.iter_mut().zip(d) {
                *s += v;
            }
        }
        let e = &mut self.acc[step];
        e.0 += sse;
        e.1 += r.elem_count() as u64;
        e.2 += cos;
        e.3 += b as u64;
        Ok(())
    }

    pub fn rows(&self) -> Vec<StepErrorRow> {
        self.acc
            .iter()
            .enumerate()
            .filter(|(_, e)| e.1 > 0)
            .map(|(step, e)| {
                let sums = self.channel_sum.get(step).cloned().unwrap_or_default();
                let per_channel = e.1 as f64 / sums.len().max(1) as f64;
                StepErrorRow {
                    step,
                    mse: e.0 / e.1 as f64,
                    cosine: e.2 / e.3 as f64,
                    samples: e.3,
                    channel_bias: sums.iter().map(|s| s / per_channel).collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn img(w: u32, h: u32, f: impl Fn(u32, u32, usize) -> u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([f(x, y, 0), f(x, y, 1), f(x, y, 2)])
        })
    }

    #[test]
    fn psnr_by_hand() {
        let a = img(4, 4, |_, _, _| 100);
        let b = img(4, 4, |_, _, _| 110);
        // MSE = 100 -> 10 log10(65025 / 100)
        assert!((psnr(&a, &b) - 10.0 * (650.25f64).log10()).abs() < 1e-12);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
    }

    #[test]
    fn ssim_identical_is_one_and_constant_images_by_hand() {
        let a = img(16, 16, |x, y, c| {
            ((x * 13 + y * 7 + c as u32 * 29) % 256) as u8
        });
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        // Constant images: variances vanish, SSIM = (2ab + C1) / (a² + b² + C1).
        let p = img(12, 12, |_, _, _| 50);
        let q = img(12, 12, |_, _, _| 150);
        let c1 = (0.01f64 * 255.0).powi(2);
        let expect = (2.0 * 50.0 * 150.0 + c1) / (50.0f64 * 50.0 + 150.0 * 150.0 + c1);
        assert!((ssim(&p, &q).unwrap() - expect).abs() < 1e-9);
        assert!(matches!(
            ssim(&img(8, 8, |_, _, _| 0), &img(8, 8, |_, _, _| 0)),
            Err(FidelityError::TooSmall(8, 8))
        ));
    }

    #[test]
    fn compare_sets_counts_identical_pairs() {
        let a = vec![
            img(12, 12, |x, _, _| x as u8 * 20),
            img(12, 12, |_, y, _| y as u8 * 20),
        ];
        let mut b = a.clone();
        b[1].put_pixel(3, 3, image::Rgb([0, 0, 0]));
        let r = compare_sets(&a, &b).unwrap();
        assert_eq!(r.identical, 1);
        assert_eq!(r.psnr_db[0], PSNR_CAP_DB);
        assert!(r.psnr_db[1] < PSNR_CAP_DB && r.ssim[1] < 1.0);
        assert!(compare_sets(&a, &b[..1]).is_err());
    }

    #[test]
    fn step_errors_mse_and_cosine() {
        let d = Device::Cpu;
        let r = Tensor::new(&[[1.0f32, 0.0], [0.0, 2.0]], &d).unwrap();
        let t = Tensor::new(&[[2.0f32, 0.0], [1.0, 0.0]], &d).unwrap();
        let mut e = StepErrors::default();
        e.add(3, &r, &t).unwrap();
        let rows = e.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].step, 3);
        // squared errors 1 + 0 + 1 + 4 = 6 over 4 elements; cosines 1 and 0
        assert!((rows[0].mse - 1.5).abs() < 1e-12);
        assert!((rows[0].cosine - 0.5).abs() < 1e-12);
    }

    #[test]
    fn step_errors_channel_bias_by_hand() {
        let d = Device::Cpu;
        // [B=2, C=2, 2]: test − reference is +1 everywhere in channel 0 of both samples, and
        // −3, +1 in channel 1 of sample 0, 0, 0 in sample 1 → bias [1, −0.5].
        let r = Tensor::zeros((2, 2, 2), DType::F32, &d).unwrap();
        let t = Tensor::new(
            &[[[1.0f32, 1.0], [-3.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]],
            &d,
        )
        .unwrap();
        let mut e = StepErrors::default();
        e.add(0, &r, &t).unwrap();
        e.add(0, &r, &t).unwrap();
        let bias = &e.rows()[0].channel_bias;
        assert_eq!(bias.len(), 2);
        assert!(
            (bias[0] - 1.0).abs() < 1e-12 && (bias[1] + 0.5).abs() < 1e-12,
            "{bias:?}"
        );
    }
}
