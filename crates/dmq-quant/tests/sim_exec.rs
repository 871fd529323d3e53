//! Fake-quantized execution installed on the real model.

use candle_core::{DType, Device, Tensor};
use dmq_model::{Ctx, ModelSource, Timesteps};
use dmq_quant::sim::{PerStepActivation, SimQuantExec};
use dmq_quant::uniform::UniformParams;

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn w8_weights_stay_close_and_per_step_activation_sets_switch() {
    let mut unet = ModelSource::Embedded
        .resolve()
        .unwrap()
        .load_unet(&Device::Cpu, DType::F32)
        .unwrap();
    let x = dmq_sched::NoiseSource::new(1)
        .initial(&[0], &[3, 32, 32], &Device::Cpu)
        .unwrap();
    let float = unet
        .forward(&x, Timesteps::Shared(500.0), None, &Ctx::at_step(3))
        .unwrap();

    // 8-bit per-channel weights everywhere except the first and last conv: output stays close.
    for mut l in unet.layers_mut() {
        if l.path() == "conv_in" || l.path() == "conv_out" {
            continue;
        }
        let w = l.layer_ref().weight.clone();
        let p = UniformParams::init_minmax(&w, 8, Some(0)).unwrap();
        l.set_exec(Some(SimQuantExec::new(&w, Some(&p), None).unwrap()));
    }
    let w8 = unet
        .forward(&x, Timesteps::Shared(500.0), None, &Ctx::at_step(3))
        .unwrap();
    let rel = max_abs(&(&w8 - &float).unwrap()) / max_abs(&float);
    assert!(rel > 0.0 && rel < 0.05, "W8 relative error {rel}");

    // conv_out's input quantized with a coarse set at steps 0..4 and a fine one from step 5.
    let coarse = UniformParams::from_range(-4.0, 4.0, 2).unwrap();
    let fine = UniformParams::from_range(-4.0, 4.0, 8).unwrap();
    let act = PerStepActivation::new(vec![0, 5], vec![coarse, fine]);
    for mut l in unet.layers_mut() {
        if l.path() == "conv_out" {
            let w = l.layer_ref().weight.clone();
            l.set_exec(Some(
                SimQuantExec::new(&w, None, Some(act.clone())).unwrap(),
            ));
        }
    }
    let at = |step| {
        unet.forward(&x, Timesteps::Shared(500.0), None, &Ctx::at_step(step))
            .unwrap()
    };
    let (s1, s2, s6, s9) = (at(1), at(2), at(6), at(9));
    assert_eq!(
        max_abs(&(&s1 - &s2).unwrap()),
        0.0,
        "steps 1 and 2 share the coarse set"
    );
    assert_eq!(
        max_abs(&(&s6 - &s9).unwrap()),
        0.0,
        "steps 6 and 9 share the fine set"
    );
    let err_coarse = max_abs(&(&s1 - &w8).unwrap());
    let err_fine = max_abs(&(&s6 - &w8).unwrap());
    assert!(
        err_coarse > 10.0 * err_fine,
        "2-bit input must be much worse: {err_coarse} vs {err_fine}"
    );
    // Without a step index, several parameter sets are ambiguous: an error naming the layer.
    let e = unet
        .forward(&x, Timesteps::Shared(500.0), None, &Ctx::inference())
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv_out") && e.contains("sampling-step"), "{e}");
}
