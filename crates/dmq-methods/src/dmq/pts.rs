//! Power-of-Two Scaling by voting (spec `dmq.md` §6): for one quantizer input (all calibration
//! samples of one sampling step) and its per-tensor `(Δ, z)`, every sample votes for the factor
//! `2^(−s)`, `s = 0..=S`, whose step `Δ·2^(−s)` quantizes its channel with the smallest mean
//! squared error; a channel takes the most voted factor when at least `κ` of the samples agree,
//! else factor 1. The engine applies the result ([`dmq_quant::act_calib::ShiftVoter`]).

use candle_core::{DType, Tensor};
use dmq_quant::act_calib::ShiftVoter;
use dmq_quant::fused::FakeQuantPerTensor;
use dmq_quant::uniform::UniformParams;

/// DMQ's voter.
#[derive(Debug, Clone)]
pub struct PtsVoter {
    /// Largest shift `S` (3: factors 1, 1/2, 1/4, 1/8).
    pub max_shift: u8,
    /// Vote share `κ` needed to use the mode (0.85).
    pub threshold: f64,
}

/// Each sample's best shift per channel from `errors[s][n][c]`: the smallest error, ties to the
/// larger shift (the reference's `argmin` over factors in increasing order picks the first).
pub fn best_shifts(errors: &[Vec<Vec<f64>>]) -> Vec<Vec<u8>> {
    let (n, c) = (errors[0].len(), errors[0].first().map_or(0, |r| r.len()));
    let mut best = vec![vec![0u8; c]; n];
    for (i, row) in best.iter_mut().enumerate() {
        for (ch, b) in row.iter_mut().enumerate() {
            let mut arg = errors.len() - 1;
            for s in (0..errors.len()).rev() {
                if errors[s][i][ch] < errors[arg][i][ch] {
                    arg = s;
                }
            }
            *b = arg as u8;
        }
    }
    best
}

/// The vote (§6.3): per channel the most frequent best shift (ties to the larger shift, as
/// `torch.mode` returns the smallest factor), used when its share is at least `threshold`,
/// else 0.
pub fn vote(best: &[Vec<u8>], max_shift: u8, threshold: f64) -> Vec<u8> {
    let n = best.len();
    let c = best.first().map_or(0, |r| r.len());
    (0..c)
        .map(|ch| {
            let mut counts = vec![0usize; max_shift as usize + 1];
            for row in best {
                counts[row[ch] as usize] += 1;
            }
            let mut mode = counts.len() - 1;
            for s in (0..counts.len()).rev() {
                if counts[s] > counts[mode] {
                    mode = s;
                }
            }
            if n > 0 && counts[mode] as f64 / n as f64 >= threshold {
                mode as u8
            } else {
                0
            }
        })
        .collect()
}

impl PtsVoter {
    /// `errors[s][n][c]`: mean squared quantization error of sample `n`, channel `c` with step
    /// `Δ·2^(−s)` (same zero point), in f64.
    pub fn errors(
        &self,
        x: &Tensor,
        axis: usize,
        params: &UniformParams,
    ) -> dmq_model::Result<Vec<Vec<Vec<f64>>>> {
        let err = |e: dmq_quant::uniform::QuantError| dmq_model::ModelError::Source(e.to_string());
        let x = x.to_dtype(DType::F32)?;
        let x = if axis == 1 { x } else { x.transpose(1, axis)? };
        let (n, c) = (x.dims()[0], x.dims()[1]);
        let x = x.contiguous()?.reshape((n, c, ()))?;
        let mut out = Vec::new();
        for s in 0..=self.max_shift {
            let step = params.scale[0] / (1u32 << s) as f32;
            let op = FakeQuantPerTensor::from_parts(step, params.zero_point[0], params.bits)
                .map_err(err)?;
            let q = op.forward(&x).map_err(err)?;
            let e = (&x - &q)?.sqr()?.to_dtype(DType::F64)?.mean(2)?;
            out.push(e.to_vec2::<f64>()?);
        }
        Ok(out)
    }
}

impl ShiftVoter for PtsVoter {
    fn vote(&self, x: &Tensor, axis: usize, params: &UniformParams) -> dmq_model::Result<Vec<u8>> {
        let errors = self.errors(x, axis, params)?;
        Ok(vote(&best_shifts(&errors), self.max_shift, self.threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Channel 0 spans the whole range (an outlier channel: factor 1); channel 1 is small, so
    /// finer steps fit it better (factor 1/8, the finest that still covers it); channel 2 is
    /// small in 9 of 10 samples (share 0.9 ≥ 0.85: voted) and channel 3 in 8 of 10 (0.8 < 0.85:
    /// back to factor 1).
    #[test]
    fn votes_on_constructed_inputs() {
        let dev = Device::Cpu;
        let n = 10;
        let hw = 16;
        let mut data = Vec::new();
        for i in 0..n {
            for ch in 0..4 {
                for k in 0..hw {
                    let t = (k as f32 / (hw - 1) as f32) * 2.0 - 1.0; // [-1, 1]
                    let big = match ch {
                        0 => true,
                        1 => false,
                        2 => i == 0,
                        _ => i < 2,
                    };
                    data.push(if big { 100.0 * t } else { 3.0 * t + 0.37 });
                }
            }
        }
        let x = Tensor::from_vec(data, (n, 4, 4, 4), &dev).unwrap();
        // Per-tensor range [-100, 100] at 8 bits: Δ = 200/255, z = 128 (rounded).
        let params = UniformParams::from_range(-100.0, 100.0, 8).unwrap();
        let voter = PtsVoter {
            max_shift: 3,
            threshold: 0.85,
        };
        let shifts = voter.vote(&x, 1, &params).unwrap();
        assert_eq!(shifts, vec![0, 3, 3, 0]);
    }

    #[test]
    fn vote_ties_and_threshold_by_hand() {
        // 4 samples, 2 channels. Channel 0: best shifts 2,2,2,1 → mode 2, share 0.75.
        // Channel 1: 1,1,3,3 → tie between 1 and 3 → 3 (larger shift), share 0.5.
        let best = vec![vec![2, 1], vec![2, 1], vec![2, 3], vec![1, 3]];
        assert_eq!(vote(&best, 3, 0.75), vec![2, 0]);
        assert_eq!(vote(&best, 3, 0.5), vec![2, 3]);
        assert_eq!(vote(&best, 3, 0.8), vec![0, 0]);
        // Equal errors pick the larger shift; a strictly smaller error wins.
        let errors = vec![
            vec![vec![1.0, 0.5]],
            vec![vec![1.0, 0.7]],
            vec![vec![1.0, 0.9]],
        ];
        assert_eq!(best_shifts(&errors), vec![vec![2, 0]]);
    }
}
