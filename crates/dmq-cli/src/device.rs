//! `--device` and `--dtype` flags.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device {s}: this dmq was built without the `cuda` feature (see docs/gpu.md)"
                );
            }
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    anyhow::anyhow!("--device {s}: expected cuda:N with N a GPU index")
                })?,
                None => 0,
            };
            Ok(Device::new_cuda(ordinal)?)
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

/// Parses `f32`, `bf16` or `f16` (the dtype the model computes in).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("--dtype {other}: expected f32, bf16 or f16"),
    }
}
