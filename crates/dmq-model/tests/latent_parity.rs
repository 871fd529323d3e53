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

fn weights(dir: &Path) -> WeightStore {
    WeightStore::open(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
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

pub fn load_unet() -> UNet2DConditionModel {
    let dir = tiny().join("sd/unet");
    let cfg = UNet2DConditionConfig::from_file(&dir.join("config.json")).unwrap();
    UNet2DConditionModel::load(cfg, &weights(&dir)).unwrap()
}

pub fn load_vae(model: &str) -> AutoencoderKL {
    let dir = tiny().join(model).join("vae");
    let cfg = AutoencoderKLConfig::from_file(&dir.join("config.json")).unwrap();
    AutoencoderKL::load(cfg, &weights(&dir)).unwrap()
}

pub fn load_dit() -> DiTTransformer2DModel {
    let dir = tiny().join("dit/transformer");
    let cfg = PatchTransformerConfig::dit_from_file(&dir.join("config.json")).unwrap();
    DiTTransformer2DModel::load(cfg, &weights(&dir)).unwrap()
}

pub fn load_pixart() -> PixArtTransformer2DModel {
    let dir = tiny().join("pixart/transformer");
    let cfg = PatchTransformerConfig::pixart_from_file(&dir.join("config.json")).unwrap();
    PixArtTransformer2DModel::load(cfg, &weights(&dir)).unwrap()
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
