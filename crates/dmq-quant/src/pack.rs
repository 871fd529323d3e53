//! Packed integer codes: `b`-bit codes (`2 ≤ b ≤ 8`) stored densely, so a W4 model takes half a
//! byte per weight on disk and in memory.
//!
//! Layout: one LSB-first bit stream. Code `i` occupies stream bits `[i·b, (i+1)·b)`, its least
//! significant bit first, and stream bit `k` is bit `k mod 8` of byte `⌊k/8⌋`. Hence int4 holds two
//! codes per byte, the first in the low nibble (`[1, 2, 3]` → `[0x21, 0x03]`), int8 is the identity,
//! and for 3, 5, 6, 7 bits codes straddle byte boundaries. The unused high bits of the last byte are
//! zero; [`unpack`] checks that, which catches a wrong length or bit width.

use crate::uniform::{validate_bits, QuantError, Result};

/// Bytes needed for `len` codes of `bits` bits: `⌈len·bits/8⌉`.
pub fn packed_len(len: usize, bits: u8) -> usize {
    (len * usize::from(bits)).div_ceil(8)
}

/// Packs `codes` (each `< 2^bits`) into an LSB-first bit stream of [`packed_len`] bytes.
pub fn pack(codes: &[u8], bits: u8) -> Result<Vec<u8>> {
    validate_bits(bits)?;
    let max = ((1u16 << bits) - 1) as u8;
    if let Some((index, &code)) = codes.iter().enumerate().find(|(_, &c)| c > max) {
        return Err(QuantError::CodeOutOfRange {
            index,
            code,
            bits,
            max,
        });
    }
    if bits == 8 {
        return Ok(codes.to_vec());
    }
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    // A 16-bit window is enough: a code of at most 8 bits starting at bit offset 0..7 ends within
    // two bytes.
    let b = usize::from(bits);
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * b;
        let (byte, off) = (bit / 8, bit % 8);
        let word = u16::from(c) << off;
        out[byte] |= word as u8;
        if off + b > 8 {
            out[byte + 1] |= (word >> 8) as u8;
        }
    }
    Ok(out)
}

/// Unpacks `len` codes of `bits` bits from `bytes`, which must be exactly [`packed_len`] long and
/// have zero padding bits.
pub fn unpack(bytes: &[u8], bits: u8, len: usize) -> Result<Vec<u8>> {
    validate_bits(bits)?;
    let expected = packed_len(len, bits);
    if bytes.len() != expected {
        return Err(QuantError::PackedLength {
            got: bytes.len(),
            expected,
            len,
            bits,
        });
    }
    let b = usize::from(bits);
    let used = len * b;
    let tail_bits = used % 8;
    if tail_bits > 0 {
        let last = bytes[expected - 1];
        if last >> tail_bits != 0 {
            return Err(QuantError::NonZeroPadding { len, bits, last });
        }
    }
    if bits == 8 {
        return Ok(bytes.to_vec());
    }
    let mask = (1u16 << bits) - 1;
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        let bit = i * b;
        let (byte, off) = (bit / 8, bit % 8);
        let mut word = u16::from(bytes[byte]);
        if off + b > 8 {
            word |= u16::from(bytes[byte + 1]) << 8;
        }
        out.push(((word >> off) & mask) as u8);
    }
    Ok(out)
}
