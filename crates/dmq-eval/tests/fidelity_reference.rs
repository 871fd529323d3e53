//! PSNR and SSIM against scikit-image's values on the same image pair (tests/data/README.md).

use dmq_eval::fidelity::{psnr, ssim};
use image::RgbImage;

fn load(name: &str) -> RgbImage {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    RgbImage::from_raw(32, 32, std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let (a, b) = (load("ssim_a.bin"), load("ssim_b.bin"));
    let s = ssim(&a, &b).unwrap();
    assert!((s - 0.9554174305748436).abs() < 1e-12, "ssim {s}");
    let p = psnr(&a, &b);
    assert!((p - 21.120151975165143).abs() < 1e-10, "psnr {p}");
    // Symmetric in its arguments.
    assert!((ssim(&b, &a).unwrap() - s).abs() < 1e-12);
}
