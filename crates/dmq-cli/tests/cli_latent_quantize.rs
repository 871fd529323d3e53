//! `dmq quantize` → artifact → `dmq sample --model Q` on each tiny latent model: calibration on
//! the FP model's guided trajectories, block reconstruction by transformer block, the artifact
//! records the model class and carries the VAE, and sampling the artifact reproduces the
//! in-memory quantized model exactly (the PSNR against FP that `quantize` measured on its
//! preview equals the PSNR between `dmq sample` of FP and of Q from the same seeds).

mod common;

use std::path::{Path, PathBuf};

use common::{dmq, json, ok};

/// A tiny recipe: W4A8 so that quantization visibly changes the images; a handful of
/// calibration samples and reconstruction iterations (the models are tiny).
const TINY: &str = r#"
format_version = 1
name = "tiny-w4a8"
[weights]
bits = 4
[activations]
bits = 8
ema_batch = 4
[calibration]
steps = 10
steps_sampled = 2
samples_per_step = 2
batch = 2
[reconstruction]
iters = 5
batch = 2
"#;

/// [`TINY`] with DMQ's passes: learned equivalent scaling (a few iterations) and power-of-two
/// scaling of the ResBlock shortcut inputs (SD's decoder; DiT and PixArt have none).
fn tiny_dmq() -> String {
    format!(
        "{}\n[les]\nenabled = true\niters = 5\nbatch = 2\n[pts]\nenabled = true\nlayers = [\"*.conv_shortcut\"]\n",
        TINY.replace("tiny-w4a8", "tiny-dmq-w4a8")
    )
}

fn tiny(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/tiny-latent")
        .join(rel)
        .display()
        .to_string()
}

fn mean_psnr(a: &Path, b: &Path, n: usize) -> f64 {
    (0..n)
        .map(|i| {
            let name = format!("{i:06}.png");
            let x = image::open(a.join(&name)).unwrap().to_rgb8();
            let y = image::open(b.join(&name)).unwrap().to_rgb8();
            dmq_eval::fidelity::psnr(&x, &y)
        })
        .sum::<f64>()
        / n as f64
}

fn round_trip(dir: &str, cond: &[&str], class: &str, units: &[&str], has_vae: bool) {
    round_trip_with(TINY, dir, cond, class, units, has_vae);
}

fn round_trip_with(
    recipe_text: &str,
    dir: &str,
    cond: &[&str],
    class: &str,
    units: &[&str],
    has_vae: bool,
) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("tiny.toml");
    std::fs::write(&recipe, recipe_text).unwrap();
    let q = tmp.path().join("q");
    let qs = q.to_str().unwrap();
    let model = tiny(dir);
    let mut args = vec![
        "quantize",
        "--model",
        &model,
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        qs,
        "--preview",
        "2",
    ];
    args.extend_from_slice(cond);
    ok(&dmq(&args, &cache));
    let m = json(&q.join("manifest.json"));
    assert_eq!(m["model_class"], class, "{dir}");
    assert_eq!(
        m["calibration"]["samples"], 8,
        "{dir}: 2 steps x 2 trajectories x 2 halves"
    );
    assert_eq!(q.join("vae/config.json").is_file(), has_vae, "{dir}");
    let report = json(&q.join("report.json"));
    let done: Vec<&str> = report["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    for u in units {
        assert!(
            done.contains(u),
            "{dir}: unit {u} not reconstructed: {done:?}"
        );
    }
    let w4 = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["weight_bits"] == 4)
        .count();
    assert!(w4 > 10, "{dir}: {w4} layers at 4 bits");
    let preview = report["preview"]["psnr_mean_db"].as_f64().unwrap();
    assert!(
        preview.is_finite() && preview > 5.0,
        "{dir}: preview PSNR {preview}"
    );
    // With PTQD statistics, `dmq sample` corrects by default: compare with that preview row.
    let preview = report["preview"]["psnr_mean_db_ptqd"]
        .as_f64()
        .unwrap_or(preview);

    // The artifact sampled by `dmq sample` = the in-memory quantized model of the preview.
    let (fp_out, q_out) = (tmp.path().join("fp"), tmp.path().join("qs"));
    for (m, out) in [(model.as_str(), &fp_out), (qs, &q_out)] {
        let mut args = vec![
            "sample",
            "--model",
            m,
            "--steps",
            "10",
            "--num",
            "2",
            "--seed",
            "0",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(cond);
        ok(&dmq(&args, &cache));
    }
    let psnr = mean_psnr(&fp_out, &q_out, 2);
    assert!(
        (psnr - preview).abs() < 1e-9,
        "{dir}: dmq sample of the artifact gives PSNR {psnr} against FP, the in-memory model gave {preview}"
    );

    // Again from the cached calibration set (conditioning rows included): the same artifact.
    let q2 = tmp.path().join("q2");
    let mut args = vec![
        "quantize",
        "--model",
        &model,
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        q2.to_str().unwrap(),
        "--preview",
        "0",
    ];
    args.extend_from_slice(cond);
    let err = ok(&dmq(&args, &cache));
    assert!(err.contains("calibration data: reused"), "{dir}: {err}");
    assert_eq!(
        std::fs::read(q.join("quant.safetensors")).unwrap(),
        std::fs::read(q2.join("quant.safetensors")).unwrap(),
        "{dir}: the cached calibration set gives another artifact"
    );
    m
}

#[test]
fn sd_quantize_save_load_sample() {
    round_trip(
        "sd",
        &["--prompt-embeds", &tiny("sd/golden/ddim10_cfg.safetensors")],
        "UNet2DConditionModel",
        &[
            "down_blocks.0.attentions.0",
            "mid_block.attentions.0",
            "up_blocks.1.resnets.1",
        ],
        true,
    );
}

#[test]
fn dit_quantize_save_load_sample() {
    round_trip(
        "dit",
        &["--class-labels", "207,360"],
        "DiTTransformer2DModel",
        &["transformer_blocks.0", "transformer_blocks.1", "proj_out_2"],
        true,
    );
}

#[test]
fn pixart_quantize_save_load_sample() {
    round_trip(
        "pixart",
        &[
            "--prompt-embeds",
            &tiny("sd/golden/ddim10_cfg.safetensors"),
            "--scheduler-config",
            &tiny("dit/scheduler/scheduler_config.json"),
        ],
        "PixArtTransformer2DModel",
        &[
            "transformer_blocks.0",
            "transformer_blocks.1",
            "caption_projection.linear_1",
        ],
        false,
    );
}

/// DMQ (LES + PTS) through the same round trip: equivalent scales stored (or folded into the
/// value projection), PTS shifts on SD's decoder shortcuts.
#[test]
fn dmq_recipe_round_trips_on_sd_and_dit() {
    let m = round_trip_with(
        &tiny_dmq(),
        "sd",
        &["--prompt-embeds", &tiny("sd/golden/ddim10_cfg.safetensors")],
        "UNet2DConditionModel",
        &["up_blocks.0.resnets.0", "up_blocks.1.attentions.1"],
        true,
    );
    let layers = m["layers"].as_array().unwrap();
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| layers.iter().filter(|l| f(l)).count();
    assert!(count(&|l| l["equivalent_scale"] == true) > 20, "LES scales");
    assert!(
        count(&|l| !l["scale_folded_into"].is_null()) > 0,
        "to_out folded into to_v"
    );
    assert!(
        count(&|l| l["activation"]["pts"] == true) > 0,
        "PTS on conv_shortcut"
    );
    let m = round_trip_with(
        &tiny_dmq(),
        "dit",
        &["--class-labels", "207,360"],
        "DiTTransformer2DModel",
        &["transformer_blocks.0", "transformer_blocks.1"],
        true,
    );
    let layers = m["layers"].as_array().unwrap();
    assert!(
        layers
            .iter()
            .filter(|l| l["equivalent_scale"] == true)
            .count()
            > 10
    );
}

/// PTQD on the guided prediction: statistics stored, `dmq sample --model Q` corrects by default
/// exactly as the in-memory preview did, `--ptqd-parts none` gives the uncorrected model, and
/// another guidance scale is refused.
#[test]
fn ptqd_round_trips_on_dit() {
    let recipe = format!(
        "{}\n[ptqd]\nsamples = 2\nbatch = 2\n",
        TINY.replace("tiny-w4a8", "tiny-ptqd-w4a8")
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cond = ["--class-labels", "207,360"];
    let m = round_trip_with(
        &recipe,
        "dit",
        &cond,
        "DiTTransformer2DModel",
        &["transformer_blocks.0"],
        true,
    );
    assert_eq!(
        m["ptqd"]["sets"][0]["protocol"]["guidance"], 4.0,
        "{}",
        m["ptqd"]
    );
    // The uncorrected model and the refusal, on an artifact of the same recipe.
    let r = tmp.path().join("r.toml");
    std::fs::write(&r, &recipe).unwrap();
    let q = tmp.path().join("q");
    let (model, qs) = (tiny("dit"), q.to_str().unwrap().to_string());
    ok(&dmq(
        &[
            "quantize",
            "--model",
            &model,
            "--recipe",
            r.to_str().unwrap(),
            "--out",
            &qs,
            "--preview",
            "2",
            "--class-labels",
            "207,360",
        ],
        &cache,
    ));
    let plain = json(&q.join("report.json"))["preview"]["psnr_mean_db"]
        .as_f64()
        .unwrap();
    let (fp_out, q_out) = (tmp.path().join("fp"), tmp.path().join("qn"));
    for (m, out, extra) in [
        (model.as_str(), &fp_out, vec![]),
        (qs.as_str(), &q_out, vec!["--ptqd-parts", "none"]),
    ] {
        let mut args = vec![
            "sample",
            "--model",
            m,
            "--steps",
            "10",
            "--num",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&cond);
        args.extend_from_slice(&extra);
        ok(&dmq(&args, &cache));
    }
    assert!((mean_psnr(&fp_out, &q_out, 2) - plain).abs() < 1e-9);
    let err = common::fails(&dmq(
        &[
            "sample",
            "--model",
            &qs,
            "--steps",
            "10",
            "--num",
            "1",
            "--guidance-scale",
            "2",
            "--class-labels",
            "1",
            "--out",
            tmp.path().join("g").to_str().unwrap(),
        ],
        &cache,
    ));
    assert!(err.contains("guidance"), "{err}");
}
