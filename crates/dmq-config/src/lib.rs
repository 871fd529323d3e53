//! A strict reader for diffusers' `config.json` files.
//!
//! serde's derive would accept unknown keys silently or reject them without saying which file;
//! this reader takes fields one by one, applies diffusers' documented default when a key is
//! absent, and at the end rejects every key it was not asked for, naming the file and the key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A problem with one config file, naming the file and, where there is one, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

pub struct JsonFields {
    path: PathBuf,
    map: Map<String, Value>,
    taken: BTreeSet<String>,
}

impl JsonFields {
    /// Reads and parses `path`; the top level must be a JSON object.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
                taken: BTreeSet::new(),
            }),
            _ => Err(ConfigError::Json {
                path: path.to_path_buf(),
                message: "the top level is not a JSON object".into(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            path: self.path.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Whether `key` is present at all (also when its value is `null`).
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The raw value of `key`, `None` when absent or `null`.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.taken.insert(key.to_string());
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        }
    }

    /// Marks keys that carry no meaning for computation (training-only values, bookkeeping).
    pub fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.taken.insert(k.to_string());
        }
    }

    pub fn opt_usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.error(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    pub fn usize_or(&mut self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    pub fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.error(key, format!("expected a finite number, got {v}"))),
            },
        }
    }

    pub fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(self.error(key, format!("expected true or false, got {v}"))),
        }
    }

    pub fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(key, format!("expected a string, got {v}"))),
        }
    }

    pub fn string_or(&mut self, key: &str, default: &str) -> Result<String> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// A string that must be one of `allowed`; the error lists what is supported.
    pub fn choice_or(&mut self, key: &str, default: &str, allowed: &[&str]) -> Result<String> {
        let s = self.string_or(key, default)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(self.error(
                key,
                format!(
                    "value \"{s}\" is not supported (supported: {})",
                    allowed.join(", ")
                ),
            ))
        }
    }

    pub fn usize_list_or(&mut self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.take(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|n| n as usize).ok_or_else(|| {
                        self.error(key, format!("expected a list of integers, found {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected a list of integers, got {v}"))),
        }
    }

    pub fn string_list_or(&mut self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.take(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        self.error(key, format!("expected a list of strings, found {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected a list of strings, got {v}"))),
        }
    }

    /// Fails on the first key nobody asked for. Keys starting with `_` are diffusers'
    /// bookkeeping (`_class_name`, `_diffusers_version`, `_name_or_path`) and are allowed.
    pub fn finish(self) -> Result<()> {
        let unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !k.starts_with('_') && !self.taken.contains(*k))
            .collect();
        if let Some(first) = unknown.first() {
            let value = &self.map[*first];
            return Err(self.error(
                first.as_str(),
                format!(
                    "unknown field (value {value}); dmq does not know what it means, so it refuses to guess{}",
                    if unknown.len() > 1 {
                        format!(" (other unknown fields: {})", unknown[1..].iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok(())
    }
}
