//! The methods of the three papers dmq implements, each a module of passes over the one model
//! definition (dmq-model) and hooks into the engine (dmq-quant) and the sampler (dmq-sched):
//! DMQ (Learned Equivalent Scaling, time-step weighting, Power-of-Two Scaling), PTQD (noise
//! correction and variance-schedule calibration) and Qua2SeDiMo (sensitivity, mixed precision).

pub mod dmq;
pub mod ptqd;
pub mod qua2sedimo;
