//! PTQD's noise statistics of one sampling step: accumulation over batches in f64 and the fit of
//! `Δ = k·ε + b_c + Δ'` (spec §2.1, §3.3).
//!
//! `ε` is the full-precision prediction, `ε̂` the quantized one, `Δ = ε̂ − ε`. The fit is one least
//! squares problem: a single slope `k` shared by all elements of the step and one intercept per
//! channel `b_c`:
//!
//! ```text
//! k   = Σ_c S_εΔ,c / Σ_c S_εε,c        (S: sums of products centred within channel c)
//! b_c = mean_c(Δ) − k⁺·mean_c(ε)       with k⁺ = max(k, 0)
//! σ_q² = Σ_c Σ (Δ − k⁺ε − b_c)² / (N − C − 1)
//! ```
//!
//! so that the corrected prediction `ε̃ = (ε̂ − b)/(1 + k⁺)` equals `ε + Δ'/(1 + k⁺)` with `Δ'`
//! zero-mean per channel: the paper's decomposition. The reference code differs in two small
//! ways, documented in `docs/methods-ptqd.md`: its slope pools all channels with one intercept
//! (`scipy.stats.linregress`), and its bias is the mean of the total error `Δ` (which includes
//! `k·E[ε_c]`); both coincide with dmq's when the channel means of `ε` are 0.
//!
//! Sums are merged batch by batch with the pairwise update of Chan, Golub and LeVeque (batch
//! means and centred co-moments), in f64, so millions of elements per step lose no precision to
//! cancellation.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{PtqdError, Result};

/// Count, means and centred co-moments of `(ε, Δ)` pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoMoments {
    pub n: u64,
    pub mean_e: f64,
    pub mean_d: f64,
    /// Σ (ε − ε̄)².
    pub s_ee: f64,
    /// Σ (Δ − Δ̄)².
    pub s_dd: f64,
    /// Σ (ε − ε̄)(Δ − Δ̄).
    pub s_ed: f64,
}

impl CoMoments {
    /// The co-moments of one batch of pairs (two passes: means, then centred sums).
    pub fn of(e: &[f64], d: &[f64]) -> Self {
        debug_assert_eq!(e.len(), d.len());
        let n = e.len().min(d.len());
        if n == 0 {
            return Self::default();
        }
        let nf = n as f64;
        let mean_e = e[..n].iter().sum::<f64>() / nf;
        let mean_d = d[..n].iter().sum::<f64>() / nf;
        let (mut s_ee, mut s_dd, mut s_ed) = (0.0, 0.0, 0.0);
        for (x, y) in e[..n].iter().zip(&d[..n]) {
            let (a, b) = (x - mean_e, y - mean_d);
            s_ee += a * a;
            s_dd += b * b;
            s_ed += a * b;
        }
        Self {
            n: n as u64,
            mean_e,
            mean_d,
            s_ee,
            s_dd,
            s_ed,
        }
    }

    /// Adds `other`'s pairs (Chan et al.'s pairwise update).
    pub fn merge(&mut self, other: &Self) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let de = other.mean_e - self.mean_e;
        let dd = other.mean_d - self.mean_d;
        let w = na * nb / n;
        self.s_ee += other.s_ee + de * de * w;
        self.s_dd += other.s_dd + dd * dd * w;
        self.s_ed += other.s_ed + de * dd * w;
        self.mean_e += de * nb / n;
        self.mean_d += dd * nb / n;
        self.n += other.n;
    }
}

/// The statistics of one sampling step, accumulated per output channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepAccumulator {
    pub channels: Vec<CoMoments>,
}

/// `[B, C, ...]` as C rows of f64 values (channel axis 1), on the host.
fn channel_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    if t.rank() < 2 {
        return Err(PtqdError::Stats(format!(
            "model outputs must be [batch, channels, ...], got shape {:?}",
            t.dims()
        )));
    }
    let c = t.dims()[1];
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((c, ()))?
        .to_vec2::<f64>()?)
}

impl StepAccumulator {
    /// Adds one batch: `eps_fp` the full-precision output, `eps_q` the quantized model's output
    /// on the same input (same shape `[B, C, ...]`). The difference is taken in f64.
    pub fn add(&mut self, eps_fp: &Tensor, eps_q: &Tensor) -> Result<()> {
        if eps_fp.dims() != eps_q.dims() {
            return Err(PtqdError::Stats(format!(
                "full-precision output {:?} and quantized output {:?} differ in shape",
                eps_fp.dims(),
                eps_q.dims()
            )));
        }
        let e = channel_rows(eps_fp)?;
        let q = channel_rows(eps_q)?;
        for (c, (ec, qc)) in e.iter().zip(&q).enumerate() {
            let d: Vec<f64> = qc.iter().zip(ec).map(|(a, b)| a - b).collect();
            self.add_values(c, ec, &d)?;
        }
        Ok(())
    }

    /// Adds pairs `(ε, Δ)` of channel `channel`; every batch must have the same channels.
    pub fn add_values(&mut self, channel: usize, e: &[f64], d: &[f64]) -> Result<()> {
        if e.len() != d.len() {
            return Err(PtqdError::Stats(format!(
                "{} values of ε but {} of Δ",
                e.len(),
                d.len()
            )));
        }
        if let Some((i, _)) = e.iter().chain(d).enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(PtqdError::Stats(format!(
                "channel {channel}: non-finite model output (value {i} of the batch)"
            )));
        }
        if channel >= self.channels.len() {
            self.channels.resize(channel + 1, CoMoments::default());
        }
        self.channels[channel].merge(&CoMoments::of(e, d));
        Ok(())
    }

    /// Adds everything `other` accumulated.
    pub fn merge(&mut self, other: &Self) {
        if other.channels.len() > self.channels.len() {
            self.channels
                .resize(other.channels.len(), CoMoments::default());
        }
        for (a, b) in self.channels.iter_mut().zip(&other.channels) {
            a.merge(b);
        }
    }

    pub fn elements(&self) -> u64 {
        self.channels.iter().map(|c| c.n).sum()
    }

    /// The least-squares fit of this step (see the module docs).
    pub fn fit(&self) -> Result<StepFit> {
        let c = self.channels.len();
        let n = self.elements();
        if c == 0 || n <= c as u64 + 1 {
            return Err(PtqdError::Stats(format!(
                "{n} values in {c} channels: too few to fit a slope and {c} intercepts"
            )));
        }
        if self.channels.iter().any(|m| m.n == 0) {
            return Err(PtqdError::Stats(
                "a channel received no values (batches with different channel counts?)".into(),
            ));
        }
        let s_ee: f64 = self.channels.iter().map(|m| m.s_ee).sum();
        let s_ed: f64 = self.channels.iter().map(|m| m.s_ed).sum();
        if s_ee <= 0.0 {
            return Err(PtqdError::Stats(
                "the full-precision outputs have zero variance within every channel: k is undefined"
                    .into(),
            ));
        }
        let k_raw = s_ed / s_ee;
        let k = k_raw.max(0.0);
        let bias: Vec<f64> = self
            .channels
            .iter()
            .map(|m| m.mean_d - k * m.mean_e)
            .collect();
        // Σ (Δ − kε − b_c)² per channel = S_ΔΔ − 2k S_εΔ + k² S_εε (b_c centres it exactly).
        let rss: f64 = self
            .channels
            .iter()
            .map(|m| (m.s_dd - 2.0 * k * m.s_ed + k * k * m.s_ee).max(0.0))
            .sum();
        let nf = n as f64;
        let eps_power = self
            .channels
            .iter()
            .map(|m| m.s_ee + m.n as f64 * m.mean_e * m.mean_e)
            .sum::<f64>()
            / nf;
        let err_mse = self
            .channels
            .iter()
            .map(|m| m.s_dd + m.n as f64 * m.mean_d * m.mean_d)
            .sum::<f64>()
            / nf;
        Ok(StepFit {
            k_raw,
            k,
            bias,
            sigma_q: (rss / (nf - c as f64 - 1.0)).sqrt(),
            eps_power,
            err_mse,
            corrected_mse: rss / nf / ((1.0 + k) * (1.0 + k)),
            elements: n,
        })
    }
}

/// The fitted statistics of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFit {
    /// The least-squares slope of Δ on ε.
    pub k_raw: f64,
    /// `max(k_raw, 0)`: what the correction divides by `1 + k` with (the reference clamps too).
    pub k: f64,
    /// Per output channel: the mean of `Δ − k·ε` (the residual's mean, which BC removes).
    pub bias: Vec<f64>,
    /// Standard deviation of the residual `Δ' = Δ − k·ε − b_c` (before dividing by `1 + k`).
    pub sigma_q: f64,
    /// `E[ε²]` of the full-precision output.
    pub eps_power: f64,
    /// `E[Δ²]`: the quantization error of the output before any correction.
    pub err_mse: f64,
    /// `E[(ε̃ − ε)²]` after CNC and BC: `Σ Δ'² / N / (1 + k)²`.
    pub corrected_mse: f64,
    /// Values the fit saw.
    pub elements: u64,
}

impl StepFit {
    /// Mean over channels of `|b_c|`, for reports.
    pub fn mean_abs_bias(&self) -> f64 {
        if self.bias.is_empty() {
            0.0
        } else {
            self.bias.iter().map(|b| b.abs()).sum::<f64>() / self.bias.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_batches_equal_one_batch() {
        let e: Vec<f64> = (0..1000)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect();
        let d: Vec<f64> = e
            .iter()
            .enumerate()
            .map(|(i, x)| 0.3 * x + ((i * 13 % 17) as f64) * 0.01 + 1e6)
            .collect();
        let whole = CoMoments::of(&e, &d);
        let mut parts = CoMoments::default();
        for (a, b) in e.chunks(77).zip(d.chunks(77)) {
            parts.merge(&CoMoments::of(a, b));
        }
        assert_eq!(parts.n, whole.n);
        for (x, y) in [
            (parts.mean_e, whole.mean_e),
            (parts.mean_d, whole.mean_d),
            (parts.s_ee, whole.s_ee),
            (parts.s_dd, whole.s_dd),
            (parts.s_ed, whole.s_ed),
        ] {
            assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{x} vs {y}");
        }
        // the large offset of Δ (1e6) does not swamp its small variance
        let direct: f64 = {
            let m = d.iter().sum::<f64>() / d.len() as f64;
            d.iter().map(|v| (v - m) * (v - m)).sum()
        };
        assert!((parts.s_dd - direct).abs() < 1e-6 * direct);
    }

    #[test]
    fn exact_affine_error_gives_exact_k_and_bias_and_zero_sigma() {
        // Δ = 0.2·ε + b_c with channel means of ε far from 0 (where a pooled single-intercept
        // slope would be biased).
        let mut acc = StepAccumulator::default();
        let bias = [0.05, -0.02, 0.01];
        for (c, b) in bias.iter().enumerate() {
            let e: Vec<f64> = (0..500)
                .map(|i| (c as f64 - 1.0) * 3.0 + ((i * 7919 % 1000) as f64 / 500.0 - 1.0))
                .collect();
            let d: Vec<f64> = e.iter().map(|x| 0.2 * x + b).collect();
            acc.add_values(c, &e, &d).unwrap();
        }
        let f = acc.fit().unwrap();
        assert!((f.k - 0.2).abs() < 1e-12, "{}", f.k);
        for (got, want) in f.bias.iter().zip(bias) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!(f.sigma_q < 1e-7, "{}", f.sigma_q);
        assert!(f.corrected_mse < 1e-14);
        assert_eq!(f.elements, 1500);
    }

    #[test]
    fn negative_slope_is_clamped_and_bias_is_the_mean_error() {
        let mut acc = StepAccumulator::default();
        let e: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        let d: Vec<f64> = e.iter().map(|x| -0.1 * x + 0.5).collect();
        acc.add_values(0, &e, &d).unwrap();
        let f = acc.fit().unwrap();
        assert!((f.k_raw + 0.1).abs() < 1e-12);
        assert_eq!(f.k, 0.0);
        let mean_d = d.iter().sum::<f64>() / 100.0;
        assert!((f.bias[0] - mean_d).abs() < 1e-12);
        // with k clamped the residual is Δ − mean Δ: its variance is Δ's
        let var_d = d.iter().map(|v| (v - mean_d).powi(2)).sum::<f64>() / (100.0 - 2.0);
        assert!((f.sigma_q.powi(2) - var_d).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut acc = StepAccumulator::default();
        assert!(acc.fit().is_err(), "empty");
        assert!(acc.add_values(0, &[1.0, 2.0], &[0.0]).is_err());
        assert!(acc.add_values(0, &[1.0, f64::NAN], &[0.0, 0.0]).is_err());
        acc.add_values(0, &[1.0, 1.0, 1.0, 1.0], &[0.0, 0.1, 0.2, 0.3])
            .unwrap();
        let err = acc.fit().unwrap_err().to_string();
        assert!(err.contains("zero variance"), "{err}");
        let a = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 3, 4, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(StepAccumulator::default().add(&a, &b).is_err());
        let flat = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(StepAccumulator::default().add(&flat, &flat).is_err());
    }

    #[test]
    fn tensor_batches_split_by_channel() {
        // [B=2, C=2, 2]: channel 0 error 0.1·ε, channel 1 error 0.1·ε + 1
        let e = Tensor::new(
            &[[[1.0f32, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 9.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let q = Tensor::new(
            &[[[1.1f32, 2.2], [4.3, 5.4]], [[5.5, 6.6], [8.7, 10.9]]],
            &Device::Cpu,
        )
        .unwrap();
        let mut acc = StepAccumulator::default();
        acc.add(&e, &q).unwrap();
        assert_eq!(acc.channels.len(), 2);
        assert_eq!(acc.channels[0].n, 4);
        let f = acc.fit().unwrap();
        assert!((f.k - 0.1).abs() < 1e-6, "{}", f.k);
        assert!(
            f.bias[0].abs() < 1e-5 && (f.bias[1] - 1.0).abs() < 1e-5,
            "{:?}",
            f.bias
        );
    }
}
