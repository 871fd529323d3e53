//! What travels down a forward pass besides the tensors: the sampling-step index (quantized layers
//! pick per-step activation parameters by it), whether gradients must flow, an optional trace
//! of every compute op (used by `inspect` to count multiply-adds), and an optional capture point
//! (block reconstruction needs the inputs of one block without running the rest of the model).

use std::cell::RefCell;

use candle_core::Tensor;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Conv2d,
    Linear,
    /// A matrix product of two activations (attention scores, attention-weighted values).
    ActMatmul,
}

/// One executed op, as recorded by a tracing forward pass.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub path: String,
    pub kind: OpKind,
    /// Shape of the layer's weight; empty for activation matmuls.
    pub weight_shape: Vec<usize>,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub macs: u64,
}

#[derive(Default)]
pub struct Ctx {
    /// Index of the sampling step this forward belongs to, when inside a sampler.
    pub step: Option<usize>,
    /// Use only ops with a backward pass (calibration); inference may use fused kernels.
    pub differentiable: bool,
    trace: Option<RefCell<Vec<OpRecord>>>,
    capture: Option<Capture>,
    /// Module outputs by checkpoint path (`act.*` of the goldens), when tapping.
    taps: Option<RefCell<std::collections::BTreeMap<String, Tensor>>>,
}

/// Which units' inputs a capturing forward keeps, and where it stops.
struct Capture {
    units: Vec<String>,
    /// Stop (with [`ModelError::Captured`]) once the last of `units` has been seen.
    stop_at: Option<String>,
    found: RefCell<std::collections::BTreeMap<String, Vec<Tensor>>>,
}

impl Ctx {
    pub fn inference() -> Self {
        Self::default()
    }

    pub fn at_step(step: usize) -> Self {
        Self {
            step: Some(step),
            ..Self::default()
        }
    }

    /// A context for calibration: only ops with a backward pass.
    pub fn differentiable() -> Self {
        Self {
            differentiable: true,
            ..Self::default()
        }
    }

    /// A context that records every conv, linear and activation matmul it sees.
    pub fn tracing() -> Self {
        Self {
            trace: Some(RefCell::new(Vec::new())),
            ..Self::default()
        }
    }

    /// This context, also keeping the output of every module that reports one through
    /// [`Ctx::tap`] (convs, linears, attentions, transformer blocks, UNet blocks), by its
    /// checkpoint path: for localising a divergence from a reference implementation.
    pub fn with_taps(mut self) -> Self {
        self.taps = Some(RefCell::new(Default::default()));
        self
    }

    /// Keeps `t` as the output of the module at `path` when tapping (a later output of the same
    /// module replaces it); free otherwise.
    pub fn tap(&self, path: &str, t: &Tensor) {
        if let Some(taps) = &self.taps {
            taps.borrow_mut().insert(path.to_string(), t.clone());
        }
    }

    /// The outputs kept since the last call, by module path.
    pub fn take_taps(&self) -> std::collections::BTreeMap<String, Tensor> {
        self.taps
            .as_ref()
            .map(|t| std::mem::take(&mut *t.borrow_mut()))
            .unwrap_or_default()
    }

    pub fn tracing_on(&self) -> bool {
        self.trace.is_some()
    }

    pub fn record(
        &self,
        op: (&str, OpKind, &[usize]),
        input: &[usize],
        output: &[usize],
        macs: u64,
    ) {
        if let Some(t) = &self.trace {
            t.borrow_mut().push(OpRecord {
                path: op.0.to_string(),
                kind: op.1,
                weight_shape: op.2.to_vec(),
                input_shape: input.to_vec(),
                output_shape: output.to_vec(),
                macs,
            });
        }
    }

    /// A context whose forward stops at the unit (block or layer) `unit`, keeping its inputs:
    /// the forward returns [`ModelError::Captured`] and [`Ctx::take_captured`] has the inputs.
    pub fn capturing(unit: &str, step: Option<usize>) -> Self {
        Self::capturing_many(&[unit.to_string()], Some(unit), step)
    }

    /// A context that keeps the inputs of every unit in `units` (one forward for many units)
    /// and stops at `stop_at` when given.
    pub fn capturing_many(units: &[String], stop_at: Option<&str>, step: Option<usize>) -> Self {
        Self {
            step,
            capture: Some(Capture {
                units: units.to_vec(),
                stop_at: stop_at.map(str::to_string),
                found: RefCell::new(Default::default()),
            }),
            ..Self::default()
        }
    }

    /// Called by every unit at the start of its forward with its path and inputs; keeps them
    /// when the unit is captured and stops the forward at the stopping unit.
    pub fn offer(&self, unit: &str, inputs: &[&Tensor]) -> Result<()> {
        if let Some(c) = &self.capture {
            if c.units.iter().any(|u| u == unit) {
                c.found.borrow_mut().insert(
                    unit.to_string(),
                    inputs.iter().map(|t| (*t).clone()).collect(),
                );
            }
            if c.stop_at.as_deref() == Some(unit) {
                return Err(ModelError::Captured(unit.to_string()));
            }
        }
        Ok(())
    }

    /// The inputs captured by a [`Ctx::capturing`] forward, if it reached its unit.
    pub fn take_captured(&self) -> Option<Vec<Tensor>> {
        let c = self.capture.as_ref()?;
        let unit = c.units.first()?;
        c.found.borrow_mut().remove(unit)
    }

    /// Everything a [`Ctx::capturing_many`] forward kept, by unit.
    pub fn take_all_captured(&self) -> std::collections::BTreeMap<String, Vec<Tensor>> {
        self.capture
            .as_ref()
            .map(|c| std::mem::take(&mut *c.found.borrow_mut()))
            .unwrap_or_default()
    }

    pub fn take_trace(self) -> Vec<OpRecord> {
        self.trace.map(|t| t.into_inner()).unwrap_or_default()
    }
}
