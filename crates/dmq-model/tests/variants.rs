//! Parity with diffusers for config values the shared model does not exercise
//! (goldens made by scripts/golden/make_unet_variants.py; see tests/data/unet-variants/README.md).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use dmq_model::unet2d::embeddings::ClassLabels;
use dmq_model::{Ctx, ModelSource, Timesteps};

const VARIANTS: [&str; 7] = [
    "multihead_pad1_flip",
    "scale_shift_mid_scale",
    "fourier_centered",
    "learned_time",
    "class_table",
    "class_timestep",
    "no_mid_attention",
];

#[test]
fn every_config_variant_matches_diffusers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/unet-variants");
    for name in VARIANTS {
        let dir = root.join(name);
        let unet = ModelSource::Folder(dir.clone())
            .resolve()
            .unwrap()
            .load_unet(&Device::Cpu, DType::F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let g =
            candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
        let ts: Vec<f64> = g["timesteps"]
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&t| t as f64)
            .collect();
        let labels: Option<Vec<u32>> = g.get("class_labels").map(|l| {
            l.to_vec1::<i64>()
                .unwrap()
                .iter()
                .map(|&v| v as u32)
                .collect()
        });
        let labels = labels.as_ref().map(|l| ClassLabels::Indices(l));
        let eps = unet
            .forward(
                &g["x"],
                Timesteps::PerSample(&ts),
                labels.as_ref(),
                &Ctx::inference(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = common::rel_err(&eps, &g["eps"]);
        eprintln!("{name}: eps rel err {e:.2e}");
        assert!(e < 1e-4, "{name}: eps rel err {e}");
    }
}
