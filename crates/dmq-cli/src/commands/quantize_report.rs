//! The PNG of `dmq quantize`'s report: weight quantization error of every quantized layer in
//! forward order, coloured by weight bit width, and the reconstruction loss of every unit
//! before and after learning the rounding.

use std::path::Path;

use anyhow::Result;
use dmq_report::{bar_chart_png, line_chart_png, Bar, BarChart, LineChart, Series};

/// `report.png` (per-layer weight error) and `report-units.png` (reconstruction losses) beside it.
pub fn write_png(path: &Path, report: &serde_json::Value) -> Result<()> {
    let layers = report["layers"].as_array().cloned().unwrap_or_default();
    let mut group_names: Vec<String> = Vec::new();
    let mut bars = Vec::new();
    for l in &layers {
        let (Some(err), Some(bits)) = (l["weight_rel_error"].as_f64(), l["weight_bits"].as_u64())
        else {
            continue;
        };
        let name = format!("W{bits}");
        let group = match group_names.iter().position(|g| *g == name) {
            Some(i) => i,
            None => {
                group_names.push(name);
                group_names.len() - 1
            }
        };
        bars.push(Bar {
            label: l["path"].as_str().unwrap_or("?").to_string(),
            value: err,
            group,
        });
    }
    if !bars.is_empty() {
        let chart = BarChart {
            title: format!(
                "{}: weight error ||W_q - W|| / ||W|| per layer",
                report["recipe"].as_str().unwrap_or("")
            ),
            y_label: "relative error".into(),
            log_y: true,
            bars,
            group_names,
        };
        bar_chart_png(path, &chart, 1600, 900)?;
    }
    let units = report["units"].as_array().cloned().unwrap_or_default();
    if !units.is_empty() {
        let series = |key: &str, name: &str| Series {
            name: name.into(),
            points: units
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u[key].as_f64().map(|v| (i as f64, v)))
                .collect(),
        };
        let chart = LineChart {
            title: "block reconstruction loss per unit (forward order)".into(),
            x_label: "unit".into(),
            y_label: "lp loss".into(),
            log_y: true,
            series: vec![
                series("loss_nearest", "round to nearest"),
                series("loss_learned", "AdaRound (learned)"),
            ],
        };
        line_chart_png(&path.with_file_name("report-units.png"), &chart, 1200, 600)?;
    }
    Ok(())
}
