//! Non-uniform weight quantization with a k-means codebook (Qua²SeDiMo's K-Means-C and
//! K-Means-A, spec `docs/methods/qua2sedimo.md` §A2): the weights of each output channel
//! (per-channel) or of the whole tensor (per-tensor) are replaced by the nearest of `2^b`
//! centroids, stored as `u8` codes plus a lookup table.
//!
//! One-dimensional k-means is solved by Lloyd's algorithm on the **sorted** values: the clusters
//! of 1-D k-means are contiguous intervals, so one iteration is `k` binary searches and prefix
//! sums (O(k log n)) rather than a pass over the data. The start is deterministic (no random
//! seed): centroids at the `(i + ½)/k` quantiles, and, as a second start, evenly spaced over
//! `[min, max]`; the one with the lower squared error wins. Lloyd stops when no boundary moves or
//! after [`MAX_ITERS`] iterations (scikit-learn's `max_iter = 100` in the reference code).

use candle_core::{Device, Tensor};

use crate::config::Granularity;
use crate::qweight::{Codebook, QuantWeight, WeightPart};
use crate::uniform::{validate_bits, QuantError, Result, UniformParams};

/// Lloyd iterations at most (scikit-learn's default, used by the reference code).
pub const MAX_ITERS: usize = 100;

/// A 1-D k-means solution: sorted centroids and their total squared error.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans1d {
    /// `k` centroids, non-decreasing (duplicates when the data has fewer than `k` values).
    pub centroids: Vec<f64>,
    /// `Σ (x − c(x))²` over the data.
    pub sse: f64,
}

/// Prefix sums of a sorted slice, for O(1) interval means and squared errors.
struct Prefix {
    s1: Vec<f64>,
    s2: Vec<f64>,
}

impl Prefix {
    fn new(sorted: &[f64]) -> Self {
        let mut s1 = Vec::with_capacity(sorted.len() + 1);
        let mut s2 = Vec::with_capacity(sorted.len() + 1);
        s1.push(0.0);
        s2.push(0.0);
        for &x in sorted {
            s1.push(s1.last().copied().unwrap_or(0.0) + x);
            s2.push(s2.last().copied().unwrap_or(0.0) + x * x);
        }
        Self { s1, s2 }
    }

    /// Squared error of `[a, b)` around centroid `c`.
    fn sse(&self, a: usize, b: usize, c: f64) -> f64 {
        let n = (b - a) as f64;
        let s1 = self.s1[b] - self.s1[a];
        let s2 = self.s2[b] - self.s2[a];
        (s2 - 2.0 * c * s1 + n * c * c).max(0.0)
    }
}

/// Interval boundaries of sorted centroids over sorted data: cluster `j` is `[b[j], b[j+1])`,
/// values nearer to centroid `j` than to its neighbours (ties go to the lower centroid).
fn boundaries(sorted: &[f64], c: &[f64]) -> Vec<usize> {
    let mut b = Vec::with_capacity(c.len() + 1);
    b.push(0);
    for j in 1..c.len() {
        let mid = 0.5 * (c[j - 1] + c[j]);
        b.push(sorted.partition_point(|&x| x <= mid));
    }
    b.push(sorted.len());
    b
}

fn lloyd(sorted: &[f64], pre: &Prefix, mut c: Vec<f64>) -> KMeans1d {
    let mut bounds = boundaries(sorted, &c);
    for _ in 0..MAX_ITERS {
        for j in 0..c.len() {
            let (a, b) = (bounds[j], bounds[j + 1]);
            if b > a {
                c[j] = (pre.s1[b] - pre.s1[a]) / (b - a) as f64;
            }
        }
        c.sort_by(f64::total_cmp);
        let next = boundaries(sorted, &c);
        if next == bounds {
            break;
        }
        bounds = next;
    }
    let sse = (0..c.len())
        .map(|j| pre.sse(bounds[j], bounds[j + 1], c[j]))
        .sum();
    KMeans1d { centroids: c, sse }
}

/// k-means of `values` into `k ≥ 1` clusters (see the module docs). Empty input: centroids 0.
pub fn kmeans_1d(values: &[f64], k: usize) -> KMeans1d {
    let k = k.max(1);
    if values.is_empty() {
        return KMeans1d {
            centroids: vec![0.0; k],
            sse: 0.0,
        };
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pre = Prefix::new(&sorted);
    let n = sorted.len();
    let quantile: Vec<f64> = (0..k)
        .map(|j| sorted[(((2 * j + 1) * n) / (2 * k)).min(n - 1)])
        .collect();
    let (lo, hi) = (sorted[0], sorted[n - 1]);
    let even: Vec<f64> = (0..k)
        .map(|j| lo + (hi - lo) * (j as f64 + 0.5) / k as f64)
        .collect();
    let a = lloyd(&sorted, &pre, quantile);
    let b = lloyd(&sorted, &pre, even);
    if b.sse < a.sse {
        b
    } else {
        a
    }
}

/// Code of the centroid nearest to `x` (centroids sorted; ties to the lower one).
fn nearest(centroids: &[f32], x: f32) -> u8 {
    let mut best = 0usize;
    let mut d = f32::INFINITY;
    for (j, &c) in centroids.iter().enumerate() {
        let e = (x - c).abs();
        if e < d {
            d = e;
            best = j;
        }
    }
    best as u8
}

/// Quantizes weight `w` (`[C_out, ...]`) with a k-means codebook of `2^bits` entries per output
/// channel or per tensor. The codes and codebook are on the CPU; the codebook holds `f32`
/// centroids (as stored in the artifact), and codes index the nearest stored centroid.
pub fn quantize_kmeans(w: &Tensor, bits: u8, granularity: Granularity) -> Result<QuantWeight> {
    validate_bits(bits)?;
    let shape = w.dims().to_vec();
    if shape.len() < 2 {
        return Err(QuantError::ShapeMismatch {
            shape,
            reason: "a weight needs an output and an input axis".into(),
        });
    }
    let k = 1usize << bits;
    let c_out = shape[0];
    let flat: Vec<f32> = w
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let row = flat.len() / c_out.max(1);
    let groups: Vec<&[f32]> = match granularity {
        Granularity::PerChannel => flat.chunks(row.max(1)).collect(),
        Granularity::PerTensor => vec![&flat[..]],
    };
    let mut table = Vec::with_capacity(groups.len() * k);
    let mut codes = Vec::with_capacity(flat.len());
    for g in &groups {
        let v: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let km = kmeans_1d(&v, k);
        let cb: Vec<f32> = km.centroids.iter().map(|&c| c as f32).collect();
        codes.extend(g.iter().map(|&x| nearest(&cb, x)));
        table.extend(cb);
    }
    let rows = groups.len();
    let axis = (granularity == Granularity::PerChannel).then_some(0);
    // The part's uniform parameters only carry bits and granularity for a codebook part.
    let params = UniformParams::new(vec![1.0; rows], vec![0; rows], bits, axis)?;
    let part = WeightPart {
        start: 0,
        len: shape[1],
        params,
        codes: Tensor::from_vec(codes, shape.clone(), &Device::Cpu)?,
        codebook: Some(Codebook { values: table }),
    };
    QuantWeight::new(shape, vec![part])
}
