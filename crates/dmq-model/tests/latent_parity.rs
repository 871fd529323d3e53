//! Parity of the latent, text-conditional and transformer models with diffusers on the
//! tiny random-weight goldens of `shared/models/tiny-latent` (see its README): single calls
//! within `max|a−b|/max|b| ≤ 1e-4`, every `act.*` tap included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmq_model::compare::max_rel_err;
use dmq_model::{
    AutoencoderKL, AutoencoderKLConfig, Ctx, DiTTransformer2DModel, PatchTransformerConfig,
    PixArtTransformer2DModel, Timesteps, UNet2DConditionConfig, UNet2DConditionModel, WeightStore,
};

const SINGLE_CALL_TOL: f32 = 1e-4;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/tiny-latent")
}

fn goldens(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny().join(rel), &Device::Cpu).unwrap()
}

fn timesteps(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect()
}

/// Asserts `got` matches golden `name` and prints the error (the numbers of the record).
fn check(what: &str, name: &str, got: &Tensor, g: &HashMap<String, Tensor>) {
    let want = g
        .get(name)
        .unwrap_or_else(|| panic!("{what}: golden has no `{name}`"));
    assert_eq!(got.dims(), want.dims(), "{what} {name}: shape");
    let e = max_rel_err(got, want).unwrap();
    eprintln!("{what} {name}: max rel err {e:.2e}");
    assert!(e <= SINGLE_CALL_TOL, "{what} {name}: rel err {e:.3e}");
}

/// Every `act.*` golden must have been tapped (under the module path) and match.
fn check_taps(what: &str, ctx: &Ctx, g: &HashMap<String, Tensor>) {
    let taps = ctx.take_taps();
    let mut names: Vec<&String> = g.keys().filter(|k| k.starts_with("act.")).collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let module = &name["act.".len()..];
        let got = taps
            .get(module)
            .unwrap_or_else(|| panic!("{what}: no tap for `{module}`"));
        check(what, name, got, g);
    }
}

fn load_unet() -> UNet2DConditionModel {
    UNet2DConditionModel::from_folder(&tiny().join("sd/unet"), &Device::Cpu, DType::F32).unwrap()
}

fn load_vae(model: &str) -> AutoencoderKL {
    let dir = tiny().join(model).join("vae");
    AutoencoderKL::from_folder(&dir, &Device::Cpu, DType::F32).unwrap()
}

fn load_dit() -> DiTTransformer2DModel {
    let dir = tiny().join("dit/transformer");
    DiTTransformer2DModel::from_folder(&dir, &Device::Cpu, DType::F32).unwrap()
}

fn load_pixart() -> PixArtTransformer2DModel {
    let dir = tiny().join("pixart/transformer");
    PixArtTransformer2DModel::from_folder(&dir, &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn sd_unet_matches_diffusers() {
    let unet = load_unet();
    assert_eq!(unet.num_params, 792_964, "README's parameter count");
    let g = goldens("sd/golden/unet_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    assert_eq!(ts, vec![999.0, 21.0]);
    let ctx = Ctx::inference().with_taps();
    let eps = unet
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            &ctx,
        )
        .unwrap();
    check_taps("sd unet", &ctx, &g);
    check("sd unet", "eps", &eps, &g);
    let eps500 = unet
        .forward(
            &g["latents"],
            Timesteps::Shared(500.0),
            &g["encoder_hidden_states"],
            &Ctx::inference(),
        )
        .unwrap();
    check("sd unet", "eps_t500_all", &eps500, &g);
}

#[test]
fn sd_vae_matches_diffusers() {
    let vae = load_vae("sd");
    assert_eq!(vae.num_params, 214_615, "README's parameter count");
    let g = goldens("sd/golden/vae.safetensors");
    let images = vae.decode(&g["z"], &Ctx::inference()).unwrap();
    check("sd vae", "images", &images, &g);
    let (mean, logvar) = vae.encode(&g["x"], &Ctx::inference()).unwrap();
    check("sd vae", "enc_mean", &mean, &g);
    check("sd vae", "enc_logvar", &logvar, &g);
}

#[test]
fn dit_matches_diffusers() {
    let dit = load_dit();
    assert_eq!(dit.num_params, 124_160, "README's parameter count");
    let g = goldens("dit/golden/transformer_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let table = dit.pos_embed.table(4, 4, &g["latents"]).unwrap();
    check("dit", "pos_embed_table", &table, &g);
    let ctx = Ctx::inference().with_taps();
    let out = dit
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["class_labels"],
            &ctx,
        )
        .unwrap();
    check_taps("dit", &ctx, &g);
    check("dit", "out", &out, &g);
}

#[test]
fn pixart_matches_diffusers() {
    let pixart = load_pixart();
    assert_eq!(pixart.num_params, 53_376, "README's parameter count");
    let g = goldens("pixart/golden/transformer_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let table = pixart.pos_embed.table(4, 4, &g["latents"]).unwrap();
    check("pixart", "pos_embed_table", &table, &g);
    let ctx = Ctx::inference().with_taps();
    let out = pixart
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            Some(&g["encoder_attention_mask"]),
            &ctx,
        )
        .unwrap();
    check_taps("pixart", &ctx, &g);
    check("pixart", "out", &out, &g);
    let out = pixart
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            None,
            &Ctx::inference(),
        )
        .unwrap();
    check("pixart", "out_nomask", &out, &g);
}

/// The config text of `rel` with `from` replaced by `to` (which must occur).
fn edited_config(rel: &str, from: &str, to: &str) -> (PathBuf, String) {
    let path = tiny().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    (path, text.replace(from, to))
}

#[test]
fn unsupported_config_values_name_file_and_field() {
    let (path, text) = edited_config(
        "sd/unet/config.json",
        "\"CrossAttnDownBlock2D\"",
        "\"SimpleCrossAttnDownBlock2D\"",
    );
    let e = UNet2DConditionConfig::from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("sd/unet/config.json"), "{e}");
    assert!(e.contains("`down_block_types`"), "{e}");
    assert!(e.contains("SimpleCrossAttnDownBlock2D"), "{e}");

    let (path, text) = edited_config(
        "sd/unet/config.json",
        "\"num_attention_heads\": null",
        "\"num_attention_heads\": 4",
    );
    let e = UNet2DConditionConfig::from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`num_attention_heads`"), "{e}");

    let (path, text) = edited_config(
        "dit/transformer/config.json",
        "\"ada_norm_zero\"",
        "\"ada_norm\"",
    );
    let e = PatchTransformerConfig::dit_from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("dit/transformer/config.json"), "{e}");
    assert!(e.contains("`norm_type`") && e.contains("ada_norm"), "{e}");

    let (path, text) = edited_config(
        "pixart/transformer/config.json",
        "\"gelu-approximate\"",
        "\"swiglu\"",
    );
    let e = PatchTransformerConfig::pixart_from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`activation_fn`") && e.contains("swiglu"), "{e}");

    let (path, text) = edited_config(
        "sd/vae/config.json",
        "\"UpDecoderBlock2D\"",
        "\"AttnUpDecoderBlock2D\"",
    );
    let e = AutoencoderKLConfig::from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sd/vae/config.json") && e.contains("`up_block_types`"),
        "{e}"
    );

    // A key diffusers does not have is refused rather than ignored.
    let (path, text) = edited_config(
        "pixart/transformer/config.json",
        "\"num_layers\": 2,",
        "\"num_layers\": 2, \"use_rope\": true,",
    );
    let e = PatchTransformerConfig::pixart_from_json_str(&path, &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`use_rope`"), "{e}");
}

/// PixArt's checkpoint rewritten with `edit` applied to its tensors, then loaded.
fn load_pixart_edited(
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> dmq_model::Result<PixArtTransformer2DModel> {
    let dir = tiny().join("pixart/transformer");
    let mut tensors = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    edit(&mut tensors);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let cfg = PatchTransformerConfig::pixart_from_file(&dir.join("config.json")).unwrap();
    let w = WeightStore::open(&file, &Device::Cpu, DType::F32)?;
    PixArtTransformer2DModel::load(cfg, &w)
}

#[test]
fn missing_or_unused_checkpoint_tensors_are_named() {
    let missing = "transformer_blocks.1.attn2.to_k.bias";
    let e = load_pixart_edited(|t| {
        t.remove(missing).unwrap();
    })
    .err()
    .expect("a missing tensor must fail")
    .to_string();
    eprintln!("{e}");
    assert!(e.contains(missing) && e.contains("missing"), "{e}");

    let extra = "transformer_blocks.0.attn2.norm_q.weight";
    let e = load_pixart_edited(|t| {
        t.insert(
            extra.into(),
            Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
        );
    })
    .err()
    .expect("an unused tensor must fail")
    .to_string();
    eprintln!("{e}");
    assert!(e.contains(extra) && e.contains("not used"), "{e}");

    // A wrong shape names the tensor too.
    let e = load_pixart_edited(|t| {
        t.insert(
            "scale_shift_table".into(),
            Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    })
    .err()
    .expect("a wrong shape must fail")
    .to_string();
    assert!(e.contains("scale_shift_table"), "{e}");
}

const TRAJECTORY_TOL: f32 = 1e-3;

fn check_traj(what: &str, name: &str, got: &Tensor, g: &HashMap<String, Tensor>) {
    let want = &g[name];
    assert_eq!(got.dims(), want.dims(), "{what} {name}: shape");
    let e = max_rel_err(got, want).unwrap();
    eprintln!("{what} {name}: max rel err {e:.2e}");
    assert!(e <= TRAJECTORY_TOL, "{what} {name}: rel err {e:.3e}");
}

/// The scheduler of `model` for 10 DDIM steps (eta 0), checked against the golden's schedule.
fn ddim10(model: &str, g: &HashMap<String, Tensor>) -> dmq_sched::Ddim {
    let cfg = dmq_sched::ScheduleConfig::from_file(
        &tiny().join(model).join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let sched = dmq_sched::Ddim::new(&cfg, 10, 0.0).unwrap();
    let want: Vec<usize> = g["timesteps"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as usize)
        .collect();
    assert_eq!(dmq_sched::Scheduler::timesteps(&sched), want.as_slice());
    let acp: Vec<f32> = cfg.alphas_cumprod().iter().map(|&a| a as f32).collect();
    let acp = Tensor::from_vec(acp, 1000, &Device::Cpu).unwrap();
    check_traj(model, "alphas_cumprod", &acp, g);
    let last = sched.coefficients(9).unwrap().alpha_prod_t_prev as f32;
    let want_last = g["final_alpha_cumprod"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (last - want_last).abs() <= 1e-6 * want_last,
        "{last} vs {want_last}"
    );
    sched
}

/// `VaeImageProcessor.postprocess(output_type="pt")`: `[-1, 1]` → `[0, 1]`, clamped.
fn postprocess(raw: &Tensor) -> Tensor {
    ((raw * 0.5).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
}

#[test]
fn sd_ddim10_cfg_trajectory_matches_diffusers() {
    let g = goldens("sd/golden/ddim10_cfg.safetensors");
    let unet = load_unet();
    let vae = load_vae("sd");
    let sched = ddim10("sd", &g);
    let scale = g["guidance_scale"].to_vec1::<f32>().unwrap()[0] as f64;
    let guidance = dmq_sched::Guidance {
        scale,
        order: dmq_sched::CfgOrder::UncondFirst,
        prediction_channels: None,
    };
    let context = Tensor::cat(&[&g["negative_prompt_embeds"], &g["prompt_embeds"]], 0).unwrap();
    let mut xs = vec![g["latents_T"].clone()];
    let (mut guided, mut x0s) = (Vec::new(), Vec::new());
    let final_latents = dmq_sched::sample_guided(
        &sched,
        g["latents_T"].clone(),
        &guidance,
        |x2, t, i| {
            unet.forward(x2, Timesteps::Shared(t as f64), &context, &Ctx::at_step(i))
                .map_err(dmq_sched::SchedError::other)
        },
        |_| Ok(None),
        |_, eps, out| {
            guided.push(eps.clone());
            x0s.push(out.pred_original_sample.clone());
            xs.push(out.prev_sample.clone());
        },
    )
    .unwrap();
    let stack = |v: &[Tensor]| Tensor::stack(v, 0).unwrap();
    check_traj("sd", "noise_pred", &stack(&guided), &g);
    check_traj("sd", "pred_x0", &stack(&x0s), &g);
    check_traj("sd", "xs", &stack(&xs), &g);
    check_traj("sd", "final_latents", &final_latents, &g);
    let sf = vae.config.scaling_factor;
    let raw = vae
        .decode(&(&final_latents / sf).unwrap(), &Ctx::inference())
        .unwrap();
    check_traj("sd", "image_raw", &raw, &g);
    check_traj("sd", "image", &postprocess(&raw), &g);
}

#[test]
fn dit_ddim10_cfg_trajectory_matches_diffusers() {
    let g = goldens("dit/golden/ddim10_cfg.safetensors");
    let dit = load_dit();
    let vae = load_vae("dit");
    let sched = ddim10("dit", &g);
    let scale = g["guidance_scale"].to_vec1::<f32>().unwrap()[0] as f64;
    let guidance = dmq_sched::Guidance {
        scale,
        order: dmq_sched::CfgOrder::CondFirst,
        prediction_channels: Some(dit.config.in_channels),
    };
    let labels = &g["class_labels_input"];
    let mut xs = vec![g["latents_T"].clone()];
    let (mut raw_out, mut guided) = (Vec::new(), Vec::new());
    let final_latents = dmq_sched::sample_guided(
        &sched,
        g["latents_T"].clone(),
        &guidance,
        |x2, t, i| {
            let out = dit
                .forward(x2, Timesteps::Shared(t as f64), labels, &Ctx::at_step(i))
                .map_err(dmq_sched::SchedError::other)?;
            raw_out.push(out.clone());
            Ok(out)
        },
        |_| Ok(None),
        |_, eps, out| {
            guided.push(eps.clone());
            xs.push(out.prev_sample.clone());
        },
    )
    .unwrap();
    let stack = |v: &[Tensor]| Tensor::stack(v, 0).unwrap();
    check_traj("dit", "model_out", &stack(&raw_out), &g);
    check_traj("dit", "guided_eps", &stack(&guided), &g);
    check_traj("dit", "xs", &stack(&xs), &g);
    check_traj("dit", "final_latents", &final_latents, &g);
    let sf = vae.config.scaling_factor;
    let raw = vae
        .decode(&(&final_latents * (1.0 / sf)).unwrap(), &Ctx::inference())
        .unwrap();
    check_traj("dit", "image_raw", &raw, &g);
    check_traj("dit", "image", &postprocess(&raw), &g);
}

/// Calibration runs with `Ctx::differentiable()` (composed softmax and LayerNorm, which have a
/// backward pass): the same goldens must hold there too.
#[test]
fn differentiable_context_matches_diffusers_too() {
    let ctx = Ctx::differentiable();
    let g = goldens("sd/golden/unet_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let eps = load_unet()
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            &ctx,
        )
        .unwrap();
    check("sd unet (differentiable)", "eps", &eps, &g);

    let g = goldens("sd/golden/vae.safetensors");
    let images = load_vae("sd").decode(&g["z"], &ctx).unwrap();
    check("sd vae (differentiable)", "images", &images, &g);

    let g = goldens("dit/golden/transformer_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let out = load_dit()
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["class_labels"],
            &ctx,
        )
        .unwrap();
    check("dit (differentiable)", "out", &out, &g);

    let g = goldens("pixart/golden/transformer_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let out = load_pixart()
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            Some(&g["encoder_attention_mask"]),
            &ctx,
        )
        .unwrap();
    check("pixart (differentiable)", "out", &out, &g);
}

/// `layers_mut` is what quantization passes visit: it must list every conv and linear of the
/// checkpoint (rank-2/4 `.weight` tensors other than embedding tables) exactly once.
#[test]
fn layers_mut_lists_every_conv_and_linear_once() {
    fn expected(dir: &str) -> Vec<String> {
        let t = candle_core::safetensors::load(
            tiny().join(dir).join("diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let mut v: Vec<String> = t
            .iter()
            .filter(|(n, w)| {
                n.ends_with(".weight")
                    && !n.contains("embedding_table")
                    && matches!(w.rank(), 2 | 4)
            })
            .map(|(n, _)| n.trim_end_matches(".weight").to_string())
            .collect();
        v.sort();
        v
    }
    fn sorted(paths: Vec<String>) -> Vec<String> {
        let n = paths.len();
        let mut v = paths;
        v.sort();
        v.dedup();
        assert_eq!(v.len(), n, "a layer is listed twice");
        v
    }
    let mut unet = load_unet();
    let paths: Vec<String> = unet
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(paths[0], "time_embedding.linear_1");
    assert_eq!(paths.last().unwrap(), "conv_out");
    assert_eq!(sorted(paths), expected("sd/unet"));
    let mut vae = load_vae("sd");
    let paths = vae
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(sorted(paths), expected("sd/vae"));
    let mut dit = load_dit();
    let paths = dit
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(sorted(paths), expected("dit/transformer"));
    let mut pixart = load_pixart();
    let paths = pixart
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(sorted(paths), expected("pixart/transformer"));
}

/// Under `Ctx::differentiable()` gradients flow back to the input through every op (fused
/// kernels without a backward pass would fail or cut the graph).
#[test]
fn differentiable_context_has_gradients() {
    fn grad_ok(what: &str, x: &candle_core::Var, out: &Tensor) {
        let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(x)
            .unwrap_or_else(|| panic!("{what}: no gradient"));
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            v.iter().all(|a| a.is_finite()),
            "{what}: non-finite gradient"
        );
        assert!(v.iter().any(|a| *a != 0.0), "{what}: zero gradient");
    }
    let ctx = Ctx::differentiable();
    let g = goldens("sd/golden/unet_call.safetensors");
    let x = candle_core::Var::from_tensor(&g["latents"]).unwrap();
    let out = load_unet()
        .forward(
            &x,
            Timesteps::Shared(500.0),
            &g["encoder_hidden_states"],
            &ctx,
        )
        .unwrap();
    grad_ok("sd unet", &x, &out);
    let g = goldens("pixart/golden/transformer_call.safetensors");
    let x = candle_core::Var::from_tensor(&g["latents"]).unwrap();
    let out = load_pixart()
        .forward(
            &x,
            Timesteps::Shared(500.0),
            &g["encoder_hidden_states"],
            Some(&g["encoder_attention_mask"]),
            &ctx,
        )
        .unwrap();
    grad_ok("pixart", &x, &out);
}

/// Paths of the convs and linears a traced forward ran, in first-use order.
fn traced_layers(ctx: Ctx) -> Vec<String> {
    let mut seen = Vec::<String>::new();
    for op in ctx.take_trace() {
        if op.kind != dmq_model::ctx::OpKind::ActMatmul && !seen.contains(&op.path) {
            seen.push(op.path);
        }
    }
    seen
}

/// `layers_mut` lists layers in forward order (what per-layer calibration relies on), and a
/// traced forward sees the attention matmuls too.
#[test]
fn layers_mut_is_in_forward_order() {
    let ctx = Ctx::tracing();
    let g = goldens("sd/golden/unet_call.safetensors");
    let mut unet = load_unet();
    unet.forward(
        &g["latents"],
        Timesteps::Shared(500.0),
        &g["encoder_hidden_states"],
        &ctx,
    )
    .unwrap();
    let trace = ctx.take_trace();
    assert!(trace.iter().any(|op| op.path
        == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.attn_scores"
        && op.output_shape == [2, 8, 64, 77]));
    let ctx = Ctx::tracing();
    unet.forward(
        &g["latents"],
        Timesteps::Shared(500.0),
        &g["encoder_hidden_states"],
        &ctx,
    )
    .unwrap();
    let paths: Vec<String> = unet
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(traced_layers(ctx), paths);

    let g = goldens("sd/golden/vae.safetensors");
    let mut vae = load_vae("sd");
    let ctx = Ctx::tracing();
    vae.encode(&g["x"], &ctx).unwrap();
    vae.decode(&g["z"], &ctx).unwrap();
    let paths: Vec<String> = vae
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(traced_layers(ctx), paths);

    let g = goldens("dit/golden/transformer_call.safetensors");
    let mut dit = load_dit();
    let ctx = Ctx::tracing();
    dit.forward(
        &g["latents"],
        Timesteps::Shared(500.0),
        &g["class_labels"],
        &ctx,
    )
    .unwrap();
    let paths: Vec<String> = dit
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(traced_layers(ctx), paths);

    let g = goldens("pixart/golden/transformer_call.safetensors");
    let mut pixart = load_pixart();
    let ctx = Ctx::tracing();
    pixart
        .forward(
            &g["latents"],
            Timesteps::Shared(500.0),
            &g["encoder_hidden_states"],
            Some(&g["encoder_attention_mask"]),
            &ctx,
        )
        .unwrap();
    let paths: Vec<String> = pixart
        .layers_mut()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    assert_eq!(traced_layers(ctx), paths);
}

/// `use_linear_projection` (SD 2.x) and a per-block `attention_head_dim` list: the tiny SD UNet
/// with its 1x1 `proj_in`/`proj_out` convs rewritten as linear weights and the head count given
/// as `[8, 8]` is the same function, so it must meet the same golden.
#[test]
fn linear_projection_and_head_list_variant_matches() {
    let dir = tiny().join("sd/unet");
    let (path, text) = edited_config(
        "sd/unet/config.json",
        "\"use_linear_projection\": false",
        "\"use_linear_projection\": true",
    );
    let text = text.replace(
        "\"attention_head_dim\": 8",
        "\"attention_head_dim\": [8, 8]",
    );
    let cfg = UNet2DConditionConfig::from_json_str(&path, &text).unwrap();
    assert!(cfg.use_linear_projection);
    let mut tensors = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut rewritten = 0;
    for (name, t) in tensors.iter_mut() {
        if (name.ends_with("proj_in.weight") || name.ends_with("proj_out.weight")) && t.rank() == 4
        {
            let (o, i, _, _) = t.dims4().unwrap();
            *t = t.reshape((o, i)).unwrap();
            rewritten += 1;
        }
    }
    // down_blocks.0 (1), mid_block (1), up_blocks.1 (layers_per_block + 1 = 2).
    assert_eq!(
        rewritten, 8,
        "4 spatial transformers, proj_in and proj_out each"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let w = WeightStore::open(&file, &Device::Cpu, DType::F32).unwrap();
    let mut unet = UNet2DConditionModel::load(cfg, &w).unwrap();
    assert!(unet
        .layers_mut()
        .iter()
        .any(|l| l.path() == "down_blocks.0.attentions.0.proj_in"
            && l.layer_ref().kind == dmq_model::layers::LayerKind::Linear));
    let g = goldens("sd/golden/unet_call.safetensors");
    let ts = timesteps(&g["timesteps"]);
    let eps = unet
        .forward(
            &g["latents"],
            Timesteps::PerSample(&ts),
            &g["encoder_hidden_states"],
            &Ctx::inference(),
        )
        .unwrap();
    check("sd unet (linear projection)", "eps", &eps, &g);
}

/// The published DiT-XL-2 and PixArt-α transformer configs use the older `Transformer2DModel`
/// class and keys; they must parse (to the patch models diffusers remaps them to).
#[test]
fn transformer2d_model_style_configs_parse() {
    let dit = r#"{"_class_name": "Transformer2DModel", "_diffusers_version": "0.12.0.dev0",
        "activation_fn": "gelu-approximate", "attention_bias": true, "attention_head_dim": 72,
        "cross_attention_dim": null, "dropout": 0.0, "in_channels": 4,
        "norm_elementwise_affine": false, "norm_num_groups": 32, "norm_type": "ada_norm_zero",
        "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28,
        "num_vector_embeds": null, "only_cross_attention": false, "out_channels": 8,
        "patch_size": 2, "sample_size": 32, "upcast_attention": false,
        "use_linear_projection": false}"#;
    let cfg = PatchTransformerConfig::dit_from_json_str(Path::new("dit/config.json"), dit).unwrap();
    assert_eq!(
        (cfg.inner_dim(), cfg.num_layers, cfg.norm_eps),
        (1152, 28, 1e-5)
    );
    let pixart = r#"{"_class_name": "Transformer2DModel", "activation_fn": "gelu-approximate",
        "attention_bias": true, "attention_head_dim": 72, "attention_type": "default",
        "caption_channels": 4096, "cross_attention_dim": 1152, "double_self_attention": false,
        "dropout": 0.0, "in_channels": 4, "interpolation_scale": null,
        "norm_elementwise_affine": false, "norm_eps": 1e-06, "norm_num_groups": 32,
        "norm_type": "ada_norm_single", "num_attention_heads": 16, "num_embeds_ada_norm": 1000,
        "num_layers": 28, "num_vector_embeds": null, "only_cross_attention": false,
        "out_channels": 8, "patch_size": 2, "sample_size": 64, "upcast_attention": false,
        "use_additional_conditions": null, "use_linear_projection": false}"#;
    let cfg = PatchTransformerConfig::pixart_from_json_str(Path::new("pixart/config.json"), pixart)
        .unwrap();
    assert_eq!(
        (cfg.caption_channels, cfg.interpolation_scale),
        (Some(4096), 1.0)
    );
    // At sample_size 128 diffusers turns resolution/aspect-ratio conditioning on by default.
    let e = PatchTransformerConfig::pixart_from_json_str(
        Path::new("pixart/config.json"),
        &pixart.replace("\"sample_size\": 64", "\"sample_size\": 128"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`use_additional_conditions`"), "{e}");
}

/// The published Stable Diffusion 1.5 UNet config (written by diffusers 0.6, so without the
/// later keys, which take their defaults: a cross-attention mid block among them).
#[test]
fn sd15_style_unet_config_parses() {
    let sd15 = r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"]}"#;
    let cfg = UNet2DConditionConfig::from_json_str(Path::new("unet/config.json"), sd15).unwrap();
    assert!(cfg.has_mid_block);
    assert_eq!(cfg.heads, vec![8, 8, 8, 8]);
    assert_eq!(cfg.time_embed_dim(), 1280);
    let no_mid = sd15.replace("\"act_fn\"", "\"mid_block_type\": null, \"act_fn\"");
    let cfg = UNet2DConditionConfig::from_json_str(Path::new("unet/config.json"), &no_mid).unwrap();
    assert!(!cfg.has_mid_block);
}
