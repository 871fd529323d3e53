//! The integer micro-kernels: one tile of [`TILE_M`] output positions × 16 or 32 output channels,
//! `acc[i][j] = Σ_t Σ_k a_i[off_t + k] · w_j[t][k]` with u8 activations, i8 weights and i32 sums.
//!
//! Activations are read in place from the channels-last quantized input (a direct convolution:
//! position `i`'s values for tap `t` start at `bases[i] + tap_offs[t]`), so no im2col copy is made.
//! Weights are one unpacked panel per block of 16 output channels ([`crate::packed`]).
//!
//! Why hand-written kernels rather than a crate: dmq needs a u8 × i8 → i32 product that reads a
//! padded channels-last image through per-position pointers (direct convolution), int4 weights
//! unpacked per panel, and sums kept per input-channel segment (split layers, power-of-two
//! shifts). The maintained Rust GEMM crates either have no integer GEMM (`gemm`,
//! `matrixmultiply`) or take whole packed matrices (`rten-gemm`'s int8 GEMM), which would cost an
//! im2col copy of every 3×3 input and an unpack of every int4 weight per call. The kernels here
//! are three short functions checked against a naive reference on random shapes.
//!
//! All paths are exact: sums are bounded by `255 · 128 · K` and the layer refuses segments with
//! `K > MAX_SEGMENT_K`, so no i32 overflows and every path returns the same integers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::isa::Isa;
use crate::packed::{KQ, NB, ROW};

/// Output positions per tile.
pub const TILE_M: usize = 12;
/// Output-channel blocks per tile (at most).
pub const MAX_NR: usize = 2;
/// Row stride of the accumulator tile.
pub const ACC_W: usize = NB * MAX_NR;
/// Largest reduction length of one segment: `255 · 128 · 65_536 < 2^31`.
pub const MAX_SEGMENT_K: usize = 65_536;

/// One accumulator tile, row `i` = position, column = output channel within the tile.
pub type Acc = [i32; TILE_M * ACC_W];

/// Computes one tile into `acc` (overwritten; columns past `16·panels.len()` are left as they
/// were).
///
/// # Safety
/// For every `i`, `t` and `q < cq`, the 4 bytes at `bases[i] + tap_offs[t] + 4q` must be
/// readable, and every panel must hold `tap_offs.len() · cq` rows of [`ROW`] bytes.
pub unsafe fn tile(
    isa: Isa,
    bases: &[*const u8; TILE_M],
    tap_offs: &[usize],
    cq: usize,
    panels: &[*const i8],
    acc: &mut Acc,
) {
    debug_assert!(!panels.is_empty() && panels.len() <= MAX_NR);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.is_available() => {
            if panels.len() == 2 {
                tile_vnni::<2>(bases, tap_offs, cq, [panels[0], panels[1]], acc)
            } else {
                tile_vnni::<1>(bases, tap_offs, cq, [panels[0]], acc)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => {
            for (jb, &p) in panels.iter().enumerate() {
                tile_avx2(bases, tap_offs, cq, p, jb, acc)
            }
        }
        _ => tile_scalar(bases, tap_offs, cq, panels, acc),
    }
}

/// Portable path: plain loops (LLVM vectorizes the 16-channel inner loop).
unsafe fn tile_scalar(
    bases: &[*const u8; TILE_M],
    tap_offs: &[usize],
    cq: usize,
    panels: &[*const i8],
    acc: &mut Acc,
) {
    for (jb, _) in panels.iter().enumerate() {
        for i in 0..TILE_M {
            acc[i * ACC_W + jb * NB..i * ACC_W + (jb + 1) * NB].fill(0);
        }
    }
    for (t, &off) in tap_offs.iter().enumerate() {
        for q in 0..cq {
            for (jb, &p) in panels.iter().enumerate() {
                let w = std::slice::from_raw_parts(p.add((t * cq + q) * ROW), ROW);
                for (i, &base) in bases.iter().enumerate() {
                    let a = std::slice::from_raw_parts(base.add(off + q * KQ), KQ);
                    let (a0, a1, a2, a3) = (
                        i32::from(a[0]),
                        i32::from(a[1]),
                        i32::from(a[2]),
                        i32::from(a[3]),
                    );
                    let row = &mut acc[i * ACC_W + jb * NB..i * ACC_W + (jb + 1) * NB];
                    for (j, r) in row.iter_mut().enumerate() {
                        *r += a0 * i32::from(w[j * KQ])
                            + a1 * i32::from(w[j * KQ + 1])
                            + a2 * i32::from(w[j * KQ + 2])
                            + a3 * i32::from(w[j * KQ + 3]);
                    }
                }
            }
        }
    }
}

/// AVX-512 VNNI: 12 positions × `NR` blocks of 16 channels in 24 (or 12) zmm accumulators; per
/// channel quad, `NR` weight loads and one broadcast per position feed `12·NR` `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const NR: usize>(
    bases: &[*const u8; TILE_M],
    tap_offs: &[usize],
    cq: usize,
    panels: [*const i8; NR],
    acc: &mut Acc,
) {
    let mut c = [[_mm512_setzero_si512(); NR]; TILE_M];
    for (t, &off) in tap_offs.iter().enumerate() {
        let a: [*const u8; TILE_M] = std::array::from_fn(|i| bases[i].add(off));
        let w: [*const i8; NR] = std::array::from_fn(|j| panels[j].add(t * cq * ROW));
        for q in 0..cq {
            let wv: [__m512i; NR] =
                std::array::from_fn(|j| _mm512_loadu_si512(w[j].add(q * ROW).cast()));
            for i in 0..TILE_M {
                let av = _mm512_set1_epi32(a[i].add(q * KQ).cast::<i32>().read_unaligned());
                for j in 0..NR {
                    c[i][j] = _mm512_dpbusd_epi32(c[i][j], av, wv[j]);
                }
            }
        }
    }
    for (i, row) in c.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm512_storeu_si512(acc.as_mut_ptr().add(i * ACC_W + j * NB).cast(), *v);
        }
    }
}

/// AVX2 without VNNI: u8 and i8 widened to i16 and multiplied with `vpmaddwd` (exact), two
/// positions × 16 channels at a time. Each 256-bit accumulator holds 4 channels × 2 partial sums
/// (inputs 0-1 and 2-3 of each quad), added at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(
    bases: &[*const u8; TILE_M],
    tap_offs: &[usize],
    cq: usize,
    panel: *const i8,
    jb: usize,
    acc: &mut Acc,
) {
    const MA: usize = 2;
    for i0 in (0..TILE_M).step_by(MA) {
        let mut c = [[_mm256_setzero_si256(); 4]; MA];
        for (t, &off) in tap_offs.iter().enumerate() {
            let w = panel.add(t * cq * ROW);
            for q in 0..cq {
                let wv: [__m256i; 4] = std::array::from_fn(|u| {
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(q * ROW + 16 * u).cast()))
                });
                for (i, ci) in c.iter_mut().enumerate() {
                    let four = bases[i0 + i]
                        .add(off + q * KQ)
                        .cast::<i32>()
                        .read_unaligned();
                    let av = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(four)));
                    for u in 0..4 {
                        ci[u] = _mm256_add_epi32(ci[u], _mm256_madd_epi16(av, wv[u]));
                    }
                }
            }
        }
        for (i, ci) in c.iter().enumerate() {
            for (u, v) in ci.iter().enumerate() {
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *v);
                for m in 0..4 {
                    acc[(i0 + i) * ACC_W + jb * NB + 4 * u + m] = lanes[2 * m] + lanes[2 * m + 1];
                }
            }
        }
    }
}
