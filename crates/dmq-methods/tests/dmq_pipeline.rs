//! DMQ end to end on the embedded model with a tiny budget: LES scales every quantized layer and
//! lowers its LES loss overall, attention output projections fold into the value projections,
//! PTS gives the ResBlock shortcuts shifts, a resumed run restores every layer's scale from its
//! checkpoint, and the artifact reloads to bit-identical outputs.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use dmq_methods::dmq::DmqHooks;
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_quant::artifact::{self, Manifest};
use dmq_quant::calib::CalibSet;
use dmq_quant::config::QuantConfig;
use dmq_quant::ptq::{self, PtqOptions, Silent};

fn recipe() -> QuantConfig {
    let mut c = QuantConfig::builtin("dmq-w4a8").unwrap();
    c.calibration.steps = 10;
    c.calibration.steps_sampled = 3;
    c.calibration.samples_per_step = 4;
    c.calibration.batch = 4;
    c.reconstruction.iters = 5;
    c.reconstruction.batch = 4;
    c.activations.ema_batch = 4;
    let les = c.les.as_mut().unwrap();
    les.iters = 10;
    les.batch = 4;
    les.lr = 0.01;
    c
}

fn setup() -> (dmq_model::Pipeline, UNet2DModel, CalibSet) {
    common::embedded_calib(10, 3, 4)
}

fn opts(dir: &std::path::Path) -> PtqOptions {
    PtqOptions {
        checkpoint_dir: Some(dir.to_path_buf()),
        capture_batch: 16,
        capture_budget_bytes: 64 << 20,
        run_fingerprint: "dmq-test".into(),
    }
}

fn eps(unet: &UNet2DModel, set: &CalibSet) -> Tensor {
    let rows = set.rows_of_step(set.step_index[set.len() - 1] as usize);
    let x = set.x.narrow(0, rows[0], 2).unwrap();
    let t = set.timesteps[rows[0]] as f64;
    let step = set.step_index[rows[0]] as usize;
    unet.forward(&x, Timesteps::Shared(t), None, &Ctx::at_step(step))
        .unwrap()
}

#[test]
fn dmq_scales_folds_votes_resumes_and_reloads_exactly() {
    let (pipeline, mut unet, set) = setup();
    let cfg = recipe();
    let tmp = tempfile::tempdir().unwrap();
    let mut hooks = DmqHooks::default();
    let out = ptq::quantize_with(
        &mut unet,
        &cfg,
        &set,
        &opts(&tmp.path().join("a")),
        &mut hooks,
        &mut Silent,
    )
    .unwrap();
    let eps_mem = eps(&unet, &set);

    // LES ran on every weight-quantized layer and lowered the summed loss.
    let wq = out.layers.values().filter(|l| l.weight.is_some()).count();
    assert_eq!(hooks.les.len(), wq);
    let start: f64 = hooks.les.iter().map(|r| r.loss_start).sum();
    let learned: f64 = hooks.les.iter().map(|r| r.loss_learned).sum();
    eprintln!("LES summed loss {start:.4e} -> {learned:.4e}");
    assert!(learned < start, "LES {start} -> {learned}");
    assert!(hooks
        .les
        .iter()
        .any(|r| r.gamma_min < 0.999 || r.gamma_max > 1.001));

    // Output projections folded into value projections; other layers keep their scale.
    assert!(!hooks.folded.is_empty());
    for (o, v) in &hooks.folded {
        assert!(o.ends_with(".to_out.0") && v.ends_with(".to_v"));
        assert!(out.layers[o].equivalent_scale.is_none());
        assert!(out.float_replaced.contains_key(&format!("{v}.bias")));
    }
    let scaled = out
        .layers
        .values()
        .filter(|l| l.equivalent_scale.is_some())
        .count();
    assert_eq!(scaled + hooks.folded.len(), wq);

    // PTS: every quantized shortcut input has shifts for every calibrated step, some non-zero.
    let mut shortcut_parts = 0;
    let mut nonzero = 0;
    for (p, l) in &out.layers {
        let Some(a) = &l.activation else { continue };
        if p.ends_with("conv_shortcut") {
            for part in &a.parts {
                let s = part.shifts.as_ref().expect("shortcut has shifts");
                assert_eq!(s.len(), part.steps.len());
                nonzero += s.iter().flatten().filter(|&&v| v > 0).count();
                shortcut_parts += 1;
            }
        } else {
            assert!(a.parts.iter().all(|p| p.shifts.is_none()), "{p} has shifts");
        }
    }
    assert!(shortcut_parts > 0);
    eprintln!("PTS: {nonzero} non-zero channel shifts over {shortcut_parts} inputs");

    // Resume: the LES stage restores every scale from its checkpoint.
    let (_, mut unet_b, _) = setup();
    let mut hooks_b = DmqHooks::default();
    let mut cfg_b = cfg.clone();
    cfg_b.reconstruction.iters = 5;
    let _ = ptq::quantize_with(
        &mut unet_b,
        &cfg_b,
        &set,
        &opts(&tmp.path().join("a")),
        &mut hooks_b,
        &mut Silent,
    )
    .unwrap();
    assert!(hooks_b.les.iter().all(|r| r.resumed));
    assert_eq!(
        dmq_model::compare::max_rel_err(&eps(&unet_b, &set), &eps_mem).unwrap(),
        0.0
    );

    // Artifact round trip: bit-identical outputs.
    let mut entries = Vec::new();
    for l in unet.layers_mut() {
        let path = l.path().to_string();
        let shape = l.layer_ref().weight.dims().to_vec();
        let mut e = artifact::layer_entry(&path, &shape, out.layers.get(&path)).unwrap();
        e.scale_folded_into = out.scale_folded.get(&path).cloned();
        entries.push(e);
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
    let mut float = pipeline
        .open_unet_weights(&Device::Cpu, DType::F32)
        .unwrap();
    for (n, t) in &out.float_replaced {
        float.insert(n, t.clone()).unwrap();
    }
    let q = tmp.path().join("q");
    artifact::save(
        &q,
        &manifest,
        &out.layers,
        &pipeline.unet_config.read_to_string().unwrap(),
        None,
        &float,
        false,
    )
    .unwrap();
    let (_, loaded) = artifact::load(&q, &Device::Cpu, DType::F32).unwrap();
    let again = artifact::read_layers(&q, &artifact::read_manifest(&q).unwrap()).unwrap();
    let shifts = |m: &BTreeMap<String, artifact::QuantLayer>| -> Vec<Option<Vec<Vec<u8>>>> {
        m.values()
            .filter_map(|l| l.activation.as_ref())
            .flat_map(|a| a.parts.iter().map(|p| p.shifts.clone()))
            .collect()
    };
    assert_eq!(shifts(&again), shifts(&out.layers));
    assert_eq!(
        dmq_model::compare::max_rel_err(&eps(&loaded, &set), &eps_mem).unwrap(),
        0.0
    );
}
