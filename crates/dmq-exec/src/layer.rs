//! One convolution or linear layer computed with integer arithmetic.
//!
//! With activation codes `q` (step `Δ_a`, zero point `z_a`, per segment) and weight codes `w`
//! (step `Δ_w[n]`, zero point `z_w[n]`, per output channel and part), output channel `n` at
//! position `p` is
//!
//! ```text
//! y[n,p] = b[n] + Σ_parts Δ_a·Δ_w[n] · Σ_{segments s of the part} 2^shift_s · V_s[n,p]
//! V_s[n,p] = Σ_{k ∈ s, inside the image} (q_k − z_a)(w_nk − z_w[n])
//!          = A_s[n,p] + (o − z_w[n])·S_s[p] − z_a·W_s[n] − (pad − z_a)·P_s[n,p]
//! ```
//!
//! where the kernels compute `A_s = Σ_k q_k·(w_nk − o)` over every tap (padding pixels hold the
//! code `pad`), `o` is the storage offset of the codes (128 for 8 bits, else 0), `S_s[p] = Σ_k q_k`
//! (from the per-pixel sums of the quantizer), `W_s[n] = Σ_k (w_nk − z_w[n])` over all taps and
//! `P_s[n,p]` is the same sum over only the taps of `p` that fall in the padding. `pad = z_a`
//! whenever the zero point is a code, so the last term is usually zero; an activation zero point
//! outside `[0, 2^b − 1]` (an all-positive or all-negative input) is handled exactly all the same.
//! Everything up to `V` is integer; the only float step is the one multiply by `Δ_a·Δ_w[n]` (in
//! f64) and the bias, written straight into the NCHW (or row-major) output.

use rayon::prelude::*;

use crate::error::{ExecError, Result};
use crate::isa::Isa;
use crate::kernels::{self, Acc, ACC_W, MAX_NR, MAX_SEGMENT_K, TILE_M};
use crate::packed::{layout_segments, PackedWeight, Segment, Storage, KQ, NB};
use crate::quantize::{quantize_input, ActQuant, InputLayout, QuantizedInput};

/// What kind of layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// Square kernel, symmetric zero padding, no groups or dilation (what UNets use).
    Conv {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// `y = x Wᵀ + b` over the last axis.
    Linear,
}

impl Geometry {
    fn taps(&self) -> usize {
        match *self {
            Geometry::Conv { kernel, .. } => kernel * kernel,
            Geometry::Linear => 1,
        }
    }
}

/// The weight quantizer of one part: per output channel (or one for all) step and zero point.
#[derive(Debug, Clone)]
pub struct PartWeight {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
}

/// Per-segment precomputed weight sums, in i32 to keep the resident size down (at most
/// `MAX_SEGMENT_K` terms of magnitude `|w − z_w|`; checked when the layer is built).
#[derive(Debug, Clone)]
struct SegmentSums {
    /// `W_s[n] = Σ_{c ∈ s, t} (w − z_w[n])`.
    total: Vec<i32>,
    /// `[n][t]`: `Σ_{c ∈ s} (w − z_w[n])` of tap `t`.
    per_tap: Vec<i32>,
}

/// A layer ready for integer execution.
#[derive(Debug, Clone)]
pub struct IntLayer {
    pub name: String,
    pub geometry: Geometry,
    pub weight: PackedWeight,
    /// Per part (dequantization group): weight steps and zero points, per output channel.
    parts: Vec<PartWeight>,
    sums: Vec<SegmentSums>,
    bias: Option<Vec<f32>>,
}

/// The input-channel ranges of a layer: `(start, len, shift, part)`.
pub type SegmentSpec = (usize, usize, u8, usize);

impl IntLayer {
    /// Builds a layer from weight codes in the float weight's order `[C_out][C_in][kh][kw]`, one
    /// [`PartWeight`] per part and the input-channel segments (each naming its part).
    // The arguments are the layer's description, each used once; a builder would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        geometry: Geometry,
        codes: &[u8],
        bits: u8,
        out_channels: usize,
        in_channels: usize,
        segments: &[SegmentSpec],
        parts: Vec<PartWeight>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        Self::build(
            name,
            geometry,
            codes,
            bits,
            out_channels,
            in_channels,
            segments,
            parts,
            bias,
        )
        .map_err(|e| e.in_layer(name))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        name: &str,
        geometry: Geometry,
        codes: &[u8],
        bits: u8,
        out_channels: usize,
        in_channels: usize,
        segments: &[SegmentSpec],
        mut parts: Vec<PartWeight>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let taps = geometry.taps();
        if let Geometry::Conv { kernel, stride, .. } = geometry {
            if kernel == 0 || stride == 0 {
                return Err(ExecError::Shape(format!(
                    "kernel {kernel} and stride {stride} must be at least 1"
                )));
            }
            if taps > 64 {
                return Err(ExecError::Shape(format!(
                    "kernels of more than 64 taps are not supported ({kernel}×{kernel})"
                )));
            }
        }
        if out_channels == 0 || in_channels == 0 {
            return Err(ExecError::Shape(
                "a layer needs input and output channels".into(),
            ));
        }
        let (segs, cp) = layout_segments(segments)?;
        for s in &segs {
            if s.part >= parts.len() {
                return Err(ExecError::Shape(format!(
                    "segment at input channel {} names part {} of {}",
                    s.start,
                    s.part,
                    parts.len()
                )));
            }
            if s.padded_len * taps > MAX_SEGMENT_K {
                return Err(ExecError::Shape(format!(
                    "a segment sums {} products; the i32 kernels take at most {MAX_SEGMENT_K}",
                    s.padded_len * taps
                )));
            }
        }
        for (i, p) in parts.iter_mut().enumerate() {
            if p.scale.len() == 1 && out_channels > 1 {
                p.scale = vec![p.scale[0]; out_channels];
                p.zero_point = vec![p.zero_point.first().copied().unwrap_or(0); out_channels];
            }
            if p.scale.len() != out_channels || p.zero_point.len() != out_channels {
                return Err(ExecError::Shape(format!(
                    "part {i} has {} steps and {} zero points for {out_channels} output channels",
                    p.scale.len(),
                    p.zero_point.len()
                )));
            }
            if let Some(s) = p.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(ExecError::Shape(format!(
                    "part {i} has weight step {s}; steps must be finite and positive"
                )));
            }
        }
        if let Some(b) = &bias {
            if b.len() != out_channels {
                return Err(ExecError::Shape(format!(
                    "bias has {} values for {out_channels} output channels",
                    b.len()
                )));
            }
        }
        let weight = PackedWeight::pack(
            codes,
            bits,
            out_channels,
            in_channels,
            taps,
            segs.clone(),
            cp,
        )?;
        let sums = segs
            .iter()
            .map(|s| {
                let zw = &parts[s.part].zero_point;
                let mut per_tap = vec![0i64; out_channels * taps];
                for n in 0..out_channels {
                    for c in s.start..s.start + s.len {
                        for t in 0..taps {
                            per_tap[n * taps + t] +=
                                i64::from(codes[(n * in_channels + c) * taps + t])
                                    - i64::from(zw[n]);
                        }
                    }
                }
                let total: Vec<i64> = per_tap.chunks(taps).map(|r| r.iter().sum()).collect();
                let narrow = |v: Vec<i64>| -> Result<Vec<i32>> {
                    v.into_iter()
                        .map(|x| {
                            i32::try_from(x).map_err(|_| {
                                ExecError::Shape(format!(
                                    "weight sum {x} does not fit i32 (weight zero points too far outside the code range)"
                                ))
                            })
                        })
                        .collect()
                };
                Ok(SegmentSums {
                    total: narrow(total)?,
                    per_tap: narrow(per_tap)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            geometry,
            weight,
            parts,
            sums,
            bias,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.weight.out_channels
    }

    pub fn segments(&self) -> &[Segment] {
        &self.weight.segments
    }

    pub fn num_parts(&self) -> usize {
        self.parts.len()
    }

    /// Bytes this layer keeps in memory: packed codes, steps and zero points, weight sums, bias.
    pub fn resident_bytes(&self) -> usize {
        let params: usize = self.parts.iter().map(|p| 8 * p.scale.len()).sum();
        let sums: usize = self
            .sums
            .iter()
            .map(|s| 4 * (s.total.len() + s.per_tap.len()))
            .sum();
        self.weight.storage_bytes() + params + sums + 4 * self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Output shape for an input of shape `dims`.
    pub fn output_dims(&self, dims: &[usize]) -> Result<Vec<usize>> {
        let c = self.in_channels();
        match self.geometry {
            Geometry::Conv {
                kernel,
                stride,
                padding,
            } => {
                let [b, ci, h, w] = dims else {
                    return Err(ExecError::Shape(format!(
                        "convolution input must be [B, C, H, W], got {dims:?}"
                    )));
                };
                if *ci != c {
                    return Err(ExecError::Shape(format!(
                        "input has {ci} channels, the layer takes {c}"
                    )));
                }
                if h + 2 * padding < kernel || w + 2 * padding < kernel {
                    return Err(ExecError::Shape(format!(
                        "input {h}×{w} with padding {padding} is smaller than the {kernel}×{kernel} kernel"
                    )));
                }
                let oh = (h + 2 * padding - kernel) / stride + 1;
                let ow = (w + 2 * padding - kernel) / stride + 1;
                Ok(vec![*b, self.out_channels(), oh, ow])
            }
            Geometry::Linear => match dims.last() {
                Some(&ci) if ci == c => {
                    let mut out = dims.to_vec();
                    *out.last_mut().expect("non-empty") = self.out_channels();
                    Ok(out)
                }
                _ => Err(ExecError::Shape(format!(
                    "linear input must end in {c} features, got {dims:?}"
                ))),
            },
        }
    }

    /// The quantizer of every segment from one quantizer per part.
    fn segment_quants(&self, acts: &[ActQuant]) -> Result<Vec<ActQuant>> {
        if acts.len() != self.parts.len() {
            return Err(ExecError::Shape(format!(
                "{} activation quantizers for {} parts",
                acts.len(),
                self.parts.len()
            )));
        }
        Ok(self
            .segments()
            .iter()
            .map(|s| acts[s.part].shifted(s.shift))
            .collect())
    }

    /// Computes the layer on `x` (shape `dims`, f32, row-major) with one activation quantizer per
    /// part; returns the output and its shape.
    pub fn forward(
        &self,
        isa: Isa,
        x: &[f32],
        dims: &[usize],
        acts: &[ActQuant],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (out, _, dims) = self
            .forward_inner(isa, x, dims, acts, false)
            .map_err(|e| e.in_layer(&self.name))?;
        Ok((out, dims))
    }

    /// Like [`IntLayer::forward`], and also the exact integer sums `V` of every part
    /// (`[B][C_out][OH][OW][parts]`, see the module docs) that the output was scaled from.
    pub fn forward_with_integers(
        &self,
        isa: Isa,
        x: &[f32],
        dims: &[usize],
        acts: &[ActQuant],
    ) -> Result<(Vec<f32>, Vec<i64>, Vec<usize>)> {
        self.forward_inner(isa, x, dims, acts, true)
            .map_err(|e| e.in_layer(&self.name))
    }

    fn forward_inner(
        &self,
        isa: Isa,
        x: &[f32],
        dims: &[usize],
        acts: &[ActQuant],
        with_ints: bool,
    ) -> Result<(Vec<f32>, Vec<i64>, Vec<usize>)> {
        let out_dims = self.output_dims(dims)?;
        let quants = self.segment_quants(acts)?;
        let (layout, padding, kernel, stride) = match self.geometry {
            Geometry::Conv {
                kernel,
                stride,
                padding,
            } => (
                InputLayout::Nchw {
                    batch: dims[0],
                    height: dims[2],
                    width: dims[3],
                },
                padding,
                kernel,
                stride,
            ),
            Geometry::Linear => (
                InputLayout::Rows {
                    rows: dims[..dims.len() - 1].iter().product(),
                },
                0,
                1,
                1,
            ),
        };
        let qin = quantize_input(
            isa,
            x,
            layout,
            padding,
            self.segments(),
            &quants,
            self.weight.padded_channels,
        )?;
        let (oh, ow) = match self.geometry {
            Geometry::Conv { .. } => (out_dims[2], out_dims[3]),
            Geometry::Linear => (1, 1),
        };
        let geo = Positions {
            batch: qin.batch,
            h: qin.hp - 2 * padding,
            w: qin.wp - 2 * padding,
            oh,
            ow,
            kernel,
            stride,
            padding,
        };
        let n = qin.batch * self.out_channels() * oh * ow;
        let mut out = vec![0f32; n];
        let mut ints = if with_ints {
            vec![0i64; n * self.parts.len()]
        } else {
            Vec::new()
        };
        let ints_ptr = with_ints.then_some(SyncPtr(ints.as_mut_ptr()));
        self.run(
            isa,
            &qin,
            &geo,
            &quants,
            SyncPtr(out.as_mut_ptr()),
            ints_ptr,
        );
        Ok((out, ints, out_dims))
    }

    /// The per-call constants of the epilogue (they depend on the step's activation quantizers).
    fn epilogue(&self, quants: &[ActQuant]) -> Epilogue {
        let n_out = self.out_channels();
        let offset = i64::from(self.weight.offset());
        let segs = self.segments();
        let part_segments: Vec<Vec<usize>> = (0..self.parts.len())
            .map(|pi| (0..segs.len()).filter(|&si| segs[si].part == pi).collect())
            .collect();
        // Δ_a of each part: a segment's step is the part's times 2^shift (exact in f32).
        let scale = part_segments
            .iter()
            .zip(&self.parts)
            .map(|(ss, part)| {
                let step = ss.first().map_or(0.0, |&si| {
                    f64::from(quants[si].scale) / f64::from(1u32 << segs[si].shift)
                });
                part.scale.iter().map(|&w| step * f64::from(w)).collect()
            })
            .collect();
        Epilogue {
            cs: segs
                .iter()
                .map(|s| {
                    let zw = &self.parts[s.part].zero_point;
                    (0..n_out).map(|n| offset - i64::from(zw[n])).collect()
                })
                .collect(),
            c0: quants
                .iter()
                .zip(&self.sums)
                .map(|(q, sums)| {
                    let za = i64::from(q.zero_point);
                    sums.total.iter().map(|&w| -za * i64::from(w)).collect()
                })
                .collect(),
            padfix: quants
                .iter()
                .map(|q| i64::from(q.pad_code()) - i64::from(q.zero_point))
                .collect(),
            shift: segs.iter().map(|s| s.shift).collect(),
            scale,
            bias: match &self.bias {
                Some(b) => b.iter().map(|&v| f64::from(v)).collect(),
                None => vec![0.0; n_out],
            },
            part_segments,
        }
    }

    /// Tiles, kernels and epilogue over all positions, in parallel over chunks of positions.
    fn run(
        &self,
        isa: Isa,
        qin: &QuantizedInput,
        geo: &Positions,
        quants: &[ActQuant],
        out: SyncPtr<f32>,
        ints: Option<SyncPtr<i64>>,
    ) {
        let epi = self.epilogue(quants);
        let total = geo.batch * geo.oh * geo.ow;
        let threads = rayon::current_num_threads().max(1);
        let chunk = (total.div_ceil(threads * 2)).clamp(TILE_M, 16 * TILE_M);
        let chunk = chunk.div_ceil(TILE_M) * TILE_M;
        (0..total.div_ceil(chunk)).into_par_iter().for_each(|ci| {
            let first = ci * chunk;
            let last = (first + chunk).min(total);
            // SAFETY: chunks cover disjoint positions and each output element belongs to one
            // position, so no two threads write the same element; `out` outlives the loop.
            unsafe { self.run_chunk(isa, qin, geo, &epi, first..last, out, ints) };
        });
    }

    /// # Safety
    /// `out` (and `ints`) must point at the layer's whole output (and integer sums); positions
    /// `range` are written by this call only.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_chunk(
        &self,
        isa: Isa,
        qin: &QuantizedInput,
        geo: &Positions,
        epi: &Epilogue,
        range: std::ops::Range<usize>,
        out: SyncPtr<f32>,
        ints: Option<SyncPtr<i64>>,
    ) {
        let n_out = self.out_channels();
        let taps = self.weight.taps;
        let nseg = self.segments().len();
        let cp = qin.cp;
        let tap_offs: Vec<usize> = (0..taps)
            .map(|t| (t / geo.kernel * qin.wp + t % geo.kernel) * cp)
            .collect();
        // Per position: pixel index of its first tap, code sums per segment, padding-tap mask.
        let len = range.len();
        let mut base_pix = Vec::with_capacity(len);
        let mut s_sum = vec![0i64; len * nseg];
        let mut pad_mask = vec![0u64; len];
        let mut out_base = Vec::with_capacity(len);
        for (li, p) in range.clone().enumerate() {
            let b = p / (geo.oh * geo.ow);
            out_base.push(b * n_out * geo.oh * geo.ow + p % (geo.oh * geo.ow));
            let oy = p / geo.ow % geo.oh;
            let ox = p % geo.ow;
            let pix = qin.pixel(b, oy * geo.stride, ox * geo.stride);
            base_pix.push(pix);
            for t in 0..taps {
                let (kh, kw) = (t / geo.kernel, t % geo.kernel);
                let tp = pix + kh * qin.wp + kw;
                for s in 0..nseg {
                    s_sum[li * nseg + s] += i64::from(qin.sums[tp * nseg + s]);
                }
                let y = oy * geo.stride + kh;
                let x = ox * geo.stride + kw;
                if y < geo.padding
                    || y >= geo.padding + geo.h
                    || x < geo.padding
                    || x >= geo.padding + geo.w
                {
                    pad_mask[li] |= 1 << t;
                }
            }
        }
        let blocks = self.weight.blocks();
        let block_len = self.weight.block_len();
        // Unpacked int4 panels; byte-stored weights are read in place.
        let scratch_len = match self.weight.storage {
            Storage::Bytes => 0,
            Storage::Nibbles => block_len,
        };
        let mut scratch = vec![0i8; scratch_len * MAX_NR];
        let mut accs: Vec<Acc> = vec![[0i32; TILE_M * ACC_W]; nseg];
        let hw = geo.oh * geo.ow;
        let nparts = self.parts.len();
        let mut jb = 0;
        while jb < blocks {
            let nr = (blocks - jb).min(MAX_NR);
            let (s0, s1) = scratch.split_at_mut(scratch_len);
            let p0 = self.weight.panel(jb, s0).as_ptr();
            let p1 = if nr > 1 {
                self.weight.panel(jb + 1, s1).as_ptr()
            } else {
                p0
            };
            for tile0 in (0..len).step_by(TILE_M) {
                let m = (len - tile0).min(TILE_M);
                for (si, seg) in self.segments().iter().enumerate() {
                    let bases: [*const u8; TILE_M] = std::array::from_fn(|i| {
                        let li = tile0 + i.min(m - 1);
                        qin.codes.as_ptr().add(base_pix[li] * cp + seg.padded_start)
                    });
                    let so = self.weight.segment_offset(si);
                    let panels = [p0.add(so), p1.add(so)];
                    kernels::tile(
                        isa,
                        &bases,
                        &tap_offs,
                        seg.padded_len / KQ,
                        &panels[..nr],
                        &mut accs[si],
                    );
                }
                // Epilogue: zero-point terms, shifts, one scale per part, bias; channel-major
                // so consecutive positions of one image write consecutive floats.
                for jj in 0..nr * NB {
                    let n = jb * NB + jj;
                    if n >= n_out {
                        break;
                    }
                    for i in 0..m {
                        let li = tile0 + i;
                        let mut y = epi.bias[n];
                        for (pi, segs) in epi.part_segments.iter().enumerate() {
                            let mut v: i64 = 0;
                            for &si in segs {
                                let mut vs = i64::from(accs[si][i * ACC_W + jj])
                                    + epi.cs[si][n] * s_sum[li * nseg + si]
                                    + epi.c0[si][n];
                                if epi.padfix[si] != 0 && pad_mask[li] != 0 {
                                    let per_tap = &self.sums[si].per_tap[n * taps..(n + 1) * taps];
                                    let mut ptaps = 0i64;
                                    let mut mask = pad_mask[li];
                                    while mask != 0 {
                                        ptaps += i64::from(per_tap[mask.trailing_zeros() as usize]);
                                        mask &= mask - 1;
                                    }
                                    vs -= epi.padfix[si] * ptaps;
                                }
                                v += vs << epi.shift[si];
                            }
                            if let Some(ints) = ints {
                                *ints.0.add((out_base[li] + n * hw) * nparts + pi) = v;
                            }
                            y += epi.scale[pi][n] * v as f64;
                        }
                        *out.0.add(out_base[li] + n * hw) = y as f32;
                    }
                }
            }
            jb += nr;
        }
    }
}

/// Constants of the epilogue for one call (see [`IntLayer::epilogue`]).
struct Epilogue {
    /// `[segment][n]`: `o − z_w[n]`, the factor of the segment's code sum.
    cs: Vec<Vec<i64>>,
    /// `[segment][n]`: `−z_a·W_s[n]`.
    c0: Vec<Vec<i64>>,
    /// `[segment]`: `pad − z_a` (0 when the zero point is a code).
    padfix: Vec<i64>,
    shift: Vec<u8>,
    /// `[part][n]`: `Δ_a·Δ_w[n]`.
    scale: Vec<Vec<f64>>,
    /// `[part]`: its segments.
    part_segments: Vec<Vec<usize>>,
    bias: Vec<f64>,
}

/// Geometry of the positions of one call.
struct Positions {
    batch: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// An output pointer shared by the chunks of one parallel loop.
struct SyncPtr<T>(*mut T);
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: used only to write disjoint elements from the chunks of one parallel loop.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

/// The naive integer reference: `V_s` of the module docs computed directly from the definition
/// (codes of the valid taps only, no storage offset, no padding code), per part, as exact i64
/// sums; the f32 output uses the same final scaling as the layer. Everything the kernels compute
/// is checked against this.
#[allow(clippy::too_many_arguments)]
pub fn reference_forward(
    layer_codes: &[u8],
    geometry: Geometry,
    out_channels: usize,
    in_channels: usize,
    segments: &[SegmentSpec],
    parts: &[PartWeight],
    bias: Option<&[f32]>,
    x: &[f32],
    dims: &[usize],
    acts: &[ActQuant],
) -> (Vec<i64>, Vec<f32>) {
    let (kernel, stride, padding) = match geometry {
        Geometry::Conv {
            kernel,
            stride,
            padding,
        } => (kernel, stride, padding),
        Geometry::Linear => (1, 1, 0),
    };
    let (batch, h, w) = match geometry {
        Geometry::Conv { .. } => (dims[0], dims[2], dims[3]),
        Geometry::Linear => (dims[..dims.len() - 1].iter().product(), 1, 1),
    };
    let oh = (h + 2 * padding - kernel) / stride + 1;
    let ow = (w + 2 * padding - kernel) / stride + 1;
    let taps = kernel * kernel;
    let nparts = parts.len();
    let input = |b: usize, c: usize, y: usize, xx: usize| -> f32 {
        match geometry {
            Geometry::Conv { .. } => x[((b * in_channels + c) * h + y) * w + xx],
            Geometry::Linear => x[b * in_channels + c],
        }
    };
    let seg_of = |c: usize| {
        segments
            .iter()
            .find(|s| c >= s.0 && c < s.0 + s.1)
            .copied()
            .expect("segments cover the channels")
    };
    let mut ints = vec![0i64; batch * out_channels * oh * ow * nparts];
    let mut out = vec![0f32; batch * out_channels * oh * ow];
    for b in 0..batch {
        for n in 0..out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut v = vec![0i64; nparts];
                    for c in 0..in_channels {
                        let (_, _, shift, part) = seg_of(c);
                        let q = acts[part].shifted(shift);
                        let zw = i64::from(if parts[part].zero_point.len() == 1 {
                            parts[part].zero_point[0]
                        } else {
                            parts[part].zero_point[n]
                        });
                        for t in 0..taps {
                            let (kh, kw) = (t / kernel, t % kernel);
                            let y = (oy * stride + kh) as isize - padding as isize;
                            let xx = (ox * stride + kw) as isize - padding as isize;
                            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let a = i64::from(q.code(input(b, c, y as usize, xx as usize)));
                            let wc = i64::from(layer_codes[(n * in_channels + c) * taps + t]);
                            v[part] += ((a - i64::from(q.zero_point)) * (wc - zw)) << shift;
                        }
                    }
                    let idx = ((b * out_channels + n) * oh + oy) * ow + ox;
                    let mut yv = f64::from(bias.map_or(0.0, |bb| bb[n]));
                    for (pi, vp) in v.iter().enumerate() {
                        ints[idx * nparts + pi] = *vp;
                        let ws = if parts[pi].scale.len() == 1 {
                            parts[pi].scale[0]
                        } else {
                            parts[pi].scale[n]
                        };
                        yv += f64::from(acts[pi].scale) * f64::from(ws) * *vp as f64;
                    }
                    out[idx] = yv as f32;
                }
            }
        }
    }
    (ints, out)
}
