//! Global appearance of an image set: colour, contrast and fine detail, and how a test set
//! differs from a reference set in each.
//!
//! FID moves with things PSNR barely sees: a colour cast of a few percent shifts every Inception
//! feature at once, while washed-out or noisy images keep a fair PSNR. These three numbers say
//! which one happened when a quantized model's FID gets worse (all in f64, pixels in [0, 1]):
//! - mean of each channel over all pixels of all images (colour);
//! - standard deviation of each channel within one image, averaged over images (contrast);
//! - mean absolute difference of horizontally and vertically neighbouring pixels (detail: lower
//!   is smoother, higher is sharper or noisier).

use image::RgbImage;

/// Colour, contrast and detail of one image set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Appearance {
    pub images: usize,
    /// Mean of R, G, B over all pixels.
    pub mean_rgb: [f64; 3],
    /// Per-image standard deviation of R, G, B, averaged over images.
    pub contrast_rgb: [f64; 3],
    /// Mean |difference| of neighbouring pixels (both directions, all channels).
    pub detail: f64,
}

/// How a test set's appearance differs from a reference set's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppearanceShift {
    pub reference: Appearance,
    pub test: Appearance,
    /// `test.mean_rgb − reference.mean_rgb` (a colour cast when far from 0).
    pub mean_shift_rgb: [f64; 3],
    /// `test.contrast_rgb / reference.contrast_rgb` (< 1: washed out).
    pub contrast_ratio_rgb: [f64; 3],
    /// `test.detail / reference.detail` (< 1: smoother, > 1: sharper or noisier).
    pub detail_ratio: f64,
}

impl Appearance {
    /// Measures a set; an empty set gives zeros and `images: 0`.
    pub fn of(images: &[RgbImage]) -> Self {
        let mut sum = [0f64; 3];
        let mut pixels = 0u64;
        let mut contrast = [0f64; 3];
        let mut grad_sum = 0f64;
        let mut grad_n = 0u64;
        for img in images {
            let (w, h) = img.dimensions();
            let n = (w as f64) * (h as f64);
            let mut s = [0f64; 3];
            let mut s2 = [0f64; 3];
            for p in img.pixels() {
                for c in 0..3 {
                    let v = p.0[c] as f64 / 255.0;
                    s[c] += v;
                    s2[c] += v * v;
                }
            }
            for c in 0..3 {
                sum[c] += s[c];
                let m = s[c] / n.max(1.0);
                contrast[c] += (s2[c] / n.max(1.0) - m * m).max(0.0).sqrt();
            }
            pixels += (w as u64) * (h as u64);
            for y in 0..h {
                for x in 0..w {
                    let p = img.get_pixel(x, y).0;
                    for (dx, dy) in [(1, 0), (0, 1)] {
                        if x + dx < w && y + dy < h {
                            let q = img.get_pixel(x + dx, y + dy).0;
                            for c in 0..3 {
                                grad_sum += (p[c] as f64 - q[c] as f64).abs() / 255.0;
                            }
                            grad_n += 3;
                        }
                    }
                }
            }
        }
        let k = images.len().max(1) as f64;
        Appearance {
            images: images.len(),
            mean_rgb: sum.map(|s| s / (pixels.max(1) as f64)),
            contrast_rgb: contrast.map(|s| s / k),
            detail: grad_sum / grad_n.max(1) as f64,
        }
    }
}

impl AppearanceShift {
    pub fn between(reference: &[RgbImage], test: &[RgbImage]) -> Self {
        let r = Appearance::of(reference);
        let t = Appearance::of(test);
        let ratio = |a: f64, b: f64| if b == 0.0 { f64::NAN } else { a / b };
        AppearanceShift {
            mean_shift_rgb: [0, 1, 2].map(|c| t.mean_rgb[c] - r.mean_rgb[c]),
            contrast_ratio_rgb: [0, 1, 2].map(|c| ratio(t.contrast_rgb[c], r.contrast_rgb[c])),
            detail_ratio: ratio(t.detail, r.detail),
            reference: r,
            test: t,
        }
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let f =
            |v: [f64; 3], p: usize| format!("{:+.*} / {:+.*} / {:+.*}", p, v[0], p, v[1], p, v[2]);
        format!(
            "colour shift R/G/B {}, contrast x{:.2}/{:.2}/{:.2}, detail x{:.2}",
            f(self.mean_shift_rgb, 4),
            self.contrast_ratio_rgb[0],
            self.contrast_ratio_rgb[1],
            self.contrast_ratio_rgb[2],
            self.detail_ratio
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn img(f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(4, 4, |x, y| Rgb(f(x, y)))
    }

    #[test]
    fn flat_image_has_its_colour_no_contrast_and_no_detail() {
        let a = Appearance::of(&[img(|_, _| [255, 0, 51])]);
        for (got, want) in a.mean_rgb.iter().zip([1.0, 0.0, 0.2]) {
            assert!((got - want).abs() < 1e-12, "{:?}", a.mean_rgb);
        }
        assert!(
            a.contrast_rgb.iter().all(|c| c.abs() < 1e-7),
            "{:?}",
            a.contrast_rgb
        );
        assert_eq!(a.detail, 0.0);
    }

    #[test]
    fn checkerboard_by_hand() {
        // 0/255 checkerboard in every channel: mean 0.5, std 0.5, every neighbour differs by 1.
        let a = Appearance::of(&[img(|x, y| if (x + y) % 2 == 0 { [0; 3] } else { [255; 3] })]);
        for c in 0..3 {
            assert!((a.mean_rgb[c] - 0.5).abs() < 1e-12);
            assert!((a.contrast_rgb[c] - 0.5).abs() < 1e-12);
        }
        assert!((a.detail - 1.0).abs() < 1e-12);
    }

    #[test]
    fn shift_reports_a_cast_and_a_washed_out_set() {
        let reference = [img(|x, _| if x < 2 { [0, 0, 0] } else { [200, 200, 200] })];
        // Half the contrast, and green lowered by 51/255 = 0.2 everywhere.
        let test = [img(
            |x, _| if x < 2 { [50, 0, 50] } else { [150, 100, 150] },
        )];
        let s = AppearanceShift::between(&reference, &test);
        assert!((s.mean_shift_rgb[0] - 0.0).abs() < 1e-12);
        assert!((s.mean_shift_rgb[1] - (-50.0 / 255.0)).abs() < 1e-12);
        assert!((s.contrast_ratio_rgb[0] - 0.5).abs() < 1e-12);
        assert!((s.detail_ratio - 0.5).abs() < 1e-12);
        assert!(s.summary().contains("contrast x0.50"));
    }
}
