//! PTQD's step-aware mixed precision (spec §2.4, flagged there as reconstructed from the abstract
//! and a paper note; the reference code has none): per sampling step, the lowest activation
//! width whose quantized network keeps a signal-to-noise ratio at least that of the diffusion
//! input,
//!
//! ```text
//! SNR^F(t)   = ᾱ_t / (1 − ᾱ_t)
//! SNR^Q_b(t) = E‖(1 + k_b,t)·ε‖² / E‖Δ'_b,t‖² = (1 + k)²·E[ε²] / σ_q²
//! b(t)       = min { b : SNR^Q_b(t) ≥ SNR^F(t) }, else the widest candidate
//! ```
//!
//! `SNR^F` grows as sampling proceeds while `SNR^Q` stays roughly flat, so low widths are chosen
//! for the early (noisy) steps and the wide one from some step on.
//!
//! The widths are applied with the engine's per-step activation parameters: every quantized
//! input gets one parameter set per sampling step, taken from the activation calibration at the
//! width chosen for that step ([`mix_activations`]).

use std::collections::BTreeMap;

use dmq_quant::sim::{LayerActivation, PerStepActivation};
use serde::Serialize;

use super::stats::StepFit;
use super::{PtqdError, Result};

/// SNR of the diffusion input at ᾱ = `alpha_prod`.
pub fn snr_fp(alpha_prod: f64) -> f64 {
    alpha_prod / (1.0 - alpha_prod)
}

/// SNR of the quantized prediction: corrected signal power over residual noise power
/// (infinite when the residual is exactly 0).
pub fn snr_q(fit: &StepFit) -> f64 {
    let signal = (1.0 + fit.k).powi(2) * fit.eps_power;
    let noise = fit.sigma_q * fit.sigma_q;
    if noise == 0.0 {
        f64::INFINITY
    } else {
        signal / noise
    }
}

/// The choice at one step, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepChoice {
    pub step: usize,
    pub snr_fp: f64,
    /// `(bits, SNR^Q)` of every candidate, narrowest first.
    pub snr_q: Vec<(u8, f64)>,
    pub bits: u8,
}

/// The width per step: `fits[j]` are the per-step fits of the network at `bits[j]` (any
/// order), `alpha_prods` the ᾱ of each step.
pub fn choose_bits(
    candidates: &[(u8, Vec<StepFit>)],
    alpha_prods: &[f64],
) -> Result<Vec<StepChoice>> {
    if candidates.is_empty() {
        return Err(PtqdError::Stats(
            "mixed precision needs candidate widths".into(),
        ));
    }
    let mut sorted: Vec<&(u8, Vec<StepFit>)> = candidates.iter().collect();
    sorted.sort_by_key(|(b, _)| *b);
    for (b, f) in &sorted {
        if f.len() != alpha_prods.len() {
            return Err(PtqdError::Stats(format!(
                "{} fits at {b} bits for {} steps",
                f.len(),
                alpha_prods.len()
            )));
        }
    }
    let widest = sorted.last().map(|(b, _)| *b).unwrap_or(0);
    Ok(alpha_prods
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let fp = snr_fp(a);
            let q: Vec<(u8, f64)> = sorted.iter().map(|(b, f)| (*b, snr_q(&f[i]))).collect();
            let bits = q.iter().find(|(_, s)| *s >= fp).map_or(widest, |(b, _)| *b);
            StepChoice {
                step: i,
                snr_fp: fp,
                snr_q: q,
                bits,
            }
        })
        .collect())
}

/// One activation quantizer per layer with a parameter set for every sampling step
/// `0..steps`: at step `s` the set that the calibration at width `bits[s]` uses at `s`
/// (its nearest calibrated step). `by_bits` maps each width to the layers' activations
/// calibrated at it; every width must cover the same layers and splits.
pub fn mix_activations(
    by_bits: &BTreeMap<u8, BTreeMap<String, LayerActivation>>,
    bits: &[u8],
) -> Result<BTreeMap<String, LayerActivation>> {
    let first = by_bits
        .values()
        .next()
        .ok_or_else(|| PtqdError::Stats("no calibrated activation widths to mix".into()))?;
    let mut out = BTreeMap::new();
    for (path, act) in first {
        let mut parts = Vec::new();
        for p in 0..act.parts.len() {
            let mut params = Vec::with_capacity(bits.len());
            for (s, b) in bits.iter().enumerate() {
                let layers = by_bits.get(b).ok_or_else(|| {
                    PtqdError::Stats(format!(
                        "step {s} wants {b} bits, which were not calibrated"
                    ))
                })?;
                let a = layers.get(path).ok_or_else(|| {
                    PtqdError::Stats(format!("layer {path} has no activation at {b} bits"))
                })?;
                if a.split != act.split || a.parts.len() != act.parts.len() {
                    return Err(PtqdError::Stats(format!(
                        "layer {path}: the {b}-bit activation is split differently"
                    )));
                }
                params.push(a.parts[p].for_step(s).clone());
            }
            // Models with PTS shifts are refused before this point (stage.rs).
            parts.push(PerStepActivation::new((0..bits.len()).collect(), params));
        }
        out.insert(path.clone(), LayerActivation::new(act.split, parts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmq_quant::uniform::UniformParams;

    fn fit(k: f64, sigma_q: f64) -> StepFit {
        StepFit {
            k_raw: k,
            k,
            bias: vec![0.0],
            sigma_q,
            eps_power: 1.0,
            err_mse: 0.0,
            corrected_mse: 0.0,
            elements: 100,
        }
    }

    #[test]
    fn snr_formulas_by_hand() {
        assert!((snr_fp(0.8) - 4.0).abs() < 1e-12);
        let f = StepFit {
            eps_power: 0.9,
            ..fit(0.1, 0.3)
        };
        assert!((snr_q(&f) - 1.21 * 0.9 / 0.09).abs() < 1e-12);
        assert_eq!(snr_q(&fit(0.0, 0.0)), f64::INFINITY);
    }

    #[test]
    fn low_bits_early_high_bits_late() {
        // ᾱ grows along sampling: SNR^F = 0.01, 1, 100, 10000
        let alphas: Vec<f64> = [0.01f64, 1.0, 100.0, 10000.0]
            .iter()
            .map(|s| s / (1.0 + s))
            .collect();
        // 4 bits: SNR^Q = 1/0.2² = 25; 8 bits: 1/0.005² = 40000
        let a4 = vec![fit(0.0, 0.2); 4];
        let a8 = vec![fit(0.0, 0.005); 4];
        let c = choose_bits(&[(8, a8.clone()), (4, a4.clone())], &alphas).unwrap();
        let bits: Vec<u8> = c.iter().map(|s| s.bits).collect();
        assert_eq!(bits, vec![4, 4, 8, 8]);
        assert_eq!(c[2].snr_q[0].0, 4, "narrowest first");
        // neither passes: the widest
        let a8_bad = vec![fit(0.0, 0.5); 4];
        let c = choose_bits(&[(4, a4), (8, a8_bad)], &alphas).unwrap();
        assert_eq!(c[3].bits, 8);
        assert!(choose_bits(&[], &alphas).is_err());
        assert!(choose_bits(&[(4, vec![fit(0.0, 0.1)])], &alphas).is_err());
    }

    #[test]
    fn mixing_takes_each_steps_set_from_its_width() {
        let set = |lo: f64, b: u8| UniformParams::from_range(lo, 1.0, b).unwrap();
        let act = |b: u8| {
            LayerActivation::single(PerStepActivation::new(
                vec![0, 2],
                vec![set(-1.0, b), set(-2.0, b)],
            ))
        };
        let mut by_bits = BTreeMap::new();
        for b in [4u8, 8] {
            let mut layers = BTreeMap::new();
            layers.insert("l".to_string(), act(b));
            by_bits.insert(b, layers);
        }
        let mixed = mix_activations(&by_bits, &[4, 4, 8, 8]).unwrap();
        let p = &mixed["l"].parts[0];
        assert_eq!(p.steps, vec![0, 1, 2, 3]);
        let bits: Vec<u8> = p.params.iter().map(|q| q.bits).collect();
        assert_eq!(bits, vec![4, 4, 8, 8]);
        // step 1 uses the nearest calibrated step 0 (ties to the earlier), step 3 uses 2
        assert_eq!(p.params[1], set(-1.0, 4));
        assert_eq!(p.params[3], set(-2.0, 8));
        assert!(mix_activations(&by_bits, &[4, 6]).is_err());
    }
}
