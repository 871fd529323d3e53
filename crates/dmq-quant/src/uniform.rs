//! Uniform affine ("asymmetric") quantization, the arithmetic every dmq method builds on
//! (spec `docs/methods/dmq.md`, "Notation" and §1.1, §1.3, §1.4).
//!
//! With `b` bits, step `Δ` and integer zero point `z`:
//!
//! ```text
//! q  = clamp(round(x/Δ) + z, 0, 2^b − 1)        (the integer code)
//! x̂ = Δ·(q − z)                                  (its dequantized value)
//! ```
//!
//! Choices that hold for the whole module, each made to match the PyTorch reference numerically:
//!
//! * **`round` is round-half-to-even** (`torch.round`), on the host (`f64::round_ties_even`) and on
//!   tensors ([`round_half_even`]). candle's own `Tensor::round` rounds half away from zero, which
//!   would move exact ties (common on hand-made or already-quantized data) to another code.
//! * **`z` is never clamped** unless a caller asks for it (the DMQ activation quantizer and the MSE
//!   search both use `z = round(−min/Δ)` as is, spec §1.3 and pitfall 15): only `q` is clamped. A
//!   zero point outside `[0, 2^b − 1]` is fine for fake quantization; see
//!   [`UniformParams::zero_point_representable`] for integer kernels.
//! * **The gradient of the clamp is 1 on the closed interval `[0, 2^b − 1]`** and 0 outside
//!   ([`clamp_pass_through`], PyTorch's `clamp` backward). candle's `clamp` halves the gradient at the
//!   bounds, and rounded codes land exactly on the bounds all the time.
//! * Range searches (min/max, MSE, percentile) run on the host in `f64` so that a layer's
//!   parameters do not depend on the device or the reduction order of a kernel.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Smallest supported bit width.
pub const MIN_BITS: u8 = 2;
/// Largest supported bit width: codes are stored as `u8`.
pub const MAX_BITS: u8 = 8;
/// Number of shrink candidates of the MSE range search (reference `search_range = 80`).
pub const MSE_CANDIDATES: usize = 80;
/// Shrink step of the MSE range search: candidate `i` scales both ends by `1 − 0.01·i`.
pub const MSE_GRID: f64 = 0.01;
/// Exponent of the MSE search's error `mean |x̂ − w|^p` (the reference uses 2.4, not 2).
pub const MSE_NORM: f64 = 2.4;
/// EMA momentum of the activation range observer (reference `running_stat`, spec §1.3).
pub const EMA_MOMENTUM: f64 = 0.95;
/// Lower bound on a step computed from a tensor's own range ([`dynamic_fake_quant_ste`]): a
/// constant channel would otherwise divide by zero. The reference has no guard (it produces NaN
/// and drops into its `pdb` trap, pitfall 14).
pub const MIN_DYNAMIC_STEP: f64 = 1e-8;

/// Errors of the quantization engine (shared by [`crate::uniform`], [`crate::adaround`] and
/// [`crate::pack`]).
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("unsupported bit width {0}: dmq quantizes with 2 to 8 bits")]
    UnsupportedBits(u8),
    #[error("invalid quantizer parameters: {0}")]
    InvalidParams(String),
    #[error("tensor of shape {shape:?} does not fit the quantizer: {reason}")]
    ShapeMismatch { shape: Vec<usize>, reason: String },
    #[error("{what} is not finite ({value}); the tensor holds NaN or infinity")]
    NonFinite { what: &'static str, value: f64 },
    #[error("code {code} at index {index} does not fit in {bits} bits (largest code {max})")]
    CodeOutOfRange {
        index: usize,
        code: u8,
        bits: u8,
        max: u8,
    },
    #[error("packed buffer has {got} bytes, but {len} codes of {bits} bits take {expected} bytes")]
    PackedLength {
        got: usize,
        expected: usize,
        len: usize,
        bits: u8,
    },
    #[error(
        "packed buffer of {len} codes of {bits} bits has non-zero padding bits in its last byte \
         (0x{last:02x}): wrong length or bit width, or a corrupt buffer"
    )]
    NonZeroPadding { len: usize, bits: u8, last: u8 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate's quantizer code.
pub type Result<T> = std::result::Result<T, QuantError>;

/// Checks that `bits` is in `2..=8`.
pub fn validate_bits(bits: u8) -> Result<()> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::UnsupportedBits(bits))
    }
}

/// Largest code `2^b − 1` (after [`validate_bits`]).
pub fn qmax(bits: u8) -> u32 {
    (1u32 << bits) - 1
}

/// Float dtype in which tensor arithmetic is done: `f64` stays `f64`, everything else (f32, and
/// bf16/f16, whose 8/11-bit mantissas cannot hold `x/Δ` to a code's precision) runs in `f32`.
fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

// ---------------------------------------------------------------------------------------------
// Differentiable building blocks (candle tensor ops; work on any device).
// ---------------------------------------------------------------------------------------------

/// Round half to even, elementwise (`torch.round`). No gradient (use [`round_ste`] for one).
///
/// candle's `round` rounds ties away from zero; ties are detected exactly (`|x − round(x)| = 0.5`
/// is exact in floating point) and replaced by `2·round(x/2)`, the even neighbour.
pub fn round_half_even(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.detach();
    let r = x.round()?;
    let tie = (&x - &r)?.abs()?.eq(0.5)?;
    let even = ((&x * 0.5)?.round()? * 2.0)?;
    tie.where_cond(&even, &r)
}

/// Straight-through rounding `x + stop_grad(round(x) − x)` (spec "Notation"): the forward value is
/// `round(x)` (half to even), the gradient with respect to `x` is the identity.
pub fn round_ste(x: &Tensor) -> candle_core::Result<Tensor> {
    let delta = (round_half_even(x)? - x.detach())?;
    x + delta
}

/// `clamp(x, lo, hi)` whose gradient is 1 where `lo ≤ x ≤ hi` (bounds included) and 0 elsewhere,
/// as PyTorch's `clamp` backward. candle's `clamp` is `maximum`/`minimum`, whose backward gives
/// 0.5 at a tie with the bound; quantized values sit exactly on the bounds, so that would halve
/// the straight-through gradient of every value that rounds to code 0 or `2^b − 1`.
pub fn clamp_pass_through(x: &Tensor, lo: f64, hi: f64) -> candle_core::Result<Tensor> {
    let clamped = x.detach().clamp(lo, hi)?;
    let inside = x.ge(lo)?.mul(&x.le(hi)?)?;
    inside.where_cond(x, &clamped)
}

/// Straight-through fake quantization with tensor-valued step and zero point (spec §1.3):
/// `Δ·(clamp(round_ste(x/Δ) + z, 0, 2^b − 1) − z)`.
///
/// `delta` and `zero_point` broadcast against `x` (one element, or one per channel shaped
/// `[1, .., C, .., 1]`) and must have `x`'s dtype. Gradients flow to `x` (1 where the code is not
/// clamped, 0 where it is) and to `delta` when it is part of a graph (the LES case); `zero_point` is
/// used as given, so pass a detached tensor to follow the reference (`round` has no gradient).
pub fn fake_quant_ste(x: &Tensor, delta: &Tensor, zero_point: &Tensor, bits: u8) -> Result<Tensor> {
    validate_bits(bits)?;
    let qmax = f64::from(qmax(bits));
    let scaled = x.broadcast_div(delta)?;
    let q = round_ste(&scaled)?.broadcast_add(zero_point)?;
    let q = clamp_pass_through(&q, 0.0, qmax)?;
    Ok(q.broadcast_sub(zero_point)?.broadcast_mul(delta)?)
}

/// How a zero point computed from a range is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZeroPointRule {
    /// `z = round(−min/Δ)` as is: the DMQ activation quantizer (spec §1.3) and the MSE search.
    Unclamped,
    /// `z = clamp(round(−min/Δ), 0, 2^b − 1)`: the dynamic weight quantizer used during LES (§1.1).
    Clamped,
}

/// Fake quantization with straight-through rounding whose range is the input's own min/max,
/// recomputed at every call (the reference's `dynamic=True`, used during LES, spec §1.1 and §4):
/// `Δ = max(max − min, ·)/(2^b − 1)`, `z = round(−min/Δ)` (optionally clamped).
///
/// `axis = None` takes one range over the whole tensor (activations); `Some(a)` one range per
/// index of dimension `a` (weights: `a = 0`, the output channel). Min and max are candle
/// reductions, so gradients reach `x` both directly and through `Δ` (as in the reference, where
/// `amin`/`amax` are differentiable); `z` carries no gradient. Two differences from PyTorch: where
/// several elements tie for the min/max, candle passes the full gradient to each of them
/// (PyTorch splits it evenly), and `Δ` is bounded below by [`MIN_DYNAMIC_STEP`] so a constant
/// channel quantizes to itself instead of to NaN.
pub fn dynamic_fake_quant_ste(
    x: &Tensor,
    bits: u8,
    axis: Option<usize>,
    zero_point: ZeroPointRule,
) -> Result<Tensor> {
    validate_bits(bits)?;
    let dtype = x.dtype();
    let xc = x.to_dtype(compute_dtype(dtype))?;
    let rank = xc.rank();
    let (mn, mx) = match axis {
        None => {
            let flat = xc.flatten_all()?;
            let shape = vec![1usize; rank];
            (
                flat.min_keepdim(0)?.reshape(shape.clone())?,
                flat.max_keepdim(0)?.reshape(shape)?,
            )
        }
        Some(a) => {
            check_axis(xc.dims(), a)?;
            let c = xc.dim(a)?;
            let mut shape = vec![1usize; rank];
            shape[a] = c;
            let rows = xc.transpose(0, a)?.contiguous()?.reshape((c, ()))?;
            (
                rows.min_keepdim(1)?.reshape(shape.clone())?,
                rows.max_keepdim(1)?.reshape(shape)?,
            )
        }
    };
    let qmax = f64::from(qmax(bits));
    let delta = ((&mx - &mn)? / qmax)?.maximum(MIN_DYNAMIC_STEP)?;
    let z = round_half_even(&(mn.detach().neg()? / delta.detach())?)?;
    let z = match zero_point {
        ZeroPointRule::Unclamped => z,
        ZeroPointRule::Clamped => z.clamp(0.0, qmax)?,
    };
    Ok(fake_quant_ste(&xc, &delta, &z, bits)?.to_dtype(dtype)?)
}

fn check_axis(dims: &[usize], axis: usize) -> Result<()> {
    if axis < dims.len() {
        Ok(())
    } else {
        Err(QuantError::ShapeMismatch {
            shape: dims.to_vec(),
            reason: format!("channel axis {axis} does not exist"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Static parameters.
// ---------------------------------------------------------------------------------------------

/// Parameters of a uniform affine quantizer: one `(Δ, z)` pair per tensor (`axis = None`,
/// activations) or one per index of `axis` (weights: per output channel, `axis = Some(0)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniformParams {
    /// Step `Δ` per channel (or one). Positive and finite.
    pub scale: Vec<f32>,
    /// Zero point `z` per channel (or one); may lie outside `[0, 2^b − 1]` (only `q` is clamped).
    pub zero_point: Vec<i32>,
    /// Bit width `b`, `2..=8`.
    pub bits: u8,
    /// Channel axis of the tensors this quantizes, `None` for per-tensor.
    pub axis: Option<usize>,
}

/// The outcome of the MSE range search on one channel ([`mse_range_search`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MseSearch {
    /// Index `i*` of the chosen candidate (shrink factor `1 − 0.01·i*`).
    pub best: usize,
    /// Step of the chosen candidate.
    pub delta: f64,
    /// Zero point of the chosen candidate, `round(−lo/Δ)` (unclamped).
    pub zero_point: f64,
    /// `mean |x̂ − w|^2.4` of every candidate, in candidate order.
    pub errors: Vec<f64>,
}

impl UniformParams {
    /// Builds and validates parameters (see [`UniformParams::validate`]).
    pub fn new(
        scale: Vec<f32>,
        zero_point: Vec<i32>,
        bits: u8,
        axis: Option<usize>,
    ) -> Result<Self> {
        let p = Self {
            scale,
            zero_point,
            bits,
            axis,
        };
        p.validate()?;
        Ok(p)
    }

    /// One `(Δ, z)` for a whole tensor.
    pub fn per_tensor(scale: f32, zero_point: i32, bits: u8) -> Result<Self> {
        Self::new(vec![scale], vec![zero_point], bits, None)
    }

    /// Checks the bit width, that there is one zero point per step, at least one channel, exactly
    /// one when per-tensor, and that every step is finite and positive (a zero step divides by 0).
    pub fn validate(&self) -> Result<()> {
        validate_bits(self.bits)?;
        if self.scale.is_empty() {
            return Err(QuantError::InvalidParams("no step (scale is empty)".into()));
        }
        if self.scale.len() != self.zero_point.len() {
            return Err(QuantError::InvalidParams(format!(
                "{} steps but {} zero points",
                self.scale.len(),
                self.zero_point.len()
            )));
        }
        if self.axis.is_none() && self.scale.len() != 1 {
            return Err(QuantError::InvalidParams(format!(
                "per-tensor parameters need one step, got {}",
                self.scale.len()
            )));
        }
        if let Some((c, s)) = self
            .scale
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(QuantError::InvalidParams(format!(
                "step of channel {c} is {s}; steps must be finite and positive"
            )));
        }
        Ok(())
    }

    /// Number of `(Δ, z)` pairs.
    pub fn num_channels(&self) -> usize {
        self.scale.len()
    }

    /// Largest code `2^b − 1`.
    pub fn qmax(&self) -> u32 {
        qmax(self.bits)
    }

    /// Whether every zero point lies in `[0, 2^b − 1]`, i.e. fits an unsigned integer kernel.
    /// Activation zero points of all-positive or all-negative tensors do not (spec pitfall 15).
    pub fn zero_point_representable(&self) -> bool {
        let m = self.qmax() as i64;
        self.zero_point
            .iter()
            .all(|&z| (0..=m).contains(&i64::from(z)))
    }

    /// Parameters from one range `[lo, hi]`: `Δ = (hi − lo)/(2^b − 1)`, `z = round(−lo/Δ)`
    /// (unclamped). See [`step_and_zero_point`] for degenerate ranges.
    pub fn from_range(lo: f64, hi: f64, bits: u8) -> Result<Self> {
        validate_bits(bits)?;
        let (d, z) = step_and_zero_point(lo, hi, bits)?;
        Self::new(vec![d as f32], vec![zero_point_to_i32(z)?], bits, None)
    }

    /// Per-channel parameters from one range per index of `axis`.
    pub fn from_ranges(lo: &[f64], hi: &[f64], bits: u8, axis: usize) -> Result<Self> {
        validate_bits(bits)?;
        if lo.len() != hi.len() {
            return Err(QuantError::InvalidArgument(format!(
                "{} lower but {} upper range ends",
                lo.len(),
                hi.len()
            )));
        }
        let mut scale = Vec::with_capacity(lo.len());
        let mut zp = Vec::with_capacity(lo.len());
        for (&l, &h) in lo.iter().zip(hi) {
            let (d, z) = step_and_zero_point(l, h, bits)?;
            scale.push(d as f32);
            zp.push(zero_point_to_i32(z)?);
        }
        Self::new(scale, zp, bits, Some(axis))
    }

    /// Plain min/max initialisation: per index of `axis` (weights) or per tensor (`None`),
    /// `Δ = (max − min)/(2^b − 1)`, `z = round(−min/Δ)`. The range is the data's own (not
    /// widened to include 0; Q-Diffusion's `'max'` variant that does so clips the top of
    /// positive tensors, spec pitfall 16).
    pub fn init_minmax(x: &Tensor, bits: u8, axis: Option<usize>) -> Result<Self> {
        validate_bits(bits)?;
        let rows = channel_rows(x, axis)?;
        let mut lo = Vec::with_capacity(rows.len());
        let mut hi = Vec::with_capacity(rows.len());
        for r in &rows {
            let (l, h) = min_max(r)?;
            lo.push(l);
            hi.push(h);
        }
        let mut p = Self::from_ranges(&lo, &hi, bits, axis.unwrap_or(0))?;
        p.axis = axis;
        Ok(p)
    }

    /// The MSE range search of the weight quantizer (spec §1.1, [`mse_range_search`]), per index of
    /// `axis` (weights: `Some(0)`) or over the whole tensor (`None`). Channels run in parallel on
    /// the host's cores; a conv layer of 10⁶ weights takes 8·10⁷ error evaluations.
    pub fn init_mse(x: &Tensor, bits: u8, axis: Option<usize>) -> Result<Self> {
        validate_bits(bits)?;
        let rows = channel_rows(x, axis)?;
        let results = parallel_map(&rows, |r| mse_range_search(r, bits))?;
        let mut scale = Vec::with_capacity(results.len());
        let mut zp = Vec::with_capacity(results.len());
        for s in results {
            scale.push(s.delta as f32);
            zp.push(zero_point_to_i32(s.zero_point)?);
        }
        Self::new(scale, zp, bits, axis)
    }

    /// Percentile range for activations (a baseline; DMQ itself uses min/max): per tensor,
    /// `lo` = the `(100 − p)`-th and `hi` = the `p`-th percentile of all values, with linear
    /// interpolation between order statistics (`torch.quantile`'s default). `p` in `[50, 100]`;
    /// `p = 100` is min/max.
    pub fn init_percentile(x: &Tensor, bits: u8, percentile: f64) -> Result<Self> {
        validate_bits(bits)?;
        if !(50.0..=100.0).contains(&percentile) {
            return Err(QuantError::InvalidArgument(format!(
                "percentile {percentile} is outside [50, 100]"
            )));
        }
        let mut v = tensor_to_f64(x)?;
        if v.is_empty() {
            return Err(QuantError::ShapeMismatch {
                shape: x.dims().to_vec(),
                reason: "the tensor is empty".into(),
            });
        }
        if let Some(bad) = v.iter().find(|a| !a.is_finite()) {
            return Err(QuantError::NonFinite {
                what: "an activation value",
                value: *bad,
            });
        }
        v.sort_unstable_by(f64::total_cmp);
        let lo = quantile_sorted(&v, 1.0 - percentile / 100.0);
        let hi = quantile_sorted(&v, percentile / 100.0);
        Self::from_range(lo, hi, bits)
    }

    /// Checks that a tensor of shape `dims` fits these parameters and returns the shape the step
    /// and zero-point tensors broadcast with (`[1, .., C, .., 1]`, or all ones).
    fn broadcast_shape(&self, dims: &[usize]) -> Result<Vec<usize>> {
        self.validate()?;
        let mut shape = vec![1usize; dims.len()];
        if let Some(a) = self.axis {
            check_axis(dims, a)?;
            if dims[a] != self.scale.len() {
                return Err(QuantError::ShapeMismatch {
                    shape: dims.to_vec(),
                    reason: format!(
                        "dimension {a} has {} channels but the quantizer has {}",
                        dims[a],
                        self.scale.len()
                    ),
                });
            }
            shape[a] = dims[a];
        }
        Ok(shape)
    }

    /// The steps as a tensor broadcastable against a tensor of shape `dims`.
    pub fn scale_tensor(&self, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = self.broadcast_shape(dims)?;
        let v: Vec<f64> = self.scale.iter().map(|&s| f64::from(s)).collect();
        Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
    }

    /// The zero points as a float tensor broadcastable against a tensor of shape `dims`.
    pub fn zero_point_tensor(
        &self,
        dims: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = self.broadcast_shape(dims)?;
        let v: Vec<f64> = self.zero_point.iter().map(|&z| f64::from(z)).collect();
        Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
    }

    /// `(Δ, z)` tensors in the compute dtype of `x`.
    fn tensors_for(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let dt = compute_dtype(x.dtype());
        Ok((
            self.scale_tensor(x.dims(), dt, x.device())?,
            self.zero_point_tensor(x.dims(), dt, x.device())?,
        ))
    }

    /// Integer codes `q = clamp(round(x/Δ) + z, 0, 2^b − 1)` as a `u8` tensor of `x`'s shape.
    pub fn quantize_codes(&self, x: &Tensor) -> Result<Tensor> {
        let (d, z) = self.tensors_for(x)?;
        let xc = x.detach().to_dtype(d.dtype())?;
        let q = round_half_even(&xc.broadcast_div(&d)?)?
            .broadcast_add(&z)?
            .clamp(0.0, f64::from(self.qmax()))?;
        Ok(q.to_dtype(DType::U8)?)
    }

    /// Dequantized values `Δ·(q − z)` of integer codes (any integer or float dtype), as `f32`.
    pub fn dequantize(&self, codes: &Tensor) -> Result<Tensor> {
        let d = self.scale_tensor(codes.dims(), DType::F32, codes.device())?;
        let z = self.zero_point_tensor(codes.dims(), DType::F32, codes.device())?;
        Ok(codes
            .to_dtype(DType::F32)?
            .broadcast_sub(&z)?
            .broadcast_mul(&d)?)
    }

    /// Fake quantization `Δ·(clamp(round(x/Δ) + z, 0, 2^b − 1) − z)` in `x`'s dtype, outside any
    /// gradient graph (statistics, inference). For training use [`UniformParams::fake_quant_ste`].
    pub fn fake_quant(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fake_quant_ste(&x.detach())?.detach())
    }

    /// Fake quantization with straight-through rounding (spec §1.3): same forward value as
    /// [`UniformParams::fake_quant`], gradient 1 to `x` where the code is not clamped, 0 where it is.
    /// The steps are constants here; for a step computed from the data see
    /// [`dynamic_fake_quant_ste`].
    pub fn fake_quant_ste(&self, x: &Tensor) -> Result<Tensor> {
        let (d, z) = self.tensors_for(x)?;
        let dtype = x.dtype();
        let xc = x.to_dtype(d.dtype())?;
        Ok(fake_quant_ste(&xc, &d, &z, self.bits)?.to_dtype(dtype)?)
    }
}

/// Step and zero point of a range: `Δ = (hi − lo)/(2^b − 1)`, `z = round(−lo/Δ)`.
///
/// A degenerate range (`hi − lo` not positive after widening) would give `Δ = 0`; the reference
/// then produces NaN. We widen such a range to include 0 (a constant channel `c` gets
/// `[min(c,0), max(c,0)]`, which represents `c` exactly), and an all-zero one gets `Δ = 1, z = 0`.
pub fn step_and_zero_point(lo: f64, hi: f64, bits: u8) -> Result<(f64, f64)> {
    validate_bits(bits)?;
    for (what, v) in [("range minimum", lo), ("range maximum", hi)] {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { what, value: v });
        }
    }
    if hi < lo {
        return Err(QuantError::InvalidArgument(format!(
            "range [{lo}, {hi}] has its maximum below its minimum"
        )));
    }
    let (mut lo, mut hi) = (lo, hi);
    if hi - lo <= 0.0 {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if hi - lo <= 0.0 {
        return Ok((1.0, 0.0));
    }
    let d = (hi - lo) / f64::from(qmax(bits));
    Ok((d, (-lo / d).round_ties_even()))
}

fn zero_point_to_i32(z: f64) -> Result<i32> {
    if z.is_finite() && z >= f64::from(i32::MIN) && z <= f64::from(i32::MAX) {
        Ok(z as i32)
    } else {
        Err(QuantError::InvalidParams(format!(
            "zero point {z} does not fit in i32 (range far from 0 relative to its width)"
        )))
    }
}

/// `mean |x̂ − w|^2.4` of quantizing `w` with `(Δ, z)` (the MSE search's score).
pub fn lp_error(w: &[f64], delta: f64, zero_point: f64, bits: u8) -> f64 {
    let qmax = f64::from(qmax(bits));
    let inv_n = 1.0 / w.len() as f64;
    let mut acc = 0.0;
    for &x in w {
        let q = ((x / delta).round_ties_even() + zero_point).clamp(0.0, qmax);
        let e = (delta * (q - zero_point) - x).abs();
        acc += e.powf(MSE_NORM);
    }
    acc * inv_n
}

/// The reference's MSE range search on one channel (spec §1.1, `mse()` of `quant_utils.py`):
///
/// ```text
/// for i in 0..80: lo = min·(1 − 0.01 i), hi = max·(1 − 0.01 i)      (both ends shrink towards 0)
///                 Δ = (hi − lo)/(2^b − 1), z = round(−lo/Δ)           (z not clamped)
///                 e_i = mean |Δ(clamp(round(w/Δ) + z, 0, 2^b − 1) − z) − w|^2.4
/// pick the first argmin
/// ```
///
/// In `f64`, so the choice does not depend on summation order. The raw min/max are used (the
/// interval need not contain 0). A constant channel is handled as in [`step_and_zero_point`]
/// (all candidates are then that one range).
pub fn mse_range_search(w: &[f64], bits: u8) -> Result<MseSearch> {
    validate_bits(bits)?;
    let (mn, mx) = min_max(w)?;
    let degenerate = mx - mn <= 0.0;
    let mut errors = Vec::with_capacity(MSE_CANDIDATES);
    let mut best: Option<(usize, f64, f64, f64)> = None;
    for i in 0..MSE_CANDIDATES {
        let (d, z) = if degenerate {
            step_and_zero_point(mn, mx, bits)?
        } else {
            let f = 1.0 - i as f64 * MSE_GRID;
            let (lo, hi) = (mn * f, mx * f);
            let d = (hi - lo) / f64::from(qmax(bits));
            (d, (-lo / d).round_ties_even())
        };
        let e = lp_error(w, d, z, bits);
        errors.push(e);
        // Strict `<` keeps the first minimum, as `argmin` does.
        if best.is_none_or(|(_, be, _, _)| e < be) {
            best = Some((i, e, d, z));
        }
    }
    let (best, _, delta, zero_point) = best.expect("at least one candidate");
    Ok(MseSearch {
        best,
        delta,
        zero_point,
        errors,
    })
}

fn min_max(v: &[f64]) -> Result<(f64, f64)> {
    if v.is_empty() {
        return Err(QuantError::InvalidArgument(
            "cannot take the range of an empty channel".into(),
        ));
    }
    let mut mn = f64::INFINITY;
    let mut mx = f64::NEG_INFINITY;
    for &x in v {
        if !x.is_finite() {
            return Err(QuantError::NonFinite {
                what: "a tensor value",
                value: x,
            });
        }
        mn = mn.min(x);
        mx = mx.max(x);
    }
    Ok((mn, mx))
}

/// `q`-quantile (`q` in `[0, 1]`) of sorted values, linear interpolation between neighbours.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(v.len() - 1);
    let t = pos - i as f64;
    v[i] + (v[j] - v[i]) * t
}

fn tensor_to_f64(x: &Tensor) -> Result<Vec<f64>> {
    Ok(x.detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// The values of `x` on the host in `f64`, one row per index of `axis` (one row when `None`).
fn channel_rows(x: &Tensor, axis: Option<usize>) -> Result<Vec<Vec<f64>>> {
    if x.elem_count() == 0 {
        return Err(QuantError::ShapeMismatch {
            shape: x.dims().to_vec(),
            reason: "the tensor is empty".into(),
        });
    }
    match axis {
        None => Ok(vec![tensor_to_f64(x)?]),
        Some(a) => {
            check_axis(x.dims(), a)?;
            let c = x.dim(a)?;
            let flat = tensor_to_f64(&x.detach().transpose(0, a)?.contiguous()?)?;
            let n = flat.len() / c;
            Ok(flat.chunks(n).map(<[f64]>::to_vec).collect())
        }
    }
}

/// Maps `f` over `items` on the host's cores (scoped threads; order preserved).
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(h.join().expect("range search thread panicked")?);
        }
        Ok(out)
    })
}

// ---------------------------------------------------------------------------------------------
// Activation range statistics.
// ---------------------------------------------------------------------------------------------

/// Per-tensor min/max of activations with an exponential moving average (the reference's
/// `running_stat`, spec §1.3): the first observation ever sets the range, every later one mixes
/// `new = momentum·old + (1 − momentum)·batch`. Accumulated in `f64`.
///
/// DMQ keeps one observer per quantizer *and sampling step*; the reference forgets to reset the
/// EMA between steps (pitfall 2): call [`ActRangeObserver::reset`] to fix that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActRangeObserver {
    /// Running minimum, `None` before the first observation.
    pub min: Option<f64>,
    /// Running maximum, `None` before the first observation.
    pub max: Option<f64>,
    /// Weight of the old value, 0.95 in DMQ.
    pub momentum: f64,
}

impl Default for ActRangeObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl ActRangeObserver {
    /// An empty observer with momentum 0.95.
    pub fn new() -> Self {
        Self {
            min: None,
            max: None,
            momentum: EMA_MOMENTUM,
        }
    }

    /// An empty observer with another momentum in `[0, 1]` (0 keeps only the last batch).
    pub fn with_momentum(momentum: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(QuantError::InvalidArgument(format!(
                "EMA momentum {momentum} is outside [0, 1]"
            )));
        }
        Ok(Self {
            min: None,
            max: None,
            momentum,
        })
    }

    /// Folds the min and max over all elements of `x` into the running range and returns it.
    pub fn observe(&mut self, x: &Tensor) -> Result<(f64, f64)> {
        if x.elem_count() == 0 {
            return Err(QuantError::ShapeMismatch {
                shape: x.dims().to_vec(),
                reason: "cannot observe an empty tensor".into(),
            });
        }
        // Reduce on the tensor's device, then mix on the host in f64.
        let flat = x.detach().flatten_all()?;
        let bmin = flat.min(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let bmax = flat.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (what, v) in [("batch minimum", bmin), ("batch maximum", bmax)] {
            if !v.is_finite() {
                return Err(QuantError::NonFinite { what, value: v });
            }
        }
        let m = self.momentum;
        let (mn, mx) = match (self.min, self.max) {
            (Some(omin), Some(omax)) => (omin * m + bmin * (1.0 - m), omax * m + bmax * (1.0 - m)),
            _ => (bmin, bmax),
        };
        self.min = Some(mn);
        self.max = Some(mx);
        Ok((mn, mx))
    }

    /// The running range, if anything was observed.
    pub fn range(&self) -> Option<(f64, f64)> {
        Some((self.min?, self.max?))
    }

    /// Forgets the range (the next observation initialises it again).
    pub fn reset(&mut self) {
        self.min = None;
        self.max = None;
    }

    /// Per-tensor parameters of the running range (`z` unclamped, spec §1.3).
    pub fn params(&self, bits: u8) -> Result<UniformParams> {
        let (lo, hi) = self.range().ok_or_else(|| {
            QuantError::InvalidArgument("the observer has seen no activations yet".into())
        })?;
        UniformParams::from_range(lo, hi, bits)
    }
}
