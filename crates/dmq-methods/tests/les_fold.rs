//! LES on a real model: equivalent scaling alone leaves the model's output unchanged, and
//! folding an attention output projection's scale into the value projection preserves the
//! quantized model's output to fp32 tolerance.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use dmq_methods::dmq::{apply_scale, fold::fold_scales};
use dmq_model::{Timesteps, UNet2DModel};
use dmq_quant::artifact::QuantLayer;
use dmq_quant::config::{Granularity, WeightRange};
use dmq_quant::ptq::PtqOutcome;
use dmq_quant::qweight::{init_part_params, QuantWeight};
use dmq_quant::sim::SimQuantExec;

/// Seeded normal input: candle's CPU `randn` cannot be seeded.
fn randn_input(seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|_| Normal::new(0f32, 1.0).unwrap().sample(&mut rng))
        .collect();
    Tensor::from_vec(v, (2, 3, 32, 32), &Device::Cpu).unwrap()
}

fn model() -> UNet2DModel {
    let p = dmq_model::ModelSource::Embedded.resolve().unwrap();
    p.load_unet(&Device::Cpu, DType::F32).unwrap()
}

fn eps(m: &UNet2DModel, x: &Tensor) -> Tensor {
    m.forward(
        x,
        Timesteps::Shared(500.0),
        None,
        &dmq_model::ctx::Ctx::at_step(0),
    )
    .unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap()
}

/// A positive γ per input channel in [0.5, 2), deterministic.
fn gamma(c: usize, salt: usize) -> Tensor {
    let v: Vec<f32> = (0..c)
        .map(|i| 0.5 + 1.5 * (((i * 7919 + salt * 104_729) % 1000) as f32 / 1000.0))
        .collect();
    Tensor::from_vec(v, c, &Device::Cpu).unwrap()
}

#[test]
fn equivalent_scaling_alone_keeps_the_output() {
    let mut m = model();
    let x = randn_input(11);
    let before = eps(&m, &x);
    let paths = m.layer_paths();
    for (i, p) in paths.iter().enumerate() {
        let c = m
            .layers_mut()
            .into_iter()
            .find(|l| l.path() == p)
            .unwrap()
            .layer_ref()
            .weight
            .dims()[1];
        apply_scale(&mut m, p, &gamma(c, i)).unwrap();
    }
    let after = eps(&m, &x);
    let r = rel_diff(&after, &before);
    assert!(r < 1e-4, "relative difference {r}");
    // And the scales really are installed (a broken setter would also pass the check above).
    let scaled = m
        .layers_mut()
        .into_iter()
        .filter(|l| l.layer_ref().input_scale.is_some())
        .count();
    assert_eq!(scaled, paths.len());
}

/// RTN 8-bit per-channel codes of a layer's current weight, installed as its simulated exec.
fn quantize_layer(m: &mut UNet2DModel, path: &str) -> QuantWeight {
    let mut layer = m
        .layers_mut()
        .into_iter()
        .find(|l| l.path() == path)
        .unwrap();
    let w = layer.layer_ref().weight.clone();
    let parts =
        init_part_params(&w, 8, WeightRange::Minmax, Granularity::PerChannel, None).unwrap();
    let q = QuantWeight::round_to_nearest(&w, &parts).unwrap();
    let deq = q.dequantize().unwrap();
    layer.set_exec(Some(
        SimQuantExec::with_weight(Some(&deq), &w, None).unwrap(),
    ));
    q
}

#[test]
fn folding_into_the_value_projection_preserves_the_output() {
    let mut m = model();
    let prefix = m
        .layer_paths()
        .into_iter()
        .find_map(|p| p.strip_suffix(".to_out.0").map(str::to_string))
        .expect("the embedded model has attention");
    let (v, o) = (format!("{prefix}.to_v"), format!("{prefix}.to_out.0"));
    let c = 64;
    let g = gamma(c, 3);
    apply_scale(&mut m, &o, &g).unwrap();
    let qv = quantize_layer(&mut m, &v);
    let qo = quantize_layer(&mut m, &o);
    let x = randn_input(12);
    let before = eps(&m, &x);
    let mut layers = BTreeMap::new();
    layers.insert(
        v.clone(),
        QuantLayer {
            weight: Some(qv.clone()),
            activation: None,
            equivalent_scale: None,
        },
    );
    layers.insert(
        o.clone(),
        QuantLayer {
            weight: Some(qo),
            activation: None,
            equivalent_scale: Some(g.clone()),
        },
    );
    let mut outcome = PtqOutcome {
        layers,
        units: Vec::new(),
        weight_rel_error: BTreeMap::new(),
        stage_seconds: Vec::new(),
        float_replaced: BTreeMap::new(),
        scale_folded: BTreeMap::new(),
    };
    let folded = fold_scales(&mut m, &mut outcome).unwrap();
    assert_eq!(folded.get(&o), Some(&v));
    assert!(outcome.layers[&o].equivalent_scale.is_none());
    assert!(outcome.float_replaced.contains_key(&format!("{v}.bias")));
    // The value projection's codes are unchanged, its steps divided by γ.
    let new_v = outcome.layers[&v].weight.as_ref().unwrap();
    assert_eq!(
        new_v.parts[0].codes.to_vec2::<u8>().unwrap(),
        qv.parts[0].codes.to_vec2::<u8>().unwrap()
    );
    let gv: Vec<f32> = g.to_vec1().unwrap();
    for (k, (a, b)) in new_v.parts[0]
        .params
        .scale
        .iter()
        .zip(&qv.parts[0].params.scale)
        .enumerate()
    {
        assert!((a * gv[k] - b).abs() <= 1e-6 * b.abs(), "channel {k}");
    }
    let after = eps(&m, &x);
    let r = rel_diff(&after, &before);
    assert!(r < 1e-4, "relative difference {r}");
    // The output projection no longer scales its input.
    let lo = m.layers_mut().into_iter().find(|l| l.path() == o).unwrap();
    assert!(lo.layer_ref().input_scale.is_none());
}
