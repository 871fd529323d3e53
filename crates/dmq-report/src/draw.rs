//! Rendering into an RGB buffer with plotters' bitmap backend.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::axis::{self, Axis};
use crate::canvas::{self, Canvas};
use crate::{palette_colour, BarChart, LineChart, ReportError};

/// The embedded font, registered once with plotters under every family name it may ask for (its
/// mesh defaults to "sans-serif"; ab_glyph has no fallback to system fonts). `Canvas` draws our
/// text with the same font; the registration covers any text plotters measures by itself.
fn ensure_font() -> Result<&'static ab_glyph::FontRef<'static>, ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"].iter().all(|name| {
            plotters::style::register_font(name, FontStyle::Normal, canvas::FONT_BYTES).is_ok()
        })
    });
    match canvas::font() {
        Some(font) if registered => Ok(font),
        _ => Err(ReportError::Plot(
            "embedded DejaVu Sans font could not be parsed".into(),
        )),
    }
}

fn plot_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;

const GRID: RGBColor = RGBColor(225, 225, 225);
const TEXT: RGBColor = RGBColor(30, 30, 30);

fn rgb(i: usize) -> RGBColor {
    let [r, g, b] = palette_colour(i);
    RGBColor(r, g, b)
}

/// Font sizes and margin in pixels, scaled with the image so small and large PNGs look alike.
struct Metrics {
    title: f64,
    label: f64,
    tick: f64,
    margin: u32,
}

impl Metrics {
    fn new(w: u32, h: u32) -> Metrics {
        let base = (f64::from(w.min(h)) / 40.0).clamp(13.0, 16.0);
        Metrics {
            title: base * 1.45,
            label: base * 1.1,
            tick: base,
            margin: (w.min(h) / 60).clamp(8, 20),
        }
    }
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FontFamily::SansSerif, size).into_font()).color(&TEXT)
}

fn text_width(area: &Area, text: &str, style: &TextStyle) -> Result<u32, ReportError> {
    Ok(area.estimate_text_size(text, style).map_err(plot_err)?.0)
}

/// `text` shortened in the middle ("up_blocks.2.res…conv_shortcut") until it fits `max_w`:
/// layer paths differ at both ends, so both are kept.
fn fit_text(area: &Area, text: &str, style: &TextStyle, max_w: u32) -> Result<String, ReportError> {
    if text_width(area, text, style)? <= max_w {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let mut keep = chars.len().saturating_sub(1);
    while keep > 1 {
        let head = keep.div_ceil(2);
        let tail = keep / 2;
        let s: String = chars[..head]
            .iter()
            .chain(std::iter::once(&'…'))
            .chain(&chars[chars.len() - tail..])
            .collect();
        if text_width(area, &s, style)? <= max_w {
            return Ok(s);
        }
        keep -= 1;
    }
    Ok("…".to_string())
}

/// Title centred at the top; returns the height it used.
fn draw_title(root: &Area, title: &str, m: &Metrics, w: u32) -> Result<u32, ReportError> {
    if title.is_empty() {
        return Ok(m.margin);
    }
    let style = font(m.title);
    let text = fit_text(root, title, &style, w.saturating_sub(2 * m.margin))?;
    root.draw_text(
        &text,
        &style.pos(Pos::new(HPos::Center, VPos::Top)),
        ((w / 2) as i32, m.margin as i32),
    )
    .map_err(plot_err)?;
    Ok(m.margin + (m.title * 1.5) as u32)
}

/// How a legend entry shows its colour.
#[derive(Clone, Copy, PartialEq)]
enum Swatch {
    Box,
    Line,
}

/// Legend as centred, wrapping rows at `top`, above the plot so it never covers data; returns the
/// height it used.
fn draw_legend(
    root: &Area,
    items: &[(String, RGBColor)],
    swatch: Swatch,
    m: &Metrics,
    top: u32,
    w: u32,
) -> Result<u32, ReportError> {
    if items.is_empty() {
        return Ok(0);
    }
    let style = font(m.tick);
    let sw_w = match swatch {
        Swatch::Box => m.tick.round() as i32,
        Swatch::Line => (m.tick * 2.0).round() as i32,
    };
    let gap = (m.tick * 0.4).round() as i32;
    let spacing = (m.tick * 1.5).round() as i32;
    let avail = w.saturating_sub(2 * m.margin) as i32;
    let max_text = (avail - sw_w - gap).max(10) as u32;
    // Lay out rows of (text, colour, item width).
    let mut rows: Vec<Vec<(String, RGBColor, i32)>> = vec![Vec::new()];
    let mut row_w = 0;
    for (name, colour) in items {
        let text = fit_text(root, name, &style, max_text)?;
        let item_w = sw_w + gap + text_width(root, &text, &style)? as i32;
        let row = rows.last_mut().expect("at least one row");
        if !row.is_empty() && row_w + spacing + item_w > avail {
            rows.push(Vec::new());
            row_w = 0;
        }
        let row = rows.last_mut().expect("at least one row");
        if !row.is_empty() {
            row_w += spacing;
        }
        row_w += item_w;
        row.push((text, *colour, item_w));
    }
    let row_h = (m.tick * 1.6).round() as i32;
    for (r, row) in rows.iter().enumerate() {
        let total: i32 = row.iter().map(|x| x.2).sum::<i32>() + spacing * (row.len() as i32 - 1);
        let mut x = (w as i32 - total) / 2;
        let cy = top as i32 + r as i32 * row_h + row_h / 2;
        for (text, colour, item_w) in row {
            let half = match swatch {
                Swatch::Box => sw_w / 2,
                Swatch::Line => 1,
            };
            root.draw(&Rectangle::new(
                [(x, cy - half), (x + sw_w, cy + half + 1)],
                colour.filled(),
            ))
            .map_err(plot_err)?;
            root.draw_text(
                text,
                &style.pos(Pos::new(HPos::Left, VPos::Center)),
                (x + sw_w + gap, cy),
            )
            .map_err(plot_err)?;
            x += item_w + spacing;
        }
    }
    Ok(rows.len() as u32 * row_h as u32 + m.margin / 2)
}

/// The plot area left under title and legend, or an error if they leave too little of it.
fn plot_area<'a>(root: &Area<'a>, top: u32, needed: u32) -> Result<Area<'a>, ReportError> {
    let (_, h) = root.dim_in_pixel();
    if h < top + needed {
        return Err(ReportError::BadInput(format!(
            "title and legend take {top} of {h} px, leaving no room for the plot; \
             use a taller image or fewer legend entries"
        )));
    }
    Ok(root.split_vertically(top).1)
}

/// Render into a fresh RGB buffer; `draw` gets the white root area.
fn render(
    w: u32,
    h: u32,
    draw: impl FnOnce(&Area) -> Result<(), ReportError>,
) -> Result<Vec<u8>, ReportError> {
    let font = ensure_font()?;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root =
            Canvas::new(BitMapBackend::with_buffer(&mut buf, (w, h)), font).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

/// Value axis for bars: includes 0 (linear) or starts below the smallest bar (log); `headroom`
/// (fraction of the span) leaves space for value labels at the bar ends.
fn bar_axis(values: &[f64], log: bool, target: usize, headroom: f64) -> Axis {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if log {
        let (l, h) = (min.log10(), max.log10());
        let pad = ((h - l) * 0.05).max(0.1);
        let mut lo = l - pad;
        if h - l >= 2.0 {
            lo = lo.floor();
        }
        let hi = h + pad;
        Axis::log(lo, hi + (hi - lo) * headroom, target)
    } else {
        let (mut lo, mut hi) = (min.min(0.0), max.max(0.0));
        if lo == hi {
            hi = 1.0;
        }
        let span = hi - lo;
        if hi > 0.0 {
            hi += span * (0.05 + headroom);
        }
        if lo < 0.0 {
            lo -= span * (0.05 + headroom);
        }
        Axis::linear(lo, hi, target)
    }
}

pub(crate) fn bar_chart(
    chart: &BarChart,
    values: &[f64],
    w: u32,
    h: u32,
) -> Result<Vec<u8>, ReportError> {
    render(w, h, |root| {
        let m = Metrics::new(w, h);
        let mut top = draw_title(root, &chart.title, &m, w)?;
        let legend: Vec<(String, RGBColor)> = chart
            .group_names
            .iter()
            .enumerate()
            .map(|(g, name)| (name.clone(), rgb(g)))
            .collect();
        top += draw_legend(root, &legend, Swatch::Box, &m, top, w)?;
        let n = values.len();
        let x_area = (m.tick * 1.6) as u32
            + if chart.y_label.is_empty() {
                0
            } else {
                (m.label * 1.6) as u32
            };
        let area = plot_area(root, top, x_area + m.margin + 40)?;
        let plot_h = f64::from(area.dim_in_pixel().1.saturating_sub(x_area + m.margin + 4));
        let slot = plot_h / n as f64;
        // Label font follows the row height; below ~8 px a row, label every k-th bar only.
        let cat_size = (slot * 0.8).clamp(7.0, m.tick);
        let every = (8.0 / slot).ceil().max(1.0) as usize;
        let cat_style = font(cat_size);
        let max_label_w = (f64::from(w) * 0.45) as u32;
        let mut labels = vec![String::new(); n];
        let mut label_w = 0;
        for (i, bar) in chart.bars.iter().enumerate() {
            if i % every == 0 {
                labels[i] = fit_text(root, &bar.label, &cat_style, max_label_w)?;
                label_w = label_w.max(text_width(root, &labels[i], &cat_style)?);
            }
        }
        // Row i is drawn at position n-1-i so the first bar is on top.
        let row_pos = |i: usize| (n - 1 - i) as f64;
        let cat_ticks: Vec<f64> = (0..n)
            .filter(|i| i % every == 0)
            .map(|i| row_pos(i) + 0.5)
            .collect();

        let plot_w = f64::from(w.saturating_sub(label_w + 3 * m.margin));
        // Few, thick bars (result figures) get their value printed at the bar end.
        let value_size = (slot * 0.6).min(m.tick);
        let show_values = n <= 40 && value_size >= 9.0;
        let value_axis = bar_axis(
            values,
            chart.log_y,
            (plot_w / 110.0).clamp(3.0, 10.0) as usize,
            if show_values { 0.12 } else { 0.0 },
        );
        let mut ctx = ChartBuilder::on(&area)
            .margin_top(4)
            .margin_bottom(m.margin)
            .margin_left(m.margin)
            .margin_right(2 * m.margin)
            .x_label_area_size(x_area)
            .y_label_area_size(label_w + 12)
            .build_cartesian_2d(
                value_axis.coord(),
                axis::TickCoord {
                    lo: 0.0,
                    hi: n as f64,
                    ticks: cat_ticks,
                },
            )
            .map_err(plot_err)?;
        let x_fmt = |v: &f64| value_axis.label(*v);
        let y_fmt = |v: &f64| {
            let pos = (v - 0.5).round().clamp(0.0, (n - 1) as f64) as usize;
            labels[n - 1 - pos].clone()
        };
        ctx.configure_mesh()
            .disable_y_mesh()
            .bold_line_style(GRID)
            .axis_style(TEXT)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_label_style(font(m.tick))
            .y_label_style(cat_style.clone())
            .x_desc(chart.y_label.as_str())
            .axis_desc_style(font(m.label))
            .draw()
            .map_err(plot_err)?;

        // Bars at most 80% of a row and 36 px thick, so a few bars do not turn into slabs.
        let inset = (0.5 - (0.4f64).min(18.0 / slot.max(1e-9))).max(0.0);
        let inset = if slot < 4.0 { 0.0 } else { inset };
        let base = if value_axis.log { value_axis.lo } else { 0.0 };
        ctx.draw_series(
            chart
                .bars
                .iter()
                .zip(values)
                .enumerate()
                .map(|(i, (bar, &v))| {
                    let p = row_pos(i);
                    Rectangle::new(
                        [(base, p + inset), (value_axis.map(v), p + 1.0 - inset)],
                        rgb(bar.group).filled(),
                    )
                }),
        )
        .map_err(plot_err)?;
        if show_values {
            let style = font(value_size);
            for (i, (bar, &v)) in chart.bars.iter().zip(values).enumerate() {
                let (x, y) = ctx.backend_coord(&(value_axis.map(v), row_pos(i) + 0.5));
                // The true value, also for bars clamped on a log axis.
                let text = axis::short_value(bar.value);
                let (anchor, dx) = if v < 0.0 {
                    (HPos::Right, -4)
                } else {
                    (HPos::Left, 4)
                };
                root.draw_text(
                    &text,
                    &style.pos(Pos::new(anchor, VPos::Center)),
                    (x + dx, y),
                )
                .map_err(plot_err)?;
            }
        }
        if !value_axis.log && value_axis.lo < 0.0 {
            ctx.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 0.0), (0.0, n as f64)],
                TEXT,
            )))
            .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// Axis covering `lo..=hi` with 5% headroom (log: in log10 space).
fn padded_axis(lo: f64, hi: f64, log: bool, target: usize) -> Axis {
    let (lo, hi) = if log {
        (lo.log10(), hi.log10())
    } else {
        (lo, hi)
    };
    let (lo, hi) = if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let d = if log { 0.5 } else { (lo.abs() * 0.1).max(0.5) };
        (lo - d, hi + d)
    };
    if log {
        Axis::log(lo, hi, target)
    } else {
        Axis::linear(lo, hi, target)
    }
}

pub(crate) fn line_chart(
    chart: &LineChart,
    series: &[Vec<(f64, f64)>],
    w: u32,
    h: u32,
) -> Result<Vec<u8>, ReportError> {
    render(w, h, |root| {
        let m = Metrics::new(w, h);
        let mut top = draw_title(root, &chart.title, &m, w)?;
        let named = chart.series.len() > 1 || chart.series.iter().any(|s| !s.name.is_empty());
        if named {
            let legend: Vec<(String, RGBColor)> = chart
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), rgb(i)))
                .collect();
            top += draw_legend(root, &legend, Swatch::Line, &m, top, w)?;
        }
        let area = plot_area(root, top, 100)?;
        let (aw, ah) = area.dim_in_pixel();

        let all = series.iter().flatten();
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let x_axis = if x1 > x0 {
            Axis::linear(x0, x1, (f64::from(aw) / 110.0).clamp(3.0, 10.0) as usize)
        } else {
            padded_axis(x0, x1, false, 3)
        };
        let y_axis = padded_axis(
            y0,
            y1,
            chart.log_y,
            (f64::from(ah) / 60.0).clamp(3.0, 10.0) as usize,
        );

        let tick_style = font(m.tick);
        let mut tick_w = 0;
        for (_, l) in &y_axis.ticks {
            tick_w = tick_w.max(text_width(root, l, &tick_style)?);
        }
        let desc = |s: &str| {
            if s.is_empty() {
                0
            } else {
                (m.label * 1.6) as u32
            }
        };
        let mut ctx = ChartBuilder::on(&area)
            .margin_top(4)
            .margin_bottom(m.margin)
            .margin_left(m.margin)
            .margin_right(2 * m.margin)
            .x_label_area_size((m.tick * 1.6) as u32 + desc(&chart.x_label))
            .y_label_area_size(tick_w + 12 + desc(&chart.y_label))
            .build_cartesian_2d(x_axis.coord(), y_axis.coord())
            .map_err(plot_err)?;
        let x_fmt = |v: &f64| x_axis.label(*v);
        let y_fmt = |v: &f64| y_axis.label(*v);
        ctx.configure_mesh()
            .bold_line_style(GRID)
            .axis_style(TEXT)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style(tick_style.clone())
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .axis_desc_style(font(m.label))
            .draw()
            .map_err(plot_err)?;

        for (i, pts) in series.iter().enumerate() {
            let colour = rgb(i);
            let mapped: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y_axis.map(y))).collect();
            ctx.draw_series(LineSeries::new(
                mapped.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(plot_err)?;
            if mapped.len() <= 40 {
                ctx.draw_series(mapped.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}
