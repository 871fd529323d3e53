//! Evaluation for dmq: the FID Inception network, FID/sFID statistics and the Fréchet distance,
//! fidelity to the full-precision model (PSNR, SSIM, noise-prediction error), image sets and output.

pub mod appearance;
pub mod fid;
pub mod fidelity;
pub mod frechet;
pub mod images;
pub mod imageset;
pub mod inception;
pub mod npz;
pub mod preprocess;
pub mod stats;
