//! `dmq quantize` as a user runs it, with a tiny recipe on the embedded model: the artifact and
//! report are written, `dmq sample --model Q` runs it (and refuses another sampling protocol),
//! an existing output is not replaced without --overwrite, and bad recipes and artifacts are
//! clear errors.

use std::path::Path;
use std::process::{Command, Output};

fn dmq(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(args)
        .env("DMQ_CACHE_DIR", cache)
        .output()
        .expect("dmq runs")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "expected a failure, got success: {err}"
    );
    err
}

const TINY: &str = r#"
format_version = 1
name = "tiny-w4a8"
[weights]
bits = 4
[activations]
bits = 8
ema_batch = 2
[calibration]
steps = 10
steps_sampled = 2
samples_per_step = 4
batch = 4
[reconstruction]
iters = 5
batch = 2
"#;

#[test]
fn quantize_writes_an_artifact_that_sample_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let q = tmp.path().join("q");
    let (r, qs) = (recipe.to_str().unwrap(), q.to_str().unwrap());
    let err = ok(&dmq(
        &["quantize", "--recipe", r, "--out", qs, "--preview", "2"],
        &cache,
    ));
    assert!(err.contains("wrote"), "{err}");
    for f in [
        "manifest.json",
        "config.json",
        "scheduler_config.json",
        "quant.safetensors",
        "float.safetensors",
        "report.json",
        "report.png",
        "report-units.png",
        "preview.png",
    ] {
        assert!(q.join(f).is_file(), "{f} missing");
    }
    assert!(
        !tmp.path().join("q.ckpt").exists(),
        "checkpoints left after success"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("report.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 113);
    let w4 = layers.iter().filter(|l| l["weight_bits"] == 4).count();
    assert!(w4 > 80, "{w4} layers at 4 bits");
    assert!(report["preview"]["psnr_mean_db"].as_f64().unwrap() > 5.0);
    assert!(!report["units"].as_array().unwrap().is_empty());

    // Sampling the artifact with its calibrated protocol works; another protocol is refused.
    let s = tmp.path().join("s");
    let ss = s.to_str().unwrap();
    ok(&dmq(
        &[
            "sample", "--model", qs, "--steps", "10", "--num", "2", "--out", ss,
        ],
        &cache,
    ));
    assert!(s.join("000001.png").is_file());
    let err = fails(&dmq(
        &[
            "sample",
            "--model",
            qs,
            "--steps",
            "20",
            "--num",
            "1",
            "--out",
            ss,
            "--overwrite",
        ],
        &cache,
    ));
    assert!(err.contains("calibrated for 10"), "{err}");

    // The output is not replaced without --overwrite.
    let err = fails(&dmq(&["quantize", "--recipe", r, "--out", qs], &cache));
    assert!(err.contains("--overwrite"), "{err}");

    // A corrupt artifact is an error naming the file.
    std::fs::write(q.join("manifest.json"), "{\"format\": \"dmq-quantized\"").unwrap();
    let err = fails(&dmq(
        &[
            "sample",
            "--model",
            qs,
            "--steps",
            "10",
            "--num",
            "1",
            "--out",
            ss,
            "--overwrite",
        ],
        &cache,
    ));
    assert!(err.contains("manifest.json"), "{err}");

    // A recipe with an unknown field is refused with its name.
    std::fs::write(&recipe, TINY.replace("bits = 4", "bits = 4\nbitz = 3")).unwrap();
    let err = fails(&dmq(&["quantize", "--recipe", r, "--out", qs], &cache));
    assert!(err.contains("bitz"), "{err}");
}
