//! The FID reference preprocessing (the TF `inception-2015-12-05` graph, as fed by TTUR and the
//! ADM evaluator): uint8 RGB -> f32 -> TF1 legacy bilinear resize to 299x299
//! (`align_corners=False`, `half_pixel_centers=False`, no antialiasing) -> `(x - 128) * 0.0078125`
//! -> NCHW. Bit-identical to TensorFlow's `ResizeBilinear` + `Sub` + `Mul` (see
//! `shared/models/fid-inception/README.md`, section 3).
//!
//! Every float operation below is a separate f32 `mul` / `add` / `sub`: Rust never contracts
//! `a * b + c` into a fused multiply-add (it would only do so through `f32::mul_add`), which is
//! what makes the result bit-exact.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::inception::{InceptionError, Result};

/// Side of the square Inception input.
pub const INCEPTION_SIZE: usize = 299;

/// Per output index along one axis: (lower source index, upper source index, lerp weight).
fn axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale: f32 = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let src: f32 = i as f32 * scale;
            // `src < n_in` always (i < n_out), but guard the float floor against round-up.
            let lo = (src.floor() as usize).min(n_in - 1);
            let hi = (lo + 1).min(n_in - 1);
            (lo, hi, src - lo as f32)
        })
        .collect()
}

/// TF1 legacy bilinear resize of an `h x w` HWC RGB uint8 image to `out x out`, per channel, in
/// f32. Returns HWC f32 values in 0..=255 (`out * out * 3` of them). Bit-exact with TF's
/// `ResizeBilinear(align_corners=False, half_pixel_centers=False)`; an `out x out` input comes
/// back unchanged (as f32).
///
/// Panics if `img.len() != h * w * 3` or if `h`, `w` or `out` is 0.
pub fn tf_resize_bilinear(img: &[u8], h: usize, w: usize, out: usize) -> Vec<f32> {
    assert!(h > 0 && w > 0 && out > 0, "empty image ({h}x{w} -> {out})");
    assert_eq!(img.len(), h * w * 3, "image buffer is not {h}x{w}x3");
    let ys = axis(h, out);
    let xs = axis(w, out);
    let px = |y: usize, x: usize, c: usize| img[(y * w + x) * 3 + c] as f32;
    let mut dst = Vec::with_capacity(out * out * 3);
    for &(y0, y1, yl) in &ys {
        for &(x0, x1, xl) in &xs {
            for c in 0..3 {
                let (tl, tr) = (px(y0, x0, c), px(y0, x1, c));
                let (bl, br) = (px(y1, x0, c), px(y1, x1, c));
                let top = tl + (tr - tl) * xl;
                let bottom = bl + (br - bl) * xl;
                dst.push(top + (bottom - top) * yl);
            }
        }
    }
    dst
}

/// `(x - 128) * 0.0078125` in f32: maps 0..=255 to [-1, 0.9921875], bit-identical to `x/128 - 1`.
#[inline]
pub fn scale_to_model_range(x: f32) -> f32 {
    (x - 128.0) * 0.0078125
}

/// RGB images of any sizes (each resized on its own) -> the FID Inception input
/// `[N, 3, 299, 299]` f32 on `device`, values in [-1, 0.9921875].
pub fn to_model_input(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let s = INCEPTION_SIZE;
    let plane = s * s;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (img, dst) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(InceptionError::EmptyImage { w, h });
        }
        let hwc = tf_resize_bilinear(img.as_raw(), h as usize, w as usize, s);
        // HWC -> CHW while scaling.
        for (p, rgb) in hwc.chunks_exact(3).enumerate() {
            for (c, &v) in rgb.iter().enumerate() {
                dst[c * plane + p] = scale_to_model_range(v);
            }
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, s, s), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_range_endpoints() {
        let img: Vec<u8> = (0..INCEPTION_SIZE * INCEPTION_SIZE * 3)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let out = tf_resize_bilinear(&img, INCEPTION_SIZE, INCEPTION_SIZE, INCEPTION_SIZE);
        assert!(img.iter().zip(&out).all(|(&a, &b)| a as f32 == b));
        assert_eq!(scale_to_model_range(0.0), -1.0);
        assert_eq!(scale_to_model_range(255.0), 0.9921875);
    }

    #[test]
    fn upsampling_is_asymmetric_without_half_pixel_offset() {
        // 2x1 image, values 0 and 100 in every channel, upsampled to 4: src = i * 0.5
        // -> 0, 50, 100, 100 (clamped at the right border).
        let img = [0u8, 0, 0, 100, 100, 100];
        let out = tf_resize_bilinear(&img, 1, 2, 4);
        // rows: src_y = i * 0.25 -> all from row 0.
        let row0: Vec<f32> = out[..12].chunks(3).map(|p| p[0]).collect();
        assert_eq!(row0, vec![0.0, 50.0, 100.0, 100.0]);
        assert!(out.chunks(12).all(|r| r == &out[..12]));
    }

    #[test]
    fn model_input_layout() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 100, y as u8 * 255, 7]));
        let t = to_model_input(&[img.clone(), img], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 299, 299]);
        let v = t.get(1).unwrap().get(1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(v[0][0], -1.0); // G at row 0 is 0
        assert_eq!(v[298][298], 0.9921875); // last row maps to row 1 (255)
        let b = t.get(0).unwrap().get(2).unwrap().to_vec2::<f32>().unwrap();
        assert!(b.iter().flatten().all(|&x| x == (7.0 - 128.0) * 0.0078125));
    }
}
