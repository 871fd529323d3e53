//! k-means (codebook) weights: exact reconstruction of weights that have at most 2^b values,
//! near-optimal 1-D clustering against an exact dynamic programme, honest bit accounting, and an
//! artifact round trip of the codebook.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use dmq_quant::artifact::{layer_entry, layer_from, layer_tensors, QuantLayer};
use dmq_quant::config::Granularity;
use dmq_quant::kmeans::{kmeans_1d, quantize_kmeans};
use dmq_quant::pack::packed_len;

/// Exact 1-D k-means SSE by dynamic programming over sorted data (O(k n²)).
#[allow(clippy::needless_range_loop)]
fn exact_sse(values: &[f64], k: usize) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mut s1 = vec![0.0; n + 1];
    let mut s2 = vec![0.0; n + 1];
    for i in 0..n {
        s1[i + 1] = s1[i] + v[i];
        s2[i + 1] = s2[i] + v[i] * v[i];
    }
    let cost = |a: usize, b: usize| {
        let m = (b - a) as f64;
        let s = s1[b] - s1[a];
        (s2[b] - s2[a]) - s * s / m
    };
    let mut d = vec![f64::INFINITY; n + 1];
    d[0] = 0.0;
    for _ in 0..k {
        let mut nd = vec![f64::INFINITY; n + 1];
        nd[0] = 0.0;
        for b in 1..=n {
            for a in 0..b {
                let c = d[a] + cost(a, b);
                if c < nd[b] {
                    nd[b] = c;
                }
            }
        }
        d = nd;
    }
    d[n]
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64) / (1u64 << 53) as f64
}

#[test]
fn kmeans_1d_is_near_the_exact_optimum() {
    let mut s = 7u64;
    for trial in 0..5 {
        // Gaussian-ish values (sum of uniforms), like weights.
        let v: Vec<f64> = (0..120)
            .map(|_| (0..4).map(|_| lcg(&mut s)).sum::<f64>() - 2.0)
            .collect();
        for k in [4, 8] {
            let got = kmeans_1d(&v, k);
            let best = exact_sse(&v, k);
            assert!(
                got.sse <= best * 1.2 + 1e-12,
                "trial {trial}, k {k}: Lloyd {} vs exact {best}",
                got.sse
            );
            assert!(got.centroids.windows(2).all(|w| w[0] <= w[1]));
        }
    }
    // Deterministic: same input, same answer.
    let v: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
    assert_eq!(kmeans_1d(&v, 8), kmeans_1d(&v, 8));
}

#[test]
fn codebook_weights_round_trip_and_count_their_bits() {
    // 4 output channels × 2 inputs × 3 × 3: each channel takes 8 distinct values.
    let (c_out, c_in, k) = (4usize, 2usize, 3usize);
    let per = c_in * k * k;
    let vals: Vec<f32> = (0..c_out * per)
        .map(|i| {
            let c = i / per;
            ((i % 8) as f32 - 3.5) * 0.1 * (c + 1) as f32
        })
        .collect();
    let w = Tensor::from_vec(vals.clone(), (c_out, c_in, k, k), &Device::Cpu).unwrap();

    let q = quantize_kmeans(&w, 3, Granularity::PerChannel).unwrap();
    let back: Vec<f32> = q
        .dequantize()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in back.iter().zip(&vals) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Codes at 3 bits packed, plus 8 f32 centroids per output channel.
    let n = c_out * per;
    assert_eq!(q.storage_bytes(), packed_len(n, 3) + 4 * 8 * c_out);
    let want_bits = 8.0 * (packed_len(n, 3) + 4 * 8 * c_out) as f64 / n as f64;
    assert!((q.bits_per_weight() - want_bits).abs() < 1e-12);

    // Per tensor: one table of 16 entries at 4 bits; 32 distinct values cannot all be kept.
    let qa = quantize_kmeans(&w, 4, Granularity::PerTensor).unwrap();
    assert_eq!(qa.storage_bytes(), packed_len(n, 4) + 4 * 16);
    let err = (qa.dequantize().unwrap() - &w)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err > 0.0 && err < 5e-3, "per-tensor k-means error {err}");

    // Artifact: codebook tensors written and read back to the same dequantized weight.
    for (name, qw, rows) in [("pc", &q, c_out), ("pt", &qa, 1)] {
        let layer = QuantLayer {
            weight: Some(qw.clone()),
            activation: None,
            equivalent_scale: None,
        };
        let mut layers = BTreeMap::new();
        layers.insert(name.to_string(), layer.clone());
        let tensors: HashMap<String, Tensor> = layer_tensors(&layers).unwrap();
        let cb = &tensors[&format!("{name}.w0.codebook")];
        assert_eq!(cb.dims()[0], rows);
        assert!(!tensors.contains_key(&format!("{name}.w0.scale")));
        let entry = layer_entry(name, w.dims(), Some(&layer)).unwrap();
        assert!(entry.weight.as_ref().unwrap().codebook);
        let json = serde_json::to_string(&entry).unwrap();
        let entry = serde_json::from_str(&json).unwrap();
        let again = layer_from(&entry, &tensors, Path::new("quant.safetensors")).unwrap();
        let a: Vec<f32> = again
            .weight
            .unwrap()
            .dequantize()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = qw
            .dequantize()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{name}");
        // A codebook of the wrong shape is refused with the tensor's name.
        let mut bad = tensors.clone();
        bad.insert(
            format!("{name}.w0.codebook"),
            Tensor::zeros((rows, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let err = layer_from(&entry, &bad, Path::new("quant.safetensors"))
            .expect_err("bad codebook accepted")
            .to_string();
        assert!(err.contains("codebook"), "{err}");
    }
}
