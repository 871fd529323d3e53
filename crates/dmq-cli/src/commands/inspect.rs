//! `dmq inspect`: what a model is made of.

use anyhow::Result;
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input resolution for counting multiply-adds [default: the config's sample_size].
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Print the whole report as JSON instead of a table.
    #[arg(long, default_value_t = false)]
    pub json: bool,
}

fn giga(n: u64) -> String {
    format!("{:.3} G", n as f64 / 1e9)
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (pipeline, unet) = args.model.load()?;
    let report = dmq_model::inspect::inspect(&unet, args.resolution)?;
    if args.json {
        let value = serde_json::json!({ "model": pipeline.name, "report": report });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("model       {}", pipeline.name);
    println!("class       UNet2DModel");
    println!(
        "parameters  {} ({:.2} MB as f32)",
        report.params,
        report.params as f64 * 4.0 / 1e6
    );
    println!("resolution  {0}x{0}", report.resolution);
    println!();
    println!(
        "{:<48} {:<10} {:<18} {:<20} {:>12}",
        "layer", "kind", "weight", "output", "MACs"
    );
    for l in &report.layers {
        println!(
            "{:<48} {:<10} {:<18} {:<20} {:>12}",
            l.path,
            l.kind,
            format!("{:?}", l.weight_shape),
            format!("{:?}", &l.output_shape[1..]),
            l.macs
        );
    }
    println!();
    println!(
        "multiply-adds per forward (1 image): {} (convolutions {}, linear {}, attention matmuls {})",
        giga(report.macs_total),
        giga(report.macs_conv),
        giga(report.macs_linear),
        giga(report.macs_attention_matmul)
    );
    println!(
        "layers: {} conv2d, {} linear, {} attention matmuls",
        report.layers.iter().filter(|l| l.kind == "conv2d").count(),
        report.layers.iter().filter(|l| l.kind == "linear").count(),
        report
            .layers
            .iter()
            .filter(|l| l.kind == "act_matmul")
            .count()
    );
    Ok(())
}
