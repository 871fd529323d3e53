//! Checkpoint tensors from one or several safetensors files, memory-mapped.
//!
//! Every lookup states the shape the config implies; a missing tensor, a wrong shape or a
//! non-float dtype is an error naming the file and the tensor. After the model is built,
//! [`WeightStore::check_all_used`] turns leftover tensors into an error too: they mean the config
//! and the checkpoint describe different models.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};

/// Bytes of one safetensors file: a memory map, or a static buffer (the embedded model).
enum Bytes {
    Mapped(Mmap),
    Static(&'static [u8]),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }
}

struct File {
    path: PathBuf,
    bytes: Bytes,
}

pub struct WeightStore {
    /// When set, every lookup gets fresh seeded values instead of checkpoint data.
    synthetic: Option<Synthetic>,
    /// Tensors handed out by a synthetic store, in request order, for export.
    handed_out: RefCell<Vec<(String, Tensor)>>,
    files: Vec<File>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
    used: RefCell<BTreeSet<String>>,
    elements_used: Cell<u64>,
    device: Device,
    dtype: DType,
    /// Tensors supplied in memory (e.g. weights dequantized from a quantized artifact); they
    /// take precedence over the files.
    in_memory: BTreeMap<String, Tensor>,
}

impl WeightStore {
    /// Opens `path`: a `.safetensors` file, or a `.safetensors.index.json` shard index whose
    /// `weight_map` names the shard of every tensor (shards are looked up beside the index).
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".index.json") {
            Self::open_sharded(path, device, dtype)
        } else {
            Self::from_files(vec![(path.to_path_buf(), map_file(path)?)], device, dtype)
        }
    }

    /// A store over bytes compiled into the binary; `label` stands in for the path in errors.
    pub fn from_static(
        label: &Path,
        bytes: &'static [u8],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_files(
            vec![(label.to_path_buf(), Bytes::Static(bytes))],
            device,
            dtype,
        )
    }

    fn open_sharded(index_path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|source| ModelError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: index_path.to_path_buf(),
                message: e.to_string(),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                ModelError::config(index_path, "weight_map", "missing or not an object")
            })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<String> = Vec::new();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::config(
                    index_path,
                    format!("weight_map.{tensor}"),
                    "expected a file name",
                )
            })?;
            if !shard_names.iter().any(|s| s == file) {
                shard_names.push(file.to_string());
            }
            wanted.insert(tensor.clone(), file.to_string());
        }
        let mut files = Vec::new();
        for shard in &shard_names {
            let p = dir.join(shard);
            if !p.is_file() {
                return Err(ModelError::config(
                    index_path,
                    "weight_map",
                    format!(
                        "points at shard `{shard}`, which does not exist ({})",
                        p.display()
                    ),
                ));
            }
            files.push((p.clone(), map_file(&p)?));
        }
        let store = Self::from_files(files, device, dtype)?;
        // The index must agree with what the shards really hold.
        for (tensor, file) in &wanted {
            match store.index.get(tensor) {
                Some(&i)
                    if store.files[i].path.file_name().and_then(|n| n.to_str())
                        == Some(file.as_str()) => {}
                _ => {
                    return Err(ModelError::Tensor {
                        path: index_path.to_path_buf(),
                        tensor: tensor.clone(),
                        message: format!(
                            "the index places it in `{file}`, which does not contain it"
                        ),
                    })
                }
            }
        }
        Ok(store)
    }

    fn from_files(files: Vec<(PathBuf, Bytes)>, device: &Device, dtype: DType) -> Result<Self> {
        let mut index = BTreeMap::new();
        let mut out = Vec::new();
        for (i, (path, bytes)) in files.into_iter().enumerate() {
            let st = SafeTensors::deserialize(bytes.as_slice()).map_err(|e| {
                ModelError::Safetensors {
                    path: path.clone(),
                    message: format!("{e} (is the file truncated or not a safetensors file?)"),
                }
            })?;
            for name in st.names() {
                if let Some(prev) = index.insert(name.to_string(), i) {
                    return Err(ModelError::Tensor {
                        path: path.clone(),
                        tensor: name.to_string(),
                        message: format!(
                            "also present in {}",
                            out.get(prev)
                                .map(|f: &File| f.path.display().to_string())
                                .unwrap_or_default()
                        ),
                    });
                }
            }
            out.push(File { path, bytes });
        }
        Ok(Self {
            synthetic: None,
            handed_out: RefCell::new(Vec::new()),
            files: out,
            index,
            used: RefCell::new(BTreeSet::new()),
            elements_used: Cell::new(0),
            device: device.clone(),
            dtype,
            in_memory: BTreeMap::new(),
        })
    }

    /// A store without a checkpoint: each tensor is uniform in [-scale, scale], seeded by
    /// `seed` and the tensor's name (norm weights get 1 + noise so the model stays well scaled).
    /// For tests and for timing real architectures without their weights.
    pub fn synthetic(seed: u64, scale: f32, device: &Device, dtype: DType) -> Self {
        Self {
            synthetic: Some(Synthetic { seed, scale }),
            handed_out: RefCell::new(Vec::new()),
            files: Vec::new(),
            index: BTreeMap::new(),
            used: RefCell::new(BTreeSet::new()),
            elements_used: Cell::new(0),
            device: device.clone(),
            dtype,
            in_memory: BTreeMap::new(),
        }
    }

    /// Writes every tensor a synthetic store handed out as one safetensors file (f32).
    pub fn save_synthetic(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .handed_out
            .borrow()
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)?;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.synthetic.is_some()
            || self.index.contains_key(name)
            || self.in_memory.contains_key(name)
    }

    /// Adds (or replaces) a tensor held in memory, converted to the store's dtype and device.
    pub fn insert(&mut self, name: &str, t: Tensor) -> Result<()> {
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        self.in_memory.insert(name.to_string(), t);
        Ok(())
    }

    /// The tensor `name` with exactly `shape`, converted to the store's dtype and device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(t) = self.in_memory.get(name) {
            if t.dims() != shape {
                return Err(ModelError::Tensor {
                    path: "(in memory)".into(),
                    tensor: name.to_string(),
                    message: format!("shape {:?}, the model expects {shape:?}", t.dims()),
                });
            }
            self.mark_used(name, t);
            return Ok(t.clone());
        }
        if let Some(syn) = &self.synthetic {
            let t = syn
                .tensor(name, shape)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)?;
            self.handed_out
                .borrow_mut()
                .push((name.to_string(), t.clone()));
            self.mark_used(name, &t);
            return Ok(t);
        }
        let file = self.file_of(name)?;
        let st = SafeTensors::deserialize(file.bytes.as_slice()).map_err(|e| {
            ModelError::Safetensors {
                path: file.path.clone(),
                message: e.to_string(),
            }
        })?;
        let view = st.tensor(name).map_err(|e| ModelError::Tensor {
            path: file.path.clone(),
            tensor: name.to_string(),
            message: e.to_string(),
        })?;
        let bad = |message: String| ModelError::Tensor {
            path: file.path.clone(),
            tensor: name.to_string(),
            message,
        };
        if view.shape() != shape {
            return Err(bad(format!(
                "has shape {:?}, but config.json implies {:?}",
                view.shape(),
                shape
            )));
        }
        let src_dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => {
                return Err(bad(format!(
                "has dtype {other:?}; model weights must be floating point (F32, F16, BF16 or F64)"
            )))
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), src_dtype, shape, &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        // A reduction like max() skips NaN, so look at every value.
        let finite = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(bad("contains NaN or infinite values".into()));
        }
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        self.mark_used(name, &t);
        Ok(t)
    }

    /// Counts `t` as handed out under `name` (once per name).
    fn mark_used(&self, name: &str, t: &Tensor) {
        if self.used.borrow_mut().insert(name.to_string()) {
            self.elements_used
                .set(self.elements_used.get() + t.elem_count() as u64);
        }
    }

    /// The file holding tensor `name`.
    fn file_of(&self, name: &str) -> Result<&File> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                files: self.file_list(),
            })?;
        Ok(&self.files[i])
    }

    /// Names of every tensor in the files (not in-memory ones), sorted.
    pub fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// The tensor `name` with whatever shape the file gives it (copying a checkpoint).
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let file = self.file_of(name)?;
        let shape = SafeTensors::deserialize(file.bytes.as_slice())
            .and_then(|st| st.tensor(name).map(|v| v.shape().to_vec()))
            .map_err(|e| ModelError::Tensor {
                path: file.path.clone(),
                tensor: name.to_string(),
                message: e.to_string(),
            })?;
        self.get(name, &shape)
    }

    /// Number of scalar parameters handed out so far (each tensor counted once).
    pub fn elements_used(&self) -> u64 {
        self.elements_used.get()
    }

    /// Errors when the checkpoint holds tensors the model never asked for.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&String> = self.index.keys().filter(|k| !used.contains(*k)).collect();
        if let Some(name) = self.in_memory.keys().find(|k| !used.contains(*k)) {
            return Err(ModelError::UnusedTensors {
                path: "(in memory)".into(),
                count: self.in_memory.keys().filter(|k| !used.contains(*k)).count(),
                examples: format!("`{name}`"),
            });
        }
        if unused.is_empty() {
            return Ok(());
        }
        let examples = unused
            .iter()
            .take(5)
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(ModelError::UnusedTensors {
            path: self.files[self.index[unused[0].as_str()]].path.clone(),
            count: unused.len(),
            examples,
        })
    }

    fn file_list(&self) -> String {
        self.files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is opened read-only; a checkpoint being rewritten while dmq reads it is
    // outside what any memory-mapped loader (candle, safetensors) can defend against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Bytes::Mapped(mmap))
}

struct Synthetic {
    seed: u64,
    scale: f32,
}

impl Synthetic {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        // FNV-1a of the name, mixed with the seed: each tensor its own reproducible stream.
        let mut state = name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64 ^ self.seed, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        let n: usize = shape.iter().product();
        let is_norm_weight = name.ends_with(".weight") && shape.len() == 1 && name.contains("norm");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if is_norm_weight {
                    1.0 + 0.1 * u
                } else {
                    self.scale * u
                }
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}
