//! `dmq quantize` as a user runs it, with a tiny recipe on the embedded model: the artifact and
//! report are written, `dmq sample --model Q` runs it (and refuses another sampling protocol),
//! an existing output is not replaced without --overwrite, and bad recipes and artifacts are
//! clear errors.

mod common;

use std::path::Path;

use common::{dmq, fails, ok};

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

const TINY_PTQD: &str = r#"
format_version = 1
name = "tiny-ptqd"
[weights]
bits = 4
range = "minmax"
rounding = "nearest"
[activations]
bits = 8
ema_batch = 2
[calibration]
steps = 4
steps_sampled = 2
samples_per_step = 2
batch = 2
[reconstruction]
enabled = false
[ptqd]
samples = 2
batch = 2
mixed_act_bits = [4]
"#;

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// PTQD end to end: `quantize` with a [ptqd] section (mixed precision on) writes the statistics,
/// the report and the per-step widths; `sample` applies the correction for the calibrated
/// protocol, refuses another one until `dmq ptqd` adds statistics for it, honours
/// `--ptqd-parts`, and VSC changes nothing at eta 0.
#[test]
fn ptqd_quantize_sample_and_recalibrate() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("tiny-ptqd.toml");
    std::fs::write(&recipe, TINY_PTQD).unwrap();
    let q = tmp.path().join("q");
    let (r, qs) = (recipe.to_str().unwrap(), q.to_str().unwrap());

    // the PTQD switches need PTQD
    let plain = tmp.path().join("plain.toml");
    std::fs::write(&plain, TINY).unwrap();
    let err = fails(&dmq(
        &[
            "quantize",
            "--recipe",
            plain.to_str().unwrap(),
            "--ptqd-parts",
            "cnc",
            "--out",
            qs,
        ],
        &cache,
    ));
    assert!(err.contains("--ptqd"), "{err}");
    let err = fails(&dmq(
        &[
            "quantize",
            "--recipe",
            r,
            "--ptqd-parts",
            "cnc,foo",
            "--out",
            qs,
        ],
        &cache,
    ));
    assert!(err.contains("foo"), "{err}");

    let err = ok(&dmq(
        &["quantize", "--recipe", r, "--out", qs, "--preview", "1"],
        &cache,
    ));
    assert!(err.contains("PTQD: k_t"), "{err}");
    for f in ["ptqd.safetensors", "report-ptqd.png"] {
        assert!(q.join(f).is_file(), "{f} missing");
    }
    let report = json_of(&q.join("report.json"));
    let steps = report["ptqd"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    for s in steps {
        assert!(s["k"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["bias"].as_array().unwrap().len(), 3);
        assert!(s["sigma_q"].as_f64().unwrap() > 0.0);
        assert!(s["mean_abs_bias"].as_f64().is_some());
        let b = s["act_bits"].as_u64().unwrap();
        assert!(b == 4 || b == 8, "{b}");
    }
    assert_eq!(report["ptqd"]["parts"], "cnc,bc,vsc");
    assert!(report["preview"]["psnr_mean_db_ptqd"].as_f64().is_some());
    let manifest = json_of(&q.join("manifest.json"));
    assert_eq!(manifest["ptqd"]["sets"][0]["id"], "ddim-4-eta0-leading");
    let widths: Vec<u64> = steps
        .iter()
        .map(|s| s["act_bits"].as_u64().unwrap())
        .collect();
    let mixed = widths.contains(&4) && widths.contains(&8);
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| !l["activation"].is_null())
        .unwrap();
    if mixed {
        assert_eq!(
            layer["activation"]["step_bits"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .collect::<Vec<_>>(),
            widths
        );
    }

    // sampling with the calibrated protocol applies the recorded parts
    let sample = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut a = vec![
            "sample",
            "--model",
            qs,
            "--steps",
            "4",
            "--num",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        (dmq(&a, &cache), out)
    };
    let (o, s_all) = sample("s-all", &[]);
    assert!(ok(&o).contains("correcting with cnc,bc,vsc"));
    assert_eq!(
        json_of(&s_all.join("samples.json"))["protocol"]["ptqd"]["parts"],
        "cnc,bc,vsc"
    );
    // VSC is a no-op at eta 0: same image without it
    let (o, s_nv) = sample("s-novsc", &["--ptqd-parts", "cnc,bc"]);
    ok(&o);
    assert_eq!(
        std::fs::read(s_all.join("000000.png")).unwrap(),
        std::fs::read(s_nv.join("000000.png")).unwrap()
    );
    // another protocol is refused until statistics exist for it
    let (o, _) = sample("s-eta1", &["--eta", "1"]);
    let err = fails(&o);
    assert!(
        err.contains("eta 1 vs 0") && err.contains("dmq ptqd"),
        "{err}"
    );
    let (o, _) = sample("s-eta1", &["--eta", "1", "--ptqd-parts", "none"]);
    assert!(!ok(&o).contains("correcting"));
    let err = ok(&dmq(
        &[
            "ptqd",
            "--model",
            qs,
            "--steps",
            "4",
            "--eta",
            "1",
            "--samples",
            "1",
            "--batch",
            "1",
        ],
        &cache,
    ));
    assert!(err.contains("2 sets"), "{err}");
    assert!(q.join("report-ptqd-ddim-4-eta1-leading.png").is_file());
    let (o, s1) = sample("s-eta1-ptqd", &["--eta", "1"]);
    assert!(ok(&o).contains("eta 1"));
    assert!(s1.join("000000.png").is_file());
    // the switch on a model without statistics is an error
    let err = fails(&dmq(
        &[
            "sample",
            "--steps",
            "4",
            "--num",
            "1",
            "--out",
            tmp.path().join("fp").to_str().unwrap(),
            "--ptqd-parts",
            "cnc",
        ],
        &cache,
    ));
    assert!(err.contains("no PTQD statistics"), "{err}");
    // dmq ptqd needs an artifact
    let err = fails(&dmq(&["ptqd", "--steps", "4"], &cache));
    assert!(err.contains("artifact"), "{err}");
}

#[test]
fn ptqd_flags_are_documented_with_defaults() {
    let help = |cmd: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmq"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let text = help("quantize");
    for w in [
        "--ptqd",
        "--ptqd-parts",
        "--ptqd-samples",
        "cnc,bc,vsc",
        "ptqd-w4a8",
    ] {
        assert!(text.contains(w), "quantize --help lacks {w}: {text}");
    }
    for cmd in ["sample", "eval"] {
        let text = help(cmd);
        assert!(
            text.contains("--ptqd-parts") && text.contains("[default: auto]"),
            "{cmd}: {text}"
        );
    }
    let text = help("ptqd");
    for w in ["--eta", "--samples", "--fp", "[default: 64]"] {
        assert!(text.contains(w), "ptqd --help lacks {w}: {text}");
    }
}

/// Qua²SeDiMo's two objectives from the CLI on a small sensitivity run: `--lambda-bits 0` takes
/// the most accurate option everywhere, a huge λ the fewest bits, `--avg-bits` meets its budget,
/// and the two flags together are refused.
#[test]
fn mixed_precision_by_budget_or_lambda() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let sens = tmp.path().join("sens");
    let s = sens.to_str().unwrap();
    ok(&dmq(
        &[
            "sensitivity",
            "--out",
            s,
            "--configs",
            "20",
            "--steps",
            "4",
            "--steps-sampled",
            "2",
            "--trajectories",
            "2",
            "--per-step",
            "1",
            "--budgets",
            "4.0",
        ],
        &cache,
    ));
    let recipe = tmp.path().join("rtn.toml");
    std::fs::write(
        &recipe,
        TINY.replace(
            "[reconstruction]\niters = 5",
            "[reconstruction]\nenabled = false\niters = 5",
        )
        .replace(
            "[weights]\nbits = 4",
            "[weights]\nbits = 4\nrounding = \"nearest\"",
        ),
    )
    .unwrap();
    let r = recipe.to_str().unwrap();
    let avg_of = |flags: &[&str], name: &str| -> f64 {
        let q = tmp.path().join(name);
        let mut args = vec![
            "quantize",
            "--recipe",
            r,
            "--sensitivity",
            s,
            "--preview",
            "0",
        ];
        args.extend_from_slice(&["--out", q.to_str().unwrap()]);
        args.extend_from_slice(flags);
        ok(&dmq(&args, &cache));
        let rep = json_of(&q.join("manifest.json"));
        rep["extra"]["mixed_precision"]["avg_bits"]
            .as_f64()
            .unwrap_or_else(|| panic!("{rep}"))
    };
    let accurate = avg_of(&["--lambda-bits", "0"], "q0");
    let small = avg_of(&["--lambda-bits", "1e9"], "qbig");
    let budget = avg_of(&["--avg-bits", "4.0"], "qb");
    assert!(small < 3.1, "huge λ must take the fewest bits: {small}");
    assert!(
        accurate > budget && budget <= 4.0 && budget > small,
        "{accurate} {budget} {small}"
    );
    let err = fails(&dmq(
        &[
            "quantize",
            "--recipe",
            r,
            "--sensitivity",
            s,
            "--avg-bits",
            "4",
            "--lambda-bits",
            "1",
        ],
        &cache,
    ));
    assert!(
        err.contains("--lambda-bits") && err.contains("--avg-bits"),
        "{err}"
    );
}
