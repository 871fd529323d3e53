//! FID Inception parity against the goldens in `shared/models/fid-inception/golden/`
//! (TF-graph preprocessing, bit-exact; TorchScript `default_1.pt` outputs for pool3, sFID
//! features and per-stage channel means).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use dmq_eval::inception::{conv_specs, FidInception, InceptionError, POOL3_DIM, SPATIAL_DIM};
use dmq_eval::preprocess::{tf_resize_bilinear, to_model_input, INCEPTION_SIZE};
use image::RgbImage;

fn fid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/fid-inception")
}

fn weights_path() -> PathBuf {
    fid_dir().join("fid_inception_2015_12_05.safetensors")
}

fn golden() -> &'static HashMap<String, Tensor> {
    static G: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    G.get_or_init(|| {
        let p = fid_dir().join("golden/fid_inception_golden.safetensors");
        candle_core::safetensors::load(&p, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    })
}

fn g(name: &str) -> &'static Tensor {
    golden()
        .get(name)
        .unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

fn model() -> &'static FidInception {
    static M: OnceLock<FidInception> = OnceLock::new();
    M.get_or_init(|| FidInception::load(&weights_path(), &Device::Cpu).unwrap())
}

fn images(name: &str) -> Vec<RgbImage> {
    let t = g(name);
    let (n, h, w, c) = t.dims4().unwrap();
    assert_eq!(c, 3);
    let data: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    data.chunks_exact(h * w * 3)
        .take(n)
        .map(|px| RgbImage::from_raw(w as u32, h as u32, px.to_vec()).unwrap())
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// (max |a - b|, max |a - b| / max |b|).
fn errors(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (flat(a), flat(b));
    let max_abs = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let max_ref = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (max_abs, max_abs / max_ref.max(f32::MIN_POSITIVE))
}

#[test]
fn model_input_is_bit_exact_with_tf() {
    for suffix in ["", "_64"] {
        let imgs = images(&format!("images_uint8{suffix}"));
        let want = g(&format!("model_input_299{suffix}"));
        let got = to_model_input(&imgs, &Device::Cpu).unwrap();
        let (max_abs, _) = errors(&got, want);
        let differing = flat(&got)
            .iter()
            .zip(flat(want))
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!(
            "model_input_299{suffix}: max |err| = {max_abs:e}, {differing} of {} values differ in bits",
            got.elem_count()
        );
        assert!(
            max_abs <= 1e-5,
            "model_input_299{suffix}: max err {max_abs}"
        );
        assert_eq!(differing, 0, "model_input_299{suffix} is not bit-exact");
    }
}

#[test]
fn resize_of_white_image_and_range() {
    let img = vec![255u8; 32 * 32 * 3];
    let out = tf_resize_bilinear(&img, 32, 32, INCEPTION_SIZE);
    assert_eq!(out.len(), INCEPTION_SIZE * INCEPTION_SIZE * 3);
    assert!(out.iter().all(|&v| v == 255.0));
    let x = to_model_input(&images("images_uint8"), &Device::Cpu).unwrap();
    let v = flat(&x);
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    assert_eq!((lo, hi), (-1.0, 0.9921875));
}

/// One model load, both golden sets: pool3, sFID features and every stage mean.
#[test]
fn features_match_golden() {
    let m = model();
    for (suffix, n) in [("", 8usize), ("_64", 2)] {
        let x = g(&format!("model_input_299{suffix}"));
        let t0 = std::time::Instant::now();
        let (f, stages) = m.features_with_stage_means(x).unwrap();
        println!("set{suffix}: forward of {n} images {:.2?}", t0.elapsed());
        assert_eq!(f.pool3.dims(), &[n, POOL3_DIM]);
        assert_eq!(f.spatial.dims(), &[n, SPATIAL_DIM]);
        assert_eq!(f.pool3.dtype(), DType::F32);

        let mut worst_stage = 0f32;
        if suffix.is_empty() {
            assert_eq!(stages.len(), 18);
            for (name, mean) in &stages {
                let (a, r) = errors(mean, g(&format!("debug.stage_mean.{name}")));
                println!("  stage {name:>14}: max |err| {a:.3e}, rel {r:.3e}");
                worst_stage = worst_stage.max(r);
            }
        }
        let (pa, pr) = errors(&f.pool3, g(&format!("pool3_features{suffix}")));
        let (sa, sr) = errors(&f.spatial, g(&format!("mixed_6_conv{suffix}")));
        println!("pool3_features{suffix}: max |err| {pa:.3e}, rel {pr:.3e}");
        println!("mixed_6_conv{suffix}:   max |err| {sa:.3e}, rel {sr:.3e}");
        assert!(
            worst_stage <= 1e-3,
            "stage means diverge (rel {worst_stage})"
        );
        assert!(pr <= 1e-3, "pool3_features{suffix}: rel err {pr}");
        assert!(sr <= 1e-3, "mixed_6_conv{suffix}: rel err {sr}");

        // End to end from the uint8 images (the preprocessing is bit-exact, so same result).
        let x2 = to_model_input(&images(&format!("images_uint8{suffix}")), &Device::Cpu).unwrap();
        let f2 = m.features(&x2).unwrap();
        let (pa2, pr2) = errors(&f2.pool3, g(&format!("pool3_features{suffix}")));
        println!("end-to-end pool3{suffix}: max |err| {pa2:.3e}, rel {pr2:.3e}");
        assert!(pr2 <= 1e-3);
        // The pytorch-fid pipeline is far off: make sure the test would notice that kind of error.
        let (_, far) = errors(
            &f.pool3,
            g(&format!("pool3_features_pytorch_fid_pipeline{suffix}")),
        );
        assert!(
            far > 1e-2,
            "pytorch-fid pipeline unexpectedly close ({far})"
        );
    }
}

#[test]
fn batch_composition_does_not_change_features() {
    let m = model();
    let x = g("model_input_299_64");
    let both = m.features(x).unwrap();
    let second = m.features(&x.narrow(0, 1, 1).unwrap()).unwrap();
    let (a, _) = errors(&both.pool3.narrow(0, 1, 1).unwrap(), &second.pool3);
    assert!(a <= 1e-4, "batch-dependent features: {a}");
}

#[test]
fn rejects_wrong_input_shape() {
    let m = model();
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.features(&x), Err(InceptionError::Input { .. })));
}

/// Writes the given tensors as a safetensors file and returns the load error message.
fn load_error(
    dir: &Path,
    file: &str,
    tensors: HashMap<String, Tensor>,
) -> (InceptionError, String) {
    let p = dir.join(file);
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let e = FidInception::load(&p, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(file), "error does not name the file: {msg}");
    (e, msg)
}

/// The tensors of the first conv unit, correct shapes.
fn first_layer() -> HashMap<String, Tensor> {
    let s = &conv_specs()[0];
    let l = &s.name;
    let mut t = HashMap::new();
    t.insert(
        format!("{l}.conv.weight"),
        Tensor::zeros(
            (s.c_out, s.c_in, s.kernel.0, s.kernel.1),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap(),
    );
    for p in ["weight", "bias", "running_mean", "running_var"] {
        t.insert(
            format!("{l}.bn.{p}"),
            Tensor::ones(s.c_out, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    t
}

#[test]
fn load_errors_name_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();

    let (e, msg) = load_error(dir.path(), "first_layer_only.safetensors", first_layer());
    assert!(matches!(e, InceptionError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("`Conv2d_2a_3x3.conv.weight`"), "{msg}");

    let mut t = first_layer();
    t.remove("Conv2d_1a_3x3.bn.running_var");
    let (e, msg) = load_error(dir.path(), "no_var.safetensors", t);
    assert!(matches!(e, InceptionError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("Conv2d_1a_3x3.bn.running_var"), "{msg}");

    let mut t = first_layer();
    t.insert(
        "Conv2d_1a_3x3.conv.weight".into(),
        Tensor::zeros((32, 3, 3, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let (e, msg) = load_error(dir.path(), "bad_shape.safetensors", t);
    assert!(matches!(e, InceptionError::WrongShape { .. }), "{msg}");
    assert!(
        msg.contains("Conv2d_1a_3x3.conv.weight")
            && msg.contains("[32, 3, 3, 2]")
            && msg.contains("[32, 3, 3, 3]"),
        "{msg}"
    );

    let mut t = first_layer();
    t.insert(
        "Conv2d_1a_3x3.bn.bias".into(),
        Tensor::zeros(32, DType::F16, &Device::Cpu).unwrap(),
    );
    let (e, msg) = load_error(dir.path(), "f16.safetensors", t);
    assert!(matches!(e, InceptionError::WrongDType { .. }), "{msg}");
    assert!(msg.contains("Conv2d_1a_3x3.bn.bias"), "{msg}");

    let missing = dir.path().join("does_not_exist.safetensors");
    let e = FidInception::load(&missing, &Device::Cpu).unwrap_err();
    assert!(matches!(e, InceptionError::Load { .. }));
    assert!(e.to_string().contains("does_not_exist.safetensors"), "{e}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let e = FidInception::load(&garbage, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("garbage.safetensors"), "{e}");
}

/// The hard-coded layer table agrees with `layer_map.json` (shape, stride, padding of all 94).
#[test]
fn conv_table_matches_layer_map() {
    let p = fid_dir().join("layer_map.json");
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let map = map.as_array().unwrap();
    let specs = conv_specs();
    assert_eq!(map.len(), specs.len());
    let u = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    for (m, s) in map.iter().zip(&specs) {
        assert_eq!(m["pytorch_fid"].as_str().unwrap(), s.name);
        assert_eq!(
            u(&m["weight_shape_OIHW"]),
            vec![s.c_out, s.c_in, s.kernel.0, s.kernel.1],
            "{}",
            s.name
        );
        assert_eq!(
            m["stride"].as_u64().unwrap() as usize,
            s.stride,
            "{}",
            s.name
        );
        assert_eq!(
            u(&m["padding_hw"]),
            vec![s.padding.0, s.padding.1],
            "{}",
            s.name
        );
    }
}
