//! `dmq sensitivity`: Qua²SeDiMo's per-layer quantization sensitivity (docs/methods-qua2sedimo.md):
//! every weight layer's options, seeded random mixed configurations labelled by a cheap proxy
//! (noise-prediction error against FP, weights only), an additive predictor with held-out rank
//! correlation, and per-layer / per-op-type / per-block sensitivities. Writes `S/sensitivity.json`
//! (what `dmq quantize --avg-bits --sensitivity` reads), `S/labels.jsonl` (the labels; a rerun
//! resumes from it) and PNG charts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use dmq_methods::qua2sedimo::options::{build_table, search_space};
use dmq_methods::qua2sedimo::predictor::{fit_and_evaluate, spearman};
use dmq_methods::qua2sedimo::{
    aggregate, label_all, layer_sensitivities, proxy, sample_configs, SensitivityReport,
    REPORT_FORMAT,
};
use dmq_quant::calib::{self, CalibSpec};
use dmq_quant::config::MixedOptions;
use dmq_quant::ptq::Progress;
use dmq_report::{bar_chart_png, line_chart_png, Bar, BarChart, LineChart, Series};

use super::quantize::{cache_root, model_fingerprint, Bars};
use super::sample::{scheduler_for, write_json_atomic, ProtocolArgs, Sampler};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct SensitivityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (created; an existing one is resumed from its labels.jsonl).
    #[arg(long, short = 'o', default_value = "sensitivity")]
    pub out: PathBuf,
    /// Random configurations labelled (the first 7 are anchors: every layer on one option).
    #[arg(long, default_value_t = 300)]
    pub configs: usize,
    /// Seed of the configurations, the proxy points and the held-out split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Options searched: all (uniform, k-means per channel and per tensor at 3/4 bits, uniform
    /// 8-bit) or uniform (uniform 3/4/8 bits only).
    #[arg(long, default_value = "all")]
    pub options: String,
    /// Sampling steps of the FP trajectories the proxy points come from (DDIM, eta 0).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Calibrated steps the proxy points are spread over.
    #[arg(long, default_value_t = 10)]
    pub steps_sampled: usize,
    /// FP trajectories generated (calibration data, cached like `dmq quantize`'s).
    #[arg(long, default_value_t = 32)]
    pub trajectories: usize,
    /// Proxy points per calibrated step.
    #[arg(long, default_value_t = 8)]
    pub per_step: usize,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Share of labelled configurations held out to evaluate the predictor.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Average-bit budgets at which the allocation is computed and its proxy measured.
    #[arg(long, value_delimiter = ',', default_value = "3.0,3.5,4.0")]
    pub budgets: Vec<f64>,
    /// Where calibration data is cached [default: $DMQ_CACHE_DIR, else ~/.cache/dmq].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: SensitivityArgs) -> Result<()> {
    let started = Instant::now();
    let set_kind = match args.options.as_str() {
        "all" => MixedOptions::All,
        "uniform" => MixedOptions::Uniform,
        o => bail!("--options {o}: expected all or uniform"),
    };
    if args.configs < 20 {
        bail!("--configs must be at least 20 (a held-out share is needed)");
    }
    if !(0.05..=0.5).contains(&args.holdout) {
        bail!("--holdout must be in 0.05..=0.5");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (pipeline, mut unet) = args.model.load()?;
    let fingerprint = model_fingerprint(&pipeline)?;
    let mut bars = Bars::new();

    // Calibration points: FP DDIM trajectories, cached as `dmq quantize` caches them.
    let protocol = ProtocolArgs {
        sampler: Sampler::Ddim,
        steps: args.steps,
        eta: 0.0,
        seed: args.seed,
    };
    let sched = scheduler_for(&pipeline, &protocol)?;
    let spec = CalibSpec {
        steps_sampled: args.steps_sampled,
        samples_per_step: args.trajectories,
        seed: args.seed,
        batch: args.batch.max(1),
    };
    let sampler_json = json!({
        "sampler": "ddim", "eta": 0.0, "steps": args.steps, "timesteps": sched.timesteps(),
    });
    let manifest = calib::manifest_for(&spec, &fingerprint, sampler_json);
    let cache = calib::cache_folder(&cache_root(&args.cache_dir), &manifest);
    let set = match calib::load_if_matching(&cache, &manifest)? {
        Some(s) => s,
        None => {
            let calls = spec.samples_per_step.div_ceil(spec.batch) * args.steps;
            bars.stage("FP trajectories", calls as u64);
            let s = calib::generate(&unet, &*sched, &spec, || bars.inc(1))?;
            calib::save(&cache, &s, &manifest)?;
            s
        }
    };

    // Options of every layer.
    let paths = unet.layer_paths();
    let options = search_space(set_kind);
    let splits = unet.split_points();
    bars.stage("layer options", paths.len() as u64);
    let table = build_table(&mut unet, &paths, &options, &splits, |_| bars.inc(1))?;
    let data = proxy::proxy_data(&unet, &set, args.per_step, args.batch, args.seed)?;

    // Labels (resumable).
    let configs = sample_configs(&options, table.layers.len(), args.configs, args.seed);
    let run_fp = calib::fingerprint(&[
        fingerprint.as_bytes(),
        serde_json::to_string(&manifest)?.as_bytes(),
        format!(
            "{:?} {} {} {:?}",
            args.options,
            args.per_step,
            args.seed,
            unet.dtype()
        )
        .as_bytes(),
    ]);
    bars.stage("proxy labels", configs.len() as u64);
    let labels_file = args.out.join("labels.jsonl");
    let mut resumed = 0;
    let labels = label_all(
        &labels_file,
        &run_fp,
        &configs,
        &table,
        |c| proxy::score(&mut unet, &table, c, &data),
        |_, r| {
            resumed += usize::from(r);
            bars.inc(1);
        },
    )?;
    bars.finish();
    if resumed > 0 {
        bars.message(&format!(
            "resumed {resumed} labels from {}",
            labels_file.display()
        ));
    }

    // Predictor and sensitivities.
    let y: Vec<f64> = labels.iter().map(|l| l.proxy.ln()).collect();
    let choices: Vec<Vec<usize>> = labels.iter().map(|l| l.choice.clone()).collect();
    let n_opts = vec![options.len(); table.layers.len()];
    let (model, eval) = fit_and_evaluate(&choices, &y, &n_opts, args.holdout, args.seed)?;
    let layers = layer_sensitivities(&table, &model);
    let by_op = aggregate(&layers, |l| l.op_type.clone());
    let by_block = aggregate(&layers, |l| l.block.clone());
    let mut report = SensitivityReport {
        format: REPORT_FORMAT.to_string(),
        model: pipeline.name.clone(),
        model_fingerprint: fingerprint,
        options: options.iter().map(|o| o.name()).collect(),
        layers,
        by_op_type: by_op,
        by_block,
        predictor: json!({
            "kind": "additive ridge on one-hot (layer, option), reference option 0",
            "target": "ln L, L = mean (eps_q - eps_fp)^2 / mean eps_fp^2 (weights only)",
            "lambda": eval.model.lambda,
            "lambda_cv_mse": eval.lambda_cv,
            "train": eval.train,
            "test": eval.test,
            "heldout_spearman": eval.spearman,
            "heldout_ndcg10": eval.ndcg10,
            "train_spearman": eval.train_spearman,
            "heldout_measured_predicted": eval.held_out,
            "intercept": model.intercept,
        }),
        labels: serde_json::Value::Null,
    };

    // Allocations at the budgets, with their measured proxy, and uniform baselines.
    let mut allocations = Vec::new();
    let all_paths: Vec<String> = table.layers.iter().map(|l| l.path.clone()).collect();
    for &b in &args.budgets {
        match report.allocate(&all_paths, b, false) {
            Ok((cfg, pred, avg)) => {
                let choice: Vec<usize> = cfg
                    .iter()
                    .map(|(_, o)| options.iter().position(|x| x == o).unwrap_or(0))
                    .collect();
                let measured = proxy::score(&mut unet, &table, &choice, &data)?;
                let mut counts = std::collections::BTreeMap::new();
                for (_, o) in &cfg {
                    *counts.entry(o.name()).or_insert(0usize) += 1;
                }
                allocations.push(json!({
                    "budget": b, "avg_bits": avg,
                    "predicted_ln_proxy": model.intercept + pred,
                    "measured_proxy": measured, "options": counts,
                }));
            }
            Err(e) => allocations.push(json!({ "budget": b, "error": e.to_string() })),
        }
    }
    let mut uniform = Vec::new();
    for (i, o) in options.iter().enumerate() {
        let l = labels.iter().find(|l| l.choice.iter().all(|&c| c == i));
        if let Some(l) = l {
            uniform.push(json!({ "option": o.name(), "avg_bits": l.avg_bits, "proxy": l.proxy }));
        }
    }
    let proxies: Vec<f64> = labels.iter().map(|l| l.proxy).collect();
    let bits: Vec<f64> = labels.iter().map(|l| l.avg_bits).collect();
    report.labels = json!({
        "configs": labels.len(),
        "seed": args.seed,
        "per_step": args.per_step,
        "steps_sampled": args.steps_sampled,
        "points": data.t.len(),
        "proxy_min": proxies.iter().copied().fold(f64::INFINITY, f64::min),
        "proxy_max": proxies.iter().copied().fold(0.0, f64::max),
        "spearman_proxy_vs_avg_bits": spearman(&proxies, &bits),
        "uniform": uniform,
        "allocations": allocations,
        "fid_validation": "not run: needs FID-1k per configuration on a GPU",
        "seconds": started.elapsed().as_secs_f64(),
    });
    let value = serde_json::to_value(&report)?;
    write_json_atomic(&args.out.join("sensitivity.json"), &value)?;
    charts(&args.out, &report, &eval.held_out)?;
    eprintln!(
        "wrote {}: {} layers, {} configurations; predictor held-out Spearman {:.3}, NDCG@10 {:.3} \
         ({} train / {} test, lambda {})",
        args.out.join("sensitivity.json").display(),
        report.layers.len(),
        labels.len(),
        eval.spearman,
        eval.ndcg10,
        eval.train,
        eval.test,
        eval.model.lambda
    );
    for a in &allocations {
        eprintln!("  allocation {a}");
    }
    Ok(())
}

fn charts(out: &Path, r: &SensitivityReport, held_out: &[(f64, f64)]) -> Result<()> {
    let mut blocks: Vec<String> = Vec::new();
    let bars: Vec<Bar> = r
        .layers
        .iter()
        .map(|l| {
            let g = blocks
                .iter()
                .position(|b| *b == l.block)
                .unwrap_or_else(|| {
                    blocks.push(l.block.clone());
                    blocks.len() - 1
                });
            Bar {
                label: l.path.clone(),
                value: l.sensitivity,
                group: g,
            }
        })
        .collect();
    let n = bars.len();
    bar_chart_png(
        &out.join("sensitivity-layers.png"),
        &BarChart {
            title: "Per-layer sensitivity: predicted change of ln L at 3 bits vs 8 bits".into(),
            y_label: "mean theta(3-bit options) - theta(uaq8)".into(),
            log_y: false,
            bars,
            group_names: blocks,
        },
        1400,
        dmq_report::suggested_bar_chart_height(n),
    )?;
    let mut op_bars = Vec::new();
    let names = &r.options;
    for g in &r.by_op_type {
        for (o, t) in g.theta.iter().enumerate() {
            op_bars.push(Bar {
                label: format!("{} {}", g.group, names[o]),
                value: *t,
                group: o,
            });
        }
    }
    let n = op_bars.len();
    bar_chart_png(
        &out.join("sensitivity-ops.png"),
        &BarChart {
            title: "Per-op-type mean theta by option (ln L change vs option 0)".into(),
            y_label: "theta".into(),
            log_y: false,
            bars: op_bars,
            group_names: names.clone(),
        },
        1400,
        dmq_report::suggested_bar_chart_height(n),
    )?;
    let mut pts: Vec<(f64, f64)> = held_out.to_vec();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    line_chart_png(
        &out.join("predicted-vs-measured.png"),
        &LineChart {
            title: "Held-out configurations sorted by measured ln L".into(),
            x_label: "rank by measured".into(),
            y_label: "ln L".into(),
            log_y: false,
            series: vec![
                Series {
                    name: "measured".into(),
                    points: pts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (i as f64, p.0))
                        .collect(),
                },
                Series {
                    name: "predicted".into(),
                    points: pts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (i as f64, p.1))
                        .collect(),
                },
            ],
        },
        1000,
        600,
    )?;
    Ok(())
}
