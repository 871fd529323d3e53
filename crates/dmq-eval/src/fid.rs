//! FID and sFID of image sets: Inception features, streamed into f64 statistics, then the
//! Fréchet distance.
//!
//! FID  = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½ over the 2048-d pool3 features;
//! sFID = the same over the 2023-d spatial features (the first 7 channels of `mixed_6/conv`,
//! NHWC-flattened, as in ADM's evaluator). Covariances use ddof = 1 (pytorch-fid, ADM).
//! See [`crate::frechet`] for how the trace of the matrix square root is computed.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use image::RgbImage;

use crate::frechet::frechet_distance;
use crate::imageset::{ImageSetError, ImageSource};
use crate::inception::{FidInception, InceptionError, POOL3_DIM, SPATIAL_DIM};
use crate::npz::{load_npz_stats_named, npz_keys, save_fid_stats_npz};
use crate::preprocess::to_model_input;
use crate::stats::{FeatureStats, FidError, StatsAccumulator};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Inception(#[from] InceptionError),
    #[error(transparent)]
    Stats(#[from] FidError),
    #[error(transparent)]
    Images(#[from] ImageSetError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Statistics of one image set: pool3 (FID) and, when known, spatial (sFID).
#[derive(Debug, Clone)]
pub struct SetStats {
    pub fid: FeatureStats,
    pub sfid: Option<FeatureStats>,
}

impl SetStats {
    pub fn count(&self) -> usize {
        self.fid.count
    }

    /// Reads `mu`/`sigma` and, if present, `mu_s`/`sigma_s` (ADM's sFID keys).
    pub fn load(path: &Path) -> Result<Self> {
        let keys = npz_keys(path)?;
        let fid = load_npz_stats_named(path, "mu", "sigma")?;
        let sfid = if keys.iter().any(|k| k == "mu_s") && keys.iter().any(|k| k == "sigma_s") {
            Some(load_npz_stats_named(path, "mu_s", "sigma_s")?)
        } else {
            None
        };
        Ok(Self { fid, sfid })
    }

    /// Writes pytorch-fid's layout (`mu`, `sigma`) plus `mu_s`, `sigma_s`.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_fid_stats_npz(path, &self.fid, self.sfid.as_ref())?;
        Ok(())
    }
}

/// FID (and sFID when both sides have spatial statistics) between two sets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Distances {
    pub fid: f64,
    pub sfid: Option<f64>,
}

pub fn distances(a: &SetStats, b: &SetStats) -> Result<Distances> {
    let fid = frechet_distance(&a.fid, &b.fid)?;
    let sfid = match (&a.sfid, &b.sfid) {
        (Some(x), Some(y)) => Some(frechet_distance(x, y)?),
        _ => None,
    };
    Ok(Distances { fid, sfid })
}

/// Accumulates Inception statistics from images as they arrive (from files or a sampler).
pub struct FidAccumulator {
    pool3: StatsAccumulator,
    spatial: StatsAccumulator,
}

impl FidAccumulator {
    pub fn new() -> Result<Self> {
        Ok(Self {
            pool3: StatsAccumulator::new(POOL3_DIM)?,
            spatial: StatsAccumulator::new(SPATIAL_DIM)?,
        })
    }

    pub fn count(&self) -> usize {
        self.pool3.count()
    }

    /// Runs the network on `images` (one batch) and adds their features.
    pub fn add_images(&mut self, net: &FidInception, images: &[RgbImage]) -> Result<()> {
        if images.is_empty() {
            return Ok(());
        }
        let x = to_model_input(images, net.device())?;
        let f = net.features(&x)?;
        self.pool3.add_batch(&flat(&f.pool3)?)?;
        self.spatial.add_batch(&flat(&f.spatial)?)?;
        Ok(())
    }

    pub fn finish(&self) -> Result<SetStats> {
        Ok(SetStats {
            fid: self.pool3.finish()?,
            sfid: Some(self.spatial.finish()?),
        })
    }
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Statistics of every image in `src`, `batch` images per network call.
pub fn stats_of_images(
    net: &FidInception,
    src: &ImageSource,
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<SetStats> {
    let mut acc = FidAccumulator::new()?;
    let mut failure: Option<EvalError> = None;
    src.for_each_chunk(batch, |chunk| match acc.add_images(net, chunk) {
        Ok(()) => {
            on_batch(chunk.len());
            Ok(())
        }
        Err(e) => {
            failure = Some(e);
            Err(ImageSetError::Other("feature extraction failed".into()))
        }
    })
    .map_err(|e| failure.take().unwrap_or(EvalError::Images(e)))?;
    acc.finish()
}

/// Where dmq keeps computed statistics: `$DMQ_CACHE_DIR`, else `$XDG_CACHE_HOME/dmq`, else
/// `~/.cache/dmq`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DMQ_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dmq");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/dmq"))
        .unwrap_or_else(|| PathBuf::from(".dmq-cache"))
}

/// sha256 of a file's bytes, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| EvalError::Other(format!("{}: {e}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| EvalError::Other(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cache file for the statistics of an image file (zip or npz), keyed by its content, so a
/// renamed copy hits and a changed file misses. Folders are not cached (they change in place).
pub fn cached_stats_path(src: &Path) -> Result<Option<PathBuf>> {
    if src.is_dir() {
        return Ok(None);
    }
    let digest = file_sha256(src)?;
    Ok(Some(
        cache_dir()
            .join("fid-stats")
            .join(format!("{}-inception2015-v1.npz", &digest[..32])),
    ))
}

/// Statistics of an image set, from the cache when it has them (`use_cache`), else computed and
/// stored there. Returns the statistics and whether they came from the cache.
pub fn stats_of_images_cached(
    net: &FidInception,
    src_path: &Path,
    batch: usize,
    use_cache: bool,
    on_batch: impl FnMut(usize),
) -> Result<(SetStats, bool)> {
    let cache = if use_cache {
        cached_stats_path(src_path)?
    } else {
        None
    };
    if let Some(c) = &cache {
        if c.is_file() {
            return Ok((SetStats::load(c)?, true));
        }
    }
    let stats = stats_of_images(net, &ImageSource::from_path(src_path)?, batch, on_batch)?;
    if let Some(c) = &cache {
        if let Some(dir) = c.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| EvalError::Other(format!("{}: {e}", dir.display())))?;
        }
        stats.save(c)?;
    }
    Ok((stats, false))
}

/// Is `path` an `.npz` of statistics (has `mu` and `sigma`) rather than of images?
pub fn is_stats_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
        && npz_keys(path)
            .map(|k| k.iter().any(|k| k == "mu") && k.iter().any(|k| k == "sigma"))
            .unwrap_or(false)
}
