//! `dmq compare`: paired comparison of image sets sampled from the same seeds (PSNR, SSIM) and
//! how each test set's colour, contrast and detail differ from the reference's — the numbers that
//! say why an FID moved when PSNR did not.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dmq_eval::appearance::AppearanceShift;
use dmq_eval::fidelity::compare_sets;
use dmq_eval::imageset::ImageSource;
use serde_json::json;

use super::sample::write_json_atomic;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Reference image set (a folder of PNG/JPEG, a zip, or an npz with `arr_0`), e.g. the
    /// full-precision model's samples.
    #[arg(long)]
    pub reference: PathBuf,
    /// Test image set(s) paired with the reference by file order (same seeds); repeat the flag
    /// to compare several.
    #[arg(long, required = true)]
    pub test: Vec<PathBuf>,
    /// Write the numbers as JSON here (written atomically) [default: print only].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let load = |p: &PathBuf| -> Result<Vec<image::RgbImage>> {
        let images = ImageSource::from_path(p)
            .and_then(|s| s.load_all())
            .with_context(|| format!("reading images from {}", p.display()))?;
        if images.is_empty() {
            bail!("{}: no images", p.display());
        }
        Ok(images)
    };
    let reference = load(&args.reference)?;
    let mut rows = Vec::new();
    println!(
        "{:<40} {:>6} {:>9} {:>7}  appearance against the reference",
        "test set", "images", "PSNR dB", "SSIM"
    );
    for t in &args.test {
        let test = load(t)?;
        let pairs = compare_sets(&reference, &test)
            .with_context(|| format!("{} against {}", t.display(), args.reference.display()))?;
        let looks = AppearanceShift::between(&reference, &test);
        println!(
            "{:<40} {:>6} {:>9.2} {:>7.4}  {}",
            t.display().to_string(),
            pairs.pairs,
            pairs.psnr_mean_db,
            pairs.ssim_mean,
            looks.summary()
        );
        rows.push(json!({
            "test": t, "images": pairs.pairs, "psnr_mean_db": pairs.psnr_mean_db,
            "psnr_min_db": pairs.psnr_min_db, "ssim_mean": pairs.ssim_mean, "ssim_min": pairs.ssim_min,
            "identical_images": pairs.identical, "appearance": looks,
        }));
    }
    if let Some(out) = &args.out {
        let cmd: Vec<String> = std::env::args().collect();
        write_json_atomic(
            out,
            &json!({ "command": cmd.join(" "), "reference": args.reference, "sets": rows }),
        )?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
