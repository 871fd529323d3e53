//! Value axes: range, tick positions and tick labels, computed here rather than by plotters so
//! linear and log axes share one coordinate type (log axes are drawn in log10 space).

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// One axis in drawing space (log10 of the value for log axes).
#[derive(Debug, Clone)]
pub(crate) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
    /// Tick positions in drawing space with their labels.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Linear axis over `lo..hi` (`lo < hi`) with about `target` ticks.
    pub fn linear(lo: f64, hi: f64, target: usize) -> Axis {
        let ticks = nice_ticks(lo, hi, target);
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// Log axis over `lo..hi`, both in log10 space (`lo < hi`): decade ticks over wide ranges,
    /// 1-2-5 ticks over one to 2.5 decades, round linear values over narrower ones.
    pub fn log(lo: f64, hi: f64, target: usize) -> Axis {
        let span = hi - lo;
        let ticks = if span >= 2.5 {
            let first = lo.ceil() as i64;
            let last = hi.floor() as i64;
            let count = (last - first + 1).max(1) as usize;
            let stride = count.div_ceil(target.max(2)).max(1);
            // One style for all labels: plain only if every decade fits it.
            let plain = (-3..=5).contains(&first) && (-3..=5).contains(&last);
            (first..=last)
                .step_by(stride)
                .map(|k| (k as f64, decade_label(k, plain)))
                .collect()
        } else if span >= 1.0 {
            let mut ticks = Vec::new();
            for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
                for m in [1.0, 2.0, 5.0] {
                    let v = m * 10f64.powi(k as i32);
                    let p = v.log10();
                    if p >= lo - 1e-9 && p <= hi + 1e-9 {
                        ticks.push((p, format_value(v, 10f64.powi(k as i32))));
                    }
                }
            }
            ticks
        } else {
            nice_ticks(10f64.powf(lo), 10f64.powf(hi), target)
                .into_iter()
                .filter(|(v, _)| *v > 0.0)
                .map(|(v, l)| (v.log10(), l))
                .collect()
        };
        Axis {
            lo,
            hi,
            log: true,
            ticks,
        }
    }

    /// Value to drawing space.
    pub fn map(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// plotters coordinate with exactly our ticks.
    pub fn coord(&self) -> TickCoord {
        TickCoord {
            lo: self.lo,
            hi: self.hi,
            ticks: self.ticks.iter().map(|t| t.0).collect(),
        }
    }

    /// Label of the tick at drawing position `p` (plotters hands back the key points we gave it).
    pub fn label(&self, p: f64) -> String {
        let tol = (self.hi - self.lo).abs() * 1e-9;
        self.ticks
            .iter()
            .find(|(t, _)| (t - p).abs() <= tol)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

/// Linear f64 coordinate whose tick marks and grid lines are exactly `ticks`. (plotters'
/// `with_key_points` wrapper over f64 ranges cannot take a label formatter in 0.3.7.)
#[derive(Debug, Clone)]
pub(crate) struct TickCoord {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
}

impl Ranged for TickCoord {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = (v - self.lo) / (self.hi - self.lo);
        let len = f64::from(limit.1 - limit.0);
        limit.0 + (len * frac).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Ticks are all "bold" points; no light grid lines in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Round tick values (1, 2, 5 times a power of ten) inside `lo..=hi`, labelled with as many
/// decimals as the step needs.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    let raw = (hi - lo) / target.max(1) as f64;
    if raw <= 0.0 || !raw.is_finite() {
        return vec![(lo, format_value(lo, lo.abs().max(1e-300)))];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    // Nearest of 1, 2, 5, 10 (geometric midpoints), so the count stays close to `target`.
    let mult = if norm < 1.5 {
        1.0
    } else if norm < 3.2 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    let step = mult * mag;
    let eps = step * 1e-6;
    let first = ((lo - eps) / step).ceil() as i64;
    let last = ((hi + eps) / step).floor() as i64;
    (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            (v, format_value(v, step))
        })
        .collect()
}

/// A tick value printed with the precision its step implies; scientific notation for very
/// large or small magnitudes so labels stay short.
pub(crate) fn format_value(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let mag = v.abs().log10().floor();
    let step_mag = step.abs().log10().floor();
    if !(-3.0..6.0).contains(&mag) {
        let prec = (mag - step_mag).clamp(0.0, 6.0) as usize;
        return format!("{v:.prec$e}");
    }
    let decimals = (-step_mag).clamp(0.0, 9.0) as usize;
    format!("{v:.decimals$}")
}

/// `10^k` as "0.01" / "1000" (`plain`, for -3 ≤ k ≤ 5) or "1e-5".
fn decade_label(k: i64, plain: bool) -> String {
    match k {
        0..=5 if plain => format!("1{}", "0".repeat(k as usize)),
        -3..=-1 if plain => format!("0.{}1", "0".repeat((-k - 1) as usize)),
        _ => format!("1e{k}"),
    }
}

/// Shortest label for a data value (bar end labels, messages): 4 significant digits.
pub(crate) fn short_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor();
    if !(-3.0..6.0).contains(&mag) {
        let s = format!("{v:.3e}");
        let (mantissa, exp) = s.split_once('e').expect("{:e} output has an exponent");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let decimals = (3.0 - mag).clamp(0.0, 9.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_and_inside() {
        let t = nice_ticks(0.0, 1000.0, 5);
        let v: Vec<f64> = t.iter().map(|x| x.0).collect();
        assert_eq!(v, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(t[1].1, "200");
        let t = nice_ticks(-0.013, 0.031, 4);
        assert!(t.iter().all(|(v, _)| (-0.013..=0.031).contains(v)));
        assert_eq!(
            t.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
            vec!["-0.01", "0", "0.01", "0.02", "0.03"]
        );
    }

    #[test]
    fn decade_labels() {
        assert_eq!(decade_label(0, true), "1");
        assert_eq!(decade_label(3, true), "1000");
        assert_eq!(decade_label(-2, true), "0.01");
        assert_eq!(decade_label(-2, false), "1e-2");
        assert_eq!(decade_label(-7, false), "1e-7");
    }

    #[test]
    fn log_axis_ticks() {
        let a = Axis::log(-6.2, 0.3, 8);
        let pos: Vec<f64> = a.ticks.iter().map(|t| t.0).collect();
        assert_eq!(pos, vec![-6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]);
        assert_eq!(
            a.label(-3.0),
            "1e-3",
            "one label style once a decade needs 1e-k"
        );
        assert_eq!(Axis::log(-3.0, 1.0, 8).label(-3.0), "0.001");
        // One to two decades: 1-2-5 ticks.
        let a = Axis::log(-3.1, -1.1, 8);
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            vec!["0.001", "0.002", "0.005", "0.01", "0.02", "0.05"]
        );
        // Narrower: round values on the log scale.
        let a = Axis::log(0.2f64.log10(), 0.9f64.log10(), 5);
        assert!(a.ticks.len() >= 3, "{:?}", a.ticks);
        assert!(a.ticks.iter().all(|(p, _)| *p >= a.lo && *p <= a.hi));
    }

    #[test]
    fn value_formats() {
        assert_eq!(format_value(2.5e-5, 5e-6), "2.5e-5");
        assert_eq!(format_value(1.0e7, 2.0e6), "1.0e7");
        assert_eq!(short_value(0.012346), "0.01235");
        assert_eq!(short_value(12.0), "12");
        assert_eq!(short_value(1.5e-6), "1.5e-6");
        assert_eq!(short_value(-1.0e-5), "-1e-5");
        assert_eq!(short_value(123456789.0), "1.235e8");
    }
}
