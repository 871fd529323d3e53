//! `dmq eval`: sample a model and score it in one run: FID/sFID against reference statistics and,
//! with `--against`, fidelity to a full-precision model from the same seeds (PSNR, SSIM, and the
//! noise-prediction error per sampling step on the full-precision trajectory).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use dmq_eval::appearance::AppearanceShift;
use dmq_eval::fid::{self, SetStats};
use dmq_eval::fidelity::{compare_sets, StepErrors};
use dmq_eval::images;
use dmq_model::{Ctx, Timesteps};
use dmq_sched::{NoiseSource, SchedError};
use serde_json::json;

use super::fid::{stats_of, InceptionArgs};
use super::sample::{
    protocol, read_images, sample_to_folder, scheduler_for, write_json_atomic, ProtocolArgs,
    SampleJob,
};
use super::{ExecArgs, ExecMode, ModelArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub ptqd: super::ptqd::PtqdSampleArgs,
    /// Number of images to sample and score.
    #[arg(long, default_value_t = 10_000)]
    pub num: usize,
    /// Images per UNet call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Reference statistics for FID/sFID (npz with mu/sigma, optionally mu_s/sigma_s), or an
    /// image set to compute them from [default: none, no FID].
    #[arg(long)]
    pub fid_ref: Option<PathBuf>,
    /// Full-precision model to compare with, sampled from the same seeds [default: none]. A
    /// quantized model given here runs simulated, so `--model Q --exec int --against Q` measures
    /// how far integer execution is from the simulation.
    #[arg(long)]
    pub against: Option<String>,
    /// Compute precision of the --against model.
    #[arg(long, default_value = "f32")]
    pub against_dtype: String,
    /// Images whose trajectories measure the per-step noise-prediction error (with --against).
    #[arg(long, default_value_t = 32)]
    pub step_error_images: usize,
    /// Output folder: samples/, fp-samples/, eval.json, side-by-side.png.
    #[arg(long, short = 'o', default_value = "eval")]
    pub out: PathBuf,
    /// Replace samples of a different earlier run in --out.
    #[arg(long, default_value_t = false)]
    pub overwrite: bool,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.num == 0 || args.batch == 0 {
        bail!("--num and --batch must be at least 1");
    }
    let started = Instant::now();
    let loaded = args.model.load_exec(args.exec.exec)?;
    let (pipeline, unet) = (loaded.pipeline, loaded.unet);
    let sched = scheduler_for(&pipeline, &args.protocol)?;
    let correction =
        super::ptqd::correction_for(&pipeline, &args.protocol, &*sched, &args.ptqd.ptqd_parts)?;
    let mut proto = protocol(
        &pipeline.name,
        &args.protocol,
        None,
        &args.model,
        args.exec.exec,
        sched.timesteps(),
    );
    if let Some(c) = &correction {
        proto["ptqd"] = c.describe();
        eprintln!("PTQD: {}", c.summary());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let samples_dir = args.out.join("samples");
    let job = SampleJob {
        unet: &unet,
        sched: &*sched,
        protocol: proto.clone(),
        seed: args.protocol.seed,
        num: args.num,
        batch: args.batch,
        class: None,
        out: &samples_dir,
        overwrite: args.overwrite,
        label: "sampling",
        correction: correction.as_ref().map(|c| c.correction()),
    };
    let sampled = sample_to_folder(&job)?;

    let mut report = json!({
        "protocol": proto,
        "num": args.num,
        "sampling_wall_s": sampled.wall_s,
        "dmq_version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });

    // Fidelity to the full-precision model, from the same seeds.
    let mut fp_dir = None;
    if let Some(fp_name) = &args.against {
        let fp_args = ModelArgs {
            model: Some(fp_name.clone()),
            device: args.model.device.clone(),
            dtype: args.against_dtype.clone(),
            scheduler_config: None,
        };
        let (fp_pipeline, fp_unet) = fp_args.load()?;
        let fp_sched = scheduler_for(&fp_pipeline, &args.protocol)?;
        if fp_sched.timesteps() != sched.timesteps() {
            bail!("the --against model's scheduler gives other timesteps; the comparison needs the same protocol");
        }
        let dir = args.out.join("fp-samples");
        let fp_job = SampleJob {
            unet: &fp_unet,
            sched: &*fp_sched,
            protocol: protocol(
                &fp_pipeline.name,
                &args.protocol,
                None,
                &fp_args,
                ExecMode::Sim,
                fp_sched.timesteps(),
            ),
            seed: args.protocol.seed,
            num: args.num,
            batch: args.batch,
            class: None,
            out: &dir,
            overwrite: args.overwrite,
            label: "sampling (full precision)",
            correction: None,
        };
        sample_to_folder(&fp_job)?;
        let fp_images = dmq_eval::imageset::ImageSource::Folder(dir.clone()).load_all()?;
        let test_images =
            dmq_eval::imageset::ImageSource::Folder(samples_dir.clone()).load_all()?;
        let pairs = compare_sets(&fp_images, &test_images)?;
        let looks = AppearanceShift::between(&fp_images, &test_images);

        // Noise-prediction error of the evaluated model on the full-precision trajectory.
        let k = args.step_error_images.min(args.num);
        let mut errs = StepErrors::default();
        if k > 0 {
            let res = fp_unet
                .config
                .sample_size
                .context("config.json has no sample_size")?;
            let shape = [fp_unet.config.in_channels, res, res];
            let noise = NoiseSource::new(args.protocol.seed);
            for idx in (0..k).collect::<Vec<_>>().chunks(args.batch) {
                let x = noise
                    .initial(idx, &shape, fp_unet.device())?
                    .to_dtype(fp_unet.dtype())?;
                dmq_sched::sample(
                    &*fp_sched,
                    x,
                    |x, t, i| {
                        let ctx = Ctx::at_step(i);
                        let e_fp = fp_unet
                            .forward(x, Timesteps::Shared(t as f64), None, &ctx)
                            .map_err(SchedError::other)?;
                        let xq = x.to_dtype(unet.dtype())?;
                        let mut e_q = unet
                            .forward(&xq, Timesteps::Shared(t as f64), None, &ctx)
                            .map_err(SchedError::other)?;
                        // the error of what the sampler steps with: after PTQD's correction
                        if let Some(c) = &correction {
                            e_q = c.correction().correct(i, t, &e_q)?;
                        }
                        errs.add(i, &e_fp, &e_q.to_dtype(e_fp.dtype())?)
                            .map_err(SchedError::other)?;
                        Ok(e_fp)
                    },
                    |i| Ok(Some(noise.step_noise(i, idx, &shape, fp_unet.device())?)),
                    |_| {},
                )?;
            }
        }
        let rows = errs.rows();
        report["against"] = json!({
            "model": fp_pipeline.name,
            "dtype": args.against_dtype,
            "psnr_mean_db": pairs.psnr_mean_db,
            "psnr_min_db": pairs.psnr_min_db,
            "ssim_mean": pairs.ssim_mean,
            "ssim_min": pairs.ssim_min,
            "identical_images": pairs.identical,
            "per_image": { "psnr_db": pairs.psnr_db, "ssim": pairs.ssim },
            "step_error_images": k,
            "noise_prediction_error": rows.iter().map(|r| json!({
                "step": r.step, "timestep": sched.timesteps()[r.step], "mse": r.mse, "cosine": r.cosine,
                "channel_bias": r.channel_bias,
            })).collect::<Vec<_>>(),
            "appearance": looks,
        });
        eprintln!(
            "against {}: PSNR {:.2} dB (min {:.2}), SSIM {:.4} (min {:.4})",
            fp_pipeline.name,
            pairs.psnr_mean_db,
            pairs.psnr_min_db,
            pairs.ssim_mean,
            pairs.ssim_min
        );
        eprintln!("against {}: {}", fp_pipeline.name, looks.summary());
        fp_dir = Some(dir);
    }

    // FID / sFID against the reference statistics.
    if let Some(reference) = &args.fid_ref {
        let mut net = None;
        let ref_stats = stats_of(reference, &args.inception, &mut net)?;
        let ours = stats_of(&samples_dir, &args.inception, &mut net)?;
        let d = fid::distances(&ours, &ref_stats)?;
        report["fid"] = json!({
            "reference": reference, "reference_count": ref_stats.count(),
            "fid": d.fid, "sfid": d.sfid, "samples": ours.count(),
            "inception": args.inception.weights_path()?,
        });
        eprintln!(
            "FID {:.3}{}",
            d.fid,
            d.sfid.map(|s| format!(", sFID {s:.3}")).unwrap_or_default()
        );
        if let Some(dir) = &fp_dir {
            let fp: SetStats = stats_of(dir, &args.inception, &mut net)?;
            let dfp = fid::distances(&fp, &ref_stats)?;
            report["fid"]["against_fid"] = json!(dfp.fid);
            report["fid"]["against_sfid"] = json!(dfp.sfid);
        }
    }

    // Side by side: full precision above, evaluated model below, 8 per row.
    let ours = read_images(&samples_dir, args.num.min(16))?;
    let picture = match &fp_dir {
        Some(dir) => {
            let fp = read_images(dir, args.num.min(16))?;
            let mut tiles = Vec::new();
            for (f, q) in fp.chunks(8).zip(ours.chunks(8)) {
                tiles.extend_from_slice(f);
                tiles.extend(std::iter::repeat_n(
                    image::RgbImage::new(f[0].width(), f[0].height()),
                    8 - f.len(),
                ));
                tiles.extend_from_slice(q);
                tiles.extend(std::iter::repeat_n(
                    image::RgbImage::new(q[0].width(), q[0].height()),
                    8 - q.len(),
                ));
            }
            images::grid(&tiles, 8)
        }
        None => images::grid(&ours, 8),
    };
    let picture = images::upscale_to_width(&picture, 1024);
    images::save_png_atomic(&picture, &args.out.join("side-by-side.png"))?;
    report["wall_s"] = json!(started.elapsed().as_secs_f64());
    write_json_atomic(&args.out.join("eval.json"), &report)?;
    eprintln!(
        "wrote {} and side-by-side.png",
        args.out.join("eval.json").display()
    );
    Ok(())
}
