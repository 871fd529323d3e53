//! A quantized weight as it is stored: integer codes with per-output-channel steps and zero
//! points, in one part or, for split layers (spec §5.2), in two parts along the input channels,
//! each with its own quantizer. Dequantization is one function used by every path (in-memory
//! model, artifact loading), so a reloaded model is bit-identical to the one calibrated.
//!
//! A part may instead hold a **codebook** (k-means, [`crate::kmeans`]): code `q` of output
//! channel `c` then stands for `table[c][q]` (per channel) or `table[0][q]` (per tensor); its
//! `params` carry only the bit width and the granularity (steps 1, zero points 0).

use candle_core::{DType, Tensor};

use crate::config::{Granularity, WeightRange};
use crate::uniform::{QuantError, Result, UniformParams};

/// One input-channel slice `[start, start + len)` of a weight and its quantization.
#[derive(Debug, Clone)]
pub struct WeightPart {
    pub start: usize,
    pub len: usize,
    /// Per output channel (`axis = Some(0)`) or per tensor.
    pub params: UniformParams,
    /// `u8` codes `q ∈ [0, 2^b − 1]` of the slice, shape `[C_out, len, ..]`.
    pub codes: Tensor,
    /// A lookup table instead of `Δ·(q − z)`; `None` for uniform parts.
    pub codebook: Option<Codebook>,
}

/// The `2^b` values codes stand for, per output channel (`params.axis = Some(0)`) or one table
/// for the tensor: `values[row · 2^b + q]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    pub values: Vec<f32>,
}

impl WeightPart {
    /// The dequantized slice, `f32`, on the device of the codes.
    pub fn dequantize(&self) -> Result<Tensor> {
        let Some(cb) = &self.codebook else {
            return self.params.dequantize(&self.codes);
        };
        let levels = 1usize << self.params.bits;
        let rows = self.params.num_channels();
        let codes: Vec<u8> = self.codes.flatten_all()?.to_vec1()?;
        let per_row = codes.len() / rows.max(1);
        let v: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let r = if rows == 1 { 0 } else { i / per_row.max(1) };
                cb.values[r * levels + q as usize]
            })
            .collect();
        Ok(Tensor::from_vec(v, self.codes.dims(), self.codes.device())?)
    }

    /// Bytes this part takes stored: packed codes, plus 4 bytes per step and per zero point
    /// (uniform) or 4 bytes per `f32` codebook entry.
    pub fn storage_bytes(&self) -> usize {
        let codes = crate::pack::packed_len(self.codes.elem_count(), self.params.bits);
        match &self.codebook {
            None => codes + 8 * self.params.num_channels(),
            Some(cb) => codes + 4 * cb.values.len(),
        }
    }
}

/// The quantized weight of one layer.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    /// Shape of the whole float weight.
    pub shape: Vec<usize>,
    pub parts: Vec<WeightPart>,
}

/// Input-channel slices of a layer with `in_ch` inputs: one, or two at `split`.
pub fn part_ranges(in_ch: usize, split: Option<usize>) -> Result<Vec<(usize, usize)>> {
    match split {
        None => Ok(vec![(0, in_ch)]),
        Some(s) if s > 0 && s < in_ch => Ok(vec![(0, s), (s, in_ch - s)]),
        Some(s) => Err(QuantError::InvalidArgument(format!(
            "split point {s} is not inside the {in_ch} input channels"
        ))),
    }
}

/// The input-channel axis of a weight: 1 for `[C_out, C_in, ..]` convs and linears.
const IN_AXIS: usize = 1;

/// Initial quantizer parameters of every part of `w` (spec §1.1): MSE range search or min/max,
/// per output channel or per tensor.
pub fn init_part_params(
    w: &Tensor,
    bits: u8,
    range: WeightRange,
    granularity: Granularity,
    split: Option<usize>,
) -> Result<Vec<(usize, usize, UniformParams)>> {
    let axis = match granularity {
        Granularity::PerChannel => Some(0),
        Granularity::PerTensor => None,
    };
    let mut out = Vec::new();
    for (start, len) in part_ranges(w.dims()[IN_AXIS], split)? {
        let slice = w.narrow(IN_AXIS, start, len)?;
        let p = match range {
            WeightRange::Mse => UniformParams::init_mse(&slice, bits, axis)?,
            WeightRange::Minmax => UniformParams::init_minmax(&slice, bits, axis)?,
        };
        out.push((start, len, p));
    }
    Ok(out)
}

impl QuantWeight {
    /// Round-to-nearest codes of `w` with the given part parameters.
    pub fn round_to_nearest(w: &Tensor, parts: &[(usize, usize, UniformParams)]) -> Result<Self> {
        let mut out = Vec::with_capacity(parts.len());
        for (start, len, params) in parts {
            let slice = w.narrow(IN_AXIS, *start, *len)?;
            out.push(WeightPart {
                start: *start,
                len: *len,
                params: params.clone(),
                codes: params.quantize_codes(&slice)?,
                codebook: None,
            });
        }
        Self::new(w.dims().to_vec(), out)
    }

    /// Checks that the parts tile the input channels and that codes fit their shapes and bits.
    pub fn new(shape: Vec<usize>, parts: Vec<WeightPart>) -> Result<Self> {
        let mut next = 0;
        for p in &parts {
            let mut want = shape.clone();
            want[IN_AXIS] = p.len;
            if p.start != next || p.codes.dims() != want.as_slice() {
                return Err(QuantError::ShapeMismatch {
                    shape: p.codes.dims().to_vec(),
                    reason: format!(
                        "part at input channel {} does not tile a weight of shape {shape:?}",
                        p.start
                    ),
                });
            }
            if p.codes.dtype() != DType::U8 {
                return Err(QuantError::InvalidParams(format!(
                    "codes are {:?}, expected u8",
                    p.codes.dtype()
                )));
            }
            p.params.validate()?;
            if let Some(cb) = &p.codebook {
                let rows = p.params.num_channels();
                let want = rows << p.params.bits;
                if cb.values.len() != want || (rows != 1 && rows != shape[0]) {
                    return Err(QuantError::InvalidParams(format!(
                        "codebook of {} values for {rows} row(s) of {} levels over {} output \
                         channels",
                        cb.values.len(),
                        1usize << p.params.bits,
                        shape[0]
                    )));
                }
                if cb.values.iter().any(|v| !v.is_finite()) {
                    return Err(QuantError::InvalidParams(
                        "codebook holds a non-finite value".into(),
                    ));
                }
            }
            next += p.len;
        }
        if next != shape[IN_AXIS] || parts.is_empty() {
            return Err(QuantError::ShapeMismatch {
                shape,
                reason: "the parts do not cover every input channel".into(),
            });
        }
        Ok(Self { shape, parts })
    }

    /// Bit width (every part has the same).
    pub fn bits(&self) -> u8 {
        self.parts[0].params.bits
    }

    /// `Δ·(q − z)` of every part, concatenated, as `f32`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let parts = self
            .parts
            .iter()
            .map(|p| p.dequantize())
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, IN_AXIS)?)
    }

    /// Bytes the packed codes take, plus 4 bytes per step and zero point, or per codebook entry
    /// ([`WeightPart::storage_bytes`]).
    pub fn storage_bytes(&self) -> usize {
        self.parts.iter().map(WeightPart::storage_bytes).sum()
    }

    /// Whether any part is a codebook (k-means) part.
    pub fn has_codebook(&self) -> bool {
        self.parts.iter().any(|p| p.codebook.is_some())
    }

    /// Stored bits per weight, everything included ([`QuantWeight::storage_bytes`]).
    pub fn bits_per_weight(&self) -> f64 {
        let n: usize = self.shape.iter().product();
        8.0 * self.storage_bytes() as f64 / n.max(1) as f64
    }
}
