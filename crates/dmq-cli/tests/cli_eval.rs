//! `dmq fid-stats`, `dmq fid` and `dmq eval` end to end on tiny sets (the FID network runs on
//! the CPU, so the sets are small; what is checked is the plumbing and the exact identities).

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn dmq(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(args)
        .arg("--inception")
        .arg(shared().join("models/fid-inception/fid_inception_2015_12_05.safetensors"))
        .env("DMQ_CACHE_DIR", cache)
        .output()
        .expect("dmq runs")
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "dmq failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 6 CIFAR test images as a folder of PNGs.
fn small_set(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src =
        dmq_eval::imageset::ImageSource::from_path(&shared().join("data/cifar10/cifar10-test.zip"))
            .unwrap();
    let mut n = 0;
    let _ = src.for_each_chunk(6, |c| {
        for img in c {
            img.save(dir.join(format!("{n:02}.png"))).unwrap();
            n += 1;
        }
        Err(dmq_eval::imageset::ImageSetError::Other("enough".into()))
    });
    assert_eq!(n, 6);
}

#[test]
fn fid_of_a_set_with_itself_is_zero_and_stats_interoperate() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let set = tmp.path().join("set");
    small_set(&set);
    let stats = tmp.path().join("set.npz");
    let r = dmq(
        &cache,
        &[
            "fid-stats",
            "--images",
            set.to_str().unwrap(),
            "--out",
            stats.to_str().unwrap(),
        ],
    );
    ok(&r);
    assert!(String::from_utf8_lossy(&r.stderr).contains("ill-conditioned"));
    let keys = dmq_eval::npz::npz_keys(&stats).unwrap();
    for k in ["mu", "sigma", "mu_s", "sigma_s"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    // Stats file against the folder it came from: both FID and sFID vanish.
    let out = ok(&dmq(
        &cache,
        &[
            "fid",
            "--json",
            stats.to_str().unwrap(),
            set.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["fid"].as_f64().unwrap().abs() < 1e-6, "{v}");
    assert!(v["sfid"].as_f64().unwrap().abs() < 1e-6, "{v}");
    assert_eq!(v["a"]["count"], 6);
    // A different set is far away.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for (i, entry) in std::fs::read_dir(&set).unwrap().enumerate() {
        let img = image::open(entry.unwrap().path()).unwrap().to_rgb8();
        let inv = image::RgbImage::from_fn(32, 32, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([255 - p[0], 255 - p[1], 255 - p[2]])
        });
        inv.save(other.join(format!("{i:02}.png"))).unwrap();
    }
    let out = ok(&dmq(
        &cache,
        &[
            "fid",
            "--json",
            stats.to_str().unwrap(),
            other.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["fid"].as_f64().unwrap() > 10.0, "{v}");
}

#[test]
fn eval_against_itself_is_a_perfect_match() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let set = tmp.path().join("ref");
    small_set(&set);
    let out = tmp.path().join("eval");
    let embedded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/dmq-default-ddpm");
    ok(&dmq(
        &cache,
        &[
            "eval",
            "--num",
            "3",
            "--steps",
            "3",
            "--batch",
            "3",
            "--step-error-images",
            "2",
            "--fid-ref",
            set.to_str().unwrap(),
            "--against",
            embedded.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(v["against"]["identical_images"], 3, "{v}");
    assert_eq!(v["against"]["ssim_mean"], 1.0);
    let steps = v["against"]["noise_prediction_error"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for s in steps {
        assert_eq!(s["mse"], 0.0);
        assert!((s["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    }
    for s in steps {
        let bias = s["channel_bias"].as_array().unwrap();
        assert_eq!(bias.len(), 3, "{s}");
        assert!(bias.iter().all(|b| b.as_f64() == Some(0.0)), "{s}");
    }
    let looks = &v["against"]["appearance"];
    assert_eq!(
        looks["mean_shift_rgb"],
        serde_json::json!([0.0, 0.0, 0.0]),
        "{looks}"
    );
    assert_eq!(looks["detail_ratio"], 1.0);
    assert!(v["fid"]["fid"].as_f64().unwrap().is_finite());
    assert_eq!(v["fid"]["fid"], v["fid"]["against_fid"]);
    assert_eq!(v["protocol"]["steps"], 3);
    let png = image::open(out.join("side-by-side.png")).unwrap();
    assert!(png.width() >= 256);
}

/// `dmq compare`: a copy of a set with its green channel lowered shows as a green colour shift,
/// the same set as a perfect match; a set with fewer images is refused, naming it.
#[test]
fn compare_reports_a_colour_cast_and_refuses_unpaired_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let set = tmp.path().join("ref");
    small_set(&set);
    let cast = tmp.path().join("cast");
    std::fs::create_dir_all(&cast).unwrap();
    let few = tmp.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    for i in 0..6 {
        let mut img = image::open(set.join(format!("{i:02}.png")))
            .unwrap()
            .to_rgb8();
        if i < 2 {
            img.save(few.join(format!("{i:02}.png"))).unwrap();
        }
        for p in img.pixels_mut() {
            p.0[1] = p.0[1].saturating_sub(20);
        }
        img.save(cast.join(format!("{i:02}.png"))).unwrap();
    }
    let out = tmp.path().join("compare.json");
    let args = |tests: &[&Path]| {
        let mut a = vec![
            "compare".to_string(),
            "--reference".into(),
            set.display().to_string(),
        ];
        for t in tests {
            a.push("--test".into());
            a.push(t.display().to_string());
        }
        a.push("--out".into());
        a.push(out.display().to_string());
        a
    };
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_dmq"))
            .args(a)
            .env("DMQ_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    ok(&run(args(&[&set, &cast])));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sets = v["sets"].as_array().unwrap();
    assert_eq!(sets[0]["identical_images"], 6, "{v}");
    let shift = sets[1]["appearance"]["mean_shift_rgb"].as_array().unwrap();
    assert_eq!(shift[0].as_f64(), Some(0.0));
    let g = shift[1].as_f64().unwrap();
    assert!((-20.0 / 255.0..-10.0 / 255.0).contains(&g), "{v}");
    assert!(sets[1]["psnr_mean_db"].as_f64().unwrap() < 40.0);
    let o = run(args(&[&few]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("few") && err.contains("6 reference images but 2"),
        "{err}"
    );
}
