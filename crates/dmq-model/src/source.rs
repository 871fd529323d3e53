//! Where a model comes from: a diffusers folder, a Hugging Face hub id (through the local hub
//! cache, downloading what is missing), or the small DDPM compiled into dmq.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::config::UNet2DConfig;
use crate::denoiser::{Denoiser, DenoiserClass};
use crate::error::{ModelError, Result};
use crate::unet2d::UNet2DModel;
use crate::weights::WeightStore;

/// What the user named with `--model`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// The DDPM that ships inside the dmq binary.
    Embedded,
    /// A local folder in diffusers layout (pipeline root or the UNet component folder).
    Folder(PathBuf),
    /// A hub repository id such as `google/ddpm-cifar10-32`.
    Hub(String),
}

impl ModelSource {
    /// Reads a `--model` value: an existing path is a folder, `owner/name` is a hub id.
    pub fn parse(value: Option<&str>) -> Result<Self> {
        let Some(v) = value else {
            return Ok(ModelSource::Embedded);
        };
        let path = Path::new(v);
        if path.exists() {
            if !path.is_dir() {
                return Err(ModelError::Source(format!(
                    "--model {v}: is a file; pass the model's folder (diffusers layout)"
                )));
            }
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        let looks_like_id = v.split('/').count() == 2
            && v.split('/').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            && !v.starts_with('.');
        if looks_like_id {
            Ok(ModelSource::Hub(v.to_string()))
        } else {
            Err(ModelError::Source(format!(
                "--model {v}: no such folder, and not a hub id of the form owner/name"
            )))
        }
    }

    /// Finds the model's files (downloading hub files missing from the cache).
    pub fn resolve(&self) -> Result<Pipeline> {
        match self {
            ModelSource::Embedded => Ok(crate::embedded::pipeline()),
            ModelSource::Folder(dir) => Pipeline::from_folder(dir),
            ModelSource::Hub(id) => crate::hub::fetch_pipeline(id),
        }
    }
}

/// Bytes or a path: the embedded model's files live inside the binary.
#[derive(Debug, Clone)]
pub enum FileRef {
    Path(PathBuf),
    Static {
        label: PathBuf,
        bytes: &'static [u8],
    },
}

impl FileRef {
    pub fn label(&self) -> &Path {
        match self {
            FileRef::Path(p) => p,
            FileRef::Static { label, .. } => label,
        }
    }

    pub fn read_to_string(&self) -> Result<String> {
        match self {
            FileRef::Path(p) => std::fs::read_to_string(p).map_err(|source| ModelError::Io {
                path: p.clone(),
                source,
            }),
            FileRef::Static { label, bytes } => {
                String::from_utf8(bytes.to_vec()).map_err(|e| ModelError::Json {
                    path: label.clone(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The files of one pipeline: its denoiser (`unet/` or `transformer/` component, or a bare
/// component folder), its scheduler config and, for latent models, its VAE folder.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// How to name the model to a user (folder, hub id, "embedded").
    pub name: String,
    /// The denoiser's class, from its `config.json` `_class_name`.
    pub class: DenoiserClass,
    /// The denoiser's `config.json` (named `unet_*` for history: it is the `transformer/` one
    /// of DiT and PixArt pipelines).
    pub unet_config: FileRef,
    /// A `.safetensors` file or a `.safetensors.index.json` shard index.
    pub unet_weights: FileRef,
    /// `None` for a bare UNet folder; sampling then needs a scheduler config from elsewhere.
    pub scheduler_config: Option<FileRef>,
    /// The `vae/` component folder of latent pipelines (`None`: no decoder).
    pub vae: Option<PathBuf>,
}

impl Pipeline {
    /// Accepts a pipeline root (`model_index.json`, `unet/` or `transformer/`, `scheduler/`,
    /// `vae/`), the flat layout of older hub repos (`config.json` + `scheduler_config.json` at
    /// the top), or a bare component folder.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let index = dir.join("model_index.json");
        let index_classes = match std::fs::read_to_string(&index) {
            Ok(text) => model_index_classes(&index, &text)?,
            Err(_) => Vec::new(),
        };
        let comp_dir = ["unet", "transformer"]
            .iter()
            .map(|c| dir.join(c))
            .find(|d| d.join("config.json").is_file())
            .or_else(|| dir.join("config.json").is_file().then(|| dir.to_path_buf()))
            .ok_or_else(|| {
                ModelError::Source(format!(
                    "{}: no unet/config.json, transformer/config.json or config.json: not a \
                     diffusers model folder",
                    dir.display()
                ))
            })?;
        let cfg_path = comp_dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let class = DenoiserClass::of_config(&cfg_path, &cfg_text)?;
        if let Some((component, named)) = index_classes.first() {
            if *named != class {
                return Err(ModelError::config(
                    &index,
                    component,
                    format!(
                        "names a {named}, but {} holds a {class}",
                        cfg_path.display()
                    ),
                ));
            }
        }
        let unet_weights = find_weights(&comp_dir)?;
        let scheduler_config = [
            dir.join("scheduler").join("scheduler_config.json"),
            dir.join("scheduler_config.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .map(FileRef::Path);
        let vae = Some(dir.join("vae")).filter(|v| v.join("config.json").is_file());
        Ok(Self {
            name: dir.display().to_string(),
            class,
            unet_config: FileRef::Path(cfg_path),
            unet_weights: FileRef::Path(unet_weights),
            scheduler_config,
            vae,
        })
    }

    /// Loads the denoiser, whatever its class, with weights as `dtype` on `device`.
    pub fn load_denoiser(&self, device: &Device, dtype: DType) -> Result<Denoiser> {
        let text = self.unet_config.read_to_string()?;
        let store = self.open_unet_weights(device, dtype)?;
        Denoiser::load(self.class, self.unet_config.label(), &text, &store)
    }

    /// The VAE of a latent pipeline (`Ok(None)` when the folder has none).
    pub fn load_vae(&self, device: &Device, dtype: DType) -> Result<Option<crate::AutoencoderKL>> {
        self.vae
            .as_deref()
            .map(|d| crate::AutoencoderKL::from_folder(d, device, dtype))
            .transpose()
    }

    pub fn load_unet_config(&self) -> Result<UNet2DConfig> {
        let text = self.unet_config.read_to_string()?;
        UNet2DConfig::from_json_str(self.unet_config.label(), &text)
    }

    /// The UNet's checkpoint, read as `dtype` on `device`.
    pub fn open_unet_weights(&self, device: &Device, dtype: DType) -> Result<WeightStore> {
        match &self.unet_weights {
            FileRef::Path(p) => WeightStore::open(p, device, dtype),
            FileRef::Static { label, bytes } => {
                WeightStore::from_static(label, bytes, device, dtype)
            }
        }
    }

    /// Loads the UNet with weights converted to `dtype` on `device` (a `UNet2DModel` only:
    /// [`Pipeline::load_denoiser`] loads any class).
    pub fn load_unet(&self, device: &Device, dtype: DType) -> Result<UNet2DModel> {
        if self.class != DenoiserClass::Unet2D {
            return Err(ModelError::Source(format!(
                "{} holds a {}: this command handles UNet2DModel pipelines only so far",
                self.name, self.class
            )));
        }
        let cfg = self.load_unet_config()?;
        let store = self.open_unet_weights(device, dtype)?;
        UNet2DModel::load(cfg, &store)
    }

    /// The scheduler config's text and the name to use for it in errors.
    pub fn scheduler_config_text(&self) -> Result<(PathBuf, String)> {
        match &self.scheduler_config {
            Some(f) => Ok((f.label().to_path_buf(), f.read_to_string()?)),
            None => Err(ModelError::Source(format!(
                "{}: no scheduler/scheduler_config.json: dmq needs it to sample (copy one from the model's original repository, or pass --scheduler-config FILE)",
                self.name
            ))),
        }
    }
}

/// The denoiser components `model_index.json` names (`unet`, `transformer`) with their class;
/// a class dmq cannot build is an error naming the component.
fn model_index_classes(path: &Path, text: &str) -> Result<Vec<(String, DenoiserClass)>> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for component in ["unet", "transformer"] {
        if let Some(entry) = json.get(component) {
            let name = entry.get(1).and_then(|c| c.as_str()).unwrap_or("");
            // `Transformer2DModel` needs its config's norm_type: trust the component config.
            if name == "Transformer2DModel" {
                continue;
            }
            let class =
                DenoiserClass::from_name(name, &serde_json::Value::Null).ok_or_else(|| {
                    ModelError::config(
                        path,
                        component,
                        format!(
                            "component class \"{name}\" is not supported yet (supported: \
                         UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel, \
                         PixArtTransformer2DModel)"
                        ),
                    )
                })?;
            out.push((component.to_string(), class));
        }
    }
    Ok(out)
}

/// The checkpoint file of a component folder, preferring safetensors and its sharded index.
pub fn find_weights(dir: &Path) -> Result<PathBuf> {
    const CANDIDATES: [&str; 4] = [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.fp16.safetensors.index.json",
    ];
    if let Some(p) = CANDIDATES.iter().map(|c| dir.join(c)).find(|p| p.is_file()) {
        return Ok(p);
    }
    if dir.join("diffusion_pytorch_model.bin").is_file() {
        return Err(ModelError::Source(format!(
            "{}: only a PyTorch pickle (diffusion_pytorch_model.bin) is there; dmq reads safetensors. \
             Convert it once with: python -c \"from diffusers import UNet2DModel as M; M.from_pretrained('{}').save_pretrained('{}')\"",
            dir.display(),
            dir.display(),
            dir.display()
        )));
    }
    Err(ModelError::Source(format!(
        "{}: no diffusion_pytorch_model.safetensors (or .safetensors.index.json)",
        dir.display()
    )))
}
