//! The error measure of parity checks (against diffusers' goldens, CPU against GPU).

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// `max |a − b| / max |b|`, computed in f32: the relative error the golden READMEs define.
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(ModelError::Source(format!(
            "cannot compare tensors of shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let diff = (a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale)
}
