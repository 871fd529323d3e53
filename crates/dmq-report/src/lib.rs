//! PNG charts for dmq: per-layer quantization error bars, per-step noise statistics (PTQD's
//! k_t, bias, σ), sensitivity charts and result figures. All plotting goes through this crate so
//! styling and file handling live in one place.
//!
//! Rendering is plotters' bitmap backend with text through ab_glyph and an embedded DejaVu Sans
//! (see `assets/README.md`), so no system font lookup happens: it works on headless CI machines
//! without fonts. Files are written atomically (temporary name in the same folder, then rename),
//! so a failed call never leaves a partial or stale-named PNG behind.

mod axis;
mod canvas;
mod draw;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One bar: `group` picks the colour (and the legend entry in [`BarChart::group_names`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub group: usize,
}

/// Bars drawn horizontally, one row per bar from top to bottom in the given order, labels on the
/// left: long layer paths (`up_blocks.2.resnets.1.conv_shortcut`) stay readable this way even with
/// ~120 bars. The value axis is therefore horizontal; `y_label` and `log_y` name it.
///
/// Labels shrink with the row height; under about 8 px a row only every k-th bar is labelled, so
/// size the image with [`suggested_bar_chart_height`]. Labels wider than 45% of the image are
/// shortened in the middle. Up to 40 bars with room for it also get their value printed at the
/// bar end.
///
/// With `log_y`, values ≤ 0 cannot be shown: they are clamped to the smallest positive value in
/// the chart (drawn as the shortest bar). A chart with no positive value at all is rejected.
/// NaN and infinite values are rejected with an error naming the bar.
///
/// `group_names` is the legend: when non-empty, every bar's group must index it; when empty, no
/// legend is drawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub log_y: bool,
    pub bars: Vec<Bar>,
    pub group_names: Vec<String>,
}

/// One line; `name` is its legend entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis (e.g. diffusion step), each series in its own colour with a legend.
///
/// With `log_y`, y values ≤ 0 are clamped to the smallest positive y over all series (a chart with
/// none is rejected). NaN and infinite coordinates are rejected with an error naming the series
/// and point. Every series needs at least one point; series with ≤ 40 points also get markers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Why a chart was not written. No file is left at the destination (nor a temporary one) after
/// any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The chart data cannot be drawn: empty chart, NaN/infinite value, bad group, bad size.
    #[error("bad chart input: {0}")]
    BadInput(String),
    /// Writing the PNG failed; `path` is the destination asked for.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// plotters failed to draw (font or backend error).
    #[error("plotting failed: {0}")]
    Plot(String),
    /// PNG encoding of the rendered image failed.
    #[error("PNG encoding failed: {0}")]
    Encode(#[source] image::ImageError),
}

/// Smallest image accepted; below this the axes and labels do not fit.
pub const MIN_SIZE: (u32, u32) = (200, 150);
/// Largest side accepted, to keep the RGB buffer bounded (16384² × 3 bytes = 768 MiB).
pub const MAX_SIDE: u32 = 16384;

/// Height giving every bar of an `n_bars` chart a readable label row (about 14 px per bar plus
/// room for title, legend and axis). Lower heights still work, but labels shrink and, below about
/// 8 px per bar, only every k-th bar is labelled.
pub fn suggested_bar_chart_height(n_bars: usize) -> u32 {
    let h = 160usize.saturating_add(n_bars.saturating_mul(14));
    h.clamp(300, MAX_SIDE as usize) as u32
}

/// The colour bar group / line series `index` is drawn in, as RGB: a Tableau-10 palette, then
/// golden-ratio hues. Exposed so other figures (and tests) can match chart colours.
pub fn palette_colour(index: usize) -> [u8; 3] {
    const TABLEAU10: [[u8; 3]; 10] = [
        [0x4e, 0x79, 0xa7],
        [0xf2, 0x8e, 0x2b],
        [0xe1, 0x57, 0x59],
        [0x76, 0xb7, 0xb2],
        [0x59, 0xa1, 0x4f],
        [0xed, 0xc9, 0x48],
        [0xb0, 0x7a, 0xa1],
        [0xff, 0x9d, 0xa7],
        [0x9c, 0x75, 0x5f],
        [0xba, 0xb0, 0xac],
    ];
    if let Some(c) = TABLEAU10.get(index) {
        return *c;
    }
    let hue = ((index - TABLEAU10.len()) as f64 * 0.618_033_988_75).fract();
    hsl_to_rgb(hue, 0.65, 0.45)
}

fn hsl_to_rgb(h: f64, s: f64, l: f64) -> [u8; 3] {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h * 6.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [to(r), to(g), to(b)]
}

/// Draw `chart` as a `width`×`height` PNG at `path` (atomically; see the crate docs).
pub fn bar_chart_png(
    path: &Path,
    chart: &BarChart,
    width: u32,
    height: u32,
) -> Result<(), ReportError> {
    check_size(width, height)?;
    let values = bar_values(chart)?;
    let rgb = draw::bar_chart(chart, &values, width, height)?;
    write_png_atomic(path, &rgb, width, height)
}

/// Draw `chart` as a `width`×`height` PNG at `path` (atomically; see the crate docs).
pub fn line_chart_png(
    path: &Path,
    chart: &LineChart,
    width: u32,
    height: u32,
) -> Result<(), ReportError> {
    check_size(width, height)?;
    let series = line_points(chart)?;
    let rgb = draw::line_chart(chart, &series, width, height)?;
    write_png_atomic(path, &rgb, width, height)
}

fn check_size(width: u32, height: u32) -> Result<(), ReportError> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(ReportError::BadInput(format!(
            "image size {width}x{height} is outside {}x{}..={MAX_SIDE}x{MAX_SIDE}",
            MIN_SIZE.0, MIN_SIZE.1
        )));
    }
    Ok(())
}

/// Validated bar values, clamped for log axes.
fn bar_values(chart: &BarChart) -> Result<Vec<f64>, ReportError> {
    if chart.bars.is_empty() {
        return Err(ReportError::BadInput(format!(
            "bar chart '{}' has no bars",
            chart.title
        )));
    }
    for (i, b) in chart.bars.iter().enumerate() {
        if !b.value.is_finite() {
            return Err(ReportError::BadInput(format!(
                "bar {i} '{}' has value {} (bars must be finite)",
                b.label, b.value
            )));
        }
        if !chart.group_names.is_empty() && b.group >= chart.group_names.len() {
            return Err(ReportError::BadInput(format!(
                "bar {i} '{}' has group {} but only {} group names are given",
                b.label,
                b.group,
                chart.group_names.len()
            )));
        }
    }
    let values: Vec<f64> = chart.bars.iter().map(|b| b.value).collect();
    if chart.log_y {
        clamp_for_log(values, || {
            format!(
                "bar chart '{}' has log_y but no positive value",
                chart.title
            )
        })
    } else {
        Ok(values)
    }
}

/// Validated points per series, y clamped for log axes.
fn line_points(chart: &LineChart) -> Result<Vec<Vec<(f64, f64)>>, ReportError> {
    if chart.series.is_empty() {
        return Err(ReportError::BadInput(format!(
            "line chart '{}' has no series",
            chart.title
        )));
    }
    for s in &chart.series {
        if s.points.is_empty() {
            return Err(ReportError::BadInput(format!(
                "series '{}' has no points",
                s.name
            )));
        }
        for (i, (x, y)) in s.points.iter().enumerate() {
            if !x.is_finite() || !y.is_finite() {
                return Err(ReportError::BadInput(format!(
                    "series '{}' point {i} is ({x}, {y}) (points must be finite)",
                    s.name
                )));
            }
        }
    }
    if !chart.log_y {
        return Ok(chart.series.iter().map(|s| s.points.clone()).collect());
    }
    let ys: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let mut ys = clamp_for_log(ys, || {
        format!(
            "line chart '{}' has log_y but no positive y value",
            chart.title
        )
    })?
    .into_iter();
    Ok(chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, _)| (x, ys.next().expect("one y per point")))
                .collect()
        })
        .collect())
}

fn clamp_for_log(
    mut values: Vec<f64>,
    no_positive: impl FnOnce() -> String,
) -> Result<Vec<f64>, ReportError> {
    let min_pos = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min_pos.is_finite() {
        return Err(ReportError::BadInput(no_positive()));
    }
    for v in &mut values {
        if *v <= 0.0 {
            *v = min_pos;
        }
    }
    Ok(values)
}

/// Encode `rgb` as PNG, write it under a unique temporary name next to `path`, then rename it
/// over `path`: readers never see a half-written file, and nothing is left behind on error.
fn write_png_atomic(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), ReportError> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(ReportError::Encode)?;

    let io_err = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&png)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_clamp_uses_smallest_positive() {
        let v = clamp_for_log(vec![0.5, 0.0, -3.0, 0.01], String::new).unwrap();
        assert_eq!(v, vec![0.5, 0.01, 0.01, 0.01]);
        assert!(clamp_for_log(vec![0.0, -1.0], || "none".into()).is_err());
    }

    #[test]
    fn palette_colours_are_distinct() {
        let cols: Vec<[u8; 3]> = (0..40).map(palette_colour).collect();
        for i in 0..cols.len() {
            for j in 0..i {
                assert_ne!(cols[i], cols[j], "colours {i} and {j}");
            }
        }
    }

    #[test]
    fn suggested_height_grows_with_bars() {
        assert_eq!(suggested_bar_chart_height(0), 300);
        assert!(suggested_bar_chart_height(120) >= 120 * 12);
        assert_eq!(suggested_bar_chart_height(usize::MAX), MAX_SIDE);
    }
}
