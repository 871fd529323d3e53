//! What travels down a forward pass besides the tensors: the sampling-step index (quantized layers
//! pick per-step activation parameters by it), whether gradients must flow, and an optional trace
//! of every compute op (used by `inspect` to count multiply-adds).

use std::cell::RefCell;

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

    /// A context that records every conv, linear and activation matmul it sees.
    pub fn tracing() -> Self {
        Self {
            trace: Some(RefCell::new(Vec::new())),
            ..Self::default()
        }
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

    pub fn take_trace(self) -> Vec<OpRecord> {
        self.trace.map(|t| t.into_inner()).unwrap_or_default()
    }
}
