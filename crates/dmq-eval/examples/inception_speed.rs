//! CPU (or CUDA) throughput of the FID Inception feature extractor at a given batch size.
//!
//!     cargo run --release -p dmq-eval --example inception_speed -- [WEIGHTS] [BATCH] [ITERS]
//!
//! WEIGHTS defaults to `../shared/models/fid-inception/fid_inception_2015_12_05.safetensors`
//! relative to the workspace root.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use dmq_eval::inception::FidInception;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let weights = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/models/fid-inception/fid_inception_2015_12_05.safetensors")
    });
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let iters: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let device = if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let t = Instant::now();
    let model = FidInception::load(&weights, &device)?;
    println!(
        "loaded {} in {:.2?} on {device:?}",
        weights.display(),
        t.elapsed()
    );
    let x = Tensor::rand(-1f32, 1f32, (batch, 3, 299, 299), &device)?;
    let f = model.features(&x)?; // warm-up
    f.pool3.to_device(&Device::Cpu)?;
    let t = Instant::now();
    for _ in 0..iters {
        let f = model.features(&x)?;
        f.pool3.to_device(&Device::Cpu)?; // synchronise
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "batch {batch}: {:.3} s/batch, {:.2} images/s ({} threads)",
        s / iters as f64,
        (batch * iters) as f64 / s,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
