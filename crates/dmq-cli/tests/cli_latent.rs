//! `dmq inspect` and `dmq sample` on the tiny latent models (`shared/models/tiny-latent`): the
//! class is recognised, conditioning comes from `--prompt-embeds` / `--class-labels`, images are
//! decoded by the VAE (PixArt's folder has none: a latent preview), the same seed gives the same
//! images whatever the batch, and missing or mis-shaped inputs are errors naming file and tensor.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{dmq, fails, json, ok};

fn tiny(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/tiny-latent")
        .join(rel)
        .display()
        .to_string()
}

/// The SD golden holds `prompt_embeds` and `negative_prompt_embeds` [2, 77, 32].
fn sd_embeds() -> String {
    tiny("sd/golden/ddim10_cfg.safetensors")
}

fn write_tensors(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn stdout(o: &std::process::Output) -> String {
    ok(o);
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn inspect_names_class_layers_and_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir, class, params, first) in [
        (
            "sd",
            "UNet2DConditionModel",
            "792964",
            "time_embedding.linear_1",
        ),
        ("dit", "DiTTransformer2DModel", "124160", "pos_embed.proj"),
        (
            "pixart",
            "PixArtTransformer2DModel",
            "53376",
            "pos_embed.proj",
        ),
    ] {
        let out = stdout(&dmq(&["inspect", "--model", &tiny(dir)], tmp.path()));
        assert!(out.contains(&format!("class       {class}")), "{out}");
        assert!(out.contains(&format!("parameters  {params}")), "{out}");
        assert!(out.contains(first), "{out}");
        assert_eq!(
            out.contains("vae         AutoencoderKL"),
            dir != "pixart",
            "{out}"
        );
    }
    let out = stdout(&dmq(
        &["inspect", "--model", &tiny("sd"), "--json"],
        tmp.path(),
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["class"], "UNet2DConditionModel");
    assert!(v["report"]["layers"].as_array().unwrap().len() > 50);
}

#[test]
fn sd_samples_with_prompt_embeds_any_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let e = sd_embeds();
    for (out, batch) in [(&a, "3"), (&b, "2")] {
        ok(&dmq(
            &[
                "sample",
                "--model",
                &tiny("sd"),
                "--prompt-embeds",
                &e,
                "--steps",
                "5",
                "--num",
                "3",
                "--batch",
                batch,
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        ));
    }
    for name in ["000000.png", "000001.png", "000002.png", "grid.png"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    let img = image::open(a.join("000000.png")).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (16, 16),
        "VAE-decoded 16x16 RGB"
    );
    let s = json(&a.join("samples.json"));
    assert_eq!(s["protocol"]["conditioning"]["guidance_scale"], 7.5);
    assert_eq!(s["protocol"]["model_class"], "UNet2DConditionModel");
    // Another guidance scale is another run: other images, refused in the same folder.
    let err = fails(&dmq(
        &[
            "sample",
            "--model",
            &tiny("sd"),
            "--prompt-embeds",
            &e,
            "--steps",
            "5",
            "--num",
            "3",
            "--guidance-scale",
            "1",
            "--out",
            a.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(err.contains("different run"), "{err}");
}

#[test]
fn dit_samples_with_class_labels_and_pixart_writes_a_latent_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("dit");
    ok(&dmq(
        &[
            "sample",
            "--model",
            &tiny("dit"),
            "--class-labels",
            "207,360",
            "--steps",
            "5",
            "--num",
            "2",
            "--out",
            d.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    let s = json(&d.join("samples.json"));
    assert_eq!(s["protocol"]["conditioning"]["guidance_scale"], 4.0);
    assert_eq!(s["protocol"]["conditioning"]["class_labels"][1], 360);
    assert!(d.join("000001.png").is_file());

    let p = tmp.path().join("px");
    let sched = tiny("dit/scheduler/scheduler_config.json");
    let err = fails(&dmq(
        &[
            "sample",
            "--model",
            &tiny("pixart"),
            "--prompt-embeds",
            &sd_embeds(),
            "--steps",
            "5",
            "--num",
            "2",
            "--out",
            p.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(err.contains("--scheduler-config"), "{err}");
    let err = ok(&dmq(
        &[
            "sample",
            "--model",
            &tiny("pixart"),
            "--scheduler-config",
            &sched,
            "--prompt-embeds",
            &sd_embeds(),
            "--steps",
            "5",
            "--num",
            "2",
            "--out",
            p.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(err.contains("preview of the latents"), "{err}");
    let img = image::open(p.join("000000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (8, 8), "latent-sized preview");
    assert_eq!(
        json(&p.join("samples.json"))["protocol"]["conditioning"]["guidance_scale"],
        4.5
    );
}

#[test]
fn missing_or_misshaped_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str], model: &str| {
        let mut args = vec![
            "sample", "--model", model, "--steps", "2", "--num", "1", "--out", o,
        ];
        args.extend_from_slice(extra);
        fails(&dmq(&args, tmp.path()))
    };
    let sd = tiny("sd");
    let err = run(&[], &sd);
    assert!(
        err.contains("--prompt-embeds") && err.contains("[P, S, 32]"),
        "{err}"
    );
    let err = run(&["--class-labels", "1"], &sd);
    assert!(err.contains("--prompt-embeds"), "{err}");

    let bad = tmp.path().join("bad.safetensors");
    let bs = bad.to_str().unwrap();
    let zeros = |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
    write_tensors(&bad, &[("embeds", zeros(&[1, 77, 32]))]);
    let err = run(&["--prompt-embeds", bs], &sd);
    assert!(
        err.contains("bad.safetensors") && err.contains("`prompt_embeds`"),
        "{err}"
    );
    write_tensors(&bad, &[("prompt_embeds", zeros(&[1, 77, 16]))]);
    let err = run(&["--prompt-embeds", bs], &sd);
    assert!(
        err.contains("bad.safetensors") && err.contains("[1, 77, 16]"),
        "{err}"
    );
    write_tensors(
        &bad,
        &[
            ("prompt_embeds", zeros(&[2, 77, 32])),
            ("negative_prompt_embeds", zeros(&[3, 77, 32])),
        ],
    );
    let err = run(&["--prompt-embeds", bs], &sd);
    assert!(
        err.contains("`negative_prompt_embeds`") && err.contains("[3, 77, 32]"),
        "{err}"
    );
    let err = run(&["--prompt-embeds", "/nonexistent.safetensors"], &sd);
    assert!(err.contains("/nonexistent.safetensors"), "{err}");

    let dit = tiny("dit");
    let err = run(&[], &dit);
    assert!(err.contains("--class-labels"), "{err}");
    let err = run(&["--class-labels", "1000"], &dit);
    assert!(
        err.contains("1000") && err.contains("out of range"),
        "{err}"
    );
}
