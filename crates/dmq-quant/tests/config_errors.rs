//! Bad recipes: every error names the file and the offending field.

use dmq_quant::config::{QuantConfig, QuantConfigError};

const BASE: &str = include_str!("../../../configs/base-w4a8.toml");

/// `BASE` with `old` (which must occur exactly once) replaced by `new`.
fn edit(old: &str, new: &str) -> String {
    assert_eq!(
        BASE.matches(old).count(),
        1,
        "`{old}` must occur once in base-w4a8.toml"
    );
    BASE.replace(old, new)
}

fn toml_err(text: &str) -> QuantConfigError {
    QuantConfig::from_toml_str(text, "bad.toml").expect_err("must be rejected")
}

fn json_err(text: &str) -> QuantConfigError {
    QuantConfig::from_json_str(text, "bad.json").expect_err("must be rejected")
}

/// The error is a field error naming `file` and `field`, and its message contains each of `words`.
#[track_caller]
fn assert_field(err: &QuantConfigError, file: &str, field: &str, words: &[&str]) {
    let msg = err.to_string();
    assert_eq!(err.field(), Some(field), "{msg}");
    assert!(msg.starts_with(file), "{msg}");
    assert!(msg.contains(&format!("`{field}`")), "{msg}");
    for w in words {
        assert!(msg.contains(w), "`{w}` missing in: {msg}");
    }
}

fn base_json() -> serde_json::Value {
    serde_json::from_str(&QuantConfig::builtin("base-w4a8").unwrap().to_json()).unwrap()
}

#[test]
fn unknown_keys_name_file_and_key() {
    let e = toml_err(&edit("mse_p = 2.4 ", "mse_q = 2.4 "));
    assert_field(
        &e,
        "bad.toml",
        "weights.mse_q",
        &["unknown field `mse_q`", "line"],
    );

    let e = toml_err(&edit(
        "format_version = 1\n",
        "format_version = 1\nbits = 4\n",
    ));
    assert_field(&e, "bad.toml", "bits", &["unknown field `bits`"]);

    let e = toml_err(&edit(
        "[layers]\n",
        "[layer]\nsplit_skip = true\n[layers]\n",
    ));
    assert_field(&e, "bad.toml", "layer", &["unknown field `layer`"]);

    let e = toml_err(&format!(
        "{BASE}\n[[overrides]]\npattern = \"conv_in\"\nweight_bit = 8\n"
    ));
    assert_field(
        &e,
        "bad.toml",
        "overrides[0].weight_bit",
        &["unknown field `weight_bit`"],
    );

    let mut v = base_json();
    v["calibration"]["sample_per_step"] = 3.into();
    let e = json_err(&v.to_string());
    assert_field(
        &e,
        "bad.json",
        "calibration.sample_per_step",
        &["unknown field"],
    );
}

#[test]
fn out_of_range_bits_name_the_field() {
    for bits in ["1", "9"] {
        let e = toml_err(&edit("bits = 4 ", &format!("bits = {bits} ")));
        assert_field(&e, "bad.toml", "weights.bits", &[bits, "2..=8"]);
    }
    for bits in ["1", "17"] {
        let e = toml_err(&edit("bits = 8 ", &format!("bits = {bits} ")));
        assert_field(&e, "bad.toml", "activations.bits", &[bits, "2..=16"]);
    }
    // not even a u8
    let e = toml_err(&edit("bits = 4 ", "bits = 300 "));
    assert_field(&e, "bad.toml", "weights.bits", &["300"]);
    let e = toml_err(&edit("bits = 4 ", "bits = \"4\" "));
    assert_field(&e, "bad.toml", "weights.bits", &["string"]);

    let over = |body: &str| format!("{BASE}\n[[overrides]]\npattern = \"conv_in\"\n{body}\n");
    let e = toml_err(&over("weight_bits = 9"));
    assert_field(&e, "bad.toml", "overrides[0].weight_bits", &["9"]);
    let e = toml_err(&over("act_bits = 1"));
    assert_field(&e, "bad.toml", "overrides[0].act_bits", &["1"]);

    let mut v = base_json();
    v["weights"]["bits"] = 1.into();
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "weights.bits",
        &["2..=8"],
    );
    let mut v = base_json();
    v["overrides"] = serde_json::json!([{"pattern": "conv_in", "keep_float": false},
                                         {"pattern": "conv_out", "weight_bits": 9}]);
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "overrides[1].weight_bits",
        &["9"],
    );
}

#[test]
fn unknown_enum_values_name_the_field() {
    let e = toml_err(&edit(
        "rounding = \"adaround\"",
        "rounding = \"stochastic\"",
    ));
    assert_field(
        &e,
        "bad.toml",
        "weights.rounding",
        &["stochastic", "nearest", "adaround"],
    );
    let e = toml_err(&edit("range = \"minmax_ema\"", "range = \"mse\""));
    assert_field(
        &e,
        "bad.toml",
        "activations.range",
        &["mse", "minmax_ema", "percentile"],
    );
    let e = toml_err(&edit("sampler = \"ddim\"", "sampler = \"plms\""));
    assert_field(&e, "bad.toml", "calibration.sampler", &["plms"]);

    let mut v = base_json();
    v["weights"]["granularity"] = "per_group".into();
    let e = json_err(&v.to_string());
    assert_field(
        &e,
        "bad.json",
        "weights.granularity",
        &["per_group", "per_channel"],
    );
    let mut v = base_json();
    v["reconstruction"]["unit"] = "model".into();
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "reconstruction.unit",
        &["model"],
    );
}

#[test]
fn wrong_or_missing_version() {
    let e = toml_err(&edit("format_version = 1", "format_version = 2"));
    assert_field(
        &e,
        "bad.toml",
        "format_version",
        &["unsupported version 2", "1"],
    );
    // reported as a version problem even when the rest is of another schema
    let e = toml_err("format_version = 2\nname = \"x\"\n[quantizer]\nw = 4\n");
    assert_field(&e, "bad.toml", "format_version", &["unsupported version 2"]);
    let e = toml_err(&edit("format_version = 1\n", ""));
    assert_field(&e, "bad.toml", "format_version", &["missing"]);
    let e = toml_err(&edit("format_version = 1", "format_version = \"1\""));
    assert_field(&e, "bad.toml", "format_version", &["string"]);

    let mut v = base_json();
    v["format_version"] = 0.into();
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "format_version",
        &["unsupported version 0"],
    );
    let mut v = base_json();
    v.as_object_mut().unwrap().remove("format_version");
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "format_version",
        &["missing"],
    );

    let mut c = QuantConfig::builtin("base-w4a8").unwrap();
    c.format_version = 3;
    assert_eq!(c.validate().unwrap_err().field(), Some("format_version"));
}

#[test]
fn missing_name_is_reported() {
    let e = toml_err(&edit("name = \"base-w4a8\"\n", ""));
    assert_field(&e, "bad.toml", "name", &["missing field `name`"]);
    let e = toml_err(&edit("name = \"base-w4a8\"", "name = \" \""));
    assert_field(&e, "bad.toml", "name", &["empty"]);
}

#[test]
fn out_of_range_values_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "ema_momentum = 0.95",
            "ema_momentum = 1.0",
            "activations.ema_momentum",
        ),
        (
            "ema_momentum = 0.95",
            "ema_momentum = 0.0",
            "activations.ema_momentum",
        ),
        (
            "ema_momentum = 0.95",
            "ema_momentum = -0.5",
            "activations.ema_momentum",
        ),
        (
            "ema_momentum = 0.95",
            "ema_momentum = nan",
            "activations.ema_momentum",
        ),
        ("ema_batch = 16", "ema_batch = 0", "activations.ema_batch"),
        (
            "percentile = 99.99",
            "percentile = 100.5",
            "activations.percentile",
        ),
        (
            "granularity = \"per_tensor\"",
            "granularity = \"per_channel\"",
            "activations.granularity",
        ),
        ("iters = 20000", "iters = 0", "reconstruction.iters"),
        ("lr = 0.001", "lr = 0.0", "reconstruction.lr"),
        ("warmup = 0.2", "warmup = 1.0", "reconstruction.warmup"),
        (
            "beta_start = 20.0",
            "beta_start = 1.0",
            "reconstruction.beta_start",
        ),
        (
            "adaround_zeta = 1.1",
            "adaround_zeta = 0.9",
            "reconstruction.adaround_zeta",
        ),
        (
            "adaround_gamma = -0.1",
            "adaround_gamma = 0.1",
            "reconstruction.adaround_gamma",
        ),
        ("mse_grid = 0.01", "mse_grid = 0.02", "weights.mse_grid"),
        (
            "mse_candidates = 80",
            "mse_candidates = 0",
            "weights.mse_candidates",
        ),
        (
            "steps_sampled = 20",
            "steps_sampled = 101",
            "calibration.steps_sampled",
        ),
        (
            "steps_sampled = 20",
            "steps_sampled = 0",
            "calibration.steps_sampled",
        ),
        (
            "samples_per_step = 256",
            "samples_per_step = 0",
            "calibration.samples_per_step",
        ),
        ("eta = 0.0", "eta = 1.5", "calibration.eta"),
        (
            "sampler = \"ddim\"",
            "sampler = \"ddpm\"\neta_unused = 1",
            "calibration.eta_unused",
        ),
        ("enabled = true", "enabled = false", "weights.rounding"),
    ];
    for (old, new, field) in cases {
        let e = toml_err(&edit(old, new));
        assert_field(&e, "bad.toml", field, &[]);
    }
    // eta must be 0 with the DDPM sampler
    let e = toml_err(
        &edit("sampler = \"ddim\"", "sampler = \"ddpm\"").replace("eta = 0.0", "eta = 0.5"),
    );
    assert_field(&e, "bad.toml", "calibration.eta", &["ddim"]);
    // iters 0 is fine while reconstruction is off
    let rtn = include_str!("../../../configs/rtn-w4a8.toml").replace("iters = 20000", "iters = 0");
    QuantConfig::from_toml_str(&rtn, "rtn.toml").unwrap();
    // the activation stage needs iterations only when it is on
    let e = toml_err(
        &edit("\nact_steps = false", "\nact_steps = true")
            .replace("act_iters = 5000", "act_iters = 0"),
    );
    assert_field(&e, "bad.toml", "reconstruction.act_iters", &[]);
    QuantConfig::from_toml_str(&edit("act_iters = 5000", "act_iters = 0"), "ok.toml").unwrap();

    let mut v = base_json();
    v["activations"]["ema_momentum"] = 1.5.into();
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "activations.ema_momentum",
        &["1.5", "(0, 1)"],
    );
    let mut v = base_json();
    v["reconstruction"]["iters"] = 0.into();
    assert_field(
        &json_err(&v.to_string()),
        "bad.json",
        "reconstruction.iters",
        &["at least 1"],
    );
}

#[test]
fn bad_patterns_and_empty_overrides() {
    let e = toml_err(&format!(
        "{BASE}\n[[overrides]]\npattern = \"up_blocks.[0-\"\nweight_bits = 8\n"
    ));
    assert_field(&e, "bad.toml", "overrides[0].pattern", &["invalid pattern"]);
    let e = toml_err(&edit(
        "    \"conv_out\",\n",
        "    \"conv_out\",\n    \"a{b\",\n",
    ));
    assert_field(&e, "bad.toml", "layers.keep_float[2]", &["invalid pattern"]);
    let e = toml_err(&format!(
        "{BASE}\n[[overrides]]\npattern = \"conv_in\"\nkeep_float = false\n[[overrides]]\npattern = \"conv_out\"\n"
    ));
    assert_field(&e, "bad.toml", "overrides[1].pattern", &["sets nothing"]);
    let e = toml_err(&format!("{BASE}\n[[overrides]]\nweight_bits = 8\n"));
    assert_field(
        &e,
        "bad.toml",
        "overrides[0].pattern",
        &["missing field `pattern`"],
    );
}

#[test]
fn file_level_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("recipe.yaml");
    std::fs::write(&yaml, BASE).unwrap();
    let e = QuantConfig::from_path(&yaml).unwrap_err();
    assert!(matches!(e, QuantConfigError::Syntax { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("recipe.yaml") && msg.contains(".toml"),
        "{msg}"
    );

    let missing = dir.path().join("nope.toml");
    let e = QuantConfig::from_path(&missing).unwrap_err();
    assert!(matches!(e, QuantConfigError::Io { .. }));
    assert!(e.to_string().contains("nope.toml"));

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "format_version = 1\nname = \"x\n").unwrap();
    let msg = QuantConfig::from_path(&broken).unwrap_err().to_string();
    assert!(
        msg.contains("broken.toml") && msg.contains("invalid TOML") && msg.contains("line 2"),
        "{msg}"
    );

    let dup = edit("[weights]\n", "[weights]\nbits = 8\n");
    let msg = toml_err(&dup).to_string();
    assert!(
        msg.starts_with("bad.toml") && msg.contains("duplicate"),
        "{msg}"
    );

    let bad_json = dir.path().join("broken.json");
    std::fs::write(&bad_json, "{\"format_version\": 1, \"name\": ").unwrap();
    let e = QuantConfig::from_path(&bad_json).unwrap_err();
    assert!(matches!(e, QuantConfigError::Syntax { .. }));
    assert!(e.to_string().contains("broken.json"));

    let trailing = format!(
        "{} {{}}",
        QuantConfig::builtin("base-w4a8").unwrap().to_json()
    );
    assert!(matches!(
        json_err(&trailing),
        QuantConfigError::Syntax { .. }
    ));

    // a bad value in a file read by path names that path
    let p = dir.path().join("w9.toml");
    std::fs::write(&p, edit("bits = 4 ", "bits = 9 ")).unwrap();
    let e = QuantConfig::from_path(&p).unwrap_err();
    assert_field(&e, &p.display().to_string(), "weights.bits", &["9"]);
}

#[test]
fn bad_ptqd_sections_name_the_field() {
    let with = |section: &str| format!("{BASE}\n[ptqd]\n{section}\n");
    let e = toml_err(&with("parts = [\"cnc\", \"cnc\"]"));
    assert_field(&e, "bad.toml", "ptqd.parts[1]", &["twice"]);
    let e = toml_err(&with("parts = [\"cnc\", \"bias\"]"));
    assert!(e.to_string().contains("ptqd.parts"), "{e}");
    assert!(e.to_string().contains("bias"), "{e}");
    let e = toml_err(&with("samples = 0"));
    assert_field(&e, "bad.toml", "ptqd.samples", &["at least 1"]);
    let e = toml_err(&with("batch = 0"));
    assert_field(&e, "bad.toml", "ptqd.batch", &["at least 1"]);
    let e = toml_err(&with("mixed_act_bits = [8]"));
    assert_field(
        &e,
        "bad.toml",
        "ptqd.mixed_act_bits[0]",
        &["activations.bits (8)"],
    );
    let e = toml_err(&with("mixed_act_bits = [4, 4]"));
    assert_field(&e, "bad.toml", "ptqd.mixed_act_bits[1]", &["twice"]);
    let e = toml_err(&with("mixed_act_bits = [1]"));
    assert_field(&e, "bad.toml", "ptqd.mixed_act_bits[0]", &["out of range"]);
    let e = toml_err(&with("sample = 3"));
    assert!(e.to_string().contains("sample"), "{e}");
    let float_acts = edit("bits = 8                      # A8 (§3.4)", "bits = 16");
    let e = toml_err(&format!("{float_acts}\n[ptqd]\nmixed_act_bits = [4]\n"));
    assert_field(&e, "bad.toml", "ptqd.mixed_act_bits", &["below 16"]);
}

/// `[mixed_precision]` takes a budget or the paper's λ, exactly one, each in its range.
#[test]
fn mixed_precision_needs_exactly_one_objective() {
    let with = |body: &str| format!("{BASE}\n[mixed_precision]\n{body}\n");
    let ok = QuantConfig::from_toml_str(&with("lambda_bits = 0.05"), "mp.toml").unwrap();
    let mp = ok.mixed_precision.as_ref().unwrap();
    assert_eq!(
        mp.objective(),
        Some(dmq_quant::config::BitObjective::Lagrangian(0.05))
    );
    // It survives the JSON round trip of manifests.
    assert_eq!(
        QuantConfig::from_json_str(&ok.to_json(), "mp.json").unwrap(),
        ok
    );
    let both = toml_err(&with("avg_bits = 3.5\nlambda_bits = 0.05"));
    assert_field(&both, "bad.toml", "mixed_precision", &["exactly one"]);
    let none = toml_err(&with("options = \"all\""));
    assert_field(&none, "bad.toml", "mixed_precision", &["exactly one"]);
    let negative = toml_err(&with("lambda_bits = -1"));
    assert_field(
        &negative,
        "bad.toml",
        "mixed_precision.lambda_bits",
        &[">= 0"],
    );
}
