//! Model outputs in [-1, 1] to 8-bit RGB images, grids, and PNG files written atomically
//! (to a temporary name, then renamed), so an interrupted run never leaves a half-written image.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot write: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot encode PNG: {message}")]
    Encode { path: String, message: String },
    #[error("expected a [B, 3, H, W] tensor of RGB images, got shape {0:?}")]
    Shape(Vec<usize>),
    #[error("the images contain NaN: the model output is broken")]
    NaN,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// `[B, 3, H, W]` in [-1, 1] -> B RGB images, rounding `(x + 1) * 127.5` and clamping to 0..=255.
pub fn to_rgb8(x: &Tensor) -> Result<Vec<RgbImage>> {
    let dims = x.dims().to_vec();
    if dims.len() != 4 || dims[1] != 3 {
        return Err(ImageError::Shape(dims));
    }
    let (b, _, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let data: Vec<f32> = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1()?;
    if data.iter().any(|v| v.is_nan()) {
        return Err(ImageError::NaN);
    }
    let per = h * w * 3;
    Ok((0..b)
        .map(|i| {
            let px: Vec<u8> = data[i * per..(i + 1) * per]
                .iter()
                .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
                .collect();
            RgbImage::from_raw(w as u32, h as u32, px).expect("buffer size matches dimensions")
        })
        .collect())
}

/// Tiles equally sized images row by row, `cols` per row, with no gaps (like the reference grids).
pub fn grid(images: &[RgbImage], cols: usize) -> RgbImage {
    let cols = cols.max(1);
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let rows = images.len().div_ceil(cols);
    let mut out = RgbImage::new(w * cols as u32, h * rows as u32);
    for (i, img) in images.iter().enumerate() {
        let (x, y) = ((i % cols) as u32 * w, (i / cols) as u32 * h);
        image::imageops::replace(&mut out, img, x as i64, y as i64);
    }
    out
}

/// Columns for a near-square grid of `n` images.
pub fn grid_cols(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Writes `img` as PNG to `path` via a temporary file in the same folder and a rename.
pub fn save_png_atomic(img: &RgbImage, path: &Path) -> Result<()> {
    let display = path.display().to_string();
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(source) => ImageError::Write {
                path: display.clone(),
                source,
            },
            other => ImageError::Encode {
                path: display.clone(),
                message: other.to_string(),
            },
        })?;
    std::fs::rename(&tmp, path).map_err(|source| ImageError::Write {
        path: display,
        source,
    })
}

/// `img` enlarged by the largest whole factor that keeps it at most `width` pixels wide (at
/// least 1), nearest-neighbour, so 32-pixel samples stay sharp in a figure.
pub fn upscale_to_width(img: &RgbImage, width: u32) -> RgbImage {
    let scale = (width / img.width().max(1)).max(1);
    image::imageops::resize(
        img,
        img.width() * scale,
        img.height() * scale,
        image::imageops::FilterType::Nearest,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_range_endpoints_and_midpoint() {
        // Channel-major [1, 3, 2, 2]: pixel p = y * 2 + x takes channel c from data[c * 4 + p].
        let x = Tensor::from_vec(
            vec![
                -1.0f32, 0.0, 1.0, -2.0, -1.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 2.0,
            ],
            (1, 3, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let imgs = to_rgb8(&x).unwrap();
        let img = &imgs[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 128]); // -1 -> 0, 0 -> 127.5 rounds to 128
        assert_eq!(img.get_pixel(1, 0).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(0, 1).0, [255, 255, 128]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 191, 255]); // -2 and 2 clamp; 0.5 -> 191.25
    }

    #[test]
    fn rejects_nan_and_wrong_shapes() {
        let nan = Tensor::from_vec(vec![f32::NAN; 3], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert!(matches!(to_rgb8(&nan), Err(ImageError::NaN)));
        let gray = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(to_rgb8(&gray), Err(ImageError::Shape(_))));
    }

    #[test]
    fn grid_places_images_row_major() {
        let imgs: Vec<RgbImage> = (0..5u8)
            .map(|i| RgbImage::from_pixel(2, 2, image::Rgb([i * 10, 0, 0])))
            .collect();
        let g = grid(&imgs, 3);
        assert_eq!(g.dimensions(), (6, 4));
        assert_eq!(g.get_pixel(4, 0).0[0], 20);
        assert_eq!(g.get_pixel(2, 3).0[0], 40);
        assert_eq!(g.get_pixel(5, 3).0, [0, 0, 0]);
    }

    #[test]
    fn png_is_written_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        save_png_atomic(&img, &p).unwrap();
        assert!(!dir.path().join("a.png.tmp").exists());
        let back = image::open(&p).unwrap().to_rgb8();
        assert_eq!(back, img);
    }
}
