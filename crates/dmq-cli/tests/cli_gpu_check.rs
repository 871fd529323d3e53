//! `dmq gpu-check` as the lead runs it: the CPU against itself here (every check runs and its
//! error is 0), and the GPU against the CPU in a `cuda` build on a machine that has one.

use std::path::Path;
use std::process::Command;

fn gpu_check(
    device: &str,
    out: &Path,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let r = Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(["gpu-check", "--device", device, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("dmq runs");
    eprintln!("{}", String::from_utf8_lossy(&r.stdout));
    eprintln!("{}", String::from_utf8_lossy(&r.stderr));
    let report = std::fs::read(out)
        .map(|b| serde_json::from_slice(&b).expect("the report is JSON"))
        .unwrap_or(serde_json::Value::Null);
    (r, report)
}

/// The shared FID Inception weights, or `none` where they are absent (the check is skipped).
/// They take ~15 s on two CPU cores, so the CPU test runs them too.
fn inception_arg() -> String {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/fid-inception/fid_inception_2015_12_05.safetensors");
    if weights.is_file() {
        weights.to_str().unwrap().to_string()
    } else {
        "none".to_string()
    }
}

fn names(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cpu_against_cpu_runs_every_check_with_zero_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.json");
    let inception = inception_arg();
    let (r, report) = gpu_check("cpu", &out, &["--inception", &inception]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(report["pass"], true);
    let names = names(&report);
    if inception == "none" {
        assert!(report["notes"].to_string().contains("inception skipped"));
    } else {
        assert!(names.iter().any(|n| n == "inception pool3"), "{names:?}");
        assert!(
            names.iter().any(|n| n == "inception spatial (sFID)"),
            "{names:?}"
        );
    }
    for expected in [
        "forward t=999",
        "forward t=500",
        "forward t=10",
        "ddim 10 steps x_0",
        "ddpm 10 steps x_0",
        "forward t=500 differentiable",
        "grad input",
        "grad down_blocks.0.resnets.0.conv1.weight",
        "grad down_blocks.1.attentions.0.to_q.weight",
        "grad time_embedding.linear_1.weight",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    for c in report["checks"].as_array().unwrap() {
        if c["gated"] == true {
            // The same code on the same inputs: bit-identical, and not a comparison of zeros.
            assert_eq!(c["value"].as_f64(), Some(0.0), "{c}");
            assert!(c["ref_max_abs"].as_f64().unwrap() > 0.0, "{c}");
            assert_eq!(c["pass"], true, "{c}");
        } else {
            // bf16 is reported only: candle's CPU backend has no bf16 matmul, so here it is an
            // error that does not fail the run; on a GPU it is a small error.
            assert!(c["name"].as_str().unwrap().starts_with("bf16"), "{c}");
            let v = c["value"].as_f64();
            assert!(!c["error"].is_null() || v.is_some_and(|v| v < 0.1), "{c}");
        }
    }
    assert!(names.iter().any(|n| n.starts_with("bf16")), "{names:?}");
    // The table is printed too.
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("grad input") && stdout.contains("pass"));
}

#[test]
fn a_tolerance_exceeded_fails_the_run_and_still_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.json");
    // A negative tolerance no error can meet: the run must fail, naming the checks.
    let (r, report) = gpu_check(
        "cpu",
        &out,
        &[
            "--inception",
            "none",
            "--timesteps",
            "500",
            "--steps",
            "2",
            "--batch",
            "1",
            "--tol-forward=-1",
        ],
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("forward t=500"));
    assert_eq!(report["pass"], false);
    assert!(report["failed"].to_string().contains("forward t=500"));
}

#[test]
fn help_documents_defaults() {
    let r = Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(["gpu-check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&r.stdout);
    for s in [
        "--tol-forward",
        "0.0001",
        "--tol-grad",
        "--inception",
        "none",
        "--device",
    ] {
        assert!(help.contains(s), "--help lacks {s}:\n{help}");
    }
}

/// Runs where a GPU is present (a `cuda` build); the Inception check runs when the shared weights
/// are there.
#[cfg(feature = "cuda")]
#[test]
fn gpu_against_cpu_within_tolerances() {
    if candle_core::Device::new_cuda(0).is_err() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.json");
    let (r, report) = gpu_check("cuda", &out, &["--inception", &inception_arg()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(report["pass"], true);
    assert!(names(&report).iter().any(|n| n == "grad input"));
}
