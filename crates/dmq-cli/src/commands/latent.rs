//! Latent and transformer pipelines (Stable Diffusion's `UNet2DConditionModel`, DiT, PixArt-α)
//! in the CLI: their conditioning inputs (`--prompt-embeds`, `--class-labels`,
//! `--guidance-scale`), classifier-free-guided sampling, and decoding latents to images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use dmq_model::{AutoencoderKL, Conditioning, Ctx, Denoiser, DenoiserClass, DenoiserModel};
use dmq_quant::calib::CalibGuidance;
use dmq_sched::{CfgOrder, Guidance, NoiseSource, OutputCorrection, SchedError, Scheduler};
use serde_json::json;

use super::{ExecMode, ModelArgs};

/// What conditions a latent model: used by `dmq sample` and `dmq quantize` (calibration runs
/// the FP model's own guided trajectories over the same inputs).
#[derive(Args, Debug, Clone, Default)]
pub struct CondArgs {
    /// Text-conditional models (Stable Diffusion, PixArt): a safetensors file of prompt
    /// embeddings as a text encoder produces them (dmq has no text encoder). Tensors:
    /// `prompt_embeds` [P, S, C] (required; C = the UNet's cross_attention_dim, PixArt's
    /// caption_channels); `negative_prompt_embeds` [P or 1, S, C] (optional: the unconditional
    /// embedding of classifier-free guidance; zeros when absent, whereas real SD uses the text
    /// encoder's embedding of the empty prompt, so pass that here); PixArt only:
    /// `prompt_attention_mask` and `negative_prompt_attention_mask` [P or 1, S] (1 keep,
    /// 0 drop; optional). Image i uses prompt i mod P. Any float dtype.
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// DiT: class labels, comma-separated (image i gets label i mod L); the unconditional half
    /// of guidance uses the null class (num_embeds_ada_norm).
    #[arg(long, value_delimiter = ',')]
    pub class_labels: Option<Vec<u32>>,
    /// Classifier-free guidance scale: guided = uncond + scale·(cond − uncond) [default:
    /// diffusers' pipeline default: 7.5 for Stable Diffusion, 4.0 for DiT, 4.5 for PixArt-α].
    #[arg(long)]
    pub guidance_scale: Option<f64>,
}

/// A latent model ready to sample: the denoiser, its guidance inputs, its decoder.
pub struct LatentModel {
    pub pipeline: dmq_model::Pipeline,
    pub model: Denoiser,
    pub vae: Option<AutoencoderKL>,
}

/// The class of `--model` without loading its weights.
pub fn model_class(args: &ModelArgs) -> Result<DenoiserClass> {
    if let Some(dir) = args.model.as_deref().map(Path::new) {
        if dmq_quant::artifact::is_artifact(dir) {
            let m = dmq_quant::artifact::read_manifest(dir)?;
            return Ok(dmq_quant::artifact::model_class(dir, &m)?);
        }
    }
    let source = dmq_model::ModelSource::parse(args.model.as_deref())?;
    Ok(source.resolve()?.class)
}

/// Loads a latent model (a diffusers folder or a `dmq quantize` artifact) and its VAE.
pub fn load(args: &ModelArgs, exec: ExecMode) -> Result<LatentModel> {
    if exec == ExecMode::Int {
        bail!("--exec int runs UNet2DModel artifacts only so far; use --exec sim");
    }
    let device = crate::device::parse_device(&args.device)?;
    let dtype = crate::device::parse_dtype(&args.dtype)?;
    let dir = args.model.as_deref().map(Path::new);
    let (pipeline, model) = match dir.filter(|d| dmq_quant::artifact::is_artifact(d)) {
        Some(dir) => {
            let (_, model) = dmq_quant::artifact::load_denoiser(dir, &device, dtype)
                .with_context(|| format!("loading the quantized model {}", dir.display()))?;
            (args.artifact_pipeline(dir)?, model)
        }
        None => {
            let pipeline = args.pipeline()?;
            let model = pipeline
                .load_denoiser(&device, dtype)
                .with_context(|| format!("loading the {} of {}", pipeline.class, pipeline.name))?;
            (pipeline, model)
        }
    };
    let vae = pipeline
        .load_vae(&device, dtype)
        .with_context(|| format!("loading the VAE of {}", pipeline.name))?;
    Ok(LatentModel {
        pipeline,
        model,
        vae,
    })
}

fn read_embeds(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).with_context(|| {
        format!(
            "--prompt-embeds {}: not a readable safetensors file",
            path.display()
        )
    })
}

/// `[rows, rest...]` of tensor `name`, repeated to `rows` when it has 1 row.
fn rows_of(
    file: &Path,
    name: &str,
    t: &Tensor,
    rows: usize,
    rest: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    let dims = t.dims();
    let shape_ok = dims.len() == rest.len() + 1 && dims[1..] == *rest;
    if !shape_ok || !(dims[0] == rows || dims[0] == 1) {
        bail!(
            "{}: tensor `{name}` has shape {dims:?}, expected [{rows} or 1, {}]",
            file.display(),
            rest.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let t = t.to_dtype(dtype)?;
    Ok(if dims[0] == 1 && rows > 1 {
        let mut shape = vec![rows];
        shape.extend(rest);
        t.broadcast_as(shape)?.contiguous()?
    } else {
        t
    })
}

/// The conditional and unconditional inputs and the guidance of a latent model, from the
/// flags; `description` is what the sampling protocol records about them.
pub fn guidance_for(
    model: &Denoiser,
    args: &CondArgs,
) -> Result<(CalibGuidance, serde_json::Value)> {
    let class = model.class();
    let scale = args
        .guidance_scale
        .or(class.default_guidance_scale())
        .unwrap_or(1.0);
    if !scale.is_finite() {
        bail!("--guidance-scale {scale}: expected a finite number");
    }
    let guidance = |order| Guidance {
        scale,
        order,
        prediction_channels: Some(model.prediction_channels()),
    };
    match class {
        DenoiserClass::DiT => {
            if args.prompt_embeds.is_some() {
                bail!("{class} is class-conditional: pass --class-labels, not --prompt-embeds");
            }
            let Some(labels) = args.class_labels.as_ref().filter(|l| !l.is_empty()) else {
                bail!("{class} is class-conditional: pass --class-labels 1,2,3 (image i gets label i mod the count)");
            };
            let null = model.num_classes().expect("DiT has classes") as u32;
            if let Some(bad) = labels.iter().find(|&&l| l >= null) {
                bail!("--class-labels: label {bad} is out of range: the model has {null} classes (0..{})", null - 1);
            }
            let cond = Conditioning::labels(labels, &Device::Cpu)?;
            let uncond = Conditioning::labels(&vec![null; labels.len()], &Device::Cpu)?;
            let desc = json!({ "class_labels": labels, "guidance_scale": scale });
            Ok((
                CalibGuidance {
                    guidance: guidance(CfgOrder::CondFirst),
                    cond,
                    uncond,
                },
                desc,
            ))
        }
        DenoiserClass::Unet2DCondition | DenoiserClass::PixArt => {
            if args.class_labels.is_some() {
                bail!("{class} is text-conditional: pass --prompt-embeds, not --class-labels");
            }
            let width = model.context_width().expect("text-conditional");
            let Some(file) = &args.prompt_embeds else {
                bail!(
                    "{class} is text-conditional: pass --prompt-embeds FILE.safetensors (tensor \
                     `prompt_embeds` [P, S, {width}], optionally `negative_prompt_embeds`; see --help)"
                );
            };
            let t = read_embeds(file)?;
            let pe = t.get("prompt_embeds").with_context(|| {
                format!(
                    "{}: no tensor `prompt_embeds` (the conditional embeddings [P, S, {width}]); it has: {}",
                    file.display(),
                    {
                        let mut k: Vec<&String> = t.keys().collect();
                        k.sort();
                        k.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    }
                )
            })?;
            let dims = pe.dims();
            if dims.len() != 3 || dims[2] != width || dims[0] == 0 || dims[1] == 0 {
                bail!(
                    "{}: tensor `prompt_embeds` has shape {dims:?}, expected [P, S, {width}] ({} of {class})",
                    file.display(),
                    if class == DenoiserClass::PixArt { "caption_channels" } else { "cross_attention_dim" }
                );
            }
            let (p, s) = (dims[0], dims[1]);
            let f32 = DType::F32;
            let context = rows_of(file, "prompt_embeds", pe, p, &[s, width], f32)?;
            let negative = match t.get("negative_prompt_embeds") {
                Some(n) => rows_of(file, "negative_prompt_embeds", n, p, &[s, width], f32)?,
                None => context.zeros_like()?,
            };
            let masks = ["prompt_attention_mask", "negative_prompt_attention_mask"];
            let (mask, neg_mask) = if class == DenoiserClass::PixArt {
                let m = |name: &str| -> Result<Option<Tensor>> {
                    t.get(name)
                        .map(|m| rows_of(file, name, m, p, &[s], f32))
                        .transpose()
                };
                let (a, b) = (m(masks[0])?, m(masks[1])?);
                match (a, b) {
                    (Some(a), None) => {
                        let ones = a.ones_like()?;
                        (Some(a), Some(ones))
                    }
                    (None, Some(b)) => {
                        let ones = b.ones_like()?;
                        (Some(ones), Some(b))
                    }
                    (a, b) => (a, b),
                }
            } else {
                if let Some(m) = masks.iter().find(|m| t.contains_key(**m)) {
                    bail!(
                        "{}: tensor `{m}`: {class} takes no attention mask (PixArt does)",
                        file.display()
                    );
                }
                (None, None)
            };
            let cond = Conditioning {
                context: Some(context),
                context_mask: mask,
                class_labels: None,
            };
            let uncond = Conditioning {
                context: Some(negative),
                context_mask: neg_mask,
                class_labels: None,
            };
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let desc = json!({
                "prompt_embeds": file.display().to_string(),
                "prompt_embeds_sha256": dmq_quant::calib::fingerprint(&[&bytes]),
                "prompts": p,
                "guidance_scale": scale,
            });
            Ok((
                CalibGuidance {
                    guidance: guidance(CfgOrder::UncondFirst),
                    cond,
                    uncond,
                },
                desc,
            ))
        }
        DenoiserClass::Unet2D => bail!("UNet2DModel pipelines are sampled without guidance"),
    }
}

/// The guided prediction for `x` (`[B, …]`, images `indices`) at timestep `t`, step `i`: the
/// model on the doubled batch `cat([x, x])` with each half's conditioning, combined.
pub fn guided_eps(
    model: &dyn DenoiserModel,
    guide: &CalibGuidance,
    x: &Tensor,
    t: usize,
    i: usize,
    indices: &[usize],
) -> dmq_sched::Result<Tensor> {
    let cond = guide
        .doubled(indices)
        .and_then(|c| Ok(c.to_device(model.device())?))
        .map_err(SchedError::other)?;
    let x = x.to_dtype(model.dtype())?;
    let doubled = Tensor::cat(&[&x, &x], 0)?;
    let out = model
        .forward_cond(
            &doubled,
            dmq_model::Timesteps::Shared(t as f64),
            &cond,
            &Ctx::at_step(i),
        )
        .map_err(SchedError::other)?;
    guide.guidance.combine(&out)
}

/// Final latents of the images `indices` (one trajectory each, seeded per image), guided
/// (the arithmetic of `dmq_sched::sample_guided`), the guided prediction corrected by PTQD
/// when `correction` is given.
pub fn sample_latents(
    model: &dyn DenoiserModel,
    sched: &dyn Scheduler,
    noise: &NoiseSource,
    indices: &[usize],
    guide: &CalibGuidance,
    on_step: impl FnMut(usize),
    correction: Option<&dyn OutputCorrection>,
) -> Result<Tensor> {
    let shape = model
        .sample_shape()
        .context("the model's config has no sample_size")?;
    let device = model.device().clone();
    let x = noise
        .initial(indices, &shape, &device)?
        .to_dtype(model.dtype())?;
    Ok(dmq_sched::sample_corrected(
        sched,
        x,
        |x, t, i| guided_eps(model, guide, x, t, i, indices),
        |i| Ok(Some(noise.step_noise(i, indices, &shape, &device)?)),
        on_step,
        correction,
    )?)
}

/// Images in [−1, 1] from final latents: the VAE decoder on `latents / scaling_factor`
/// (+ `shift_factor`), as diffusers' pipelines do. Without a VAE (PixArt's tiny folder), a
/// preview of the latents: their first three channels (repeated when fewer), each image
/// divided by its largest magnitude; not an image of the model.
pub fn decode(vae: Option<&AutoencoderKL>, latents: &Tensor) -> Result<Tensor> {
    let Some(vae) = vae else {
        let c = latents.dims()[1];
        let rgb = match c {
            1 => Tensor::cat(&[latents, latents, latents], 1)?,
            2 => Tensor::cat(&[latents, &latents.narrow(1, 0, 1)?], 1)?,
            _ => latents.narrow(1, 0, 3)?,
        }
        .to_dtype(DType::F32)?;
        let peak = rgb.abs()?.flatten_from(1)?.max_keepdim(1)?;
        let peak = (peak.maximum(1e-12)?).reshape((rgb.dims()[0], 1, 1, 1))?;
        return Ok(rgb.broadcast_div(&peak)?);
    };
    let cfg = &vae.config;
    let mut z = (latents.to_dtype(vae.dtype())? / cfg.scaling_factor)?;
    if let Some(shift) = cfg.shift_factor {
        z = (z + shift)?;
    }
    Ok(vae.decode(&z, &Ctx::inference())?)
}

/// `dmq sample` for a latent model: guided trajectories, decoded by the VAE.
pub fn run_sample(args: super::sample::SampleArgs) -> Result<()> {
    use super::sample::{protocol, scheduler_for, write_samples, SampleFolder};
    if args.class.is_some() {
        bail!("--class is for class-conditional UNet2DModel pipelines; DiT takes --class-labels");
    }
    let l = load(&args.model, args.exec.exec)?;
    let sched = scheduler_for(&l.pipeline, &args.protocol)?;
    let (guide, cond_desc) = guidance_for(&l.model, &args.cond)?;
    if l.vae.is_none() {
        eprintln!(
            "note: {} has no vae/: writing a preview of the latents (first three channels), not images",
            l.pipeline.name
        );
    }
    let mut proto = protocol(
        &l.pipeline.name,
        &args.protocol,
        None,
        &args.model,
        args.exec.exec,
        sched.timesteps(),
    );
    proto["model_class"] = json!(l.pipeline.class.name());
    proto["conditioning"] = cond_desc;
    proto["decoder"] = json!(if l.vae.is_some() {
        "vae"
    } else {
        "latent preview"
    });
    let correction = super::ptqd::correction_for_guided(
        &l.pipeline,
        &args.protocol,
        &*sched,
        &args.ptqd.ptqd_parts,
        Some(guide.guidance.scale),
    )?;
    if let Some(c) = &correction {
        proto["ptqd"] = c.describe();
        eprintln!("PTQD: {}", c.summary());
    }
    let noise = NoiseSource::new(args.protocol.seed);
    let folder = SampleFolder {
        out: &args.out,
        protocol: &proto,
        num: args.num,
        batch: args.batch,
        overwrite: args.overwrite,
        label: "sampling",
        calls_per_batch: sched.timesteps().len(),
    };
    let outcome = write_samples(&folder, &mut |indices, on_call| {
        let z = sample_latents(
            &l.model,
            &*sched,
            &noise,
            indices,
            &guide,
            |_| on_call(),
            correction.as_ref().map(|c| c.correction()),
        )?;
        decode(l.vae.as_ref(), &z)
    })?;
    eprintln!(
        "wrote {} images and grid.png to {} ({:.1} s, {:.2} images/s)",
        args.num,
        args.out.display(),
        outcome.wall_s,
        outcome.sampled_now as f64 / outcome.wall_s.max(1e-9)
    );
    Ok(())
}
