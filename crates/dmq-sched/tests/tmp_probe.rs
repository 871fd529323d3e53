use candle_core::{DType, Device, Tensor};
use dmq_sched::*;
use std::path::PathBuf;
fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}
fn rel(a: &[f64], b: &[f64]) -> (f64, usize) {
    let mut w = 0.0;
    let mut wi = 0;
    for i in 0..a.len() {
        let d = (a[i] - b[i]).abs();
        if d > w {
            w = d;
            wi = i;
        }
    }
    (w / b.iter().map(|y| y.abs()).fold(0.0, f64::max), wi)
}
#[test]
fn probe() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/ddpm-cifar10-small");
    let g = candle_core::safetensors::load(dir.join("golden/ddim20.safetensors"), &Device::Cpu)
        .unwrap();
    let s = candle_core::safetensors::load(dir.join("golden/schedule.safetensors"), &Device::Cpu)
        .unwrap();
    let acp32 = s["alphas_cumprod"].to_vec1::<f32>().unwrap();
    let cfg = ScheduleConfig::from_file(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let acp = cfg.alphas_cumprod();
    let ddim = Ddim::new(&cfg, 20, 0.0).unwrap();
    for i in 0..20 {
        let t = ddim.timesteps()[i];
        let x = g["xs"].get(i).unwrap();
        let e = g["eps"].get(i).unwrap();
        let want = f64s(&g["pred_x0"].get(i).unwrap());
        let ours = f64s(&ddim.step(i, &e, &x, None).unwrap().pred_original_sample);
        // f64 exact from the same inputs
        let (xv, ev) = (f64s(&x), f64s(&e));
        let a = acp[t];
        let exact: Vec<f64> = xv
            .iter()
            .zip(&ev)
            .map(|(x, e)| ((x - (1.0 - a).sqrt() * e) / a.sqrt()).clamp(-1.0, 1.0))
            .collect();
        // torch-like f32
        let a32 = acp32[t];
        let sb = (1.0f32 - a32).sqrt();
        let sa = a32.sqrt();
        let torchlike: Vec<f64> = xv
            .iter()
            .zip(&ev)
            .map(|(x, e)| (((*x as f32) - sb * (*e as f32)) / sa).clamp(-1.0, 1.0) as f64)
            .collect();
        println!(
            "i={i} t={t} acp rel diff {:e} ours {:?} exact {:?} torchlike {:?}",
            (a - a32 as f64) / a,
            rel(&ours, &want),
            rel(&exact, &want),
            rel(&torchlike, &want)
        );
    }
}
