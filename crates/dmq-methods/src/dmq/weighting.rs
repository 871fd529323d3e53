//! Time-step weighting of the LES loss (spec `dmq.md` §4.3), for any number and spacing of
//! calibrated steps: a sample's bucket is the position of its sampling step among the calibrated
//! steps (the reference hard-codes 20 uniform steps of 1000, pitfall §8.6).

use dmq_quant::config::TimeWeighting;

/// The weighting state of one layer's LES run (a fresh one per layer, as in the reference).
#[derive(Debug, Clone)]
pub struct TimeWeights {
    kind: TimeWeighting,
    momentum: f64,
    r: f64,
    /// Running per-step loss `Λ_k` of `adaptive`, starting at 0.
    running: Vec<f64>,
}

impl TimeWeights {
    /// Weights over `buckets` calibrated steps.
    pub fn new(kind: TimeWeighting, buckets: usize, momentum: f64, r: f64) -> Self {
        Self {
            kind,
            momentum,
            r,
            running: vec![0.0; buckets],
        }
    }

    /// The running per-step loss (for reports and tests).
    pub fn running(&self) -> &[f64] {
        &self.running
    }

    /// Weights of one mini-batch whose samples have per-sample losses `losses` and step buckets
    /// `buckets`; `adaptive` first folds the batch into the running loss (every bucket decays,
    /// also those absent from the batch) and then weighs with the updated shares, as the
    /// reference does: `Λ ← m·Λ + (1 − m)·s`, `s_k` = the batch's **sum** of losses of step `k`,
    /// `w_i = (1 − Λ_{k_i}/Σ Λ)^r`. `linear`: `w = 1 + (1 − k/K)·r`.
    pub fn weights(&mut self, losses: &[f64], buckets: &[usize]) -> Vec<f64> {
        let k_total = self.running.len().max(1) as f64;
        match self.kind {
            TimeWeighting::Uniform => vec![1.0; losses.len()],
            TimeWeighting::Linear => buckets
                .iter()
                .map(|&k| 1.0 + (1.0 - k as f64 / k_total) * self.r)
                .collect(),
            TimeWeighting::Adaptive => {
                let mut sums = vec![0.0; self.running.len()];
                for (&l, &k) in losses.iter().zip(buckets) {
                    sums[k] += l;
                }
                for (lam, s) in self.running.iter_mut().zip(&sums) {
                    *lam = self.momentum * *lam + (1.0 - self.momentum) * s;
                }
                let total: f64 = self.running.iter().sum();
                buckets
                    .iter()
                    .map(|&k| {
                        let share = if total > 0.0 {
                            self.running[k] / total
                        } else {
                            0.0
                        };
                        (1.0 - share).max(0.0).powf(self.r)
                    })
                    .collect()
            }
        }
    }
}

/// The bucket of each calibration row: the position of its step index among the distinct
/// calibrated steps, in increasing order.
pub fn step_buckets(step_index: &[u32]) -> (Vec<usize>, usize) {
    let mut steps: Vec<u32> = step_index.to_vec();
    steps.sort_unstable();
    steps.dedup();
    let b = step_index
        .iter()
        .map(|s| steps.binary_search(s).expect("present"))
        .collect();
    (b, steps.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two updates by hand: m = 0.95, r = 20, 3 buckets.
    #[test]
    fn adaptive_matches_hand_computed_values() {
        let mut w = TimeWeights::new(TimeWeighting::Adaptive, 3, 0.95, 20.0);
        // Batch 1: losses 1.0 and 3.0 at bucket 0, 2.0 at bucket 2. Sums (4, 0, 2).
        let got = w.weights(&[1.0, 3.0, 2.0], &[0, 0, 2]);
        // Λ = 0.05·(4, 0, 2) = (0.2, 0, 0.1); shares 2/3 and 1/3.
        assert!((w.running()[0] - 0.2).abs() < 1e-15 && (w.running()[2] - 0.1).abs() < 1e-15);
        let w0 = (1.0f64 - 2.0 / 3.0).powf(20.0);
        let w2 = (1.0f64 - 1.0 / 3.0).powf(20.0);
        assert!((got[0] - w0).abs() < 1e-15 && (got[1] - w0).abs() < 1e-15);
        assert!((got[2] - w2).abs() < 1e-15);
        // Batch 2: one sample of bucket 1, loss 4. Λ = (0.19, 0.2, 0.095), Σ = 0.485.
        let got = w.weights(&[4.0], &[1]);
        assert!((w.running()[0] - 0.19).abs() < 1e-12);
        assert!((w.running()[1] - 0.2).abs() < 1e-12);
        assert!((w.running()[2] - 0.095).abs() < 1e-12);
        let want = (1.0f64 - 0.2 / 0.485).powf(20.0);
        assert!((got[0] - want).abs() < 1e-12, "{} vs {want}", got[0]);
    }

    /// The spec's examples: share 0.02 → 0.67, 0.05 → 0.36, 0.10 → 0.12 at r = 20.
    #[test]
    fn adaptive_weights_of_the_spec_examples() {
        for (share, want) in [(0.02, 0.67), (0.05, 0.36), (0.10, 0.12)] {
            let mut w = TimeWeights::new(TimeWeighting::Adaptive, 2, 0.95, 20.0);
            let got = w.weights(&[share, 1.0 - share], &[0, 1]);
            assert!((got[0] - want).abs() < 0.005, "share {share}: {}", got[0]);
        }
    }

    #[test]
    fn linear_and_uniform() {
        let mut w = TimeWeights::new(TimeWeighting::Linear, 20, 0.95, 20.0);
        let got = w.weights(&[0.0, 0.0], &[0, 19]);
        assert!(
            (got[0] - 21.0).abs() < 1e-12 && (got[1] - 2.0).abs() < 1e-12,
            "{got:?}"
        );
        let mut u = TimeWeights::new(TimeWeighting::Uniform, 4, 0.95, 20.0);
        assert_eq!(u.weights(&[5.0, 1.0], &[0, 3]), vec![1.0, 1.0]);
    }

    #[test]
    fn buckets_follow_step_positions_for_any_spacing() {
        let (b, k) = step_buckets(&[0, 0, 7, 31, 7, 99]);
        assert_eq!(k, 4);
        assert_eq!(b, vec![0, 0, 1, 2, 1, 3]);
    }
}
