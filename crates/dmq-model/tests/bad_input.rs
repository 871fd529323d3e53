//! Every kind of broken model folder gives an error that names the file and the field or tensor.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmq_model::{Ctx, ModelSource, Timesteps, UNet2DConfig, UNet2DModel, WeightStore};

const TINY: &str = r#"{
  "_class_name": "UNet2DModel",
  "sample_size": 8,
  "in_channels": 3,
  "out_channels": 3,
  "block_out_channels": [8, 16],
  "layers_per_block": 1,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "norm_num_groups": 4,
  "attention_head_dim": null,
  "freq_shift": 1,
  "flip_sin_to_cos": false,
  "downsample_padding": 0
}"#;

/// A tiny random model in diffusers layout; returns (root folder, unet folder).
fn tiny_model(dir: &Path, config: &str) -> (PathBuf, PathBuf) {
    let unet_dir = dir.join("unet");
    std::fs::create_dir_all(&unet_dir).unwrap();
    std::fs::write(unet_dir.join("config.json"), config).unwrap();
    let cfg = UNet2DConfig::from_json_str(&unet_dir.join("config.json"), config).unwrap();
    let store = WeightStore::synthetic(7, 0.1, &Device::Cpu, DType::F32);
    UNet2DModel::load(cfg, &store).unwrap();
    store
        .save_synthetic(&unet_dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    (dir.to_path_buf(), unet_dir)
}

fn load_err(root: &Path) -> String {
    let r = ModelSource::Folder(root.to_path_buf())
        .resolve()
        .and_then(|p| p.load_unet(&Device::Cpu, DType::F32));
    match r {
        Ok(_) => panic!("loading {} should fail", root.display()),
        Err(e) => e.to_string(),
    }
}

fn weights_of(unet_dir: &Path) -> PathBuf {
    unet_dir.join("diffusion_pytorch_model.safetensors")
}

#[test]
fn tiny_model_round_trips_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = tiny_model(tmp.path(), TINY);
    let unet = ModelSource::Folder(root)
        .resolve()
        .unwrap()
        .load_unet(&Device::Cpu, DType::F32)
        .unwrap();
    let x = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let y = unet
        .forward(&x, Timesteps::Shared(10.0), None, &Ctx::inference())
        .unwrap();
    assert_eq!(y.dims(), &[2, 3, 8, 8]);
}

#[test]
fn missing_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet) = tiny_model(tmp.path(), TINY);
    std::fs::remove_file(weights_of(&unet)).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("unet"),
        "{e}"
    );
}

#[test]
fn corrupt_and_truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet) = tiny_model(tmp.path(), TINY);
    let w = weights_of(&unet);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::write(&w, b"this is not a checkpoint at all").unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

/// Splits the tiny checkpoint into two shards with an index.
fn shard(unet_dir: &Path) -> Vec<String> {
    let w = weights_of(unet_dir);
    let all = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    std::fs::remove_file(&w).unwrap();
    let mut names: Vec<String> = all.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let tensors: std::collections::HashMap<String, Tensor> =
            part.iter().map(|n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&tensors, unet_dir.join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        unet_dir.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    names
}

#[test]
fn sharded_checkpoint_loads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    let load = |r: &Path| {
        ModelSource::Folder(r.to_path_buf())
            .resolve()
            .unwrap()
            .load_unet(&Device::Cpu, DType::F32)
            .unwrap()
    };
    let x = Tensor::ones((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let single = load(&root)
        .forward(&x, Timesteps::Shared(3.0), None, &Ctx::inference())
        .unwrap();
    shard(&unet_dir);
    let sharded = load(&root)
        .forward(&x, Timesteps::Shared(3.0), None, &Ctx::inference())
        .unwrap();
    assert_eq!(common::rel_err(&sharded, &single), 0.0);
}

#[test]
fn shard_index_pointing_at_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    shard(&unet_dir);
    std::fs::remove_file(unet_dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("index.json") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn tensor_shape_not_matching_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    // The config now says 12 channels in the first block; the weights have 8.
    let wider = TINY.replace("[8, 16]", "[12, 16]");
    std::fs::write(unet_dir.join("config.json"), wider).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("shape"),
        "{e}"
    );
    assert!(
        e.contains("`conv_in.weight`") || e.contains("`time_embedding.linear_1.weight`"),
        "{e}"
    );
}

#[test]
fn non_float_tensor_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    let w = weights_of(&unet_dir);
    let mut all = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let b = all["conv_in.bias"].to_dtype(DType::I64).unwrap();
    all.insert("conv_in.bias".into(), b);
    candle_core::safetensors::save(&all, &w).unwrap();
    let e = load_err(&root);
    assert!(e.contains("`conv_in.bias`") && e.contains("I64"), "{e}");
}

#[test]
fn nan_in_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    let w = weights_of(&unet_dir);
    let mut all = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    all.insert(
        "conv_out.bias".into(),
        Tensor::new(&[0.0f32, f32::NAN, 1.0], &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, &w).unwrap();
    let e = load_err(&root);
    assert!(e.contains("`conv_out.bias`") && e.contains("NaN"), "{e}");
}

#[test]
fn extra_tensor_means_config_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    let w = weights_of(&unet_dir);
    let mut all = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    all.insert(
        "down_blocks.0.resnets.1.conv1.weight".into(),
        Tensor::zeros((8, 8, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, &w).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("down_blocks.0.resnets.1.conv1.weight") && e.contains("not used"),
        "{e}"
    );
}

#[test]
fn unknown_block_type_field_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, unet_dir) = tiny_model(tmp.path(), TINY);
    let bad = TINY.replace("\"AttnDownBlock2D\"", "\"SkipDownBlock2D\"");
    std::fs::write(unet_dir.join("config.json"), bad).unwrap();
    let e = load_err(&root);
    assert!(
        e.contains("config.json")
            && e.contains("down_block_types")
            && e.contains("SkipDownBlock2D"),
        "{e}"
    );
}

#[test]
fn unsupported_and_unknown_config_values() {
    let p = Path::new("unet/config.json");
    let cases = [
        (
            TINY.replace(
                "\"norm_num_groups\": 4",
                "\"norm_num_groups\": 4, \"resnet_time_scale_shift\": \"spatial\"",
            ),
            "resnet_time_scale_shift",
        ),
        (
            TINY.replace(
                "\"norm_num_groups\": 4",
                "\"norm_num_groups\": 4, \"time_embedding_type\": \"adm\"",
            ),
            "time_embedding_type",
        ),
        (
            TINY.replace(
                "\"norm_num_groups\": 4",
                "\"norm_num_groups\": 4, \"shiny_new_option\": 3",
            ),
            "shiny_new_option",
        ),
        (
            TINY.replace("\"norm_num_groups\": 4", "\"norm_num_groups\": 3"),
            "norm_num_groups",
        ),
        (
            TINY.replace("\"layers_per_block\": 1", "\"layers_per_block\": \"two\""),
            "layers_per_block",
        ),
        (
            TINY.replace("[\"AttnUpBlock2D\", \"UpBlock2D\"]", "[\"UpBlock2D\"]"),
            "up_block_types",
        ),
    ];
    for (text, field) in cases {
        let e = UNet2DConfig::from_json_str(p, &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unet/config.json") && e.contains(field),
            "expected field {field}: {e}"
        );
    }
    let e = UNet2DConfig::from_json_str(p, "{ not json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unet/config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn missing_folder_and_bad_model_argument() {
    let e = ModelSource::parse(Some("./no/such/folder/here"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such folder"), "{e}");
    assert_eq!(
        ModelSource::parse(Some("google/ddpm-cifar10-32")).unwrap(),
        ModelSource::Hub("google/ddpm-cifar10-32".into())
    );
    let tmp = tempfile::tempdir().unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("not a diffusers model folder"), "{e}");
}

/// One test for all hub cases: they set process-wide environment variables.
#[test]
fn hub_ids_use_the_cache_offline_and_fail_clearly_without_it() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    // A hub endpoint that refuses connections stands in for "no network".
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");

    // (a) a model already in the hub cache loads with no network at all.
    let repo = cache.path().join("hub/models--someone--tiny-ddpm");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    tiny_model(&snap, TINY);
    let p = ModelSource::Hub("someone/tiny-ddpm".into())
        .resolve()
        .unwrap();
    assert_eq!(p.name, "someone/tiny-ddpm");
    p.load_unet(&Device::Cpu, DType::F32).unwrap();

    // (b) not cached, network unreachable.
    let e = ModelSource::Hub("google/ddpm-cifar10-32".into())
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("google/ddpm-cifar10-32") && e.contains("--model"),
        "{e}"
    );

    // (c) not cached, HF_HUB_OFFLINE set: no connection is even tried.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = ModelSource::Hub("google/ddpm-cifar10-32".into())
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("google/ddpm-cifar10-32")
            && e.contains("HF_HUB_OFFLINE")
            && e.contains("--model"),
        "{e}"
    );
    std::env::remove_var("HF_HUB_OFFLINE");
}
