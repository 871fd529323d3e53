//! Charts written to real PNG files, decoded back and checked for size, colours and text.

mod common;

use std::path::Path;

use dmq_report::{
    bar_chart_png, line_chart_png, palette_colour, suggested_bar_chart_height, Bar, BarChart,
    LineChart, ReportError, Series,
};

fn decode(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8()
}

fn count_colour(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

fn distinct_colours(img: &image::RgbImage) -> usize {
    let mut set = std::collections::HashSet::new();
    for p in img.pixels() {
        set.insert(p.0);
    }
    set.len()
}

/// Dark (text-coloured) pixels in the top `rows` rows: the title was rasterised with the
/// embedded font.
fn dark_pixels_in_top(img: &image::RgbImage, rows: u32) -> usize {
    (0..rows.min(img.height()))
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count()
}

/// Names of all entries in `dir`: only the PNGs asked for, no leftover temporary files.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bar_chart_with_120_layers_has_group_colours_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layers.png");
    let chart = common::layer_error_chart(120, true);
    let height = suggested_bar_chart_height(120);
    bar_chart_png(&path, &chart, 1000, height).unwrap();

    let img = decode(&path);
    assert_eq!(img.dimensions(), (1000, height));
    assert!(distinct_colours(&img) > 10, "image is (nearly) one colour");
    // Groups 0 (conv), 1 (linear / attention), 2 (first layer) each show their own colour; the
    // palette colour of a group not in the chart does not appear.
    let counts: Vec<usize> = (0..4)
        .map(|g| count_colour(&img, palette_colour(g)))
        .collect();
    assert!(counts[0] > 5000 && counts[1] > 5000, "{counts:?}");
    assert!(
        counts[2] > 100,
        "first-layer bar and its legend swatch: {counts:?}"
    );
    assert_eq!(counts[3], 0, "{counts:?}");
    assert!(dark_pixels_in_top(&img, 40) > 100, "no title text drawn");
    assert_eq!(entries(dir.path()), vec!["layers.png"]);
}

#[test]
fn crowded_bar_chart_still_renders() {
    // 120 bars in 700 px: labels shrink and thin out, bars stay.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crowded.png");
    bar_chart_png(&path, &common::layer_error_chart(120, false), 900, 700).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (900, 700));
    assert!(count_colour(&img, palette_colour(0)) > 1000);
    assert!(count_colour(&img, palette_colour(1)) > 1000);
}

#[test]
fn log_bar_chart_clamps_zero_and_negative_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clamped.png");
    let chart = BarChart {
        title: "clamped".into(),
        y_label: "MSE".into(),
        log_y: true,
        bars: vec![
            Bar {
                label: "a".into(),
                value: 1e-2,
                group: 0,
            },
            Bar {
                label: "zero".into(),
                value: 0.0,
                group: 1,
            },
            Bar {
                label: "negative".into(),
                value: -5.0,
                group: 1,
            },
            Bar {
                label: "b".into(),
                value: 1e-5,
                group: 0,
            },
        ],
        group_names: vec![],
    };
    bar_chart_png(&path, &chart, 600, 300).unwrap();
    let img = decode(&path);
    // No legend, so group 1's colour can only come from the two clamped bars.
    assert!(count_colour(&img, palette_colour(1)) > 200);
}

#[test]
fn line_chart_series_get_distinct_colours() {
    let dir = tempfile::tempdir().unwrap();
    for log_y in [false, true] {
        let path = dir.path().join(format!("noise_{log_y}.png"));
        line_chart_png(&path, &common::noise_stats_chart(log_y), 900, 500).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (900, 500));
        let counts: Vec<usize> = (0..4)
            .map(|i| count_colour(&img, palette_colour(i)))
            .collect();
        assert!(
            counts[..3].iter().all(|&c| c > 500),
            "log_y={log_y}: {counts:?}"
        );
        assert_eq!(counts[3], 0, "log_y={log_y}: {counts:?}");
        assert!(dark_pixels_in_top(&img, 40) > 100);
    }
    assert_eq!(
        entries(dir.path()),
        vec!["noise_false.png", "noise_true.png"]
    );
}

#[test]
fn log_line_chart_accepts_zero_and_single_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.png");
    let chart = LineChart {
        title: String::new(),
        x_label: "step".into(),
        y_label: String::new(),
        log_y: true,
        series: vec![
            Series {
                name: "with zero".into(),
                points: vec![(0.0, 0.0), (1.0, 1e-3), (2.0, 1.0)],
            },
            Series {
                name: "one point".into(),
                points: vec![(1.0, 0.1)],
            },
        ],
    };
    line_chart_png(&path, &chart, 400, 300).unwrap();
    let img = decode(&path);
    assert!(
        count_colour(&img, palette_colour(1)) > 10,
        "single point drawn as a marker"
    );
}

#[test]
fn nan_bar_is_an_error_naming_the_bar_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.png");
    let mut chart = common::layer_error_chart(30, true);
    chart.bars[7].value = f64::NAN;
    let err = bar_chart_png(&path, &chart, 800, 600).unwrap_err();
    assert!(matches!(err, ReportError::BadInput(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&chart.bars[7].label) && msg.contains("NaN"),
        "{msg}"
    );
    assert!(!path.exists());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn nan_point_is_an_error_naming_the_series_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.png");
    let mut chart = common::noise_stats_chart(false);
    chart.series[1].points[42].1 = f64::NAN;
    let msg = line_chart_png(&path, &chart, 800, 600)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bias") && msg.contains("point 42"), "{msg}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn failed_write_keeps_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.png");
    bar_chart_png(&path, &common::layer_error_chart(10, false), 400, 300).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = common::layer_error_chart(10, false);
    bad.bars[0].value = f64::INFINITY;
    assert!(bar_chart_png(&path, &bad, 400, 300).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A successful call replaces it.
    bar_chart_png(&path, &common::layer_error_chart(20, false), 400, 300).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(entries(dir.path()), vec!["chart.png"]);
}

#[test]
fn rendering_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    let chart = common::layer_error_chart(40, true);
    bar_chart_png(&a, &chart, 700, 800).unwrap();
    bar_chart_png(&b, &chart, 700, 800).unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn bad_input_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let bad = |r: Result<(), ReportError>| match r {
        Err(ReportError::BadInput(msg)) => msg,
        other => panic!("expected BadInput, got {other:?}"),
    };
    let empty = BarChart {
        title: "empty".into(),
        ..Default::default()
    };
    assert!(bad(bar_chart_png(&path, &empty, 400, 300)).contains("no bars"));

    let mut no_positive = common::layer_error_chart(3, true);
    no_positive.bars.iter_mut().for_each(|b| b.value = 0.0);
    assert!(bad(bar_chart_png(&path, &no_positive, 400, 300)).contains("no positive"));

    let mut bad_group = common::layer_error_chart(3, false);
    bad_group.bars[1].group = 3;
    assert!(bad(bar_chart_png(&path, &bad_group, 400, 300)).contains("group 3"));

    assert!(bad(bar_chart_png(
        &path,
        &common::layer_error_chart(3, false),
        10,
        10
    ))
    .contains("10x10"));

    let mut crowded_legend = common::layer_error_chart(3, false);
    crowded_legend.group_names = (0..200).map(|g| format!("group {g}")).collect();
    assert!(bad(bar_chart_png(&path, &crowded_legend, 300, 200)).contains("no room"));

    let no_series = LineChart::default();
    assert!(bad(line_chart_png(&path, &no_series, 400, 300)).contains("no series"));
    let empty_series = LineChart {
        series: vec![Series {
            name: "s".into(),
            points: vec![],
        }],
        ..Default::default()
    };
    assert!(bad(line_chart_png(&path, &empty_series, 400, 300)).contains("'s' has no points"));
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn io_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("chart.png");
    let err = bar_chart_png(&path, &common::layer_error_chart(3, false), 400, 300).unwrap_err();
    match &err {
        ReportError::Io { path: p, .. } => assert_eq!(p, &path),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains("missing-dir"), "{err}");
    assert!(entries(dir.path()).is_empty());
}
