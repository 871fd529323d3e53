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
    let class = super::latent::model_class(&args.model)?;
    let (name, report, vae) = if class.is_latent() {
        let l = super::latent::load(&args.model, super::ExecMode::Sim)?;
        let report = dmq_model::inspect::inspect_denoiser(&l.model, args.resolution)?;
        (l.pipeline.name, report, l.vae)
    } else {
        let (pipeline, unet) = args.model.load()?;
        let report = dmq_model::inspect::inspect(&unet, args.resolution)?;
        (pipeline.name, report, None)
    };
    if args.json {
        let mut value = serde_json::json!({ "model": name, "report": report });
        if class.is_latent() {
            value["class"] = serde_json::json!(class.name());
            value["vae_parameters"] = serde_json::json!(vae.as_ref().map(|v| v.num_params));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("model       {name}");
    println!("class       {class}");
    println!(
        "parameters  {} ({:.2} MB as f32)",
        report.params,
        report.params as f64 * 4.0 / 1e6
    );
    if let Some(v) = &vae {
        println!(
            "vae         AutoencoderKL, {} parameters (not quantized), scaling_factor {}",
            v.num_params, v.config.scaling_factor
        );
    } else if class.is_latent() {
        println!("vae         none (sampling writes a preview of the latents)");
    }
    let unit = if class.is_latent() { " (latent)" } else { "" };
    println!("resolution  {0}x{0}{unit}", report.resolution);
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
