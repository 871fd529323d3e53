//! `dmq`: post-training quantization of diffusion models. This binary only parses arguments,
//! shows progress and wires the library crates together; the numerics live in the crates.

mod commands;
mod device;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dmq", version, about = "Post-training quantization of diffusion models", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample images from a model: one PNG per image plus grid.png and samples.json.
    Sample(commands::sample::SampleArgs),
    /// Show a model's parameters, its layers with shapes, and multiply-adds per forward.
    Inspect(commands::inspect::InspectArgs),
    /// Sample a model and score it: FID/sFID, and PSNR/SSIM/noise error against a reference model.
    Eval(commands::eval::EvalArgs),
    /// Compute FID/sFID statistics of an image set (pytorch-fid npz layout).
    FidStats(commands::fid::FidStatsArgs),
    /// FID (and sFID) between two image sets or statistics files.
    Fid(commands::fid::FidArgs),
    /// Compare image sets sampled from the same seeds: PSNR/SSIM and colour, contrast and detail
    /// shifts against a reference set.
    Compare(commands::compare::CompareArgs),
    /// Quantize a model with a recipe; writes a quantized model folder and a per-layer report.
    Quantize(commands::quantize::QuantizeArgs),
    /// Qua²SeDiMo: per-layer quantization sensitivity from labelled random mixed-precision
    /// configurations; writes sensitivity.json (for `quantize --avg-bits`) and charts.
    Sensitivity(commands::sensitivity::SensitivityArgs),
    /// Measure PTQD statistics of a quantized model for a sampling protocol and add them to it.
    Ptqd(commands::ptqd::PtqdArgs),
    /// Time UNet forwards and sampling (images/s), and write the numbers as JSON.
    Bench(commands::bench::BenchArgs),
    /// Compare every tensor path (forward, sampling, backward, FID Inception) on a GPU with the CPU.
    GpuCheck(commands::gpu_check::GpuCheckArgs),
}

fn main() {
    // cuDNN computes f32 convolutions in TF32 unless told otherwise, which puts the GPU ~2e-4
    // away from the CPU (docs/results/gpu.md); dmq keeps f32 exact unless the user opts in by
    // setting NVIDIA_TF32_OVERRIDE themselves.
    if std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(a) => commands::sample::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Ptqd(a) => commands::ptqd::run(a),
        Command::Sensitivity(a) => commands::sensitivity::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::FidStats(a) => commands::fid::run_stats(a),
        Command::Fid(a) => commands::fid::run_fid(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::GpuCheck(a) => commands::gpu_check::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
