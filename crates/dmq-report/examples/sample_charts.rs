//! Writes the sample charts the tests use into a folder, to look at them:
//! `cargo run -p dmq-report --example sample_charts -- /tmp/charts`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use dmq_report::{
    bar_chart_png, line_chart_png, suggested_bar_chart_height, Bar, BarChart, LineChart, Series,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "charts".into()));
    std::fs::create_dir_all(&dir)?;

    let h = suggested_bar_chart_height(120);
    bar_chart_png(
        &dir.join("layers_120_log.png"),
        &common::layer_error_chart(120, true),
        1000,
        h,
    )?;
    bar_chart_png(
        &dir.join("layers_120_short.png"),
        &common::layer_error_chart(120, true),
        1000,
        700,
    )?;
    bar_chart_png(
        &dir.join("layers_20_linear.png"),
        &common::layer_error_chart(20, false),
        800,
        500,
    )?;
    let fid = BarChart {
        title: "FID on CIFAR-10 (lower is better)".into(),
        y_label: "FID".into(),
        log_y: false,
        bars: [
            ("FP32", 4.2, 0),
            ("W8A8 RTN", 5.1, 1),
            ("W4A8 AdaRound", 6.3, 1),
            ("W4A8 + PTQD", 5.6, 2),
        ]
        .iter()
        .map(|&(l, v, g)| Bar {
            label: l.into(),
            value: v,
            group: g,
        })
        .collect(),
        group_names: vec![
            "full precision".into(),
            "PTQ".into(),
            "PTQ + noise correction".into(),
        ],
    };
    bar_chart_png(&dir.join("fid.png"), &fid, 800, 400)?;
    let signed = BarChart {
        title: "Bias change per block".into(),
        y_label: "Δ mean".into(),
        log_y: false,
        bars: (0..8)
            .map(|i| Bar {
                label: format!("block {i}"),
                value: (i as f64 - 3.5) * 0.013,
                group: 0,
            })
            .collect(),
        group_names: vec![],
    };
    bar_chart_png(&dir.join("signed.png"), &signed, 600, 400)?;
    line_chart_png(
        &dir.join("noise_linear.png"),
        &common::noise_stats_chart(false),
        900,
        500,
    )?;
    line_chart_png(
        &dir.join("noise_log.png"),
        &common::noise_stats_chart(true),
        900,
        500,
    )?;
    let many = LineChart {
        title: "Activation range per step, 12 layers".into(),
        x_label: "step".into(),
        y_label: "max |x|".into(),
        log_y: false,
        series: (0..12)
            .map(|s| Series {
                name: format!("down_blocks.{}.resnets.{}.conv1", s / 4, s % 4),
                points: (0..20)
                    .map(|t| (t as f64, (s + 1) as f64 * (1.0 + 0.1 * t as f64)))
                    .collect(),
            })
            .collect(),
    };
    line_chart_png(&dir.join("many_series.png"), &many, 900, 600)?;
    println!("wrote charts to {}", dir.display());
    Ok(())
}
