//! The PTQ base end to end on the embedded model: reconstruction lowers block errors, an
//! interrupted run resumed from its checkpoints equals an uninterrupted one, and the artifact
//! reloads bit-exactly.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_quant::artifact::{self, Manifest};
use dmq_quant::calib::{self, CalibSet, CalibSpec};
use dmq_quant::config::QuantConfig;
use dmq_quant::ptq::{self, PtqOptions, PtqOutcome, Silent};

fn small_recipe() -> QuantConfig {
    let mut c = QuantConfig::builtin("base-w4a8").unwrap();
    c.calibration.steps = 10;
    c.calibration.steps_sampled = 5;
    c.calibration.samples_per_step = 4;
    c.calibration.batch = 4;
    c.reconstruction.iters = 12;
    c.reconstruction.batch = 4;
    c.activations.ema_batch = 3;
    c
}

fn setup() -> (dmq_model::Pipeline, UNet2DModel, CalibSet) {
    let (pipeline, unet, sched) = common::embedded_ddim(10);
    let spec = CalibSpec {
        steps_sampled: 5,
        samples_per_step: 4,
        seed: 0,
        batch: 4,
    };
    let set = calib::generate(&unet, &*sched, &spec, || {}).unwrap();
    (pipeline, unet, set)
}

fn opts(dir: &std::path::Path) -> PtqOptions {
    PtqOptions {
        checkpoint_dir: Some(dir.to_path_buf()),
        capture_batch: 16,
        capture_budget_bytes: 64 << 20,
        run_fingerprint: "test".into(),
    }
}

fn codes(o: &PtqOutcome) -> BTreeMap<String, Vec<Vec<u8>>> {
    o.layers
        .iter()
        .filter_map(|(p, l)| {
            l.weight.as_ref().map(|w| {
                (
                    p.clone(),
                    w.parts
                        .iter()
                        .map(|part| part.codes.flatten_all().unwrap().to_vec1::<u8>().unwrap())
                        .collect(),
                )
            })
        })
        .collect()
}

fn eps_at_step(unet: &UNet2DModel, set: &CalibSet) -> Tensor {
    let rows = set.rows_of_step(4);
    let x = set.x.narrow(0, rows[0], 2).unwrap();
    let t = set.timesteps[rows[0]] as f64;
    unet.forward(&x, Timesteps::Shared(t), None, &Ctx::at_step(4))
        .unwrap()
}

#[test]
fn base_recipe_reconstructs_resumes_and_reloads_exactly() {
    let (pipeline, mut unet, set) = setup();
    let cfg = small_recipe();
    let tmp = tempfile::tempdir().unwrap();

    // Uninterrupted run.
    let full = ptq::quantize(
        &mut unet,
        &cfg,
        &set,
        &opts(&tmp.path().join("a")),
        &mut Silent,
    )
    .unwrap();
    let eps_full = eps_at_step(&unet, &set);
    eprintln!("stages (s): {:?}", full.stage_seconds);

    // Split layers: the decoder shortcuts have two weight parts and two activation quantizers.
    let splits = unet.split_points();
    assert!(!splits.is_empty());
    for (path, s) in &splits {
        let l = &full.layers[path];
        let w = l.weight.as_ref().unwrap();
        assert_eq!(w.parts.len(), 2, "{path}");
        assert_eq!(w.parts[1].start, *s);
        assert_eq!(l.activation.as_ref().unwrap().parts.len(), 2, "{path}");
    }
    // Float layers of the recipe stay float.
    assert!(!full.layers.contains_key("conv_in"));
    assert!(!full.layers.contains_key("time_embedding.linear_1"));

    // Reconstruction lowers the error of the units overall and of most units.
    let (mut near, mut learned, mut better) = (0.0, 0.0, 0);
    for u in &full.units {
        near += u.loss_nearest;
        learned += u.loss_learned;
        better += usize::from(u.loss_learned < u.loss_nearest);
    }
    eprintln!(
        "units: {} ; summed loss nearest {near:.4e} -> learned {learned:.4e}; {better} better",
        full.units.len()
    );
    assert!(learned < near, "learned {learned} vs nearest {near}");
    assert!(
        better * 4 >= full.units.len() * 3,
        "only {better} of {} units improved",
        full.units.len()
    );

    // Interrupted run: the complete run's checkpoints minus the last units, resumed.
    let a = tmp.path().join("a");
    let mut removed = 0;
    for u in full.units.iter().rev().take(3) {
        for ext in ["json", "safetensors"] {
            std::fs::remove_file(a.join("units").join(format!("{}.{ext}", u.path))).unwrap();
        }
        removed += 1;
    }
    let (_, mut unet_c, _) = setup();
    let resumed = ptq::quantize(&mut unet_c, &cfg, &set, &opts(&a), &mut Silent).unwrap();
    assert_eq!(
        resumed.units.iter().filter(|u| u.resumed).count(),
        full.units.len() - removed
    );
    assert_eq!(codes(&resumed), codes(&full), "resumed codes differ");
    assert_eq!(
        dmq_model::compare::max_rel_err(&eps_at_step(&unet_c, &set), &eps_full).unwrap(),
        0.0
    );
    // A checkpoint of another run is refused.
    let mut other = opts(&a);
    other.run_fingerprint = "other".into();
    let (_, mut unet_d, _) = setup();
    let err = ptq::quantize(&mut unet_d, &cfg, &set, &other, &mut Silent)
        .err()
        .expect("foreign checkpoint accepted");
    assert!(err.to_string().contains("another run"), "{err}");

    // Artifact round trip: same codes, bit-identical outputs.
    let mut entries = Vec::new();
    for l in unet.layers_mut() {
        let path = l.path().to_string();
        let shape = l.layer_ref().weight.dims().to_vec();
        entries.push(artifact::layer_entry(&path, &shape, full.layers.get(&path)).unwrap());
    }
    let manifest = Manifest {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        dmq_version: "test".into(),
        base_model: pipeline.name.clone(),
        model_class: None,
        recipe: serde_json::from_str(&cfg.to_json()).unwrap(),
        calibration: serde_json::json!({ "steps": 10 }),
        layers: entries,
        extra: serde_json::Value::Null,
        ptqd: None,
    };
    let q = tmp.path().join("q");
    let float = pipeline
        .open_unet_weights(&Device::Cpu, DType::F32)
        .unwrap();
    artifact::save(
        &q,
        &manifest,
        &full.layers,
        &pipeline.unet_config.read_to_string().unwrap(),
        None,
        &float,
        false,
    )
    .unwrap();
    assert!(artifact::is_artifact(&q));
    let (_, loaded) = artifact::load(&q, &Device::Cpu, DType::F32).unwrap();
    let again = artifact::read_layers(&q, &artifact::read_manifest(&q).unwrap()).unwrap();
    let reread = PtqOutcome {
        layers: again,
        units: Vec::new(),
        weight_rel_error: BTreeMap::new(),
        stage_seconds: Vec::new(),
        float_replaced: BTreeMap::new(),
        scale_folded: BTreeMap::new(),
    };
    assert_eq!(codes(&reread), codes(&full));
    let eps_loaded = eps_at_step(&loaded, &set);
    let diff = (&eps_loaded - &eps_full)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "reloaded model differs from the in-memory one");
    // Writing over it needs --overwrite; a corrupt artifact is a clear error.
    assert!(artifact::save(&q, &manifest, &full.layers, "{}", None, &float, false).is_err());
    std::fs::write(q.join("quant.safetensors"), b"not a safetensors file").unwrap();
    let err = artifact::load(&q, &Device::Cpu, DType::F32).err().unwrap();
    assert!(err.to_string().contains("quant.safetensors"), "{err}");
}
