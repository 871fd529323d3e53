//! With the `cuda` feature, compiles the engine's CUDA kernels (`kernels/*.cu`) to PTX with the
//! `nvcc` on `PATH` (or `$NVCC`), the same compiler candle's own kernels need. PTX for compute
//! capability 8.0 is JIT-compiled by the driver for newer GPUs (H100/H200 are 9.0).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels/fake_quant.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let ptx = out.join("fake_quant.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-arch=compute_80", "-O3", "-o"])
        .arg(&ptx)
        .arg("kernels/fake_quant.cu")
        .status()
        .unwrap_or_else(|e| panic!("the cuda feature needs nvcc ({nvcc}): {e}; see docs/gpu.md"));
    assert!(status.success(), "nvcc failed on kernels/fake_quant.cu");
}
