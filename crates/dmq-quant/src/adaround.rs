//! AdaRound: learned rounding of weights (spec `docs/methods/dmq.md` §1.2, used by block
//! reconstruction §3.3).
//!
//! Instead of rounding `w/Δ` to nearest, every weight learns whether to round down or up. A
//! continuous variable `V` (one per weight element) is relaxed through the rectified sigmoid
//! `h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)`, ζ = 1.1, γ = −0.1, which reaches 0 and 1 exactly for
//! finite `V` (a plain sigmoid never would), and
//!
//! ```text
//! soft:  ŵ = Δ·(clamp(floor(w/Δ) + h(V)      + z, 0, 2^b − 1) − z)    (during optimisation)
//! hard:  ŵ = Δ·(clamp(floor(w/Δ) + 1[V ≥ 0] + z, 0, 2^b − 1) − z)    (afterwards)
//! ```
//!
//! A regulariser `λ·Σ(1 − |2h(V) − 1|^β)` (λ = 0.01) pushes every `h` to 0 or 1 so that soft and
//! hard agree at the end; β anneals from 20 to 2 after a warm-up during which the regulariser is
//! off ([`BetaSchedule`]).

use candle_core::{DType, Tensor, Var};

use crate::uniform::{clamp_pass_through, QuantError, Result, UniformParams};

/// Right end ζ of the stretched sigmoid (reference `zeta = 1.1`).
pub const ZETA: f64 = 1.1;
/// Left end γ of the stretched sigmoid (reference `gamma = -0.1`).
pub const GAMMA: f64 = -0.1;
/// Weight λ of the rounding regulariser (`run_quant.py:198`; the function default 0.001 is
/// overridden in both reference codes).
pub const REG_LAMBDA: f64 = 0.01;

/// Rectified sigmoid `h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)`, differentiable in `V` (gradient 0
/// where the clamp is active, as in PyTorch).
pub fn rectified_sigmoid(v: &Tensor) -> Result<Tensor> {
    let s = candle_nn::ops::sigmoid(v)?;
    let stretched = s.affine(ZETA - GAMMA, GAMMA)?;
    Ok(clamp_pass_through(&stretched, 0.0, 1.0)?)
}

/// Inverse of the rectified sigmoid on `[0, 1)`: `V = −ln((ζ − γ)/(rest − γ) − 1)`, so that
/// `h(V) = rest` (reference `init_alpha`). `rest = 0` gives `h = 0` exactly after the clamp;
/// `rest → 1` stays finite because ζ > 1.
pub fn inverse_rectified_sigmoid(rest: &Tensor) -> Result<Tensor> {
    let ratio = rest
        .affine(1.0, -GAMMA)?
        .recip()?
        .affine(ZETA - GAMMA, -1.0)?;
    Ok(ratio.log()?.neg()?)
}

/// The learned-rounding state of one weight tensor (or one split half of it, spec §5.2): the
/// rounding variable `V` (trained), `floor(w/Δ)` (fixed) and the quantizer parameters (fixed).
///
/// `V` and `floor` have the weight's shape and dtype (`f64` weights stay `f64`; others become
/// `f32`). The weight itself is not kept: `floor(w/Δ) + h(V)` replaces it.
#[derive(Debug, Clone)]
pub struct AdaRoundState {
    /// The rounding variable, one per weight element; the only trainable tensor.
    pub v: Var,
    /// `floor(w/Δ)` per element (integers stored as floats).
    pub floor: Tensor,
    /// Step, zero point, bits and channel axis (per output channel for weights).
    pub params: UniformParams,
}

impl AdaRoundState {
    /// Initialises `V` so that `h(V) = w/Δ − floor(w/Δ)` (spec §1.2); the hard rounding of this
    /// init is round-to-nearest.
    ///
    /// `w/Δ`, its floor and `V` are computed in `f64` whatever `w`'s dtype, then stored in the
    /// compute dtype: in `f32`, a fraction just below 0.5 can give `V = −0.0`, which would round
    /// up; in `f64` the sign of `V` follows the fraction down to 1e-16. An exact tie
    /// (`frac = 0.5`) gets `V = 0`, i.e. rounds up, as the `f32` reference does (there
    /// `1.2/0.6 − 1` is exactly 1); in `f64` the formula would leave `V = −4e-16` and round down.
    pub fn new(w: &Tensor, params: UniformParams) -> Result<Self> {
        let dtype = if w.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let w64 = w.detach().to_dtype(DType::F64)?;
        let delta = params.scale_tensor(w.dims(), DType::F64, w.device())?;
        let scaled = w64.broadcast_div(&delta)?;
        let floor = scaled.floor()?;
        let rest = (&scaled - &floor)?;
        let v = inverse_rectified_sigmoid(&rest)?;
        let v = rest
            .eq(0.5)?
            .where_cond(&v.zeros_like()?, &v)?
            .to_dtype(dtype)?;
        Ok(Self {
            v: Var::from_tensor(&v)?,
            floor: floor.to_dtype(dtype)?,
            params,
        })
    }

    /// Builds a state from given parts (e.g. a restored checkpoint), checking that the shapes of
    /// `V` and `floor` agree and fit the parameters.
    pub fn from_parts(v: Var, floor: Tensor, params: UniformParams) -> Result<Self> {
        if v.dims() != floor.dims() {
            return Err(QuantError::ShapeMismatch {
                shape: v.dims().to_vec(),
                reason: format!("V and floor(w/Δ) differ in shape ({:?})", floor.dims()),
            });
        }
        params.scale_tensor(v.dims(), DType::F32, v.device())?;
        Ok(Self { v, floor, params })
    }

    fn delta_and_zero(&self) -> Result<(Tensor, Tensor)> {
        let (dims, dt, dev) = (self.floor.dims(), self.floor.dtype(), self.floor.device());
        Ok((
            self.params.scale_tensor(dims, dt, dev)?,
            self.params.zero_point_tensor(dims, dt, dev)?,
        ))
    }

    /// `Δ·(clamp(w_int + z, 0, 2^b − 1) − z)` for an integer-valued (or soft) `w_int`.
    fn dequant(&self, w_int: &Tensor) -> Result<Tensor> {
        let (d, z) = self.delta_and_zero()?;
        let q = clamp_pass_through(
            &w_int.broadcast_add(&z)?,
            0.0,
            f64::from(self.params.qmax()),
        )?;
        Ok(q.broadcast_sub(&z)?.broadcast_mul(&d)?)
    }

    /// `h(V)`, the soft rounding offset in `[0, 1]`.
    pub fn h(&self) -> Result<Tensor> {
        rectified_sigmoid(self.v.as_tensor())
    }

    /// The soft-quantized weight `Δ·(clamp(floor + h(V) + z, 0, 2^b − 1) − z)`, differentiable in
    /// `V` (used during reconstruction).
    pub fn soft_weight(&self) -> Result<Tensor> {
        self.dequant(&(&self.floor + self.h()?)?)
    }

    /// `floor(w/Δ) + 1[V ≥ 0]`, before adding `z` and clamping.
    fn hard_int(&self) -> Result<Tensor> {
        let up = self
            .v
            .as_tensor()
            .detach()
            .ge(0.0)?
            .to_dtype(self.floor.dtype())?;
        Ok((&self.floor + up)?)
    }

    /// The hard-quantized weight `Δ·(clamp(floor + 1[V ≥ 0] + z, 0, 2^b − 1) − z)` (no gradient).
    pub fn hard_weight(&self) -> Result<Tensor> {
        Ok(self.dequant(&self.hard_int()?)?.detach())
    }

    /// The integer codes `clamp(floor + 1[V ≥ 0] + z, 0, 2^b − 1)` as a `u8` tensor (what is
    /// packed and stored).
    pub fn hard_codes(&self) -> Result<Tensor> {
        let (_, z) = self.delta_and_zero()?;
        let q = self
            .hard_int()?
            .broadcast_add(&z)?
            .clamp(0.0, f64::from(self.params.qmax()))?;
        Ok(q.to_dtype(DType::U8)?)
    }

    /// The rounding regulariser `λ·Σ(1 − |2h(V) − 1|^β)` with λ = [`REG_LAMBDA`], a scalar tensor
    /// differentiable in `V`. `β ≥ 1` (the schedule uses 2..20); smaller exponents have an infinite
    /// derivative at `h = 0.5`.
    pub fn reg_loss(&self, beta: f64) -> Result<Tensor> {
        if !(beta.is_finite() && beta >= 1.0) {
            return Err(QuantError::InvalidArgument(format!(
                "AdaRound β = {beta}; it must be finite and at least 1"
            )));
        }
        let u = self.h()?.affine(2.0, -1.0)?.abs()?.powf(beta)?;
        let per = u.affine(-1.0, 1.0)?;
        Ok((per.sum_all()? * REG_LAMBDA)?)
    }

    /// The regulariser at 1-based iteration `c` of `schedule`: 0 (a scalar zero tensor) during
    /// warm-up, `reg_loss(β(c))` afterwards (spec §1.2, reference `loss_start = T·warmup`).
    pub fn scheduled_reg_loss(&self, schedule: &BetaSchedule, c: usize) -> Result<Tensor> {
        if schedule.reg_active(c) {
            self.reg_loss(schedule.beta(c))
        } else {
            Ok(Tensor::zeros((), self.floor.dtype(), self.floor.device())?)
        }
    }
}

/// The reference's `LinearTempDecay` for β together with the regulariser's warm-up (spec §1.2),
/// for iterations `c = 1..=T` (1-based: the reference increments its counter before use):
///
/// ```text
/// β(c) = start_b                                                   for c < warmup·T
///        end_b + (start_b − end_b)·max(0, 1 − (c − warmup·T)/(T − warmup·T))   otherwise
/// regulariser on  ⇔  c ≥ warmup·T
/// ```
///
/// with `warmup = 0.2`, `start_b = 20`, `end_b = 2` (decay starts right after the warm-up:
/// `decay_start = 0`). `warmup·T` is a float, as in the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BetaSchedule {
    /// Total iterations `T`.
    pub t_max: usize,
    /// Fraction of `T` with the regulariser off and β held at `start_b`.
    pub warmup: f64,
    /// β during warm-up and at the start of the decay.
    pub start_b: f64,
    /// β at iteration `T`.
    pub end_b: f64,
}

impl BetaSchedule {
    /// The DMQ/Q-Diffusion schedule for `t_max` iterations: warm-up 0.2, β 20 → 2.
    pub fn new(t_max: usize) -> Self {
        Self {
            t_max,
            warmup: 0.2,
            start_b: 20.0,
            end_b: 2.0,
        }
    }

    fn start_decay(&self) -> f64 {
        self.warmup * self.t_max as f64
    }

    /// β at 1-based iteration `c`.
    pub fn beta(&self, c: usize) -> f64 {
        let start = self.start_decay();
        let c = c as f64;
        if c < start {
            self.start_b
        } else {
            let rel = (c - start) / (self.t_max as f64 - start);
            self.end_b + (self.start_b - self.end_b) * (1.0 - rel).max(0.0)
        }
    }

    /// Whether the rounding regulariser counts at 1-based iteration `c` (off during warm-up).
    pub fn reg_active(&self, c: usize) -> bool {
        c as f64 >= self.start_decay()
    }
}
