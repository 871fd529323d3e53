//! Integer execution of dmq's quantized models on the CPU.
//!
//! `dmq quantize` writes integer codes and steps; the simulated path (`dmq_quant::sim`) computes
//! with their dequantized float values. This crate computes with the integers themselves, so
//! that a quantized model is really smaller and faster:
//!
//! * weights stay packed in memory: int8 one per byte, int4 two per byte ([`packed`]);
//! * a layer's input is quantized once per call with the per-tensor step and zero point of the
//!   current sampling step, straight into the kernels' channels-last layout ([`quantize`]);
//! * convolutions (1×1, 3×3, any stride and padding) and linear layers are u8 × i8 products
//!   summed in i32 ([`kernels`], direct convolution without im2col), with the zero points
//!   applied as correction terms and one dequantizing multiply per output ([`layer`]);
//! * the instruction set is picked at run time ([`isa`]): AVX-512 VNNI, AVX2 or portable code,
//!   all giving the same integers;
//! * [`exec::IntExec`] plugs a layer into the model through `dmq_model`'s `LayerExec` hook,
//!   exactly where the simulated path's exec sits, and [`exec::load_int`] builds a whole model
//!   from an artifact.
//!
//! Room for DMQ's own transforms (not implemented here: no artifact carries them yet). LES's
//! per-input-channel γ folds into the weights before quantization (the codes are those of
//! `W⊙γ`) and into the quantizer as a per-channel step `γ_c·Δ` (the same one division per value
//! the quantizer does now). Power-of-two scaling is a per-segment left shift of the integer sums
//! ([`packed::Segment::shift`], implemented and tested in the kernels' driver) over input
//! channels grouped by factor, each group quantized with step `Δ·2^shift`.

pub mod error;
pub mod exec;
pub mod isa;
pub mod kernels;
pub mod layer;
pub mod packed;
pub mod quantize;

pub use error::{ExecError, Result};
pub use exec::{load_int, IntExec, IntModelInfo};
pub use isa::Isa;
pub use layer::{Geometry, IntLayer, PartWeight};
pub use quantize::ActQuant;
