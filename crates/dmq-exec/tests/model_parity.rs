//! Integer execution against the simulated one on the embedded model: an artifact is written with
//! round-to-nearest W8A8 and W4A8 weights and min/max activation ranges (split decoder shortcuts
//! included), loaded both ways, and compared layer by layer on the same inputs (float tolerance:
//! both see the same codes, only the float summation differs) and as a whole forward.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dmq_exec::Isa;
use dmq_model::layers::LayerMut;
use dmq_model::{Ctx, ModelSource, Timesteps, UNet2DModel};
use dmq_quant::artifact::{self, Manifest, QuantLayer};
use dmq_quant::config::{Granularity, WeightRange};
use dmq_quant::qweight::{init_part_params, QuantWeight};
use dmq_quant::sim::{input_channel_axis, LayerActivation, PerStepActivation};
use dmq_quant::uniform::UniformParams;
use serde_json::json;

fn keep_float(path: &str) -> bool {
    path == "conv_in"
        || path == "conv_out"
        || path.starts_with("time_embedding.")
        || path.ends_with(".time_emb_proj")
}

fn input() -> Tensor {
    dmq_sched::NoiseSource::new(0)
        .initial(&[0, 1, 2], &[3, 32, 32], &Device::Cpu)
        .unwrap()
}

/// The float inputs of every layer for one forward of the FP model.
fn captured_inputs(unet: &UNet2DModel, paths: &[String]) -> BTreeMap<String, Tensor> {
    let ctx = Ctx::capturing_many(paths, None, Some(0));
    unet.forward(&input(), Timesteps::Shared(500.0), None, &ctx)
        .unwrap();
    ctx.take_all_captured()
        .into_iter()
        .map(|(k, v)| (k, v[0].clone()))
        .collect()
}

/// What DMQ adds to an artifact, on every quantized layer: LES scales `γ` and, on the shortcut
/// convolutions, PTS shifts that differ between two step sets (so that one layer is packed for
/// two shift patterns). Parity does not need them to be learned, only to be used alike.
#[derive(Clone, Copy, PartialEq)]
enum Extras {
    None,
    LesPts,
}

/// A seeded pseudo-random byte for channel `c` of set `set` of `path` (no RNG crate needed).
fn hash_byte(path: &str, set: usize, c: usize) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path
        .bytes()
        .chain([set as u8, (c & 255) as u8, (c >> 8) as u8])
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (h >> 32) as u8
}

/// Writes a round-to-nearest artifact of the embedded model with `wbits`-bit weights.
fn write_artifact(dir: &Path, wbits: u8) {
    write_artifact_with(dir, wbits, Extras::None)
}

fn write_artifact_with(dir: &Path, wbits: u8, extras: Extras) {
    let pipeline = ModelSource::Embedded.resolve().unwrap();
    let mut unet = pipeline.load_unet(&Device::Cpu, DType::F32).unwrap();
    let splits = unet.split_points();
    assert!(
        !splits.is_empty(),
        "the embedded model has split decoder layers"
    );
    let paths: Vec<String> = unet
        .layer_paths()
        .into_iter()
        .filter(|p| !keep_float(p))
        .collect();
    let inputs = captured_inputs(&unet, &paths);
    let mut layers = BTreeMap::new();
    let mut entries = Vec::new();
    for l in unet.layers_mut() {
        let path = l.path().to_string();
        let r = l.layer_ref();
        if keep_float(&path) {
            entries.push(artifact::layer_entry(&path, r.weight.dims(), None).unwrap());
            continue;
        }
        let split = splits.get(&path).copied();
        let parts = init_part_params(
            r.weight,
            wbits,
            WeightRange::Minmax,
            Granularity::PerChannel,
            split,
        )
        .unwrap();
        let weight = QuantWeight::round_to_nearest(r.weight, &parts).unwrap();
        let x = &inputs[&path];
        let axis = input_channel_axis(r.kind, x);
        let c = x.dims()[axis];
        let pieces = match split {
            None => vec![x.clone()],
            Some(s) => vec![
                x.narrow(axis, 0, s).unwrap(),
                x.narrow(axis, s, c - s).unwrap(),
            ],
        };
        let pts = extras == Extras::LesPts && path.ends_with(".conv_shortcut");
        let acts = pieces
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                let params = UniformParams::init_minmax(p, 8, None).unwrap();
                if !pts {
                    return PerStepActivation::shared(params);
                }
                let mut a = PerStepActivation::new(vec![0, 50], vec![params.clone(), params]);
                let len = p.dims()[axis];
                a.shifts = Some(
                    (0..2)
                        .map(|set| {
                            (0..len)
                                .map(|c| hash_byte(&path, set * 2 + pi, c) % 4)
                                .collect()
                        })
                        .collect(),
                );
                a
            })
            .collect();
        let gamma = (extras == Extras::LesPts).then(|| {
            let g: Vec<f32> = (0..c)
                .map(|i| 0.5 + f32::from(hash_byte(&path, 9, i)) / 170.0)
                .collect();
            Tensor::from_vec(g, c, &Device::Cpu).unwrap()
        });
        let q = QuantLayer {
            weight: Some(weight),
            activation: Some(LayerActivation::new(split, acts)),
            equivalent_scale: gamma,
        };
        entries.push(artifact::layer_entry(&path, r.weight.dims(), Some(&q)).unwrap());
        layers.insert(path, q);
    }
    let manifest = Manifest {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        dmq_version: "test".into(),
        base_model: pipeline.name.clone(),
        model_class: None,
        recipe: json!({}),
        calibration: json!({}),
        layers: entries,
        extra: json!({}),
        ptqd: None,
    };
    let float = pipeline
        .open_unet_weights(&Device::Cpu, DType::F32)
        .unwrap();
    let sched = pipeline.scheduler_config_text().ok().map(|(_, t)| t);
    artifact::save(
        dir,
        &manifest,
        &layers,
        &pipeline.unet_config.read_to_string().unwrap(),
        sched.as_deref(),
        &float,
        false,
    )
    .unwrap();
}

fn layer_forward(l: &LayerMut, x: &Tensor, ctx: &Ctx) -> Tensor {
    match l {
        LayerMut::Conv(c) => c.forward(x, ctx).unwrap(),
        LayerMut::Linear(l) => l.forward(x, ctx).unwrap(),
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `‖a − b‖ / ‖b‖`.
fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let d: f32 = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let n: f32 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    (d / n).sqrt()
}

fn check_bits(wbits: u8) {
    check(wbits, Extras::None)
}

fn check(wbits: u8, extras: Extras) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    write_artifact_with(&dir, wbits, extras);
    let (_, mut sim) = artifact::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let isa = Isa::detect().unwrap();
    let (_, mut int, info) = dmq_exec::load_int(&dir, isa).unwrap();
    assert_eq!(info.int_layers.len(), 113 - 26, "{:?}", info.sim_layers);
    assert!(info.sim_layers.is_empty());

    // Weights: packed bytes against f32 bytes of the same layers.
    let ratio = (4 * info.replaced_float_elements) as f64 / info.packed_bytes as f64;
    eprintln!("W{wbits}: quantized layers' weights {ratio:.2}x smaller than f32 ({isa})");
    assert!(ratio > if wbits == 8 { 3.0 } else { 5.0 }, "{ratio}");
    assert!(info.resident_weight_bytes(int.num_params) < 4 * int.num_params);

    // Layer by layer on the FP model's inputs: the same codes, so float tolerance.
    let fp = ModelSource::Embedded
        .resolve()
        .unwrap()
        .load_unet(&Device::Cpu, DType::F32)
        .unwrap();
    let paths: Vec<String> = info.int_layers.clone();
    let inputs = captured_inputs(&fp, &paths);
    let ctx = Ctx::at_step(0);
    let mut worst = 0f32;
    let mut shifted = 0;
    for (ls, li) in sim.layers_mut().iter().zip(int.layers_mut().iter()) {
        assert_eq!(ls.path(), li.path());
        let Some(x) = inputs.get(ls.path()) else {
            continue;
        };
        // Both PTS step sets (sampling steps 0 and 50: different shift patterns).
        for step in [0, 50] {
            let ctx = Ctx::at_step(step);
            let ys = layer_forward(ls, x, &ctx);
            let yi = layer_forward(li, x, &ctx);
            assert_eq!(ys.dims(), yi.dims(), "{}", ls.path());
            let err = max_abs(&(&ys - &yi).unwrap()) / max_abs(&ys).max(1e-6);
            assert!(
                err < 1e-4,
                "{} at step {step}: relative error {err}",
                ls.path()
            );
            worst = worst.max(err);
        }
        if extras == Extras::LesPts {
            assert!(ls.layer_ref().input_scale.is_some(), "{}: no γ", ls.path());
            assert!(li.layer_ref().input_scale.is_some(), "{}: no γ", li.path());
            shifted += usize::from(ls.path().ends_with(".conv_shortcut"));
        }
    }
    if extras == Extras::LesPts {
        assert!(shifted > 0, "no PTS layer was compared");
    }
    eprintln!("W{wbits}A8: worst layer relative error {worst:.2e}");

    // The whole forward. Codes flip where two float computations of a layer input differ in the
    // last bits and straddle a rounding boundary, and a quantized network amplifies flips: the
    // simulation itself moves by ~7e-3 (relative L2) when its input is scaled by 1 + 1e-6,
    // where the float model moves by ~7e-7. The integer path must stay within twice that
    // floor of the simulation, and here independent of the batch (the integer layers have no float
    // sums; candle's float GEMMs around them can differ in the last bit between batch sizes).
    let x = input();
    let t = Timesteps::Shared(500.0);
    let ys = sim.forward(&x, t, None, &ctx).unwrap();
    let yi = int.forward(&x, t, None, &ctx).unwrap();
    let xp = (&x * (1.0 + 1e-6)).unwrap();
    let floor = rel_l2(&sim.forward(&xp, t, None, &ctx).unwrap(), &ys);
    let int_sim = rel_l2(&yi, &ys);
    let sim_fp = rel_l2(&ys, &fp.forward(&x, t, None, &ctx).unwrap());
    eprintln!(
        "W{wbits}A8 whole forward (relative L2): int vs sim {int_sim:.2e}, sim vs sim at input x(1+1e-6) {floor:.2e}, sim vs FP {sim_fp:.2e}"
    );
    if extras == Extras::None {
        assert!(
            int_sim < 2.0 * floor.max(1e-3),
            "int vs sim {int_sim}, flip floor {floor}"
        );
    } else {
        // Arbitrary γ put many inputs outside their calibrated ranges (the model is far from FP)
        // and make it very sensitive: a 1.8e-7 difference in a float layer's input moves the
        // output by ~1e-2. One perturbation is a poor estimate of that flip floor; the
        // layer-by-layer check above is the exact one. The whole forward must still be much
        // closer to the simulation than the simulation is to FP.
        assert!(
            int_sim < 0.1 * sim_fp,
            "int vs sim {int_sim}, sim vs FP {sim_fp}"
        );
    }
    let first = |y: &Tensor| -> Vec<f32> {
        y.narrow(0, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let yi1 = int
        .forward(&x.narrow(0, 0, 1).unwrap(), t, None, &ctx)
        .unwrap();
    if extras != Extras::None {
        // candle's float GEMM of the time embedding differs in the last bit between batch 1
        // and 3 (1.8e-7), which this badly calibrated model amplifies; the integer layers
        // themselves are batch-independent (checked on the plain artifact).
        return;
    }
    assert_eq!(
        first(&yi1),
        first(&yi),
        "integer execution depends on the batch"
    );
}

#[test]
fn w8a8_integer_layers_match_the_simulation() {
    check_bits(8);
}

#[test]
fn w4a8_integer_layers_match_the_simulation() {
    check_bits(4);
}

/// DMQ's artifact content: LES scales on every layer and PTS shifts (two patterns) on the
/// shortcut convolutions, W4A8.
#[test]
fn les_and_pts_layers_match_the_simulation() {
    check(4, Extras::LesPts);
}

#[test]
fn artifact_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    write_artifact(&dir, 8);
    std::fs::write(dir.join("manifest.json"), "{").unwrap();
    let e = dmq_exec::load_int(&dir, Isa::Scalar)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
    let e = dmq_exec::load_int(&tmp.path().join("missing"), Isa::Scalar)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}
