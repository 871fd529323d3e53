//! Per-layer resolution over the real checkpoint paths of dmq's CIFAR UNet2DModel (the embedded
//! model and `ddpm-cifar10-small` have the same 125 paths, `dmq inspect`).

use dmq_quant::config::{Granularity, LayerPlan, Override, QuantConfig};

const LAYERS: [&str; 125] = [
    "time_embedding.linear_1",
    "time_embedding.linear_2",
    "conv_in",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.0.resnets.0.time_emb_proj",
    "down_blocks.0.resnets.0.conv2",
    "down_blocks.0.resnets.1.conv1",
    "down_blocks.0.resnets.1.time_emb_proj",
    "down_blocks.0.resnets.1.conv2",
    "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0.conv1",
    "down_blocks.1.resnets.0.time_emb_proj",
    "down_blocks.1.resnets.0.conv2",
    "down_blocks.1.resnets.0.conv_shortcut",
    "down_blocks.1.attentions.0.to_q",
    "down_blocks.1.attentions.0.to_k",
    "down_blocks.1.attentions.0.to_v",
    "down_blocks.1.attentions.0.attn_scores",
    "down_blocks.1.attentions.0.attn_values",
    "down_blocks.1.attentions.0.to_out.0",
    "down_blocks.1.resnets.1.conv1",
    "down_blocks.1.resnets.1.time_emb_proj",
    "down_blocks.1.resnets.1.conv2",
    "down_blocks.1.attentions.1.to_q",
    "down_blocks.1.attentions.1.to_k",
    "down_blocks.1.attentions.1.to_v",
    "down_blocks.1.attentions.1.attn_scores",
    "down_blocks.1.attentions.1.attn_values",
    "down_blocks.1.attentions.1.to_out.0",
    "down_blocks.1.downsamplers.0.conv",
    "down_blocks.2.resnets.0.conv1",
    "down_blocks.2.resnets.0.time_emb_proj",
    "down_blocks.2.resnets.0.conv2",
    "down_blocks.2.resnets.1.conv1",
    "down_blocks.2.resnets.1.time_emb_proj",
    "down_blocks.2.resnets.1.conv2",
    "down_blocks.2.downsamplers.0.conv",
    "down_blocks.3.resnets.0.conv1",
    "down_blocks.3.resnets.0.time_emb_proj",
    "down_blocks.3.resnets.0.conv2",
    "down_blocks.3.resnets.1.conv1",
    "down_blocks.3.resnets.1.time_emb_proj",
    "down_blocks.3.resnets.1.conv2",
    "mid_block.resnets.0.conv1",
    "mid_block.resnets.0.time_emb_proj",
    "mid_block.resnets.0.conv2",
    "mid_block.attentions.0.to_q",
    "mid_block.attentions.0.to_k",
    "mid_block.attentions.0.to_v",
    "mid_block.attentions.0.attn_scores",
    "mid_block.attentions.0.attn_values",
    "mid_block.attentions.0.to_out.0",
    "mid_block.resnets.1.conv1",
    "mid_block.resnets.1.time_emb_proj",
    "mid_block.resnets.1.conv2",
    "up_blocks.0.resnets.0.conv1",
    "up_blocks.0.resnets.0.time_emb_proj",
    "up_blocks.0.resnets.0.conv2",
    "up_blocks.0.resnets.0.conv_shortcut",
    "up_blocks.0.resnets.1.conv1",
    "up_blocks.0.resnets.1.time_emb_proj",
    "up_blocks.0.resnets.1.conv2",
    "up_blocks.0.resnets.1.conv_shortcut",
    "up_blocks.0.resnets.2.conv1",
    "up_blocks.0.resnets.2.time_emb_proj",
    "up_blocks.0.resnets.2.conv2",
    "up_blocks.0.resnets.2.conv_shortcut",
    "up_blocks.0.upsamplers.0.conv",
    "up_blocks.1.resnets.0.conv1",
    "up_blocks.1.resnets.0.time_emb_proj",
    "up_blocks.1.resnets.0.conv2",
    "up_blocks.1.resnets.0.conv_shortcut",
    "up_blocks.1.resnets.1.conv1",
    "up_blocks.1.resnets.1.time_emb_proj",
    "up_blocks.1.resnets.1.conv2",
    "up_blocks.1.resnets.1.conv_shortcut",
    "up_blocks.1.resnets.2.conv1",
    "up_blocks.1.resnets.2.time_emb_proj",
    "up_blocks.1.resnets.2.conv2",
    "up_blocks.1.resnets.2.conv_shortcut",
    "up_blocks.1.upsamplers.0.conv",
    "up_blocks.2.resnets.0.conv1",
    "up_blocks.2.resnets.0.time_emb_proj",
    "up_blocks.2.resnets.0.conv2",
    "up_blocks.2.resnets.0.conv_shortcut",
    "up_blocks.2.attentions.0.to_q",
    "up_blocks.2.attentions.0.to_k",
    "up_blocks.2.attentions.0.to_v",
    "up_blocks.2.attentions.0.attn_scores",
    "up_blocks.2.attentions.0.attn_values",
    "up_blocks.2.attentions.0.to_out.0",
    "up_blocks.2.resnets.1.conv1",
    "up_blocks.2.resnets.1.time_emb_proj",
    "up_blocks.2.resnets.1.conv2",
    "up_blocks.2.resnets.1.conv_shortcut",
    "up_blocks.2.attentions.1.to_q",
    "up_blocks.2.attentions.1.to_k",
    "up_blocks.2.attentions.1.to_v",
    "up_blocks.2.attentions.1.attn_scores",
    "up_blocks.2.attentions.1.attn_values",
    "up_blocks.2.attentions.1.to_out.0",
    "up_blocks.2.resnets.2.conv1",
    "up_blocks.2.resnets.2.time_emb_proj",
    "up_blocks.2.resnets.2.conv2",
    "up_blocks.2.resnets.2.conv_shortcut",
    "up_blocks.2.attentions.2.to_q",
    "up_blocks.2.attentions.2.to_k",
    "up_blocks.2.attentions.2.to_v",
    "up_blocks.2.attentions.2.attn_scores",
    "up_blocks.2.attentions.2.attn_values",
    "up_blocks.2.attentions.2.to_out.0",
    "up_blocks.2.upsamplers.0.conv",
    "up_blocks.3.resnets.0.conv1",
    "up_blocks.3.resnets.0.time_emb_proj",
    "up_blocks.3.resnets.0.conv2",
    "up_blocks.3.resnets.0.conv_shortcut",
    "up_blocks.3.resnets.1.conv1",
    "up_blocks.3.resnets.1.time_emb_proj",
    "up_blocks.3.resnets.1.conv2",
    "up_blocks.3.resnets.1.conv_shortcut",
    "up_blocks.3.resnets.2.conv1",
    "up_blocks.3.resnets.2.time_emb_proj",
    "up_blocks.3.resnets.2.conv2",
    "up_blocks.3.resnets.2.conv_shortcut",
    "conv_out",
];

fn over(pattern: &str) -> Override {
    Override {
        pattern: pattern.into(),
        weight_bits: None,
        act_bits: None,
        granularity: None,
        weight_quantizer: None,
        keep_float: None,
    }
}

fn quantized(w: u8, a: u8) -> LayerPlan {
    LayerPlan {
        weight_bits: Some(w),
        act_bits: Some(a),
        granularity: Granularity::PerChannel,
        split_skip: true,
    }
}

const FLOAT: LayerPlan = LayerPlan {
    weight_bits: None,
    act_bits: None,
    granularity: Granularity::PerChannel,
    split_skip: true,
};

#[test]
fn keep_float_defaults_on_the_unet() {
    let c = QuantConfig::builtin("base-w4a8").unwrap();
    for path in [
        "conv_in",
        "conv_out",
        "time_embedding.linear_1",
        "time_embedding.linear_2",
        "down_blocks.0.resnets.0.time_emb_proj",
        "mid_block.resnets.1.time_emb_proj",
        "up_blocks.3.resnets.2.time_emb_proj",
        "down_blocks.1.attentions.0.attn_scores",
        "mid_block.attentions.0.attn_values",
    ] {
        let p = c.layer_plan(path);
        assert_eq!(p, FLOAT, "{path}");
        assert!(p.is_float());
    }
    for path in [
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.resnets.0.conv2",
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.0.downsamplers.0.conv",
        "down_blocks.1.attentions.0.to_q",
        "down_blocks.1.attentions.0.to_out.0",
        "mid_block.attentions.0.to_v",
        "up_blocks.0.resnets.0.conv_shortcut",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.3.resnets.2.conv1",
    ] {
        assert_eq!(c.layer_plan(path), quantized(4, 8), "{path}");
    }
    // 125 layers: 2 convs, 2 time-embedding linears, 22 time projections, 12 matmuls stay float
    let plans = c.layer_plans(&LAYERS);
    assert_eq!(plans.len(), 125);
    let float: Vec<&String> = plans
        .iter()
        .filter(|(_, p)| p.is_float())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(float.len(), 38, "{float:?}");
    assert!(plans
        .values()
        .filter(|p| !p.is_float())
        .all(|p| *p == quantized(4, 8)));
    assert!(
        c.check_patterns(&LAYERS).is_empty(),
        "default patterns are not reported"
    );
}

#[test]
fn bits_follow_each_recipe() {
    for (name, w, a) in [
        ("rtn-w8a8", 8, 8),
        ("rtn-w4a8", 4, 8),
        ("base-w8a8", 8, 8),
        ("base-w4a8", 4, 8),
        ("base-w4a6", 4, 6),
    ] {
        let c = QuantConfig::builtin(name).unwrap();
        assert_eq!(
            c.layer_plan("down_blocks.0.resnets.0.conv1"),
            quantized(w, a),
            "{name}"
        );
        assert_eq!(c.layer_plan("conv_in"), FLOAT, "{name}");
    }
}

#[test]
fn shortcut_override_applies_to_decoder_shortcuts_only() {
    let text = format!(
        "{}\n[[overrides]]\npattern = \"up_blocks.*.conv_shortcut\"\nweight_bits = 8\n",
        include_str!("../../../configs/base-w4a8.toml")
    );
    let c = QuantConfig::from_toml_str(&text, "shortcut8.toml").unwrap();
    let plans = c.layer_plans(&LAYERS);
    let mut hit = 0;
    for (path, plan) in &plans {
        if path.starts_with("up_blocks.") && path.ends_with(".conv_shortcut") {
            assert_eq!(*plan, quantized(8, 8), "{path}");
            hit += 1;
        } else if !plan.is_float() {
            assert_eq!(*plan, quantized(4, 8), "{path}");
        }
    }
    assert_eq!(hit, 12);
    assert_eq!(
        c.layer_plan("down_blocks.1.resnets.0.conv_shortcut"),
        quantized(4, 8)
    );
    assert!(c.check_patterns(&LAYERS).is_empty());
}

#[test]
fn later_overrides_win_field_by_field() {
    let mut c = QuantConfig::builtin("base-w4a8").unwrap();
    c.overrides = vec![
        Override {
            weight_bits: Some(8),
            act_bits: Some(6),
            ..over("up_blocks.*")
        },
        Override {
            weight_bits: Some(6),
            ..over("up_blocks.2.*")
        },
        Override {
            granularity: Some(Granularity::PerTensor),
            weight_quantizer: None,
            ..over("*.to_q")
        },
        Override {
            weight_bits: Some(3),
            ..over("up_blocks.2.attentions.0.to_q")
        },
    ];
    c.validate().unwrap();
    assert_eq!(c.layer_plan("up_blocks.0.resnets.0.conv1"), quantized(8, 6));
    assert_eq!(c.layer_plan("up_blocks.2.resnets.0.conv1"), quantized(6, 6));
    assert_eq!(
        c.layer_plan("up_blocks.2.attentions.0.to_q"),
        LayerPlan {
            weight_bits: Some(3),
            act_bits: Some(6),
            granularity: Granularity::PerTensor,
            split_skip: true
        }
    );
    assert_eq!(
        c.layer_plan("up_blocks.2.attentions.1.to_q"),
        LayerPlan {
            weight_bits: Some(6),
            act_bits: Some(6),
            granularity: Granularity::PerTensor,
            split_skip: true
        }
    );
    assert_eq!(
        c.layer_plan("down_blocks.1.attentions.0.to_q"),
        LayerPlan {
            granularity: Granularity::PerTensor,
            ..quantized(4, 8)
        }
    );
    assert_eq!(
        c.layer_plan("down_blocks.1.attentions.0.to_k"),
        quantized(4, 8)
    );
    // bits from a broad pattern do not quantize keep_float layers
    assert_eq!(c.layer_plan("up_blocks.0.resnets.0.time_emb_proj"), FLOAT);
    assert_eq!(c.layer_plan("up_blocks.2.attentions.0.attn_scores"), FLOAT);

    // the same overrides in the other order: the broad one now wins
    c.overrides.swap(0, 1);
    assert_eq!(c.layer_plan("up_blocks.2.resnets.0.conv1"), quantized(8, 6));
}

#[test]
fn keep_float_overrides_and_float_activations() {
    let mut c = QuantConfig::builtin("base-w4a8").unwrap();
    c.overrides = vec![
        // PTQD-style: first and last conv W8A8 instead of float
        Override {
            keep_float: Some(false),
            weight_bits: Some(8),
            act_bits: Some(8),
            ..over("{conv_in,conv_out}")
        },
        // a whole block kept float
        Override {
            keep_float: Some(true),
            ..over("mid_block.*")
        },
        // weight-only quantization of the attention projections
        Override {
            act_bits: Some(16),
            ..over("*.to_{q,k,v}")
        },
        // and one of those back to float after all
        Override {
            keep_float: Some(true),
            ..over("down_blocks.1.attentions.1.to_q")
        },
        // un-float a single time projection
        Override {
            keep_float: Some(false),
            ..over("down_blocks.0.resnets.0.time_emb_proj")
        },
    ];
    c.validate().unwrap();
    assert_eq!(c.layer_plan("conv_in"), quantized(8, 8));
    assert_eq!(c.layer_plan("conv_out"), quantized(8, 8));
    assert_eq!(c.layer_plan("mid_block.resnets.0.conv1"), FLOAT);
    assert_eq!(c.layer_plan("mid_block.attentions.0.to_q"), FLOAT);
    let wonly = c.layer_plan("up_blocks.2.attentions.2.to_k");
    assert_eq!(
        wonly,
        LayerPlan {
            act_bits: None,
            ..quantized(4, 8)
        }
    );
    assert!(!wonly.is_float());
    assert_eq!(
        c.layer_plan("down_blocks.1.attentions.1.to_out.0"),
        quantized(4, 8)
    );
    assert_eq!(c.layer_plan("down_blocks.1.attentions.1.to_q"), FLOAT);
    assert_eq!(
        c.layer_plan("down_blocks.0.resnets.0.time_emb_proj"),
        quantized(4, 8)
    );
    assert_eq!(c.layer_plan("down_blocks.0.resnets.1.time_emb_proj"), FLOAT);

    // A16 for the whole recipe: weight-only quantization everywhere
    let mut w4a16 = QuantConfig::builtin("base-w4a8").unwrap();
    w4a16.activations.bits = 16;
    w4a16.validate().unwrap();
    assert_eq!(
        w4a16.layer_plan("up_blocks.1.resnets.0.conv1"),
        LayerPlan {
            act_bits: None,
            ..quantized(4, 8)
        }
    );

    // split_skip is passed through
    let mut nosplit = QuantConfig::builtin("base-w4a8").unwrap();
    nosplit.layers.split_skip = false;
    assert!(
        !nosplit
            .layer_plan("up_blocks.0.resnets.0.conv_shortcut")
            .split_skip
    );
}

#[test]
fn glob_semantics() {
    let mut c = QuantConfig::builtin("base-w4a8").unwrap();
    c.overrides = vec![
        Override {
            weight_bits: Some(8),
            ..over("down_blocks.1")
        },
        Override {
            weight_bits: Some(7),
            ..over("down_blocks.?.downsamplers.0.conv")
        },
        Override {
            weight_bits: Some(6),
            ..over("up_blocks.[01].upsamplers.*")
        },
    ];
    // anchored: a bare prefix matches no layer
    assert_eq!(
        c.layer_plan("down_blocks.1.resnets.0.conv1"),
        quantized(4, 8)
    );
    assert_eq!(
        c.layer_plan("down_blocks.2.downsamplers.0.conv"),
        quantized(7, 8)
    );
    assert_eq!(
        c.layer_plan("up_blocks.1.upsamplers.0.conv"),
        quantized(6, 8)
    );
    assert_eq!(
        c.layer_plan("up_blocks.2.upsamplers.0.conv"),
        quantized(4, 8)
    );
    // case-sensitive
    c.overrides = vec![Override {
        keep_float: Some(true),
        ..over("CONV_*")
    }];
    assert_eq!(
        c.layer_plan("down_blocks.0.resnets.0.conv1"),
        quantized(4, 8)
    );
}

#[test]
fn check_patterns_reports_patterns_that_match_nothing() {
    let text = format!(
        "{}\n[[overrides]]\npattern = \"up_blocks.*.conv_shortcut\"\nweight_bits = 8\n\
         [[overrides]]\npattern = \"up_blocks.*.nin_shortcut\"\nweight_bits = 8\n\
         [[overrides]]\npattern = \"*.to_q\"\nact_bits = 16\n",
        include_str!("../../../configs/base-w4a8.toml").replace(
            "    \"class_embedding.*\",\n",
            "    \"class_embedding.*\",\n    \"temb.dense.*\",\n    \"*.attn_values\",\n"
        )
    );
    let c = QuantConfig::from_toml_str(&text, "typos.toml").unwrap();
    let warnings = c.check_patterns(&LAYERS);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0].field, "layers.keep_float[7]");
    assert_eq!(warnings[0].pattern, "temb.dense.*");
    assert_eq!(warnings[1].field, "overrides[1].pattern");
    assert_eq!(warnings[1].pattern, "up_blocks.*.nin_shortcut");
    assert_eq!(warnings[1].layers, 125);
    let shown = warnings[1].to_string();
    assert!(
        shown.contains("overrides[1].pattern")
            && shown.contains("nin_shortcut")
            && shown.contains("125"),
        "{shown}"
    );
    // on a model without layers every override and the one non-default keep_float entry are
    // reported (the repeated default `*.attn_values` is not)
    assert_eq!(c.check_patterns::<&str>(&[]).len(), 4);
    // and with Vec<String> paths
    let owned: Vec<String> = LAYERS.iter().map(|s| s.to_string()).collect();
    assert_eq!(c.check_patterns(&owned), warnings);
}
