//! `--exec int` as a user runs it, on a tiny round-to-nearest W8A8 quantization of the embedded
//! model: sampling, eval against the simulated execution of the same artifact (PSNR), bench rows
//! with memory, and clear refusals (non-quantized model, non-f32).

mod common;

use common::{dmq, fails, json, ok};

const TINY_RTN: &str = r#"
format_version = 1
name = "tiny-rtn-w8a8"
[weights]
bits = 8
range = "minmax"
rounding = "nearest"
[activations]
bits = 8
ema_batch = 2
[calibration]
steps = 10
steps_sampled = 2
samples_per_step = 4
batch = 4
[reconstruction]
enabled = false
"#;

#[test]
fn integer_execution_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("tiny.toml");
    std::fs::write(&recipe, TINY_RTN).unwrap();
    let q = tmp.path().join("q");
    let qs = q.to_str().unwrap();
    ok(&dmq(
        &[
            "quantize",
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            qs,
            "--preview",
            "0",
        ],
        &cache,
    ));

    // --help documents the flag and its default.
    let help = String::from_utf8_lossy(&dmq(&["sample", "--help"], &cache).stdout).to_string();
    assert!(
        help.contains("--exec") && help.contains("[default: sim]"),
        "{help}"
    );

    // Sampling with integer execution; the folder records the mode.
    let s = tmp.path().join("s");
    let err = ok(&dmq(
        &[
            "sample",
            "--model",
            qs,
            "--exec",
            "int",
            "--steps",
            "10",
            "--num",
            "2",
            "--out",
            s.to_str().unwrap(),
        ],
        &cache,
    ));
    assert!(err.contains("layers in integers"), "{err}");
    assert!(s.join("000001.png").is_file());
    assert_eq!(json(&s.join("samples.json"))["protocol"]["exec"], "int");

    // Integer images against the simulated images of the same artifact, same seeds.
    let e = tmp.path().join("e");
    ok(&dmq(
        &[
            "eval",
            "--model",
            qs,
            "--exec",
            "int",
            "--against",
            qs,
            "--steps",
            "10",
            "--num",
            "4",
            "--batch",
            "4",
            "--step-error-images",
            "2",
            "--out",
            e.to_str().unwrap(),
        ],
        &cache,
    ));
    let report = json(&e.join("eval.json"));
    let psnr = report["against"]["psnr_mean_db"].as_f64().unwrap();
    eprintln!("int vs sim on the tiny artifact: PSNR {psnr:.2} dB");
    assert!(psnr > 35.0, "int vs sim PSNR {psnr}");
    let cos = report["against"]["noise_prediction_error"][0]["cosine"]
        .as_f64()
        .unwrap();
    assert!(cos > 0.999, "noise prediction cosine {cos}");

    // Bench: one row per mode, the integer weights smaller, peak memory reported.
    let b = tmp.path().join("bench.json");
    let t = tmp.path().join("bench.md");
    ok(&dmq(
        &[
            "bench",
            "--model",
            qs,
            "--model",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/dmq-default-ddpm"),
            "--exec",
            "sim,int",
            "--batch-sizes",
            "2",
            "--iters",
            "1",
            "--steps",
            "10",
            "--sample-batch",
            "0",
            "--json",
            b.to_str().unwrap(),
            "--table",
            t.to_str().unwrap(),
        ],
        &cache,
    ));
    let report = json(&b);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = |mode: &str| rows.iter().find(|r| r["mode"] == mode).unwrap();
    let (sim, int, fp) = (row("sim"), row("int"), row("f32"));
    let bytes = |r: &serde_json::Value| r["resident_weight_bytes"].as_u64().unwrap();
    assert_eq!(bytes(sim), bytes(fp));
    assert!(
        (bytes(int) as f64) < 0.5 * bytes(fp) as f64,
        "int {} vs f32 {}",
        bytes(int),
        bytes(fp)
    );
    for r in rows {
        assert!(r["ms_per_unet_call"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    assert!(int["isa"].is_string());
    let table = std::fs::read_to_string(&t).unwrap();
    assert!(
        table.contains("| int (") && table.contains("peak RSS"),
        "{table}"
    );

    // Refusals: integer execution of a float model, or in another dtype.
    let err = fails(&dmq(
        &[
            "sample",
            "--exec",
            "int",
            "--steps",
            "10",
            "--num",
            "1",
            "--out",
            s.to_str().unwrap(),
            "--overwrite",
        ],
        &cache,
    ));
    assert!(err.contains("needs a quantized model"), "{err}");
    let err = fails(&dmq(
        &[
            "sample",
            "--model",
            qs,
            "--exec",
            "int",
            "--dtype",
            "bf16",
            "--steps",
            "10",
            "--num",
            "1",
            "--out",
            s.to_str().unwrap(),
            "--overwrite",
        ],
        &cache,
    ));
    assert!(err.contains("CPU in f32"), "{err}");
}
