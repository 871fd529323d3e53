//! PTQD in the CLI: the `--ptqd-parts` switch of `dmq sample|eval` (which corrections a quantized
//! model with PTQD statistics is sampled with, refused for a protocol the statistics are not
//! valid for), `dmq ptqd` (measure statistics for another sampling protocol and add them to an
//! artifact: re-calibration), and PTQD's report (JSON rows and a PNG of k_t, bias and σ_q per
//! step).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dmq_methods::ptqd::precision::StepChoice;
use dmq_methods::ptqd::{
    residual_variance, CollectSpec, Parts, Protocol, PtqdCorrection, PtqdSection, PtqdSet,
};
use dmq_report::{line_chart_png, LineChart, Series};
use dmq_sched::{calibrate_variance, OutputCorrection, Scheduler};
use serde_json::json;

use super::sample::{
    sampler_kind, schedule_config, scheduler_for, write_json_atomic, ProtocolArgs, Sampler,
};
use super::ModelArgs;

/// `--ptqd-parts` of the sampling commands.
#[derive(Args, Debug, Clone)]
pub struct PtqdSampleArgs {
    /// PTQD correction of a quantized model that carries PTQD statistics: `auto` (the parts
    /// recorded when it was quantized), `none`, `all`, or a comma-separated subset of `cnc`
    /// (correlated noise correction: divide by 1 + k_t), `bc` (bias correction: subtract the
    /// per-channel bias) and `vsc` (variance schedule calibration: lower the sampler's noise by
    /// the residual variance; it changes nothing at --eta 0). Statistics are valid for one
    /// sampling protocol (sampler, steps, eta, spacing): another one is refused, never silently
    /// corrected (`dmq ptqd` measures statistics for it).
    #[arg(long, default_value = "auto", verbatim_doc_comment)]
    pub ptqd_parts: String,
}

/// The folder of the quantized artifact a pipeline was loaded from, if it was one.
pub fn artifact_dir(pipeline: &dmq_model::Pipeline) -> Option<PathBuf> {
    let dmq_model::source::FileRef::Path(cfg) = &pipeline.unet_config else {
        return None;
    };
    cfg.parent()
        .filter(|d| dmq_quant::artifact::is_artifact(d))
        .map(Path::to_path_buf)
}

/// The protocol `p` samples `pipeline` with (through `sched`).
pub fn protocol_of(
    pipeline: &dmq_model::Pipeline,
    p: &ProtocolArgs,
    sched: &dyn Scheduler,
) -> Result<Protocol> {
    Ok(Protocol::of(
        sampler_kind(p)?,
        &schedule_config(pipeline)?,
        sched,
    ))
}

/// A PTQD correction chosen for a sampling run.
pub struct Applied {
    correction: PtqdCorrection,
    set: PtqdSet,
    parts: Parts,
}

impl Applied {
    pub fn correction(&self) -> &dyn OutputCorrection {
        &self.correction
    }

    /// What goes into a run's protocol JSON (so corrected and uncorrected runs never mix).
    pub fn describe(&self) -> serde_json::Value {
        json!({ "parts": self.parts.to_string(), "statistics": self.set.id(),
                "samples": self.set.samples, "seed": self.set.seed })
    }

    pub fn summary(&self) -> String {
        format!(
            "correcting with {} (statistics of {} trajectories, {})",
            self.parts,
            self.set.samples,
            self.set.protocol.describe()
        )
    }
}

/// The correction a sampling run applies: `None` for models without PTQD statistics (unless
/// `--ptqd-parts` names parts, which is then an error) and for `none`; the statistics of the
/// run's protocol otherwise, or an error when the artifact has none for it.
pub fn correction_for(
    pipeline: &dmq_model::Pipeline,
    p: &ProtocolArgs,
    sched: &dyn Scheduler,
    arg: &str,
) -> Result<Option<Applied>> {
    correction_for_guided(pipeline, p, sched, arg, None)
}

/// [`correction_for`] for a run with classifier-free guidance at scale `guidance` (latent
/// models): only statistics measured at that scale apply.
pub fn correction_for_guided(
    pipeline: &dmq_model::Pipeline,
    p: &ProtocolArgs,
    sched: &dyn Scheduler,
    arg: &str,
    guidance: Option<f64>,
) -> Result<Option<Applied>> {
    let arg = arg.trim();
    let explicit = match arg {
        "auto" => None,
        other => Some(Parts::parse(other).with_context(|| format!("--ptqd-parts {other}"))?),
    };
    let section = match artifact_dir(pipeline) {
        Some(dir) => {
            let m = dmq_quant::artifact::read_manifest(&dir)?;
            PtqdSection::read(&dir, &m)
                .with_context(|| format!("reading the PTQD statistics of {}", dir.display()))?
        }
        None => None,
    };
    let Some(section) = section else {
        if let Some(parts) = explicit.filter(|p| !p.is_none()) {
            bail!(
                "--ptqd-parts {parts}: {} has no PTQD statistics (quantize it with --ptqd, or add \
                 them with dmq ptqd --model Q)",
                pipeline.name
            );
        }
        return Ok(None);
    };
    let parts = explicit.unwrap_or(section.default_parts);
    if parts.is_none() {
        return Ok(None);
    }
    let mut protocol = protocol_of(pipeline, p, sched)?;
    protocol.guidance = guidance;
    let set = section
        .set_for(&protocol)
        .with_context(|| pipeline.name.clone())?
        .clone();
    Ok(Some(Applied {
        correction: PtqdCorrection::new(&set, parts),
        set,
        parts,
    }))
}

/// `dmq ptqd`: statistics for another sampling protocol.
#[derive(Args, Debug)]
pub struct PtqdArgs {
    /// The quantized model (an artifact folder of `dmq quantize`); the statistics are added to it.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The full-precision model it was quantized from [default: the artifact's base model].
    #[arg(long)]
    pub fp: Option<String>,
    /// Sampler of the protocol the statistics are for.
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    pub sampler: Sampler,
    /// Denoising steps (the artifact's calibrated time grid is required).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM noise weight of the protocol (statistics at eta 1 are measured on eta-1 trajectories).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Full-precision trajectories measured.
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Trajectories run together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seed of the trajectories' noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parts applied by default when the artifact has no PTQD section yet (see
    /// `dmq sample --ptqd-parts`); an existing section keeps its default.
    #[arg(long, default_value = "cnc,bc,vsc")]
    pub default_parts: String,
}

pub fn run(args: PtqdArgs) -> Result<()> {
    let Some(dir) = args
        .model
        .model
        .as_deref()
        .map(Path::new)
        .filter(|d| dmq_quant::artifact::is_artifact(d))
        .map(Path::to_path_buf)
    else {
        bail!("--model must be a quantized artifact folder (with manifest.json) written by dmq quantize");
    };
    if args.samples == 0 || args.batch == 0 {
        bail!("--samples and --batch must be at least 1");
    }
    let default_parts = Parts::parse(&args.default_parts).context("--default-parts")?;
    let manifest = dmq_quant::artifact::read_manifest(&dir)?;
    let (pipeline, q) = args.model.load()?;
    let protocol_args = ProtocolArgs {
        sampler: args.sampler,
        steps: args.steps,
        eta: args.eta,
        seed: args.seed,
    };
    let sched = scheduler_for(&pipeline, &protocol_args)?;
    let protocol = protocol_of(&pipeline, &protocol_args, &*sched)?;
    let fp_name = args
        .fp
        .clone()
        .unwrap_or_else(|| manifest.base_model.clone());
    let fp_args = ModelArgs {
        // the embedded model is what `--model` omitted loads
        model: Some(fp_name.clone()).filter(|n| n != dmq_model::embedded::NAME),
        device: args.model.device.clone(),
        dtype: args.model.dtype.clone(),
        scheduler_config: None,
    };
    let (fp_pipeline, fp) = fp_args.load().with_context(|| {
        format!("loading the full-precision model `{fp_name}` (pass --fp to name it)")
    })?;
    let want = manifest.calibration["model_fingerprint"].as_str();
    let got = super::quantize::model_fingerprint(&fp_pipeline)?;
    if want.is_some_and(|w| w != got) {
        bail!(
            "{}: the artifact was quantized from another model than {} (model fingerprints \
             differ); pass its full-precision model with --fp",
            dir.display(),
            fp_pipeline.name
        );
    }
    let mut bars = super::quantize::Bars::new();
    let set = dmq_methods::ptqd::measure(
        &fp,
        &q,
        &*sched,
        &protocol,
        &CollectSpec {
            samples: args.samples,
            batch: args.batch,
            seed: args.seed,
        },
        &mut bars,
    )?;
    bars.finish();
    let mut section = PtqdSection::read(&dir, &manifest)?.unwrap_or(PtqdSection {
        default_parts,
        sets: Vec::new(),
    });
    let parts = section.default_parts;
    section.upsert(set.clone());
    section.write(&dir)?;
    let report = report_json(&set, None, &*sched, parts)?;
    let stem = format!("report-ptqd-{}", set.id());
    write_json_atomic(&dir.join(format!("{stem}.json")), &report)?;
    write_png(&dir.join(format!("{stem}.png")), &report)?;
    eprintln!(
        "added PTQD statistics for {} to {} ({} sets); {stem}.json/.png written",
        protocol.describe(),
        dir.display(),
        section.sets.len()
    );
    Ok(())
}

/// PTQD's report: the protocol and, per step, k_t, bias, σ_q, the errors before and after the
/// correction, what VSC does with `parts` on this sampler, and the mixed-precision choice.
pub fn report_json(
    set: &PtqdSet,
    choices: Option<&[StepChoice]>,
    sched: &dyn Scheduler,
    parts: Parts,
) -> Result<serde_json::Value> {
    let mut rows = Vec::new();
    for s in &set.steps {
        let f = &s.fit;
        let terms = sched.step_terms(s.step)?;
        let cal = calibrate_variance(&terms, residual_variance(f.sigma_q, f.k, parts))?;
        let mut row = json!({
            "step": s.step, "timestep": s.timestep,
            "k": f.k, "k_raw": f.k_raw,
            "bias": f.bias, "mean_abs_bias": f.mean_abs_bias(),
            "sigma_q": f.sigma_q, "sigma_q_corrected": f.sigma_q / (1.0 + f.k),
            "eps_power": f.eps_power, "err_mse": f.err_mse, "corrected_mse": f.corrected_mse,
            "snr_fp": dmq_methods::ptqd::precision::snr_fp(terms.alpha_prod_t),
            "snr_q": dmq_methods::ptqd::precision::snr_q(f),
            "vsc": { "scheduled_std": cal.scheduled_std, "std": cal.std_dev,
                     "output_weight": cal.output_weight,
                     "unabsorbed_variance": cal.unabsorbed_variance },
        });
        if let Some(b) = s.act_bits {
            row["act_bits"] = json!(b);
        }
        if let Some(c) = choices.and_then(|c| c.get(s.step)) {
            row["snr_q_by_bits"] = json!(c.snr_q);
        }
        rows.push(row);
    }
    let exceeded = rows
        .iter()
        .filter(|r| {
            r["vsc"]["unabsorbed_variance"].as_f64() > Some(0.0)
                && r["vsc"]["scheduled_std"].as_f64() > Some(0.0)
        })
        .count();
    Ok(json!({
        "statistics": set.id(),
        "protocol": set.protocol,
        "samples": set.samples,
        "seed": set.seed,
        "parts": parts.to_string(),
        "mixed_act_bits": set.mixed_act_bits,
        "vsc_steps_exceeding_schedule": exceeded,
        "steps": rows,
    }))
}

fn series(
    rows: &[serde_json::Value],
    name: &str,
    f: impl Fn(&serde_json::Value) -> Option<f64>,
) -> Series {
    Series {
        name: name.into(),
        points: rows
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, f(r)?)))
            .collect(),
    }
}

/// `path`: PTQD's statistics per sampling step in stacked panels: k_t; the per-channel bias and
/// its mean magnitude; σ_q with the output errors before and after the correction; and, with
/// mixed precision, the SNRs that chose the widths.
pub fn write_png(path: &Path, report: &serde_json::Value) -> Result<()> {
    let rows = report["steps"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        bail!("PTQD report without steps");
    }
    let title = format!(
        "PTQD {} ({} trajectories)",
        report["statistics"].as_str().unwrap_or(""),
        report["samples"]
    );
    let x_label = "sampling step (0 = noisiest)";
    let channels = rows[0]["bias"].as_array().map_or(0, Vec::len);
    let mut charts = vec![
        LineChart {
            title: format!("{title}: correlation k_t of the error with the FP noise"),
            x_label: x_label.into(),
            y_label: "k".into(),
            log_y: false,
            series: vec![
                series(&rows, "k_t (clamped at 0, used)", |r| r["k"].as_f64()),
                series(&rows, "least-squares slope", |r| r["k_raw"].as_f64()),
            ],
        },
        LineChart {
            title: "bias of the residual error per channel".into(),
            x_label: x_label.into(),
            y_label: "bias".into(),
            log_y: false,
            series: (0..channels)
                .map(|c| {
                    series(&rows, &format!("channel {c}"), move |r| {
                        r["bias"][c].as_f64()
                    })
                })
                .chain(std::iter::once(series(&rows, "mean |bias|", |r| {
                    r["mean_abs_bias"].as_f64()
                })))
                .collect(),
        },
        LineChart {
            title: "residual std and output error (RMS)".into(),
            x_label: x_label.into(),
            y_label: "std / RMS".into(),
            log_y: true,
            // log axis: zeros (an exact model, σ' = 0 after VSC) are left out, not clamped
            series: vec![
                series(&rows, "sigma_q", |r| positive(&r["sigma_q"])),
                series(&rows, "RMS error before correction", |r| {
                    positive(&r["err_mse"]).map(f64::sqrt)
                }),
                series(&rows, "RMS error after CNC+BC", |r| {
                    positive(&r["corrected_mse"]).map(f64::sqrt)
                }),
                series(&rows, "sampler std (scheduled)", |r| {
                    positive(&r["vsc"]["scheduled_std"])
                }),
                series(&rows, "sampler std (after VSC)", |r| {
                    positive(&r["vsc"]["std"])
                }),
            ],
        },
    ];
    if rows[0].get("snr_q_by_bits").is_some() {
        let widths: Vec<u64> = rows[0]["snr_q_by_bits"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p[0].as_u64()).collect())
            .unwrap_or_default();
        let mut s = vec![series(&rows, "SNR^F (diffusion input)", |r| {
            positive(&r["snr_fp"])
        })];
        for (j, b) in widths.iter().enumerate() {
            // an infinite SNR (zero residual) is written as null and left out
            s.push(series(&rows, &format!("SNR^Q at A{b}"), move |r| {
                positive(&r["snr_q_by_bits"][j][1])
            }));
        }
        charts.push(LineChart {
            title: format!(
                "step-aware mixed precision: chosen A-bits per step {}",
                compress_bits(&rows)
            ),
            x_label: x_label.into(),
            y_label: "SNR".into(),
            log_y: true,
            series: s,
        });
    }
    for c in &mut charts {
        c.series.retain(|s| !s.points.is_empty());
    }
    charts.retain(|c| !c.series.is_empty());
    let (w, h) = (1200u32, 420u32);
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut panels = Vec::new();
    for (i, c) in charts.iter().enumerate() {
        let tmp = parent.join(format!(
            ".{}.panel{i}-{}.png",
            path.file_name()
                .map_or("ptqd".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let drawn = line_chart_png(&tmp, c, w, h)
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(image::open(&tmp)?.to_rgb8()));
        let _ = std::fs::remove_file(&tmp);
        panels.push(drawn.with_context(|| format!("drawing panel {i} of {}", path.display()))?);
    }
    let mut out = image::RgbImage::new(w, h * panels.len() as u32);
    for (i, p) in panels.iter().enumerate() {
        image::imageops::replace(&mut out, p, 0, (i as u32 * h) as i64);
    }
    dmq_eval::images::save_png_atomic(&out, path)?;
    Ok(())
}

/// A finite value > 0, for log axes.
fn positive(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite() && *x > 0.0)
}

/// `A4 steps 0-37, A8 steps 38-99` from the rows' `act_bits`.
fn compress_bits(rows: &[serde_json::Value]) -> String {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for r in rows {
        let (Some(b), Some(s)) = (r["act_bits"].as_u64(), r["step"].as_u64()) else {
            continue;
        };
        match runs.last_mut() {
            Some(last) if last.0 == b && last.2 + 1 == s => last.2 = s,
            _ => runs.push((b, s, s)),
        }
    }
    runs.iter()
        .map(|(b, s, e)| format!("A{b} steps {s}-{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, sigma: f64, mixed: bool) -> serde_json::Value {
        let mut r = json!({
            "step": step, "timestep": 900 - 100 * step, "k": 0.01 * step as f64,
            "k_raw": 0.01 * step as f64 - 0.005, "bias": [0.01, -0.02, 0.0],
            "mean_abs_bias": 0.01, "sigma_q": sigma, "err_mse": sigma * sigma * 1.2,
            "corrected_mse": sigma * sigma, "snr_fp": 0.1 * (step + 1) as f64,
            "vsc": { "scheduled_std": 0.0, "std": 0.0, "unabsorbed_variance": 0.0 },
        });
        if mixed {
            r["act_bits"] = json!(if step < 2 { 4 } else { 8 });
            r["snr_q_by_bits"] = json!([[4, 0.25], [8, null]]);
        }
        r
    }

    #[test]
    fn report_png_has_a_panel_per_quantity_and_survives_exact_models() {
        let tmp = tempfile::tempdir().unwrap();
        let report = |sigma: f64, mixed: bool| {
            json!({ "statistics": "ddim-4-eta0-leading", "samples": 2,
                    "steps": (0..4).map(|i| row(i, sigma, mixed)).collect::<Vec<_>>() })
        };
        let p = tmp.path().join("a.png");
        write_png(&p, &report(0.1, true)).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (1200, 4 * 420));
        // an exact quantized model: σ_q = 0 everywhere; the log panel has nothing to show
        let p = tmp.path().join("b.png");
        write_png(&p, &report(0.0, false)).unwrap();
        assert_eq!(image::open(&p).unwrap().height(), 2 * 420);
        // no temporary panels left beside it
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        assert!(write_png(&tmp.path().join("c.png"), &json!({"steps": []})).is_err());
        assert_eq!(
            compress_bits(&report(0.1, true)["steps"].as_array().unwrap().clone()),
            "A4 steps 0-1, A8 steps 2-3"
        );
    }
}
