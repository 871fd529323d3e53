//! Static per-tensor activation quantization into the kernels' input layout.
//!
//! A quantized layer's input arrives as f32 from a float op (group norm + SiLU, an upsampling, an
//! attention reshape: candle ops that dmq does not fuse into). One pass reads it, quantizes every
//! value with the step and zero point of the current sampling step, and writes the u8 codes in
//! the layout the kernels read: channels last, each segment padded to 4 channels, and for
//! convolutions a spatial border of `padding` pixels. The same pass keeps the sum of the codes of
//! every pixel and segment, which the zero-point correction needs.
//!
//! The code of a value is the one the simulated path computes ([`ActQuant::code`]):
//! `clamp(round_half_even(x / Δ) + z, 0, 2^b − 1)` in f32 with a true division, so both paths
//! give the same codes for the same input, bit for bit.

use rayon::prelude::*;

use crate::error::{ExecError, Result};
use crate::isa::Isa;
use crate::packed::Segment;

/// Largest |zero point| the kernels take: rounding uses the `1.5·2^23` trick, exact for
/// |x/Δ| < 2^22, and the quantizer clamps `x/Δ` to `[−z − 1, 2^b − z]` first.
pub const MAX_ZERO_POINT: i32 = 1 << 20;

/// One activation quantizer: step, zero point (may lie outside the code range: only codes are
/// clamped, as in the simulated path) and bit width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i32,
    pub bits: u8,
}

impl ActQuant {
    pub fn new(scale: f32, zero_point: i32, bits: u8) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ExecError::Shape(format!(
                "activation step {scale} is not finite and positive"
            )));
        }
        if !(2..=8).contains(&bits) {
            return Err(ExecError::Shape(format!(
                "activation bit width {bits} is not in 2..=8 (u8 codes)"
            )));
        }
        if zero_point.abs() > MAX_ZERO_POINT {
            return Err(ExecError::Shape(format!(
                "activation zero point {zero_point} is beyond ±{MAX_ZERO_POINT}"
            )));
        }
        Ok(Self {
            scale,
            zero_point,
            bits,
        })
    }

    pub fn qmax(&self) -> i32 {
        (1 << self.bits) - 1
    }

    /// The code of `x`: the definition every path must reproduce (NaN gives 0; the layer
    /// refuses NaN inputs before that matters).
    pub fn code(&self, x: f32) -> u8 {
        let v = (x / self.scale).round_ties_even() + self.zero_point as f32;
        v.clamp(0.0, self.qmax() as f32) as u8
    }

    /// The code written for padding pixels: the zero point when it is a code, otherwise the
    /// nearest code (and the layer corrects for the difference).
    pub fn pad_code(&self) -> u8 {
        self.zero_point.clamp(0, self.qmax()) as u8
    }

    /// The same quantizer with its step times `2^shift` (a power-of-two segment).
    pub fn shifted(&self, shift: u8) -> Self {
        Self {
            scale: self.scale * (1u32 << shift) as f32,
            ..*self
        }
    }
}

const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23

/// Quantizes `xs` into `out`; returns whether a NaN was seen. Equal to [`ActQuant::code`] for
/// every value (see the module docs and `MAX_ZERO_POINT`).
#[inline(always)]
fn quantize_body(xs: &[f32], out: &mut [u8], q: &ActQuant) -> bool {
    let d = q.scale;
    let z = q.zero_point as f32;
    let lo = -z - 1.0;
    let hi = q.qmax() as f32 - z + 1.0;
    let qmax = q.qmax() as f32;
    let mut nan = false;
    for (o, &x) in out.iter_mut().zip(xs) {
        nan |= x.is_nan();
        let v = (x / d).max(lo).min(hi);
        // Round half to even of |v| < 2^22 under the default rounding mode.
        let r = (v + MAGIC) - MAGIC;
        let c = (r + z).max(0.0).min(qmax);
        // SAFETY: `c` is finite (NaN became `lo` in `max`) and in [0, 255].
        *o = unsafe { c.to_int_unchecked::<i32>() } as u8;
    }
    nan
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(xs: &[f32], out: &mut [u8], q: &ActQuant) -> bool {
    quantize_body(xs, out, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(xs: &[f32], out: &mut [u8], q: &ActQuant) -> bool {
    quantize_body(xs, out, q)
}

/// Quantizes a run of values with the best code `isa` allows (same result on every path).
pub fn quantize_slice(isa: Isa, xs: &[f32], out: &mut [u8], q: &ActQuant) -> bool {
    assert_eq!(xs.len(), out.len(), "quantize_slice: lengths differ");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.is_available() => {
            // SAFETY: the features were detected at run time.
            unsafe { quantize_avx512(xs, out, q) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => {
            // SAFETY: the feature was detected at run time.
            unsafe { quantize_avx2(xs, out, q) }
        }
        _ => quantize_body(xs, out, q),
    }
}

/// How a layer's float input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// `[B, C, H, W]` (convolutions).
    Nchw {
        batch: usize,
        height: usize,
        width: usize,
    },
    /// `[rows, C]` (linear layers; rows are the flattened leading axes).
    Rows { rows: usize },
}

/// Quantized activations in the kernels' layout.
#[derive(Debug, Clone)]
pub struct QuantizedInput {
    pub batch: usize,
    /// Padded height and width (`H + 2p`, `W + 2p`; 1 and 1 for rows).
    pub hp: usize,
    pub wp: usize,
    /// Channels of the padded channel layout.
    pub cp: usize,
    /// `[B][Hp][Wp][Cp]` codes.
    pub codes: Vec<u8>,
    /// `[B][Hp][Wp][segments]`: sum of the codes of each pixel's real channels per segment.
    pub sums: Vec<i32>,
    pub segments: usize,
}

impl QuantizedInput {
    /// Pixel index of `(b, y, x)` in padded coordinates.
    pub fn pixel(&self, b: usize, y: usize, x: usize) -> usize {
        (b * self.hp + y) * self.wp + x
    }
}

/// Quantizes `x` (laid out as `layout`, `C` = the segments' channels) with one quantizer per
/// segment, adding a border of `padding` pixels (convolutions) filled with each segment's
/// [`ActQuant::pad_code`]. Fails on NaN.
pub fn quantize_input(
    isa: Isa,
    x: &[f32],
    layout: InputLayout,
    padding: usize,
    segments: &[Segment],
    quants: &[ActQuant],
    cp: usize,
) -> Result<QuantizedInput> {
    let c: usize = segments.iter().map(|s| s.len).sum();
    let nseg = segments.len();
    assert_eq!(quants.len(), nseg, "one quantizer per segment");
    let (batch, h, w) = match layout {
        InputLayout::Nchw {
            batch,
            height,
            width,
        } => (batch, height, width),
        InputLayout::Rows { rows } => (rows, 1, 1),
    };
    if x.len() != batch * c * h * w {
        return Err(ExecError::Shape(format!(
            "input has {} values, expected {batch}×{c}×{h}×{w}",
            x.len()
        )));
    }
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let mut codes = vec![0u8; batch * hp * wp * cp];
    let mut sums = vec![0i32; batch * hp * wp * nseg];
    let image = hp * wp * cp;
    let nan = match layout {
        InputLayout::Nchw { .. } => {
            codes
                .par_chunks_mut(image)
                .zip(sums.par_chunks_mut(hp * wp * nseg))
                .enumerate()
                .map(|(b, (dst, sdst))| {
                    let src = &x[b * c * h * w..(b + 1) * c * h * w];
                    let mut nan = false;
                    let mut row = vec![0u8; w];
                    for (si, s) in segments.iter().enumerate() {
                        let q = &quants[si];
                        let pad = q.pad_code();
                        // Border pixels: the pad code in the segment's real channels.
                        if padding > 0 && pad != 0 {
                            for y in 0..hp {
                                for xx in 0..wp {
                                    let inside = y >= padding
                                        && y < padding + h
                                        && xx >= padding
                                        && xx < padding + w;
                                    if !inside {
                                        let o = (y * wp + xx) * cp + s.padded_start;
                                        dst[o..o + s.len].fill(pad);
                                    }
                                }
                            }
                        }
                        for ci in 0..s.len {
                            let plane = &src[(s.start + ci) * h * w..(s.start + ci + 1) * h * w];
                            for y in 0..h {
                                nan |= quantize_slice(isa, &plane[y * w..(y + 1) * w], &mut row, q);
                                let base =
                                    ((y + padding) * wp + padding) * cp + s.padded_start + ci;
                                for (xx, &v) in row.iter().enumerate() {
                                    dst[base + xx * cp] = v;
                                }
                            }
                        }
                    }
                    pixel_sums(dst, sdst, segments, cp);
                    nan
                })
                .reduce(|| false, |a, b| a | b)
        }
        InputLayout::Rows { rows } => {
            let per = rows
                .div_ceil(rayon::current_num_threads().max(1) * 4)
                .max(1);
            codes
                .par_chunks_mut(per * cp)
                .zip(sums.par_chunks_mut(per * nseg))
                .enumerate()
                .map(|(chunk, (dst, sdst))| {
                    let first = chunk * per;
                    let n = dst.len() / cp;
                    let mut nan = false;
                    for r in 0..n {
                        let src = &x[(first + r) * c..(first + r + 1) * c];
                        for (si, s) in segments.iter().enumerate() {
                            let o = r * cp + s.padded_start;
                            nan |= quantize_slice(
                                isa,
                                &src[s.start..s.start + s.len],
                                &mut dst[o..o + s.len],
                                &quants[si],
                            );
                        }
                    }
                    pixel_sums(dst, sdst, segments, cp);
                    nan
                })
                .reduce(|| false, |a, b| a | b)
        }
    };
    if nan {
        return Err(ExecError::Shape(
            "the input holds NaN, which has no integer code".into(),
        ));
    }
    Ok(QuantizedInput {
        batch,
        hp,
        wp,
        cp,
        codes,
        sums,
        segments: nseg,
    })
}

/// Per pixel and segment, the sum of the codes of the segment's real channels.
fn pixel_sums(codes: &[u8], sums: &mut [i32], segments: &[Segment], cp: usize) {
    let nseg = segments.len();
    for (pix, out) in codes.chunks_exact(cp).zip(sums.chunks_exact_mut(nseg)) {
        for (o, s) in out.iter_mut().zip(segments) {
            *o = pix[s.padded_start..s.padded_start + s.len]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
        }
    }
}
