//! Image sets for evaluation: a folder of images, a zip of images, or an `.npz` array
//! (ADM sample batches, `arr_0` uint8 `[N, H, W, 3]`), read in a stable (sorted) order.
//!
//! Conversions, documented because they change pixels: grayscale images are repeated to three
//! channels (as NVIDIA's and ADM's evaluators do); an alpha channel is dropped (not blended);
//! 16-bit images are scaled to 8 bits by `image`'s `to_rgb8`. All images of a set must share one
//! size: a mixed set almost always means the wrong folder, so it is an error naming two of them.
//! In a folder written by `dmq sample` (recognised by its `samples.json`) only the samples
//! `NNNNNN.png` count, not `grid.png`.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::RgbImage;

#[derive(Debug, thiserror::Error)]
pub enum ImageSetError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: String, message: String },
    #[error("{path}: not a readable zip file: {message}")]
    Zip { path: String, message: String },
    #[error("{0}: contains no images (looked for .png, .jpg, .jpeg, .bmp, .webp)")]
    Empty(String),
    #[error("mixed image sizes: {first} is {first_size:?} but {other} is {other_size:?}; FID compares sets of one size")]
    MixedSizes {
        first: String,
        first_size: (u32, u32),
        other: String,
        other_size: (u32, u32),
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ImageSetError>;

const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    EXTENSIONS.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

/// Where the images of a set live.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Folder(PathBuf),
    Zip(PathBuf),
    /// An `.npz` file and the array key holding uint8 images.
    Npz(PathBuf, String),
}

impl ImageSource {
    /// A folder, a `.zip`, or an `.npz` (images under `arr_0`).
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(ImageSource::Folder(path.to_path_buf()));
        }
        let name = path.to_string_lossy().to_ascii_lowercase();
        if !path.exists() {
            return Err(ImageSetError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        if name.ends_with(".zip") {
            Ok(ImageSource::Zip(path.to_path_buf()))
        } else if name.ends_with(".npz") {
            Ok(ImageSource::Npz(path.to_path_buf(), "arr_0".into()))
        } else {
            Err(ImageSetError::Other(format!(
                "{}: expected a folder of images, a .zip of images or an .npz with `arr_0`",
                path.display()
            )))
        }
    }

    /// Number of images, without decoding them.
    pub fn len(&self) -> Result<usize> {
        Ok(match self {
            ImageSource::Folder(dir) => folder_files(dir)?.len(),
            ImageSource::Zip(p) => zip_names(p)?.len(),
            ImageSource::Npz(..) => self.load_all()?.len(),
        })
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Calls `f` on consecutive chunks of at most `chunk` decoded images, in sorted order.
    pub fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[RgbImage]) -> Result<()>,
    ) -> Result<usize> {
        let chunk = chunk.max(1);
        let mut checker = SizeCheck::default();
        let mut buf = Vec::with_capacity(chunk);
        let mut total = 0;
        let mut push = |name: String, img: RgbImage, buf: &mut Vec<RgbImage>| -> Result<()> {
            checker.check(&name, &img)?;
            buf.push(img);
            Ok(())
        };
        match self {
            ImageSource::Folder(dir) => {
                let files = folder_files(dir)?;
                if files.is_empty() {
                    return Err(ImageSetError::Empty(dir.display().to_string()));
                }
                for p in files {
                    let bytes = std::fs::read(&p).map_err(|source| ImageSetError::Io {
                        path: p.display().to_string(),
                        source,
                    })?;
                    let name = p.display().to_string();
                    push(name.clone(), decode(&name, &bytes)?, &mut buf)?;
                    if buf.len() == chunk {
                        f(&buf)?;
                        total += buf.len();
                        buf.clear();
                    }
                }
            }
            ImageSource::Zip(path) => {
                let file = std::fs::File::open(path).map_err(|source| ImageSetError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                let mut zip = zip::ZipArchive::new(file).map_err(|e| zip_err(path, e))?;
                let names = zip_names(path)?;
                if names.is_empty() {
                    return Err(ImageSetError::Empty(path.display().to_string()));
                }
                for n in names {
                    let mut entry = zip.by_name(&n).map_err(|e| zip_err(path, e))?;
                    let mut bytes = Vec::with_capacity(entry.size() as usize);
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|source| ImageSetError::Io {
                            path: format!("{}:{n}", path.display()),
                            source,
                        })?;
                    let name = format!("{}:{n}", path.display());
                    push(name.clone(), decode(&name, &bytes)?, &mut buf)?;
                    if buf.len() == chunk {
                        f(&buf)?;
                        total += buf.len();
                        buf.clear();
                    }
                }
            }
            ImageSource::Npz(..) => {
                let all = self.load_all()?;
                for (i, img) in all.into_iter().enumerate() {
                    push(format!("{self:?}[{i}]"), img, &mut buf)?;
                    if buf.len() == chunk {
                        f(&buf)?;
                        total += buf.len();
                        buf.clear();
                    }
                }
            }
        }
        if !buf.is_empty() {
            f(&buf)?;
            total += buf.len();
        }
        Ok(total)
    }

    /// All images at once (small sets, PSNR/SSIM pairs).
    pub fn load_all(&self) -> Result<Vec<RgbImage>> {
        match self {
            ImageSource::Npz(path, key) => crate::npz::load_npz_images(path, key)
                .map_err(|e| ImageSetError::Other(e.to_string())),
            _ => {
                let mut out = Vec::new();
                self.for_each_chunk(256, |c| {
                    out.extend_from_slice(c);
                    Ok(())
                })?;
                Ok(out)
            }
        }
    }
}

#[derive(Default)]
struct SizeCheck {
    first: Option<(String, (u32, u32))>,
}

impl SizeCheck {
    fn check(&mut self, name: &str, img: &RgbImage) -> Result<()> {
        match &self.first {
            None => {
                self.first = Some((name.to_string(), img.dimensions()));
                Ok(())
            }
            Some((first, size)) if *size != img.dimensions() => Err(ImageSetError::MixedSizes {
                first: first.clone(),
                first_size: *size,
                other: name.to_string(),
                other_size: img.dimensions(),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// Decodes any supported format to 8-bit RGB (grayscale repeated, alpha dropped).
pub fn decode(name: &str, bytes: &[u8]) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).map_err(|e| ImageSetError::Decode {
        path: name.to_string(),
        message: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

fn folder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| ImageSetError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    // A folder written by `dmq sample` (it has samples.json) also holds grid.png: take only the
    // samples themselves, NNNNNN.png.
    let dmq_samples = dir.join("samples.json").is_file();
    let is_sample = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.len() == 10 && name.ends_with(".png") && name[..6].bytes().all(|b| b.is_ascii_digit())
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_name(&p.to_string_lossy()))
        .filter(|p| !dmq_samples || is_sample(p))
        .collect();
    files.sort();
    Ok(files)
}

fn zip_err(path: &Path, e: zip::result::ZipError) -> ImageSetError {
    ImageSetError::Zip {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn zip_names(path: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|source| ImageSetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let zip = zip::ZipArchive::new(file).map_err(|e| zip_err(path, e))?;
    let mut names = Vec::new();
    for name in zip.file_names() {
        let name = name.map_err(|e| zip_err(path, e))?;
        if !name.ends_with('/') && is_image_name(&name) {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names)
}
