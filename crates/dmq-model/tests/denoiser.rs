//! The denoiser abstraction on the tiny latent models (`shared/models/tiny-latent`): folders are
//! recognised by class, `forward_cond` is the model's own forward (diffusers' goldens), units
//! cover every layer once in forward order, and every unit run alone on its captured inputs
//! gives what it gave inside the model.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dmq_model::compare::max_rel_err;
use dmq_model::{Conditioning, Ctx, DenoiserClass, DenoiserModel, Pipeline, Timesteps};

fn tiny(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/tiny-latent")
        .join(rel)
}

fn goldens(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny(rel), &Device::Cpu).unwrap()
}

fn ts(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect()
}

/// One golden call of a model: folder, class, conditioning, goldens, output name.
type Case = (
    &'static str,
    DenoiserClass,
    Conditioning,
    HashMap<String, Tensor>,
    &'static str,
);

fn cases() -> Vec<Case> {
    let sd = goldens("sd/golden/unet_call.safetensors");
    let dit = goldens("dit/golden/transformer_call.safetensors");
    let px = goldens("pixart/golden/transformer_call.safetensors");
    let sd_cond = Conditioning {
        context: Some(sd["encoder_hidden_states"].clone()),
        ..Conditioning::none()
    };
    let labels: Vec<u32> = dit["class_labels"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect();
    let dit_cond = Conditioning::labels(&labels, &Device::Cpu).unwrap();
    let px_cond = Conditioning {
        context: Some(px["encoder_hidden_states"].clone()),
        context_mask: Some(px["encoder_attention_mask"].clone()),
        ..Conditioning::none()
    };
    vec![
        ("sd", DenoiserClass::Unet2DCondition, sd_cond, sd, "eps"),
        ("dit", DenoiserClass::DiT, dit_cond, dit, "out"),
        ("pixart", DenoiserClass::PixArt, px_cond, px, "out"),
    ]
}

#[test]
fn folders_are_recognised_and_forward_matches_diffusers() {
    for (dir, class, cond, g, out) in cases() {
        let p = Pipeline::from_folder(&tiny(dir)).unwrap();
        assert_eq!(p.class, class, "{dir}");
        assert_eq!(p.vae.is_some(), dir != "pixart", "{dir}: vae");
        let m = p.load_denoiser(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(m.class(), class);
        let got = m
            .forward_cond(
                &g["latents"],
                Timesteps::PerSample(&ts(&g["timesteps"])),
                &cond,
                &Ctx::inference(),
            )
            .unwrap();
        let e = max_rel_err(&got, &g[out]).unwrap();
        eprintln!("{dir}: forward_cond max rel err {e:.2e}");
        assert!(e <= 1e-4, "{dir}: {e}");
        assert_eq!(m.prediction_channels(), 4, "{dir}");
        assert_eq!(m.sample_shape(), Some([4, 8, 8]), "{dir}");
        // A missing conditioning is an error naming what is missing.
        let err = m
            .forward_cond(
                &g["latents"],
                Timesteps::Shared(10.0),
                &Conditioning::none(),
                &Ctx::inference(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("conditioned on"), "{dir}: {err}");
    }
}

#[test]
fn units_cover_layers_and_rerun_exactly() {
    for (dir, _, cond, g, _) in cases() {
        let p = Pipeline::from_folder(&tiny(dir)).unwrap();
        let mut m = p.load_denoiser(&Device::Cpu, DType::F32).unwrap();
        let paths = m.layer_paths();
        let units = m.units();
        let covered: Vec<String> = units.iter().flat_map(|u| u.layers.clone()).collect();
        assert_eq!(
            covered, paths,
            "{dir}: units cover every layer once, in order"
        );
        let blocks: Vec<&str> = units
            .iter()
            .filter(|u| u.kind == dmq_model::unet2d::units::UnitKind::Transformer)
            .map(|u| u.path.as_str())
            .collect();
        match dir {
            "sd" => assert_eq!(
                blocks,
                [
                    "down_blocks.0.attentions.0",
                    "mid_block.attentions.0",
                    "up_blocks.1.attentions.0",
                    "up_blocks.1.attentions.1",
                ]
            ),
            _ => assert_eq!(blocks, ["transformer_blocks.0", "transformer_blocks.1"]),
        }
        // Each unit alone on its captured inputs = the unit's output inside the model (tapped
        // by every unit that reports its output).
        let names: Vec<String> = units.iter().map(|u| u.path.clone()).collect();
        let t = ts(&g["timesteps"]);
        let captured = m
            .capture_inputs_with(&names, &g["latents"], Timesteps::PerSample(&t), &cond, None)
            .unwrap();
        let ctx = Ctx::inference().with_taps();
        m.forward_cond(&g["latents"], Timesteps::PerSample(&t), &cond, &ctx)
            .unwrap();
        let taps = ctx.take_taps();
        let mut compared = 0;
        for u in &units {
            let alone = m.unit_forward(&u.path, &captured[&u.path], &Ctx::inference());
            let alone = alone.unwrap_or_else(|e| panic!("{dir} {}: {e}", u.path));
            if let Some(inside) = taps.get(&u.path) {
                let e = max_rel_err(&alone, inside).unwrap();
                assert!(e <= 1e-6, "{dir} {}: {e}", u.path);
                compared += 1;
            }
        }
        assert!(compared >= 2, "{dir}: only {compared} units tapped");
    }
}

#[test]
fn inspect_traces_every_layer() {
    for (dir, _, _, _, _) in cases() {
        let p = Pipeline::from_folder(&tiny(dir)).unwrap();
        let mut m = p.load_denoiser(&Device::Cpu, DType::F32).unwrap();
        let report = dmq_model::inspect::inspect_denoiser(&m, None).unwrap();
        let traced: std::collections::BTreeSet<String> = report
            .layers
            .iter()
            .filter(|l| l.kind != "act_matmul")
            .map(|l| l.path.clone())
            .collect();
        let all: std::collections::BTreeSet<String> = m.layer_paths().into_iter().collect();
        assert_eq!(traced, all, "{dir}");
        assert_eq!(report.params, m.num_params());
    }
}

#[test]
fn model_index_mismatch_and_unknown_classes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("unet")).unwrap();
    std::fs::copy(tiny("sd/unet/config.json"), d.join("unet/config.json")).unwrap();
    std::fs::copy(
        tiny("sd/unet/diffusion_pytorch_model.safetensors"),
        d.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        d.join("model_index.json"),
        r#"{"unet": ["diffusers", "UNet2DModel"]}"#,
    )
    .unwrap();
    let err = Pipeline::from_folder(d).unwrap_err().to_string();
    assert!(
        err.contains("model_index.json") && err.contains("UNet2DConditionModel"),
        "{err}"
    );
    std::fs::write(
        d.join("model_index.json"),
        r#"{"unet": ["diffusers", "UNetSpatioTemporalConditionModel"]}"#,
    )
    .unwrap();
    let err = Pipeline::from_folder(d).unwrap_err().to_string();
    assert!(err.contains("UNetSpatioTemporalConditionModel"), "{err}");
}
