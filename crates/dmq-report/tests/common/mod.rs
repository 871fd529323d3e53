//! Realistic chart data shared by the tests and the `sample_charts` example.
#![allow(dead_code)]

use dmq_report::{Bar, BarChart, LineChart, Series};

/// Layer paths in the order of a diffusers DDPM UNet (CIFAR-10 style), `n` of them.
pub fn layer_names(n: usize) -> Vec<String> {
    let mut v = vec![
        "conv_in".to_string(),
        "time_embedding.linear_1".to_string(),
        "time_embedding.linear_2".to_string(),
    ];
    let resnet = |prefix: String, shortcut: bool| {
        let mut r = vec![
            format!("{prefix}.conv1"),
            format!("{prefix}.time_emb_proj"),
            format!("{prefix}.conv2"),
        ];
        if shortcut {
            r.push(format!("{prefix}.conv_shortcut"));
        }
        r
    };
    let attn = |prefix: String| {
        ["to_q", "to_k", "to_v", "to_out.0"]
            .iter()
            .map(|p| format!("{prefix}.{p}"))
            .collect::<Vec<_>>()
    };
    for b in 0..4 {
        for r in 0..2 {
            v.extend(resnet(
                format!("down_blocks.{b}.resnets.{r}"),
                b == 1 && r == 0,
            ));
            if b == 1 {
                v.extend(attn(format!("down_blocks.{b}.attentions.{r}")));
            }
        }
        if b < 3 {
            v.push(format!("down_blocks.{b}.downsamplers.0.conv"));
        }
    }
    v.extend(resnet("mid_block.resnets.0".into(), false));
    v.extend(attn("mid_block.attentions.0".into()));
    v.extend(resnet("mid_block.resnets.1".into(), false));
    for b in 0..4 {
        for r in 0..3 {
            v.extend(resnet(format!("up_blocks.{b}.resnets.{r}"), true));
            if b == 1 || b == 2 {
                v.extend(attn(format!("up_blocks.{b}.attentions.{r}")));
            }
        }
        if b < 3 {
            v.push(format!("up_blocks.{b}.upsamplers.0.conv"));
        }
    }
    v.push("conv_out".to_string());
    assert!(v.len() >= n, "only {} layer names", v.len());
    v.truncate(n);
    v
}

/// Per-layer error bars: group 0 = conv, 1 = linear / attention, 2 = first/last layer, values
/// spread over several decades like real per-layer MSEs.
pub fn layer_error_chart(n: usize, log_y: bool) -> BarChart {
    let bars = layer_names(n)
        .into_iter()
        .enumerate()
        .map(|(i, label)| {
            let group = if label == "conv_in" || label == "conv_out" {
                2
            } else if label.contains("conv") {
                0
            } else {
                1
            };
            let value = 1e-5 * 10f64.powf(3.0 * (((i * 37) % 101) as f64 / 100.0));
            Bar {
                label,
                value,
                group,
            }
        })
        .collect();
    BarChart {
        title: "W4A8 per-layer output MSE".into(),
        y_label: "MSE vs. full precision".into(),
        log_y,
        bars,
        group_names: vec![
            "conv".into(),
            "linear / attention".into(),
            "first / last".into(),
        ],
    }
}

/// PTQD-style per-step noise statistics over 100 sampling steps.
pub fn noise_stats_chart(log_y: bool) -> LineChart {
    let steps = 100;
    let series = |name: &str, f: &dyn Fn(f64) -> f64| Series {
        name: name.into(),
        points: (0..steps)
            .map(|t| (t as f64 * 10.0, f(t as f64 / steps as f64)))
            .collect(),
    };
    LineChart {
        title: "PTQD quantization-noise statistics per step".into(),
        x_label: "timestep t".into(),
        y_label: "value".into(),
        log_y,
        series: vec![
            series("k_t (correlation)", &|x| 0.02 + 0.05 * x * x),
            series("bias", &|x| 0.001 + 0.01 * (1.0 - x)),
            series("σ (residual std)", &|x| 0.005 + 0.03 * x),
        ],
    }
}
