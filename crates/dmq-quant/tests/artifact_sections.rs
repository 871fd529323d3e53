//! Artifact additions for PTQD: per-step activation bit widths (step-aware mixed precision) round
//! trip through the manifest and tensors, the optional `ptqd` section and its tensor file are
//! written and read back, and manifests written before either existed still read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use dmq_quant::artifact::{self, QuantLayer};
use dmq_quant::sim::{LayerActivation, PerStepActivation};
use dmq_quant::uniform::UniformParams;

fn mixed_layer() -> QuantLayer {
    let p = |s: f32, z: i32, b: u8| UniformParams::per_tensor(s, z, b).unwrap();
    QuantLayer {
        weight: None,
        activation: Some(LayerActivation::single(PerStepActivation::new(
            vec![0, 1, 2, 3],
            vec![p(0.5, 7, 4), p(0.4, 8, 4), p(0.01, 128, 8), p(0.02, 120, 8)],
        ))),
        equivalent_scale: None,
    }
}

#[test]
fn per_step_bit_widths_round_trip() {
    let mut layers = BTreeMap::new();
    layers.insert("down_blocks.0.resnets.0.conv1".to_string(), mixed_layer());
    let tensors = artifact::layer_tensors(&layers).unwrap();
    let entry = artifact::layer_entry(
        "down_blocks.0.resnets.0.conv1",
        &[32, 32, 3, 3],
        layers.values().next(),
    )
    .unwrap();
    let act = entry.activation.as_ref().unwrap();
    assert_eq!(act.bits, 8, "the widest");
    assert_eq!(act.step_bits, Some(vec![vec![4, 4, 8, 8]]));
    // through JSON, as the manifest stores it
    let json = serde_json::to_string(&entry).unwrap();
    let entry: artifact::LayerEntry = serde_json::from_str(&json).unwrap();
    let back = artifact::layer_from(&entry, &tensors, Path::new("quant.safetensors")).unwrap();
    let params = &back.activation.unwrap().parts[0].params;
    let bits: Vec<u8> = params.iter().map(|p| p.bits).collect();
    assert_eq!(bits, vec![4, 4, 8, 8]);
    assert_eq!(params[2].zero_point, vec![128]);
    assert_eq!(params[0].scale, vec![0.5]);

    // one width everywhere: no step_bits in the manifest (the format of older artifacts)
    let mut uniform = mixed_layer();
    if let Some(a) = &mut uniform.activation {
        for p in &mut a.parts[0].params {
            *p = UniformParams::per_tensor(p.scale[0], p.zero_point[0].min(15), 4).unwrap();
        }
    }
    let e = artifact::layer_entry("l", &[1, 1], Some(&uniform)).unwrap();
    assert_eq!(e.activation.as_ref().unwrap().step_bits, None);
    assert!(!serde_json::to_string(&e).unwrap().contains("step_bits"));

    // inconsistent step_bits are a clear error naming the layer
    let mut bad = entry.clone();
    bad.activation.as_mut().unwrap().step_bits = Some(vec![vec![4, 8]]);
    let err = artifact::layer_from(&bad, &tensors, Path::new("quant.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("down_blocks.0.resnets.0.conv1") && err.contains("step_bits"),
        "{err}"
    );
}

/// A manifest as dmq wrote it before PTQD (no `ptqd`, no `step_bits`).
const OLD_MANIFEST: &str = r#"{
  "format": "dmq-quantized",
  "format_version": 1,
  "dmq_version": "0.1.0",
  "base_model": "embedded",
  "recipe": {},
  "calibration": {"steps": 10},
  "layers": [
    {"path": "conv_in", "shape": [32, 3, 3, 3], "weight": null,
     "activation": {"bits": 8, "split": null, "steps": [[0, 5]]}, "weight_rel_error": null}
  ],
  "extra": {}
}"#;

#[test]
fn ptqd_section_is_written_beside_old_manifests_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("manifest.json"), OLD_MANIFEST).unwrap();
    let m = artifact::read_manifest(dir).unwrap();
    assert!(m.ptqd.is_none());
    assert_eq!(m.layers[0].activation.as_ref().unwrap().step_bits, None);

    let mut tensors = HashMap::new();
    tensors.insert(
        "ptqd.a.k".to_string(),
        Tensor::new(&[0.25f64, 0.5], &Device::Cpu).unwrap(),
    );
    let section = serde_json::json!({"sets": [{"id": "a"}]});
    let written = artifact::write_ptqd(dir, section.clone(), &tensors).unwrap();
    assert_eq!(written.ptqd.as_ref(), Some(&section));
    let m = artifact::read_manifest(dir).unwrap();
    assert_eq!(m.ptqd, Some(section));
    assert_eq!(m.layers.len(), 1, "the rest of the manifest is kept");
    let t = artifact::read_ptqd_tensors(dir).unwrap();
    assert_eq!(t["ptqd.a.k"].to_vec1::<f64>().unwrap(), vec![0.25, 0.5]);
    // no temporary files left behind
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // a missing tensor file is an error naming it
    std::fs::remove_file(dir.join(artifact::PTQD_FILE)).unwrap();
    let err = artifact::read_ptqd_tensors(dir).unwrap_err().to_string();
    assert!(err.contains("ptqd.safetensors"), "{err}");
    // no manifest: an error naming it
    let empty = tempfile::tempdir().unwrap();
    let err = artifact::write_ptqd(empty.path(), serde_json::json!({}), &tensors)
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest.json"), "{err}");
}
