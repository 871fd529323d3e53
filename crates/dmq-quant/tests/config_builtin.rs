//! The built-in recipes: every one parses and validates, matches its file in `configs/`, round
//! trips through TOML and JSON, and has the values the spec gives; `fast()` and the step helpers.

use std::path::PathBuf;

use dmq_quant::config::{
    ActRange, Granularity, PtqdConfig, PtqdPart, QuantConfig, QuantConfigError, ReconInputs,
    ReconUnit, Rounding, Sampler, Trajectories, WeightRange, DEFAULT_KEEP_FLOAT, FAST_ITERS,
    FAST_LES_ITERS, FAST_PTQD_SAMPLES, FAST_RECON_BATCH, FAST_SAMPLES_PER_STEP, FAST_STEPS_SAMPLED,
    FORMAT_VERSION,
};

const NAMES: [&str; 13] = [
    "rtn-w8a8",
    "rtn-w4a8",
    "base-w8a8",
    "base-w4a8",
    "base-w4a6",
    "dmq-w8a8",
    "dmq-w4a8",
    "dmq-w4a6",
    "ptqd-w4a8",
    "ptqd-w4a6",
    "ptqd-w4a8-mp",
    "mp-w3.5a8",
    "mp-w3.0a8",
];

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn builtin_names_are_the_shipped_files() {
    assert_eq!(QuantConfig::builtin_names(), NAMES.to_vec());
    for name in NAMES {
        assert!(
            configs_dir().join(format!("{name}.toml")).is_file(),
            "{name}"
        );
    }
}

#[test]
fn every_builtin_parses_validates_and_equals_its_file() {
    for name in QuantConfig::builtin_names() {
        let cfg = QuantConfig::builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        cfg.validate().unwrap();
        assert_eq!(cfg.name, name);
        assert_eq!(cfg.format_version, FORMAT_VERSION);
        assert!(!cfg.description.is_empty(), "{name}");
        let from_file = QuantConfig::from_path(configs_dir().join(format!("{name}.toml"))).unwrap();
        assert_eq!(
            cfg, from_file,
            "{name}: embedded text differs from configs/{name}.toml"
        );
    }
}

#[test]
fn unknown_builtin_lists_the_names() {
    let err = QuantConfig::builtin("base-w3a8").unwrap_err();
    assert!(matches!(err, QuantConfigError::UnknownBuiltin { .. }));
    let msg = err.to_string();
    assert!(msg.contains("base-w3a8"), "{msg}");
    for name in NAMES {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn toml_json_toml_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    for name in QuantConfig::builtin_names() {
        let cfg = QuantConfig::builtin(name).unwrap();
        let toml = cfg.to_toml();
        let json = cfg.to_json();
        let from_json = QuantConfig::from_json_str(&json, "mem.json").unwrap();
        assert_eq!(from_json, cfg, "{name}: TOML -> JSON");
        assert_eq!(
            from_json.to_toml(),
            toml,
            "{name}: TOML -> JSON -> TOML text"
        );
        let from_toml = QuantConfig::from_toml_str(&toml, "mem.toml").unwrap();
        assert_eq!(from_toml, cfg, "{name}: TOML -> TOML");
        assert_eq!(from_toml.to_json(), json, "{name}: JSON text");

        // through files, picking the reader by extension
        let jp = dir.path().join(format!("{name}.json"));
        std::fs::write(&jp, &json).unwrap();
        assert_eq!(QuantConfig::from_path(&jp).unwrap(), cfg);
        let tp = dir.path().join(format!("{name}.TOML"));
        std::fs::write(&tp, &toml).unwrap();
        assert_eq!(QuantConfig::from_path(&tp).unwrap(), cfg);
    }
}

#[test]
fn round_trip_keeps_overrides_and_custom_values() {
    let mut cfg = QuantConfig::builtin("base-w4a8").unwrap();
    cfg.name = "custom".into();
    cfg.activations.range = ActRange::Percentile;
    cfg.activations.percentile = 99.9;
    cfg.calibration.eta = 0.3;
    cfg.reconstruction.lr = 3.3e-5;
    cfg.overrides = vec![
        dmq_quant::config::Override {
            pattern: "up_blocks.*.conv_shortcut".into(),
            weight_bits: Some(8),
            act_bits: None,
            granularity: Some(Granularity::PerTensor),
            weight_quantizer: None,
            keep_float: None,
        },
        dmq_quant::config::Override {
            pattern: "conv_in".into(),
            weight_bits: Some(8),
            act_bits: Some(8),
            granularity: None,
            weight_quantizer: None,
            keep_float: Some(false),
        },
    ];
    cfg.validate().unwrap();
    let json = cfg.to_json();
    let back = QuantConfig::from_json_str(&json, "x.json").unwrap();
    assert_eq!(back, cfg);
    assert_eq!(
        QuantConfig::from_toml_str(&back.to_toml(), "x.toml").unwrap(),
        cfg
    );
    // absent optional fields are left out, not written as null
    assert!(!json.contains("null"), "{json}");
    assert!(cfg.to_toml().contains("[[overrides]]"));
}

#[test]
fn base_w4a8_has_the_spec_values() {
    let c = QuantConfig::builtin("base-w4a8").unwrap();
    let w = &c.weights;
    assert_eq!(w.bits, 4);
    assert_eq!(w.granularity, Granularity::PerChannel);
    assert!(!w.symmetric);
    assert_eq!(w.range, WeightRange::Mse);
    assert_eq!((w.mse_candidates, w.mse_grid, w.mse_p), (80, 0.01, 2.4));
    assert_eq!(w.rounding, Rounding::Adaround);

    let a = &c.activations;
    assert_eq!(a.bits, 8);
    assert_eq!(a.granularity, Granularity::PerTensor);
    assert!(!a.symmetric);
    assert_eq!(a.range, ActRange::MinmaxEma);
    assert_eq!((a.ema_momentum, a.ema_batch), (0.95, 16));
    assert!(a.per_step);

    let k = &c.calibration;
    assert_eq!(k.sampler, Sampler::Ddim);
    assert_eq!(
        (k.steps, k.eta, k.steps_sampled, k.samples_per_step),
        (100, 0.0, 20, 256)
    );
    assert_eq!(k.trajectories, Trajectories::Shared);
    assert_eq!((k.seed, k.batch), (0, 32));
    assert_eq!(k.total_samples(), 5120);

    let r = &c.reconstruction;
    assert!(r.enabled);
    assert_eq!(r.unit, ReconUnit::Block);
    assert_eq!(r.inputs, ReconInputs::Quantized);
    assert_eq!((r.iters, r.batch, r.lr, r.loss_p), (20_000, 32, 1e-3, 2.0));
    assert_eq!(
        (r.adaround_lambda, r.adaround_zeta, r.adaround_gamma),
        (0.01, 1.1, -0.1)
    );
    assert_eq!((r.beta_start, r.beta_end, r.warmup), (20.0, 2.0, 0.2));
    assert!(!r.act_steps);
    assert_eq!((r.act_iters, r.act_lr, r.act_loss_p), (5000, 4e-4, 2.4));

    assert_eq!(c.layers.keep_float, DEFAULT_KEEP_FLOAT.to_vec());
    assert!(c.layers.split_skip);
    assert!(c.overrides.is_empty());

    // QuantConfig::default() is the spec default, i.e. base-w4a8 but for name and description
    let d = QuantConfig {
        name: c.name.clone(),
        description: c.description.clone(),
        ..QuantConfig::default()
    };
    assert_eq!(d, c);
}

#[test]
fn recipes_differ_only_where_their_names_say() {
    let base = QuantConfig::builtin("base-w4a8").unwrap();
    let strip = |mut c: QuantConfig| {
        c.name = String::new();
        c.description = String::new();
        c
    };
    let mut w8 = strip(QuantConfig::builtin("base-w8a8").unwrap());
    assert_eq!(w8.weights.bits, 8);
    w8.weights.bits = 4;
    assert_eq!(w8, strip(base.clone()));

    let mut a6 = strip(QuantConfig::builtin("base-w4a6").unwrap());
    assert_eq!(a6.activations.bits, 6);
    a6.activations.bits = 8;
    assert_eq!(a6, strip(base.clone()));

    for (name, bits) in [("rtn-w8a8", 8), ("rtn-w4a8", 4)] {
        let mut rtn = strip(QuantConfig::builtin(name).unwrap());
        assert_eq!(rtn.weights.bits, bits);
        assert_eq!(rtn.weights.range, WeightRange::Minmax);
        assert_eq!(rtn.weights.rounding, Rounding::Nearest);
        assert!(!rtn.reconstruction.enabled);
        assert_eq!(rtn.activations.range, ActRange::MinmaxEma);
        assert!(rtn.activations.per_step);
        rtn.weights.bits = 4;
        rtn.weights.range = WeightRange::Mse;
        rtn.weights.rounding = Rounding::Adaround;
        rtn.reconstruction.enabled = true;
        assert_eq!(rtn, strip(base.clone()), "{name}");
    }
}

#[test]
fn fast_scales_calibration_and_iterations_down() {
    for name in QuantConfig::builtin_names() {
        let full = QuantConfig::builtin(name).unwrap();
        let fast = full.fast();
        fast.validate().unwrap();
        assert_eq!(fast.name, format!("{name}-fast"));
        assert_eq!(fast.calibration.samples_per_step, FAST_SAMPLES_PER_STEP);
        assert_eq!(fast.calibration.steps_sampled, FAST_STEPS_SAMPLED);
        assert_eq!(fast.reconstruction.iters, FAST_ITERS);
        assert_eq!(fast.reconstruction.act_iters, FAST_ITERS);
        assert_eq!(fast.reconstruction.batch, FAST_RECON_BATCH);
        // everything else is unchanged
        let mut back = fast.clone();
        back.name = full.name.clone();
        back.calibration.samples_per_step = full.calibration.samples_per_step;
        back.calibration.steps_sampled = full.calibration.steps_sampled;
        back.reconstruction.iters = full.reconstruction.iters;
        back.reconstruction.act_iters = full.reconstruction.act_iters;
        back.reconstruction.batch = full.reconstruction.batch;
        if let (Some(b), Some(f)) = (back.les.as_mut(), full.les.as_ref()) {
            assert_eq!(b.iters, FAST_LES_ITERS.min(f.iters), "{name}");
            assert_eq!(b.batch, FAST_RECON_BATCH.min(f.batch), "{name}");
            b.iters = f.iters;
            b.batch = f.batch;
        }
        if let (Some(b), Some(f)) = (&mut back.ptqd, &full.ptqd) {
            b.samples = f.samples;
        }
        assert_eq!(back, full, "{name}");
        // idempotent, and never raises a value that is already small
        assert_eq!(fast.fast(), fast);
    }
    assert_eq!(
        (
            FAST_SAMPLES_PER_STEP,
            FAST_STEPS_SAMPLED,
            FAST_ITERS,
            FAST_RECON_BATCH
        ),
        (8, 10, 50, 4)
    );
    let mut tiny = QuantConfig::builtin("base-w4a8").unwrap();
    tiny.calibration.samples_per_step = 4;
    tiny.reconstruction.iters = 7;
    let f = tiny.fast();
    assert_eq!(
        (f.calibration.samples_per_step, f.reconstruction.iters),
        (4, 7)
    );
    assert_eq!(
        f.calibration.sampled_steps(),
        (0..10).map(|i| i * 10).collect::<Vec<_>>()
    );
}

#[test]
fn sampled_steps_and_activation_sets() {
    let c = QuantConfig::builtin("base-w4a8").unwrap();
    let steps = c.calibration.sampled_steps();
    assert_eq!(steps, (0..20).map(|i| i * 5).collect::<Vec<_>>());
    for (k, want) in [
        (0, 0),
        (2, 0),
        (3, 1),
        (5, 1),
        (7, 1),
        (8, 2),
        (95, 19),
        (99, 19),
    ] {
        assert_eq!(c.activation_set(k), want, "step {k}");
    }
    let mut c3 = c.clone();
    c3.calibration.steps = 10;
    c3.calibration.steps_sampled = 3;
    assert_eq!(c3.calibration.sampled_steps(), vec![0, 3, 6]);
    assert_eq!(c3.activation_set(9), 2);
    let mut shared = c.clone();
    shared.activations.per_step = false;
    assert_eq!(shared.activation_set(57), 0);
}

#[test]
fn sections_and_fields_default_to_the_spec() {
    let minimal = "format_version = 1\nname = \"mini\"\n[weights]\nbits = 8\n";
    let c = QuantConfig::from_toml_str(minimal, "mini.toml").unwrap();
    let mut want = QuantConfig {
        name: "mini".into(),
        ..QuantConfig::default()
    };
    want.weights.bits = 8;
    assert_eq!(c, want);
    let j = QuantConfig::from_json_str(
        r#"{"format_version": 1, "name": "mini", "weights": {"bits": 8}}"#,
        "mini.json",
    )
    .unwrap();
    assert_eq!(j, want);
}

#[test]
fn ptqd_recipes_are_their_base_plus_a_ptqd_section() {
    let strip = |mut c: QuantConfig| {
        c.name = String::new();
        c.description = String::new();
        c
    };
    for (name, base) in [
        ("ptqd-w4a8", "base-w4a8"),
        ("ptqd-w4a6", "base-w4a6"),
        ("ptqd-w4a8-mp", "base-w4a8"),
    ] {
        let mut p = strip(QuantConfig::builtin(name).unwrap());
        let section = p
            .ptqd
            .take()
            .unwrap_or_else(|| panic!("{name} has no [ptqd]"));
        assert_eq!(p, strip(QuantConfig::builtin(base).unwrap()), "{name}");
        assert_eq!(section.parts, PtqdPart::ALL.to_vec(), "{name}");
        assert_eq!((section.samples, section.seed, section.batch), (64, 1, 32));
        let want_mixed: Vec<u8> = if name.ends_with("-mp") {
            vec![4]
        } else {
            vec![]
        };
        assert_eq!(section.mixed_act_bits, want_mixed, "{name}");
    }
    // recipes without PTQD serialize without the section (old artifacts' recipes read the same)
    let base = QuantConfig::builtin("base-w4a8").unwrap();
    assert!(base.ptqd.is_none());
    assert!(!base.to_json().contains("ptqd"));
    // the section's defaults
    let c =
        QuantConfig::from_toml_str("format_version = 1\nname = \"p\"\n[ptqd]\n", "p.toml").unwrap();
    assert_eq!(c.ptqd, Some(PtqdConfig::default()));
    // --fast shrinks the statistics' trajectories only
    let fast = QuantConfig::builtin("ptqd-w4a8").unwrap().fast();
    let p = fast.ptqd.unwrap();
    assert_eq!(p.samples, FAST_PTQD_SAMPLES);
    assert_eq!(p.parts, PtqdPart::ALL.to_vec());
    for part in PtqdPart::ALL {
        assert_eq!(PtqdPart::parse(part.name()), Some(part));
    }
    assert_eq!(PtqdPart::parse("nope"), None);
}
