//! FID/sFID arithmetic against the pytorch-fid goldens in
//! `shared/models/fid-inception/golden/` (fid_small.*, stats_example_pytorch_fid.npz), plus the
//! `.npz` reader/writer and error cases.
//!
//! Timing (printed, not asserted):
//! `cargo test -p dmq-eval --release --test fid_math -- --ignored --nocapture`

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dmq_eval::frechet::{frechet_distance, trace_sqrt_product_eigh};
use dmq_eval::npz::{load_npz_images, load_npz_stats_named, load_stats_npz, save_stats_npz};
use dmq_eval::stats::{FeatureStats, FidError, StatsAccumulator};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/fid-inception/golden")
}

fn golden_tensors() -> HashMap<String, Tensor> {
    let path = golden_dir().join("fid_small.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_json() -> serde_json::Value {
    let path = golden_dir().join("fid_small.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn vec_f64(t: &HashMap<String, Tensor>, name: &str) -> (Vec<usize>, Vec<f64>) {
    let x = &t[name];
    (
        x.dims().to_vec(),
        x.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
    )
}

fn golden_stats(t: &HashMap<String, Tensor>, case: &str, which: u8) -> FeatureStats {
    let (_, mu) = vec_f64(t, &format!("{case}.mu{which}"));
    let (_, sigma) = vec_f64(t, &format!("{case}.sigma{which}"));
    FeatureStats::new(mu, sigma, 0).unwrap()
}

/// max |a − b| / max |b|
fn rel_max(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// max over elements of |a − b| / |b| for |b| > 1e-3·max|b| (elementwise relative error).
fn rel_elem(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .filter(|(_, y)| y.abs() > 1e-3 * scale)
        .fold(0.0f64, |m, (x, y)| m.max(((x - y) / y).abs()))
}

#[test]
fn golden_stats_from_features() {
    let t = golden_tensors();
    for case in ["full_rank", "relu_rank_deficient"] {
        for which in [1u8, 2] {
            let (shape, f) = vec_f64(&t, &format!("{case}.features{which}"));
            let (n, d) = (shape[0], shape[1]);
            let ours = FeatureStats::from_features_f64(&f, d).unwrap();
            let want = golden_stats(&t, case, which);
            let (mu_r, sig_r) = (
                rel_max(&ours.mu, &want.mu),
                rel_max(&ours.sigma, &want.sigma),
            );
            let sig_e = rel_elem(&ours.sigma, &want.sigma);
            println!(
                "{case}.{which} (n={n}, d={d}): mu max-rel {mu_r:.2e}, sigma max-rel {sig_r:.2e} \
                 (elementwise {sig_e:.2e})"
            );
            assert!(
                mu_r <= 1e-12 && sig_r <= 1e-12,
                "{case}.{which}: {mu_r:e} {sig_r:e}"
            );
            assert_eq!(ours.count, n);
            assert_eq!(ours.ill_conditioned(), n <= d);
        }
    }
}

#[test]
fn golden_fid_matches_pytorch_fid() {
    let t = golden_tensors();
    let j = golden_json();
    for (case, tol) in [("full_rank", 1e-9), ("relu_rank_deficient", 1e-6)] {
        let c = &j["cases"][case];
        let want = c["fid_pytorch_fid"].as_f64().unwrap();
        let mp: f64 = c["fid_mpmath_40digits"].as_str().unwrap().parse().unwrap();
        let (a, b) = (golden_stats(&t, case, 1), golden_stats(&t, case, 2));
        let fid = frechet_distance(&a, &b).unwrap();
        let rev = frechet_distance(&b, &a).unwrap();
        // The same from stats we computed from the raw features.
        let feats = |w: u8| {
            let (s, f) = vec_f64(&t, &format!("{case}.features{w}"));
            FeatureStats::from_features_f64(&f, s[1]).unwrap()
        };
        let fid_own = frechet_distance(&feats(1), &feats(2)).unwrap();
        let r = |x: f64, y: f64| ((x - y) / y).abs();
        println!(
            "{case}: fid {fid:.17} | vs pytorch-fid {:.2e} | vs mpmath-40 {:.2e} | reversed args \
             {:.2e} | from own stats {fid_own:.17} (vs pytorch-fid {:.2e}, vs mpmath {:.2e})",
            r(fid, want),
            r(fid, mp),
            r(rev, fid),
            r(fid_own, want),
            r(fid_own, mp)
        );
        assert!(r(fid, want) <= tol, "{case}: {fid} vs {want}");
        assert!(r(fid_own, want) <= tol, "{case}: {fid_own} vs {want}");
        assert!(r(rev, fid) <= tol, "{case}: not symmetric: {fid} vs {rev}");
        // Intermediate values.
        let msd: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!(r(msd, c["mean_sq_diff"].as_f64().unwrap()) <= 1e-14);
        assert!(r(a.trace(), c["trace_sigma1"].as_f64().unwrap()) <= 1e-14);
        assert!(r(b.trace(), c["trace_sigma2"].as_f64().unwrap()) <= 1e-14);
    }
}

/// Against the 40-digit mpmath values: the singular-value route is ~1e-15 on both cases; the
/// plain eigenvalue route (kept for cross-checks) only ~1e-8 on the rank-deficient one.
#[test]
fn golden_fid_matches_40_digit_reference() {
    let t = golden_tensors();
    let j = golden_json();
    for (case, eigh_tol) in [("full_rank", 1e-12), ("relu_rank_deficient", 1e-7)] {
        let c = &j["cases"][case];
        let mp: f64 = c["fid_mpmath_40digits"].as_str().unwrap().parse().unwrap();
        let (a, b) = (golden_stats(&t, case, 1), golden_stats(&t, case, 2));
        let fid = frechet_distance(&a, &b).unwrap();
        let msd: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
        let tr = trace_sqrt_product_eigh(&a.sigma, &b.sigma, a.dim).unwrap();
        let fid_eigh = msd + a.trace() + b.trace() - 2.0 * tr;
        let r = |x: f64| ((x - mp) / mp).abs();
        println!(
            "{case}: vs mpmath-40: singular-value route {:.2e}, eigenvalue route {:.2e}",
            r(fid),
            r(fid_eigh)
        );
        assert!(r(fid) <= 1e-12, "{case}: {fid} vs mpmath {mp}");
        assert!(
            r(fid_eigh) <= eigh_tol,
            "{case}: eigh route {fid_eigh} vs mpmath {mp}"
        );
    }
}

/// A set of no more samples than dimensions carries a thin covariance factor (its centred
/// features over sqrt(n − 1)); FID through it, on one side or both, equals the 40-digit
/// reference like the eigendecomposition route, and a set with more samples carries none.
#[test]
fn thin_factor_route_matches_the_reference() {
    let t = golden_tensors();
    let j = golden_json();
    let case = "relu_rank_deficient";
    let mp: f64 = j["cases"][case]["fid_mpmath_40digits"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let feats = |w: u8| {
        let (s, f) = vec_f64(&t, &format!("{case}.features{w}"));
        FeatureStats::from_features_f64(&f, s[1]).unwrap()
    };
    let (a, b) = (feats(1), feats(2));
    let g = a
        .factor
        .as_ref()
        .expect("64 samples of 128-d features carry a factor");
    assert_eq!((g.cols, g.data.len()), (64, 64 * 128));
    // G·Gᵀ is the covariance.
    let scale = a.sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for i in 0..a.dim {
        for k in 0..a.dim {
            let dot: f64 = (0..g.cols)
                .map(|c| g.data[i * g.cols + c] * g.data[k * g.cols + c])
                .sum();
            assert!((dot - a.sigma[i * a.dim + k]).abs() <= 1e-13 * scale);
        }
    }
    let strip = |s: &FeatureStats| FeatureStats {
        factor: None,
        ..s.clone()
    };
    let r = |x: f64| ((x - mp) / mp).abs();
    for (name, x, y) in [
        ("both thin", a.clone(), b.clone()),
        ("first thin", a.clone(), strip(&b)),
        ("second thin", strip(&a), b.clone()),
        ("neither", strip(&a), strip(&b)),
    ] {
        let fid = frechet_distance(&x, &y).unwrap();
        println!("{name}: {fid:.17} (vs mpmath-40 {:.2e})", r(fid));
        assert!(r(fid) <= 1e-12, "{name}: {fid} vs mpmath {mp}");
    }
    assert!(frechet_distance(&a, &a).unwrap().abs() <= 1e-12);
    let (s, f) = vec_f64(&t, "full_rank.features1");
    let full = FeatureStats::from_features_f64(&f, s[1]).unwrap();
    assert!(
        full.factor.is_none(),
        "300 samples of 64-d features: no factor"
    );
}

/// The factor travels in the `.npz` as `sigma_factor`; one that does not match its sigma is
/// refused with the file and the key named.
#[test]
fn thin_factor_in_npz_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (mu, sigma) = ([1.0, 2.0], [2.0, 0.0, 0.0, 2.0]);
    // G = [[1, -1], [1, 1]] (2x2 with k = 2): G·Gᵀ = 2·I.
    let good = [1.0, -1.0, 1.0, 1.0];
    let path = dir.path().join("thin.npz");
    write_npz(
        &path,
        &[
            ("mu", "<f8", &[2], &f64_le(&mu)),
            ("sigma", "<f8", &[2, 2], &f64_le(&sigma)),
            ("sigma_factor", "<f8", &[2, 2], &f64_le(&good)),
        ],
    );
    let st = load_stats_npz(&path).unwrap();
    assert_eq!(st.factor.as_ref().unwrap().data, good);
    let bad = [2.0, -1.0, 1.0, 1.0];
    write_npz(
        &path,
        &[
            ("mu", "<f8", &[2], &f64_le(&mu)),
            ("sigma", "<f8", &[2, 2], &f64_le(&sigma)),
            ("sigma_factor", "<f8", &[2, 2], &f64_le(&bad)),
        ],
    );
    let e = load_stats_npz(&path).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("thin.npz") && e.contains("sigma_factor") && e.contains("does not match"),
        "{e}"
    );
    write_npz(
        &path,
        &[
            ("mu", "<f8", &[2], &f64_le(&mu)),
            ("sigma", "<f8", &[2, 2], &f64_le(&sigma)),
            ("sigma_factor", "<f8", &[3, 1], &f64_le(&[1.0, 1.0, 1.0])),
        ],
    );
    let e = load_stats_npz(&path).unwrap_err().to_string();
    assert!(e.contains("sigma_factor") && e.contains("[2, k]"), "{e}");
}

#[test]
fn fid_of_identical_stats_is_zero() {
    let t = golden_tensors();
    for case in ["full_rank", "relu_rank_deficient"] {
        let a = golden_stats(&t, case, 1);
        let fid = frechet_distance(&a, &a).unwrap();
        println!("{case}: FID(a, a) = {fid:e}");
        assert!(fid.abs() <= 1e-9, "{case}: {fid}");
    }
}

#[test]
fn diagonal_2d_closed_form() {
    // FID = (μ1−μ2)² summed + Σ (√a − √b)² for diagonal covariances.
    let a = FeatureStats::new(vec![0.3, -1.2], vec![2.5, 0.0, 0.0, 0.04], 10).unwrap();
    let b = FeatureStats::new(vec![-0.7, 0.8], vec![0.9, 0.0, 0.0, 3.0], 10).unwrap();
    let want = (1.0f64).powi(2)
        + (2.0f64).powi(2)
        + (2.5f64.sqrt() - 0.9f64.sqrt()).powi(2)
        + (0.04f64.sqrt() - 3.0f64.sqrt()).powi(2);
    let got = frechet_distance(&a, &b).unwrap();
    assert!(((got - want) / want).abs() < 1e-14, "{got} vs {want}");
    assert!(((frechet_distance(&b, &a).unwrap() - want) / want).abs() < 1e-14);
}

#[test]
fn pytorch_fid_npz_example_loads() {
    let path = golden_dir().join("stats_example_pytorch_fid.npz");
    let st = load_stats_npz(&path).unwrap();
    assert_eq!((st.dim, st.count), (64, 0));
    assert!(!st.ill_conditioned(), "unknown count is not flagged");
    // The file holds full_rank.mu1 / sigma1, which fid_small.safetensors has too: bit-exact.
    let t = golden_tensors();
    let want = golden_stats(&t, "full_rank", 1);
    assert_eq!(st.mu, want.mu);
    assert_eq!(st.sigma, want.sigma);
    // Values printed by numpy 2.4 (`repr(float(np.load(path)['mu'][0]))` etc.), a one-off
    // cross-check of the reader against numpy's own.
    let exp = [
        (st.mu[0], 2.297893466606079f64),
        (st.mu[63], 0.07988791149833428),
        (st.sigma[0], 1.437222846793916),
        (st.sigma[63 * 64 + 1], -0.017514283463332114),
        (st.sigma[17 * 64 + 42], -0.17414761662034095),
    ];
    for (got, want) in exp {
        assert_eq!(got, want);
    }
    // Also through the named-key entry point.
    let named = load_npz_stats_named(&path, "mu", "sigma").unwrap();
    assert_eq!(named, st);
}

#[test]
fn save_load_roundtrip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let t = golden_tensors();
    let (s, f) = vec_f64(&t, "relu_rank_deficient.features1");
    let st = FeatureStats::from_features_f64(&f, s[1]).unwrap();
    let path = dir.path().join("stats.npz");
    save_stats_npz(&path, &st).unwrap();
    let back = load_stats_npz(&path).unwrap();
    assert_eq!(back, st, "mu, sigma, dim and count come back identical");
    assert!(back
        .mu
        .iter()
        .zip(&st.mu)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(back
        .sigma
        .iter()
        .zip(&st.sigma)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // Overwrite with the pytorch-fid example (count unknown: no `count` member written).
    let ex = load_stats_npz(golden_dir().join("stats_example_pytorch_fid.npz")).unwrap();
    save_stats_npz(&path, &ex).unwrap();
    assert_eq!(load_stats_npz(&path).unwrap(), ex);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["stats.npz"], "no temporary file left behind");
    // The members are deflated, like np.savez_compressed.
    let mut z = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let m = z.by_name("sigma.npy").unwrap();
    assert_eq!(m.compression(), zip::CompressionMethod::Deflated);
}

/// Deterministic standard normals (xorshift + Box–Muller), no extra dependency.
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uni(), uni());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

#[test]
fn streaming_equals_one_batch() {
    let dim = 64;
    let n = 1000;
    // Offset features (like non-negative pool3 values) in f32, the usual input type.
    let x: Vec<f32> = normals(n * dim, 7)
        .iter()
        .enumerate()
        .map(|(i, v)| (v * 0.7 + 3.0 + (i % dim) as f64 * 0.1) as f32)
        .collect();
    let one = FeatureStats::from_features(&x, dim).unwrap();
    let mut acc = StatsAccumulator::new(dim).unwrap();
    let mut at = 0;
    for rows in [1usize, 7, 300, 0, 129, 2, 561] {
        acc.add_batch(&x[at * dim..(at + rows) * dim]).unwrap();
        at += rows;
    }
    assert_eq!(at, n);
    let st = acc.finish().unwrap();
    let (mu_r, sig_r) = (rel_max(&st.mu, &one.mu), rel_max(&st.sigma, &one.sigma));
    println!("streaming vs one batch: mu {mu_r:.2e}, sigma {sig_r:.2e} (max-rel)");
    assert!(mu_r <= 1e-12 && sig_r <= 1e-12, "{mu_r:e} {sig_r:e}");
    assert!(rel_elem(&st.sigma, &one.sigma) <= 1e-12);
    assert_eq!(st.count, n);
}

#[test]
fn bad_input_errors_are_clear() {
    // NaN feature: names the batch, the row and the feature.
    let mut acc = StatsAccumulator::new(4).unwrap();
    acc.add_batch(&[0.0; 8]).unwrap();
    let mut bad = vec![1.0f32; 12];
    bad[2 * 4 + 3] = f32::NAN;
    let e = acc.add_batch(&bad).unwrap_err();
    let msg = e.to_string();
    println!("NaN: {msg}");
    assert!(matches!(
        e,
        FidError::NonFinite {
            batch: 1,
            row: 2,
            sample: 4,
            col: 3,
            ..
        }
    ));
    assert!(
        msg.contains("batch 1") && msg.contains("row 2") && msg.contains("NaN"),
        "{msg}"
    );

    // Dimension mismatch.
    let t = golden_tensors();
    let e = frechet_distance(
        &golden_stats(&t, "full_rank", 1),
        &golden_stats(&t, "relu_rank_deficient", 1),
    )
    .unwrap_err();
    println!("dims: {e}");
    assert!(matches!(e, FidError::DimMismatch(_)));
    assert!(e.to_string().contains("64-d") && e.to_string().contains("128-d"));

    let dir = tempfile::tempdir().unwrap();
    // npz without `sigma`.
    let only_mu = dir.path().join("only_mu.npz");
    write_npz(&only_mu, &[("mu", "<f8", &[3], &f64_le(&[1.0, 2.0, 3.0]))]);
    let e = load_stats_npz(&only_mu).unwrap_err();
    let msg = e.to_string();
    println!("missing sigma: {msg}");
    assert!(msg.contains("only_mu.npz") && msg.contains("`sigma`") && msg.contains("not in"));

    // sigma of the wrong shape.
    let wrong = dir.path().join("wrong.npz");
    write_npz(
        &wrong,
        &[
            ("mu", "<f8", &[2], &f64_le(&[1.0, 2.0])),
            ("sigma", "<f8", &[3], &f64_le(&[1.0; 3])),
        ],
    );
    let msg = load_stats_npz(&wrong).unwrap_err().to_string();
    println!("wrong shape: {msg}");
    assert!(msg.contains("`sigma`") && msg.contains("[2, 2]"), "{msg}");

    // Truncated archive (cut in half): the zip directory at the end is gone.
    let whole = std::fs::read(golden_dir().join("stats_example_pytorch_fid.npz")).unwrap();
    let cut = dir.path().join("cut.npz");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let msg = load_stats_npz(&cut).unwrap_err().to_string();
    println!("truncated npz: {msg}");
    assert!(
        msg.contains("cut.npz") && msg.contains("truncated or corrupt"),
        "{msg}"
    );

    // Intact archive whose `sigma.npy` holds fewer bytes than its shape needs.
    let short = dir.path().join("short.npz");
    write_npz(
        &short,
        &[
            ("mu", "<f8", &[2], &f64_le(&[1.0, 2.0])),
            ("sigma", "<f8", &[2, 2], &f64_le(&[1.0; 3])),
        ],
    );
    let msg = load_stats_npz(&short).unwrap_err().to_string();
    println!("short member: {msg}");
    assert!(msg.contains("short.npz") && msg.contains("`sigma`") && msg.contains("truncated"));

    // Non-finite value in a stats file.
    let nan = dir.path().join("nan.npz");
    write_npz(
        &nan,
        &[
            ("mu", "<f8", &[2], &f64_le(&[1.0, f64::NAN])),
            ("sigma", "<f8", &[2, 2], &f64_le(&[1.0, 0.0, 0.0, 1.0])),
        ],
    );
    let msg = load_stats_npz(&nan).unwrap_err().to_string();
    println!("NaN in file: {msg}");
    assert!(
        msg.contains("nan.npz") && msg.contains("`mu`") && msg.contains("[1]"),
        "{msg}"
    );

    // Missing file.
    let msg = load_stats_npz(dir.path().join("nope.npz"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.npz"), "{msg}");
}

#[test]
fn other_layouts_load() {
    let dir = tempfile::tempdir().unwrap();
    // ADM-style reference: float32 stats under mu_s/sigma_s next to arr_0; big-endian f8 mu;
    // Fortran-order sigma.
    let p = dir.path().join("adm.npz");
    let mu32: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let sig32: Vec<u8> = [2.0f32, 0.5, 0.5, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mu_be: Vec<u8> = [0.25f64, 4.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    // C-order [[1, 2], [3, 4]] stored column-major: 1, 3, 2, 4.
    let sig_f = f64_le(&[1.0, 3.0, 2.0, 4.0]);
    write_npz_raw(
        &p,
        &[
            (
                "arr_0",
                "'|u1', 'fortran_order': False, 'shape': (1, 1, 1, 3)",
                &[7u8, 8, 9][..],
            ),
            (
                "mu_s",
                "'<f4', 'fortran_order': False, 'shape': (2,)",
                &mu32,
            ),
            (
                "sigma_s",
                "'<f4', 'fortran_order': False, 'shape': (2, 2)",
                &sig32,
            ),
            ("mu", "'>f8', 'fortran_order': False, 'shape': (2,)", &mu_be),
            (
                "sigma",
                "'<f8', 'fortran_order': True, 'shape': (2, 2)",
                &sig_f,
            ),
        ],
    );
    let s = load_npz_stats_named(&p, "mu_s", "sigma_s").unwrap();
    assert_eq!(
        (s.mu.clone(), s.sigma.clone()),
        (vec![1.5, -2.0], vec![2.0, 0.5, 0.5, 1.0])
    );
    let s = load_stats_npz(&p).unwrap();
    assert_eq!((s.mu, s.sigma), (vec![0.25, 4.0], vec![1.0, 2.0, 3.0, 4.0]));
}

#[test]
fn npz_images() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("samples.npz");
    let rgb: Vec<u8> = (0..2 * 3 * 4 * 3).map(|i| i as u8).collect();
    let gray: Vec<u8> = (0..2 * 3 * 4).map(|i| 100 + i as u8).collect();
    let rgba: Vec<u8> = (0..2 * 2 * 4).map(|i| i as u8).collect();
    write_npz(
        &p,
        &[
            ("arr_0", "|u1", &[2, 3, 4, 3], &rgb),
            ("gray", "|u1", &[2, 3, 4], &gray),
            ("gray1", "|u1", &[2, 3, 4, 1], &gray),
            ("rgba", "|u1", &[1, 2, 2, 4], &rgba),
            ("two", "|u1", &[1, 2, 2, 4, 1], &rgba),
            ("float", "<f4", &[1, 1, 1, 3], &[0u8; 12]),
            ("short", "|u1", &[2, 3, 4, 3], &rgb[..40]),
        ],
    );
    let imgs = load_npz_images(&p, "arr_0").unwrap();
    assert_eq!(imgs.len(), 2);
    assert_eq!(imgs[1].dimensions(), (4, 3));
    // image 1, row 2, column 1: offset ((1*3 + 2)*4 + 1)*3 = 63
    assert_eq!(imgs[1].get_pixel(1, 2).0, [63, 64, 65]);
    for key in ["gray", "gray1"] {
        let g = load_npz_images(&p, key).unwrap();
        assert_eq!(g[1].get_pixel(3, 2).0, [123, 123, 123], "{key}");
    }
    let a = load_npz_images(&p, "rgba").unwrap();
    assert_eq!(a[0].get_pixel(1, 1).0, [12, 13, 14]);
    for (key, needle) in [
        ("two", "shape"),
        ("float", "uint8"),
        ("short", "truncated"),
        ("missing", "not in"),
    ] {
        let msg = load_npz_images(&p, key).unwrap_err().to_string();
        println!("{key}: {msg}");
        assert!(
            msg.contains("samples.npz") && msg.contains(&format!("`{key}`")),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
#[ignore = "timing only; run with --release -- --ignored --nocapture"]
fn timing_2048() {
    let d = 2048;
    let n = 5000;
    let mk = |seed: u64, scale: f64| {
        let z = normals(n * d, seed);
        let x: Vec<f32> = z
            .iter()
            .enumerate()
            .map(|(i, v)| (v.abs() * scale + (i % d) as f64 * 1e-3) as f32)
            .collect();
        let t0 = std::time::Instant::now();
        let mut acc = StatsAccumulator::new(d).unwrap();
        for b in x.chunks(500 * d) {
            acc.add_batch(b).unwrap();
        }
        let st = acc.finish().unwrap();
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "stats: {n} x {d} in {dt:.3} s ({:.1} GFLOP/s on the lower-triangle GEMM)",
            n as f64 * d as f64 * d as f64 / dt / 1e9
        );
        st
    };
    let (a, b) = (mk(1, 1.0), mk(2, 1.3));
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        let fid = frechet_distance(&a, &b).unwrap();
        println!(
            "frechet_distance 2048-d: {:.3} s (FID {fid:.6}, threads {})",
            t0.elapsed().as_secs_f64(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.npz");
    let t0 = std::time::Instant::now();
    save_stats_npz(&p, &a).unwrap();
    let t1 = t0.elapsed().as_secs_f64();
    let back = load_stats_npz(&p).unwrap();
    println!(
        "save {t1:.3} s, load {:.3} s, {} bytes",
        t0.elapsed().as_secs_f64() - t1,
        std::fs::metadata(&p).unwrap().len()
    );
    assert_eq!(back, a);
}

// ------------------------------------------------------------------------------------------
// helpers: hand-made .npz files
// ------------------------------------------------------------------------------------------

fn f64_le(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

type Member<'a> = (&'a str, &'a str, &'a [usize], &'a [u8]);

/// Stored (uncompressed) npz, like `np.savez`, with C-order members.
fn write_npz(path: &Path, members: &[Member]) {
    let raw: Vec<(String, String, Vec<u8>)> = members
        .iter()
        .map(|(k, descr, shape, data)| {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let shape = if dims.len() == 1 {
                format!("({},)", dims[0])
            } else {
                format!("({})", dims.join(", "))
            };
            (
                k.to_string(),
                format!("'{descr}', 'fortran_order': False, 'shape': {shape}"),
                data.to_vec(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &[u8])> = raw
        .iter()
        .map(|(k, h, d)| (k.as_str(), h.as_str(), d.as_slice()))
        .collect();
    write_npz_raw(path, &refs);
}

/// `header_tail` is the dict after `'descr': ` (without braces).
fn write_npz_raw(path: &Path, members: &[(&str, &str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (key, tail, data) in members {
        let mut dict = format!("{{'descr': {tail}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        zip.start_file(format!("{key}.npy"), opts).unwrap();
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(dict.as_bytes()).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}
