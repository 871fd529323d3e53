//! Hugging Face hub ids: files come from the local hub cache (`HF_HOME`, shared with Python's
//! `huggingface_hub`), and only missing ones are downloaded. Offline (no network, or
//! `HF_HUB_OFFLINE=1`) a missing file is a clear error that says how to pass a local folder.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::Cache;

use crate::error::{ModelError, Result};
use crate::source::Pipeline;

struct HubRepo {
    id: String,
    cache: hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    fn new(id: &str) -> Result<Self> {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let api = if offline {
            None
        } else {
            let api = ApiBuilder::from_env()
                .with_progress(true)
                .with_retries(0)
                .build()
                .map_err(|e| hub_error(id, &format!("cannot set up the hub client: {e}")))?;
            Some(api.model(id.to_string()))
        };
        Ok(Self {
            id: id.to_string(),
            cache: Cache::from_env().model(id.to_string()),
            api,
        })
    }

    /// The local path of `file`: `Ok(None)` when the repository has no such file.
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cache.get(file) {
            return Ok(Some(p));
        }
        let Some(api) = &self.api else {
            return Err(hub_error(
                &self.id,
                &format!("`{file}` is not in the local hub cache and HF_HUB_OFFLINE is set"),
            ));
        };
        match api.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(hub_error(
                &self.id,
                &format!("cannot download `{file}`: {e}"),
            )),
        }
    }

    /// Like [`HubRepo::get`] for files a pipeline may lack: when the file is not cached and the
    /// hub cannot be reached, it counts as absent (with a note) instead of failing the load.
    fn get_optional(&self, file: &str) -> Option<PathBuf> {
        match self.get(file) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("note: {file} is not available ({e}); continuing without it");
                None
            }
        }
    }

    fn first_of(&self, files: &[&str]) -> Result<Option<(String, PathBuf)>> {
        for f in files {
            if let Some(p) = self.get(f)? {
                return Ok(Some((f.to_string(), p)));
            }
        }
        Ok(None)
    }
}

fn hub_error(id: &str, message: &str) -> ModelError {
    ModelError::Hub {
        id: id.to_string(),
        message: format!(
            "{message}. dmq reads hub models from the local cache ({}) and downloads what is missing, \
             which needs network access. Without it, download the model on another machine \
             (e.g. `huggingface-cli download {id} --local-dir {name}`), copy the folder here and pass it: --model ./{name}",
            Cache::from_env().path().display(),
            name = id.rsplit('/').next().unwrap_or(id)
        ),
    }
}

/// Fetches (or finds in the cache) the files of a `DDPMPipeline`-style repository.
pub fn fetch_pipeline(id: &str) -> Result<Pipeline> {
    let repo = HubRepo::new(id)?;
    let (config_name, config_path) = repo
        .first_of(&["unet/config.json", "config.json"])?
        .ok_or_else(|| hub_error(id, "has neither unet/config.json nor config.json"))?;
    let prefix = config_name.trim_end_matches("config.json");
    let weights = [
        format!("{prefix}diffusion_pytorch_model.safetensors"),
        format!("{prefix}diffusion_pytorch_model.safetensors.index.json"),
    ];
    let (weights_name, weights_path) = repo
        .first_of(&[weights[0].as_str(), weights[1].as_str()])?
        .ok_or_else(|| {
            hub_error(
                id,
                &format!("has no {prefix}diffusion_pytorch_model.safetensors (dmq reads safetensors only)"),
            )
        })?;
    if weights_name.ends_with(".index.json") {
        for shard in shard_files(&weights_path)? {
            repo.get(&format!("{prefix}{shard}"))?
                .ok_or_else(|| hub_error(id, &format!("shard `{prefix}{shard}` is missing")))?;
        }
    }
    if repo
        .get_optional("scheduler/scheduler_config.json")
        .is_none()
    {
        repo.get_optional("scheduler_config.json");
    }
    repo.get_optional("model_index.json");
    // Files of one revision share a snapshot folder: load it as a local diffusers folder.
    let root = snapshot_root(&config_path, &config_name);
    let mut pipeline = Pipeline::from_folder(&root)?;
    pipeline.name = id.to_string();
    Ok(pipeline)
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut files: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}

fn snapshot_root(file: &Path, name_in_repo: &str) -> PathBuf {
    let depth = name_in_repo.split('/').count();
    let mut root = file.to_path_buf();
    for _ in 0..depth {
        root.pop();
    }
    root
}
