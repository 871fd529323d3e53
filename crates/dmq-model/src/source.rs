//! Where a model comes from: a diffusers folder, a Hugging Face hub id (through the local hub
//! cache, downloading what is missing), or the small DDPM compiled into dmq.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::config::UNet2DConfig;
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

/// The files of one unconditional pixel-space pipeline (`DDPMPipeline` layout).
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// How to name the model to a user (folder, hub id, "embedded").
    pub name: String,
    pub unet_config: FileRef,
    /// A `.safetensors` file or a `.safetensors.index.json` shard index.
    pub unet_weights: FileRef,
    /// `None` for a bare UNet folder; sampling then needs a scheduler config from elsewhere.
    pub scheduler_config: Option<FileRef>,
}

impl Pipeline {
    /// Accepts a pipeline root (`model_index.json`, `unet/`, `scheduler/`), the flat layout of
    /// older hub repos (`config.json` + `scheduler_config.json` at the top), or a UNet folder.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        if let Ok(index) = std::fs::read_to_string(dir.join("model_index.json")) {
            check_model_index(&dir.join("model_index.json"), &index)?;
        }
        let unet_dir = if dir.join("unet").join("config.json").is_file() {
            dir.join("unet")
        } else if dir.join("config.json").is_file() {
            dir.to_path_buf()
        } else {
            return Err(ModelError::Source(format!(
                "{}: no unet/config.json or config.json: not a diffusers model folder",
                dir.display()
            )));
        };
        let unet_weights = find_weights(&unet_dir)?;
        let scheduler_config = [
            dir.join("scheduler").join("scheduler_config.json"),
            dir.join("scheduler_config.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .map(FileRef::Path);
        Ok(Self {
            name: dir.display().to_string(),
            unet_config: FileRef::Path(unet_dir.join("config.json")),
            unet_weights: FileRef::Path(unet_weights),
            scheduler_config,
        })
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

    /// Loads the UNet with weights converted to `dtype` on `device`.
    pub fn load_unet(&self, device: &Device, dtype: DType) -> Result<UNet2DModel> {
        let cfg = self.load_unet_config()?;
        let store = self.open_unet_weights(device, dtype)?;
        UNet2DModel::load(cfg, &store)
    }

    /// The scheduler config's text and the name to use for it in errors.
    pub fn scheduler_config_text(&self) -> Result<(PathBuf, String)> {
        match &self.scheduler_config {
            Some(f) => Ok((f.label().to_path_buf(), f.read_to_string()?)),
            None => Err(ModelError::Source(format!(
                "{}: no scheduler/scheduler_config.json: dmq needs it to sample (copy one from the model's original repository)",
                self.name
            ))),
        }
    }
}

/// `model_index.json` must describe a pipeline whose `unet` dmq can build.
fn check_model_index(path: &Path, text: &str) -> Result<()> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Some(unet) = json.get("unet") {
        let class = unet.get(1).and_then(|c| c.as_str()).unwrap_or("");
        if class != "UNet2DModel" {
            return Err(ModelError::config(
                path,
                "unet",
                format!(
                    "component class \"{class}\" is not supported yet (supported: UNet2DModel)"
                ),
            ));
        }
    } else if json.get("transformer").is_some() || json.get("vae").is_some() {
        return Err(ModelError::config(
            path,
            "_class_name",
            "latent and transformer pipelines are not supported yet: dmq loads UNet2DModel pipelines",
        ));
    }
    Ok(())
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
