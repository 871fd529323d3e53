//! Calibration data from the model's own trajectories: what is kept, and the cache.

mod common;

use candle_core::{Device, IndexOp};
use dmq_model::{Ctx, Timesteps};
use dmq_quant::calib::{self, CalibSpec};
use dmq_sched::{NoiseSource, SchedError};

#[test]
fn calibration_set_holds_the_trajectories_at_the_selected_steps_and_caches() {
    let (_, unet, sched) = common::embedded_ddim(10);
    let spec = CalibSpec {
        steps_sampled: 5,
        samples_per_step: 3,
        seed: 4,
        batch: 2,
    };
    let mut calls = 0;
    let set = calib::generate(&unet, &*sched, &spec, || calls += 1).unwrap();
    assert_eq!(
        calls,
        2 * 10,
        "two batches (2 + 1 trajectories) of 10 steps"
    );
    assert_eq!(set.len(), 15);
    assert_eq!(set.x.dims(), &[15, 3, 32, 32]);
    for (k, step) in [0usize, 2, 4, 6, 8].iter().enumerate() {
        let rows = set.rows_of_step(*step);
        assert_eq!(rows, (3 * k..3 * k + 3).collect::<Vec<_>>());
        for r in rows {
            assert_eq!(set.timesteps[r] as usize, sched.timesteps()[*step]);
        }
    }
    // Step 0 holds x_T itself; step 2 holds what two DDIM steps make of it (image 2, run alone).
    let noise = NoiseSource::new(4);
    let x_t = noise
        .initial(&[0, 1, 2], &[3, 32, 32], &Device::Cpu)
        .unwrap();
    assert_eq!(
        dmq_model::compare::max_rel_err(&set.x.i(0..3).unwrap(), &x_t).unwrap(),
        0.0
    );
    let mut x = noise.initial(&[2], &[3, 32, 32], &Device::Cpu).unwrap();
    for i in 0..2 {
        let t = sched.timesteps()[i];
        let eps = unet
            .forward(&x, Timesteps::Shared(t as f64), None, &Ctx::at_step(i))
            .map_err(SchedError::other)
            .unwrap();
        x = sched.step(i, &eps, &x, None).unwrap().prev_sample;
    }
    assert!(dmq_model::compare::max_rel_err(&set.x.i(5..6).unwrap(), &x).unwrap() < 1e-6);

    // Cache: round trip, and a different spec or model misses.
    let tmp = tempfile::tempdir().unwrap();
    let sampler =
        serde_json::json!({ "sampler": "ddim", "eta": 0.0, "timesteps": sched.timesteps() });
    let manifest = calib::manifest_for(&spec, "model-a", sampler.clone());
    let dir = calib::cache_folder(tmp.path(), &manifest);
    calib::save(&dir, &set, &manifest).unwrap();
    let back = calib::load_if_matching(&dir, &manifest)
        .unwrap()
        .expect("cache hit");
    assert_eq!(
        dmq_model::compare::max_rel_err(&back.x, &set.x).unwrap(),
        0.0
    );
    assert_eq!(back.timesteps, set.timesteps);
    assert_eq!(back.step_index, set.step_index);
    let other_model = calib::manifest_for(&spec, "model-b", sampler.clone());
    assert!(calib::load_if_matching(&dir, &other_model)
        .unwrap()
        .is_none());
    let other_spec = calib::manifest_for(
        &CalibSpec {
            seed: 5,
            ..spec.clone()
        },
        "model-a",
        sampler,
    );
    assert!(calib::load_if_matching(&dir, &other_spec)
        .unwrap()
        .is_none());
    assert_ne!(calib::cache_folder(tmp.path(), &other_spec), dir);
    // A corrupt manifest is an error naming the file, not a silent miss.
    std::fs::write(dir.join("manifest.json"), "{").unwrap();
    let e = calib::load_if_matching(&dir, &manifest)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
}
