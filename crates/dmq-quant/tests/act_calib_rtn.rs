//! Round-to-nearest W8A8 / W4A4 with per-step activation calibration on the embedded model.

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use dmq_model::{Ctx, Timesteps, UNet2DModel};
use dmq_quant::act_calib::{calibrate_activations, LayerQuantPlan};
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::uniform::UniformParams;

fn keep_float(path: &str) -> bool {
    path == "conv_in"
        || path == "conv_out"
        || path.starts_with("time_embedding.")
        || path.ends_with(".time_emb_proj")
}

fn plans(unet: &mut UNet2DModel, wbits: u8, abits: u8) -> BTreeMap<String, LayerQuantPlan> {
    unet.layers_mut()
        .iter()
        .filter(|l| !keep_float(l.path()))
        .map(|l| {
            let weight = l.layer_ref().weight.clone();
            let w = UniformParams::init_minmax(&weight, wbits, Some(0)).unwrap();
            (
                l.path().to_string(),
                LayerQuantPlan::rtn(&weight, Some(&w), Some(abits)).unwrap(),
            )
        })
        .collect()
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    dmq_model::compare::max_rel_err(a, b).unwrap()
}

#[test]
fn per_step_activation_calibration_quantizes_the_model() {
    let (_, mut unet, sched) = common::embedded_ddim(10);
    let spec = CalibSpec {
        steps_sampled: 5,
        samples_per_step: 8,
        seed: 0,
        batch: 8,
    };
    let set = calib::generate(&unet, &*sched, &spec, || {}).unwrap();

    // A held-out input (noise of another seed) at calibrated step 4.
    let held = dmq_sched::NoiseSource::new(99)
        .initial(&[0, 1], &[3, 32, 32], &Device::Cpu)
        .unwrap();
    let t4 = sched.timesteps()[4] as f64;
    let fp = unet
        .forward(&held, Timesteps::Shared(t4), None, &Ctx::at_step(4))
        .unwrap();

    let p8 = plans(&mut unet, 8, 8);
    let mut forwards = 0;
    let found =
        calibrate_activations(&mut unet, &set, &p8, 4, 0.95, None, || forwards += 1).unwrap();
    assert_eq!(forwards, 5 * 2, "5 calibrated steps x 2 batches of 4");
    assert_eq!(found.len(), p8.len());
    for act in found.values() {
        assert_eq!(act.parts.len(), 1, "no split layers in this plan");
        assert_eq!(act.parts[0].steps, vec![0, 2, 4, 6, 8]);
    }
    // Activation ranges depend on the time step (why there is one set per step).
    let differs = found
        .values()
        .any(|a| a.parts[0].params[0].scale != a.parts[0].params[4].scale);
    assert!(
        differs,
        "no layer's range changed between the first and last step"
    );
    let w8a8 = unet
        .forward(&held, Timesteps::Shared(t4), None, &Ctx::at_step(4))
        .unwrap();
    let e8 = rel(&w8a8, &fp);

    let p4 = plans(&mut unet, 4, 4);
    calibrate_activations(&mut unet, &set, &p4, 4, 0.95, None, || {}).unwrap();
    let w4a4 = unet
        .forward(&held, Timesteps::Shared(t4), None, &Ctx::at_step(4))
        .unwrap();
    let e4 = rel(&w4a4, &fp);
    eprintln!("noise-prediction rel. error at step 4: W8A8 {e8:.4}, W4A4 {e4:.4}");
    assert!(e8 > 0.0 && e8 < 0.1, "W8A8 error {e8}");
    assert!(
        e4 > 3.0 * e8,
        "W4A4 ({e4}) must be clearly worse than W8A8 ({e8})"
    );
}
