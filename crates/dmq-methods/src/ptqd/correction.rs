//! PTQD's corrections of the quantized noise prediction as pure functions, and the
//! [`OutputCorrection`] that applies them in dmq-sched's sampling loop.
//!
//! With the fit `ε̂ = (1 + k)·ε + b_c + Δ'` of one step ([`super::stats`]):
//!
//! * CNC (correlated noise correction) divides by `1 + k`;
//! * BC (bias correction) subtracts `b_c` per channel, before the division (as the reference
//!   sampler does, `ddim.py:630-631`): `ε̃ = (ε̂ − b)/(1 + k) = ε + Δ'/(1 + k)`;
//! * VSC (variance schedule calibration) tells the scheduler the variance left in `ε̃`, which
//!   it takes out of its own noise ([`dmq_sched::correction`]).
//!
//! Any subset may be switched on (the ablation). The residual variance VSC uses is the variance
//! of the uncorrelated residual in the output the scheduler gets: `σ_q²/(1 + k)²` with CNC,
//! `σ_q²` without it (the correlated part `k·ε` is not noise and is never counted as such).

use std::collections::BTreeMap;
use std::fmt;

use candle_core::Tensor;
use dmq_quant::config::PtqdPart;
use dmq_sched::{OutputCorrection, SchedError};

use super::store::{PtqdSet, StepStats};
use super::{PtqdError, Result};

/// Which corrections are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    pub cnc: bool,
    pub bc: bool,
    pub vsc: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        cnc: true,
        bc: true,
        vsc: true,
    };
    pub const NONE: Parts = Parts {
        cnc: false,
        bc: false,
        vsc: false,
    };

    pub fn from_list(parts: &[PtqdPart]) -> Self {
        Self {
            cnc: parts.contains(&PtqdPart::Cnc),
            bc: parts.contains(&PtqdPart::Bc),
            vsc: parts.contains(&PtqdPart::Vsc),
        }
    }

    pub fn to_list(self) -> Vec<PtqdPart> {
        PtqdPart::ALL
            .into_iter()
            .filter(|p| match p {
                PtqdPart::Cnc => self.cnc,
                PtqdPart::Bc => self.bc,
                PtqdPart::Vsc => self.vsc,
            })
            .collect()
    }

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }

    /// `none`, `all`, or a comma-separated subset of `cnc`, `bc`, `vsc` (each at most once).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "none" => return Ok(Self::NONE),
            "all" => return Ok(Self::ALL),
            _ => {}
        }
        let mut list = Vec::new();
        for name in s.split(',').map(str::trim) {
            let part = PtqdPart::parse(name).ok_or_else(|| {
                PtqdError::Protocol(format!(
                    "PTQD parts `{s}`: unknown part `{name}`; expected none, all, or a \
                     comma-separated list of cnc, bc, vsc"
                ))
            })?;
            if list.contains(&part) {
                return Err(PtqdError::Protocol(format!(
                    "PTQD parts `{s}`: `{name}` is listed twice"
                )));
            }
            list.push(part);
        }
        Ok(Self::from_list(&list))
    }
}

impl fmt::Display for Parts {
    /// `cnc,bc,vsc` (in that order), or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.to_list().iter().map(|p| p.name()).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// `(ε̂ − b)/(1 + k)` with `bias` (one value per channel, axis 1) subtracted when given and the
/// division done when `k` is given. Arithmetic in the output's dtype (f32 stays f32), scalars f64.
pub fn correct_output(output: &Tensor, k: Option<f64>, bias: Option<&[f64]>) -> Result<Tensor> {
    let mut x = output.clone();
    if let Some(b) = bias {
        if output.rank() < 2 || output.dims()[1] != b.len() {
            return Err(PtqdError::Stats(format!(
                "bias has {} channels, the model output has shape {:?}",
                b.len(),
                output.dims()
            )));
        }
        let mut shape = vec![1; output.rank()];
        shape[1] = b.len();
        let bt = Tensor::from_vec(b.to_vec(), shape, output.device())?.to_dtype(output.dtype())?;
        x = x.broadcast_sub(&bt)?;
    }
    if let Some(k) = k {
        if !(k.is_finite() && k > -1.0) {
            return Err(PtqdError::Stats(format!("1 + k must be positive, k = {k}")));
        }
        x = x.affine(1.0 / (1.0 + k), 0.0)?;
    }
    Ok(x)
}

/// The residual variance VSC absorbs at a step with residual standard deviation `sigma_q` and
/// slope `k`: `σ_q²/(1 + k)²` with CNC on, `σ_q²` without; 0 when VSC is off.
pub fn residual_variance(sigma_q: f64, k: f64, parts: Parts) -> f64 {
    if !parts.vsc {
        return 0.0;
    }
    let s2 = sigma_q * sigma_q;
    if parts.cnc {
        s2 / ((1.0 + k) * (1.0 + k))
    } else {
        s2
    }
}

/// PTQD's correction of one statistics set, keyed by the timestep the sampler is at.
#[derive(Debug, Clone)]
pub struct PtqdCorrection {
    parts: Parts,
    by_timestep: BTreeMap<usize, StepStats>,
}

impl PtqdCorrection {
    /// The correction `parts` of `set`. The caller must have checked that the sampler's protocol
    /// is the set's ([`super::store::PtqdSection::set_for`]); a timestep the set does not know is
    /// still an error at sampling time, never skipped.
    pub fn new(set: &PtqdSet, parts: Parts) -> Self {
        Self {
            parts,
            by_timestep: set.steps.iter().map(|s| (s.timestep, s.clone())).collect(),
        }
    }

    pub fn parts(&self) -> Parts {
        self.parts
    }

    fn stats(&self, index: usize, timestep: usize) -> dmq_sched::Result<&StepStats> {
        self.by_timestep.get(&timestep).ok_or_else(|| {
            SchedError::other(format!(
                "PTQD has no statistics for timestep {timestep} (sampling step {index}): the \
                 statistics belong to another sampling protocol"
            ))
        })
    }
}

impl OutputCorrection for PtqdCorrection {
    fn correct(&self, index: usize, timestep: usize, output: &Tensor) -> dmq_sched::Result<Tensor> {
        let s = self.stats(index, timestep)?;
        let k = self.parts.cnc.then_some(s.fit.k);
        let bias = self.parts.bc.then_some(s.fit.bias.as_slice());
        correct_output(output, k, bias).map_err(SchedError::other)
    }

    fn residual_variance(&self, index: usize, timestep: usize) -> dmq_sched::Result<f64> {
        let s = self.stats(index, timestep)?;
        Ok(residual_variance(s.fit.sigma_q, s.fit.k, self.parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn parts_parse_and_print() {
        assert_eq!(Parts::parse("cnc,bc,vsc").unwrap(), Parts::ALL);
        assert_eq!(Parts::parse("all").unwrap(), Parts::ALL);
        assert_eq!(Parts::parse("none").unwrap(), Parts::NONE);
        let p = Parts::parse(" vsc , cnc").unwrap();
        assert_eq!((p.cnc, p.bc, p.vsc), (true, false, true));
        assert_eq!(p.to_string(), "cnc,vsc");
        assert_eq!(Parts::NONE.to_string(), "none");
        let e = Parts::parse("cnc,bias").unwrap_err().to_string();
        assert!(e.contains("bias") && e.contains("cnc, bc, vsc"), "{e}");
        assert!(Parts::parse("bc,bc")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(Parts::parse("").is_err());
        assert_eq!(Parts::from_list(&Parts::ALL.to_list()), Parts::ALL);
    }

    #[test]
    fn correction_formula_per_channel() {
        // [1, 2, 2]: channel biases 0.1 and −0.2, k = 0.25
        let out = Tensor::new(&[[[1.0f64, 2.0], [3.0, -1.0]]], &Device::Cpu).unwrap();
        let got = correct_output(&out, Some(0.25), Some(&[0.1, -0.2]))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want = [
            (1.0 - 0.1) / 1.25,
            (2.0 - 0.1) / 1.25,
            (3.0 + 0.2) / 1.25,
            (-1.0 + 0.2) / 1.25,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        // each part alone
        let only_k = correct_output(&out, Some(0.25), None).unwrap();
        assert!((only_k.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0] - 0.8).abs() < 1e-15);
        let only_b = correct_output(&out, None, Some(&[0.1, -0.2])).unwrap();
        assert!((only_b.flatten_all().unwrap().to_vec1::<f64>().unwrap()[3] + 0.8).abs() < 1e-15);
        // f32 stays f32
        let f = out.to_dtype(DType::F32).unwrap();
        assert_eq!(
            correct_output(&f, Some(0.25), Some(&[0.1, -0.2]))
                .unwrap()
                .dtype(),
            DType::F32
        );
        // wrong channel count and k ≤ −1 are errors
        assert!(correct_output(&out, None, Some(&[0.1])).is_err());
        assert!(correct_output(&out, Some(-1.0), None).is_err());
    }

    #[test]
    fn residual_variance_follows_the_parts() {
        assert!((residual_variance(0.2, 0.25, Parts::ALL) - 0.04 / 1.5625).abs() < 1e-15);
        let no_cnc = Parts {
            cnc: false,
            ..Parts::ALL
        };
        assert!((residual_variance(0.2, 0.25, no_cnc) - 0.04).abs() < 1e-15);
        let no_vsc = Parts {
            vsc: false,
            ..Parts::ALL
        };
        assert_eq!(residual_variance(0.2, 0.25, no_vsc), 0.0);
    }
}
