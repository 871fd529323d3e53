//! Quantized weights as the integer kernels keep them in memory: int8 one code per byte, int4
//! (and narrower) two codes per byte, already in the order the kernels read them.
//!
//! # Layout
//!
//! The reduction axis `k` of a layer runs over its input channels and kernel taps. Input channels
//! are grouped in [`Segment`]s (contiguous channel ranges: the two halves of a split decoder
//! layer, or, with DMQ's power-of-two scaling, groups of channels sharing one shift); each segment
//! is padded to a multiple of 4 channels in the *padded channel layout* that the quantized
//! activations also use, so 4 consecutive `k` values always belong to one pixel and one segment.
//!
//! Output channels are grouped in blocks of [`NB`] = 16 (one 512-bit register of i32 sums). Block
//! `b` is stored as
//!
//! ```text
//! for each segment s, for each tap t (kh·kw + kw), for each channel quad q of s:
//!     64 values: output channel n = 16b + j (j < 16), input channel 4q + r (r < 4) at index 4j + r
//! ```
//!
//! which is exactly the operand layout of `vpdpbusd` (one dword of four `k` per i32 lane) and of
//! an AMX `B` tile. Padding (output channels past `C_out`, input channels past a segment's length)
//! holds 0, so it adds nothing to any sum.
//!
//! Values are `code − offset` as i8: `offset` is 128 for 8-bit codes (0..=255 does not fit i8) and
//! 0 for narrower ones (0..=127 does). The kernels compute `Σ q·(code − offset)`; the layer adds
//! the zero-point terms (`crate::layer`).
//!
//! **Nibble storage** (bits ≤ 4): each 64-value row is 32 bytes, byte `j` holding value `j` in its
//! low and value `j + 32` in its high nibble, so unpacking a row is two masks and a shift of one
//! 256-bit load ([`PackedWeight::panel`]). A k-means (codebook) weight fits the same layout with
//! the nibble indexing a 16-entry table instead of being the value; dmq has no codebook artifacts
//! yet, so that table is not implemented.

use crate::error::{ExecError, Result};

/// Output channels per block (i32 lanes of a 512-bit register).
pub const NB: usize = 16;
/// Input values per lane of one `vpdpbusd` (bytes of a dword).
pub const KQ: usize = 4;
/// Bytes of one unpacked panel row: [`NB`] output channels × [`KQ`] inputs.
pub const ROW: usize = NB * KQ;

/// A contiguous range of input channels quantized with one activation quantizer and summed with
/// one left shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// First input channel, in the layer's own channel order.
    pub start: usize,
    pub len: usize,
    /// First channel in the padded channel layout (a multiple of [`KQ`]).
    pub padded_start: usize,
    /// `len` rounded up to a multiple of [`KQ`].
    pub padded_len: usize,
    /// Left shift applied to this segment's integer sums before they join their part (DMQ's
    /// power-of-two activation factors, §6.5 of the method spec: the segment's activation step
    /// is the part's step times `2^shift`); 0 without PTS.
    pub shift: u8,
    /// Index of the dequantization part (one `Δ_a·Δ_w` product) the segment belongs to.
    pub part: usize,
}

/// Lays out segments for input-channel ranges `(start, len, shift, part)` that tile the channels.
pub fn layout_segments(ranges: &[(usize, usize, u8, usize)]) -> Result<(Vec<Segment>, usize)> {
    let mut out = Vec::with_capacity(ranges.len());
    let (mut next, mut padded) = (0, 0);
    for &(start, len, shift, part) in ranges {
        if start != next || len == 0 {
            return Err(ExecError::Shape(format!(
                "input-channel segments must tile the channels in order; got one at {start} of length {len} where {next} was expected"
            )));
        }
        if shift > 7 {
            return Err(ExecError::Shape(format!(
                "segment shift {shift} is larger than 7"
            )));
        }
        let padded_len = len.div_ceil(KQ) * KQ;
        out.push(Segment {
            start,
            len,
            padded_start: padded,
            padded_len,
            shift,
            part,
        });
        next += len;
        padded += padded_len;
    }
    Ok((out, padded))
}

/// How the codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// One code per byte (5 to 8 bits).
    Bytes,
    /// Two codes per byte (2 to 4 bits).
    Nibbles,
}

/// The packed codes of one layer's weight (scales and zero points live with the layer).
#[derive(Debug, Clone)]
pub struct PackedWeight {
    pub bits: u8,
    pub storage: Storage,
    pub out_channels: usize,
    pub in_channels: usize,
    /// Kernel taps (`kh·kw`, 1 for linear layers).
    pub taps: usize,
    pub segments: Vec<Segment>,
    /// Channels of the padded channel layout.
    pub padded_channels: usize,
    data: Vec<u8>,
}

impl PackedWeight {
    /// Packs `codes` given in the float weight's order `[C_out][C_in][taps]` (`u8`, each
    /// `< 2^bits`).
    pub fn pack(
        codes: &[u8],
        bits: u8,
        out_channels: usize,
        in_channels: usize,
        taps: usize,
        segments: Vec<Segment>,
        padded_channels: usize,
    ) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(ExecError::Shape(format!(
                "weight bit width {bits} is not in 2..=8"
            )));
        }
        if codes.len() != out_channels * in_channels * taps {
            return Err(ExecError::Shape(format!(
                "{} codes for a weight of {out_channels}×{in_channels}×{taps}",
                codes.len()
            )));
        }
        let covered: usize = segments.iter().map(|s| s.len).sum();
        if covered != in_channels || segments.is_empty() {
            return Err(ExecError::Shape(format!(
                "segments cover {covered} of {in_channels} input channels"
            )));
        }
        let max = ((1u16 << bits) - 1) as u8;
        if let Some(i) = codes.iter().position(|&c| c > max) {
            return Err(ExecError::Shape(format!(
                "code {} at index {i} does not fit in {bits} bits",
                codes[i]
            )));
        }
        let storage = if bits <= 4 {
            Storage::Nibbles
        } else {
            Storage::Bytes
        };
        let offset: i16 = if bits == 8 { 128 } else { 0 };
        let blocks = out_channels.div_ceil(NB);
        let rows_per_block = taps * padded_channels / KQ;
        let mut unpacked = [0i8; ROW];
        let row_bytes = match storage {
            Storage::Bytes => ROW,
            Storage::Nibbles => ROW / 2,
        };
        let mut data = Vec::with_capacity(blocks * rows_per_block * row_bytes);
        for b in 0..blocks {
            for s in &segments {
                for t in 0..taps {
                    for q in 0..s.padded_len / KQ {
                        for j in 0..NB {
                            let n = b * NB + j;
                            for r in 0..KQ {
                                let c = q * KQ + r;
                                unpacked[j * KQ + r] = if n < out_channels && c < s.len {
                                    let code = codes[(n * in_channels + s.start + c) * taps + t];
                                    (i16::from(code) - offset) as i8
                                } else {
                                    0
                                };
                            }
                        }
                        match storage {
                            Storage::Bytes => data.extend(unpacked.iter().map(|&v| v as u8)),
                            Storage::Nibbles => data.extend((0..ROW / 2).map(|j| {
                                (unpacked[j] as u8) | ((unpacked[j + ROW / 2] as u8) << 4)
                            })),
                        }
                    }
                }
            }
        }
        Ok(Self {
            bits,
            storage,
            out_channels,
            in_channels,
            taps,
            segments,
            padded_channels,
            data,
        })
    }

    /// `offset` subtracted from every code ([module docs](self)).
    pub fn offset(&self) -> i32 {
        if self.bits == 8 {
            128
        } else {
            0
        }
    }

    /// Output-channel blocks of [`NB`].
    pub fn blocks(&self) -> usize {
        self.out_channels.div_ceil(NB)
    }

    /// Unpacked bytes of one block: `taps · padded_channels / 4` rows of [`ROW`].
    pub fn block_len(&self) -> usize {
        self.taps * self.padded_channels / KQ * ROW
    }

    /// Offset of segment `s` inside an unpacked block.
    pub fn segment_offset(&self, s: usize) -> usize {
        self.taps * self.segments[s].padded_start / KQ * ROW
    }

    /// Bytes the codes take in memory.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    /// The unpacked i8 panel of block `b`: borrowed as is for byte storage, unpacked into
    /// `scratch` (at least [`PackedWeight::block_len`] long) for nibbles.
    pub fn panel<'a>(&'a self, b: usize, scratch: &'a mut [i8]) -> &'a [i8] {
        let len = self.block_len();
        match self.storage {
            Storage::Bytes => {
                let bytes = &self.data[b * len..(b + 1) * len];
                // SAFETY: u8 and i8 have the same size and alignment; every bit pattern is valid.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), len) }
            }
            Storage::Nibbles => {
                let half = ROW / 2;
                let src = &self.data[b * len / 2..(b + 1) * len / 2];
                let dst = &mut scratch[..len];
                for (row, out) in src.chunks_exact(half).zip(dst.chunks_exact_mut(ROW)) {
                    let (lo, hi) = out.split_at_mut(half);
                    for j in 0..half {
                        lo[j] = (row[j] & 0x0f) as i8;
                        hi[j] = (row[j] >> 4) as i8;
                    }
                }
                dst
            }
        }
    }

    /// The code of output channel `n`, input channel `c`, tap `t` (slow; for tests and checks).
    pub fn code(&self, n: usize, c: usize, t: usize) -> u8 {
        let (si, s) = self
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| c >= s.start && c < s.start + s.len)
            .expect("input channel inside the weight");
        let c = c - s.start;
        let (b, j) = (n / NB, n % NB);
        let row = b * self.taps * self.padded_channels / KQ
            + (self.segment_offset(si) / ROW)
            + t * s.padded_len / KQ
            + c / KQ;
        let idx = j * KQ + c % KQ;
        let v = match self.storage {
            Storage::Bytes => self.data[row * ROW + idx] as i8 as i32,
            Storage::Nibbles => {
                let byte = self.data[row * ROW / 2 + idx % (ROW / 2)];
                i32::from(if idx < ROW / 2 {
                    byte & 0x0f
                } else {
                    byte >> 4
                })
            }
        };
        (v + self.offset()) as u8
    }
}
