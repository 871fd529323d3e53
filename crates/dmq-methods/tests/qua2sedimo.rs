//! Qua²SeDiMo: the budgeted allocator is optimal (brute force) and within budget, the additive
//! predictor recovers a planted per-layer sensitivity, and on the embedded model the option
//! table, proxy labels and a k-means mixed recipe run end to end through the PTQ pipeline.

mod common;

use dmq_methods::qua2sedimo::allocate::{allocate_budget, allocate_lagrangian, brute_force, Item};
use dmq_methods::qua2sedimo::options::{build_table, search_space, QOption};
use dmq_methods::qua2sedimo::predictor::{fit_and_evaluate, spearman};
use dmq_methods::qua2sedimo::{proxy, sample_configs};
use dmq_quant::config::{MixedOptions, QuantConfig};
use dmq_quant::ptq::{self, PtqOptions, Silent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_problem(rng: &mut ChaCha8Rng, layers: usize, opts: usize) -> Vec<Vec<Item>> {
    (0..layers)
        .map(|_| {
            (0..opts)
                .map(|_| Item {
                    cost: rng.gen_range(-1.0..1.0),
                    bits: rng.gen_range(100..1000),
                })
                .collect()
        })
        .collect()
}

#[test]
fn allocator_is_optimal_and_within_budget() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for case in 0..25 {
        let layers = 2 + case % 4;
        let p = random_problem(&mut rng, layers, 3 + case % 3);
        let min: u64 = p
            .iter()
            .map(|l| l.iter().map(|i| i.bits).min().unwrap())
            .sum();
        let max: u64 = p
            .iter()
            .map(|l| l.iter().map(|i| i.bits).max().unwrap())
            .sum();
        let budget = rng.gen_range(min..=max);
        let (want, best) = brute_force(&p, budget).expect("feasible");
        let got = allocate_budget(&p, budget).unwrap();
        let bits: u64 = p.iter().zip(&got).map(|(l, &o)| l[o].bits).sum();
        let cost: f64 = p.iter().zip(&got).map(|(l, &o)| l[o].cost).sum();
        assert!(bits <= budget, "case {case}: {bits} bits > budget {budget}");
        assert!(
            (cost - best).abs() < 1e-9,
            "case {case}: cost {cost} vs brute force {best} ({got:?} vs {want:?})"
        );
    }
    // A budget that only the smallest configuration meets is met exactly.
    let p = random_problem(&mut rng, 4, 4);
    let min: u64 = p
        .iter()
        .map(|l| l.iter().map(|i| i.bits).min().unwrap())
        .sum();
    let got = allocate_budget(&p, min).unwrap();
    assert_eq!(
        p.iter().zip(&got).map(|(l, &o)| l[o].bits).sum::<u64>(),
        min
    );
    assert!(allocate_budget(&p, min - 1).is_err());
    // λ = 0: the cheapest option everywhere; λ huge: the smallest.
    let free = allocate_lagrangian(&p, 0.0, 1000);
    for (l, &o) in p.iter().zip(&free) {
        assert!(l.iter().all(|i| i.cost >= l[o].cost));
    }
    let tight = allocate_lagrangian(&p, 1e12, 1000);
    for (l, &o) in p.iter().zip(&tight) {
        assert!(l.iter().all(|i| i.bits >= l[o].bits));
    }
}

#[test]
fn predictor_recovers_planted_sensitivity() {
    let layers = 20;
    let options = search_space(MixedOptions::All);
    let k = options.len();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Planted: layer sensitivity s_l times option harshness h_o (0 for the reference).
    let s: Vec<f64> = (0..layers).map(|_| rng.gen_range(0.0..1.0)).collect();
    let h: Vec<f64> = options
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if i == 0 {
                0.0
            } else {
                (4.0 - f64::from(o.bits)).max(-0.5) + 0.3
            }
        })
        .collect();
    let configs = sample_configs(&options, layers, 300, 5);
    let y: Vec<f64> = configs
        .iter()
        .map(|c| {
            c.iter().enumerate().map(|(l, &o)| s[l] * h[o]).sum::<f64>()
                + 0.05 * rng.gen_range(-1.0..1.0)
        })
        .collect();
    let (model, eval) = fit_and_evaluate(&configs, &y, &vec![k; layers], 0.2, 1).unwrap();
    assert!(eval.spearman > 0.95, "held-out Spearman {}", eval.spearman);
    assert!(eval.ndcg10 > 0.8, "held-out NDCG@10 {}", eval.ndcg10);
    // The per-layer sensitivity of the 3-bit uniform option is recovered.
    let o3 = options
        .iter()
        .position(|o| *o == QOption::parse("uaq3").unwrap())
        .unwrap();
    let planted: Vec<f64> = (0..layers).map(|l| s[l] * h[o3]).collect();
    let fitted: Vec<f64> = model.theta.iter().map(|t| t[o3]).collect();
    let rho = spearman(&planted, &fitted);
    assert!(rho > 0.9, "planted vs fitted sensitivity: Spearman {rho}");
}

#[test]
fn embedded_model_options_proxy_and_kmeans_recipe() {
    let (_pipeline, mut unet, set) = common::embedded_calib(10, 3, 4);

    // Option table over a few layers (all of them takes too long for CI at opt-level 1); 3-bit
    // options store fewer bits and err more than 8-bit.
    let paths: Vec<String> = unet.layer_paths().into_iter().take(5).collect();
    let options = search_space(MixedOptions::All);
    let splits = unet.split_points();
    let table = build_table(&mut unet, &paths, &options, &splits, |_| {}).unwrap();
    assert_eq!(table.layers.len(), paths.len());
    let (i3, i8) = (1, 6);
    assert_eq!(options[i3].name(), "uaq3");
    assert_eq!(options[i8].name(), "uaq8");
    for l in &table.layers {
        assert!(l.options[i3].bits < l.options[i8].bits, "{}", l.path);
        assert!(l.options[i3].rel_mse > l.options[i8].rel_mse, "{}", l.path);
    }

    // Proxy: FP itself scores 0 and all-3-bit scores worse than all-8-bit.
    let data = proxy::proxy_data(&unet, &set, 2, 8, 0).unwrap();
    let all = |o: usize| vec![o; table.layers.len()];
    let l3 = proxy::score(&mut unet, &table, &all(i3), &data).unwrap();
    let l8 = proxy::score(&mut unet, &table, &all(i8), &data).unwrap();
    assert!(l8 < l3 && l8 > 0.0, "L(uaq8) {l8} vs L(uaq3) {l3}");

    // A recipe with k-means overrides runs through the pipeline and computes what the table's
    // option computes for those layers.
    let mut cfg = QuantConfig::builtin("rtn-w4a8").unwrap();
    cfg.calibration.steps = 10;
    cfg.calibration.steps_sampled = 3;
    cfg.calibration.samples_per_step = 4;
    cfg.calibration.batch = 4;
    cfg.activations.ema_batch = 4;
    let kmc3 = QOption::parse("kmc3").unwrap();
    let target = table.layers[3].path.clone();
    cfg.overrides.push(kmc3.override_for(&target));
    cfg.validate().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let opts = PtqOptions {
        checkpoint_dir: Some(tmp.path().join("ck")),
        capture_batch: 8,
        capture_budget_bytes: 16 << 20,
        run_fingerprint: "q2s".into(),
    };
    let out = ptq::quantize(&mut unet, &cfg, &set, &opts, &mut Silent).unwrap();
    let w = out.layers[&target].weight.as_ref().unwrap();
    assert!(w.has_codebook());
    let a: Vec<f32> = w
        .dequantize()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = table.layers[3].options[3]
        .dequantized
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(options[3], kmc3);
    assert_eq!(a, b);
    // Learned rounding of codebooks is refused, naming the field.
    let mut ada = QuantConfig::builtin("base-w4a8").unwrap();
    ada.overrides.push(kmc3.override_for(&target));
    let err = ptq::check_supported(&ada).err().unwrap().to_string();
    assert!(err.contains("kmeans"), "{err}");
}
