pub mod bench;
pub mod eval;
pub mod fid;
pub mod gpu_check;
pub mod inspect;
pub mod ptqd;
pub mod quantize;
pub mod quantize_report;
pub mod sample;
pub mod sensitivity;

use clap::Args;

/// Flags shared by every command that runs a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a diffusers folder, a hub id (owner/name, read from the local hub cache and
    /// downloaded when missing), or omitted for the small CIFAR-10 DDPM embedded in dmq.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision of the model: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<(dmq_model::Pipeline, dmq_model::UNet2DModel)> {
        use anyhow::Context;
        let device = crate::device::parse_device(&self.device)?;
        let dtype = crate::device::parse_dtype(&self.dtype)?;
        if let Some(dir) = self.model.as_deref().map(std::path::Path::new) {
            if dmq_quant::artifact::is_artifact(dir) {
                let (_, unet) = dmq_quant::artifact::load(dir, &device, dtype)
                    .with_context(|| format!("loading the quantized model {}", dir.display()))?;
                let sched = dir.join("scheduler_config.json");
                let pipeline = dmq_model::Pipeline {
                    name: dir.display().to_string(),
                    unet_config: dmq_model::source::FileRef::Path(dir.join("config.json")),
                    unet_weights: dmq_model::source::FileRef::Path(dir.join("float.safetensors")),
                    scheduler_config: if sched.is_file() {
                        Some(dmq_model::source::FileRef::Path(sched))
                    } else {
                        None
                    },
                };
                return Ok((pipeline, unet));
            }
        }
        let source = dmq_model::ModelSource::parse(self.model.as_deref())?;
        let pipeline = source.resolve()?;
        let unet = pipeline
            .load_unet(&device, dtype)
            .with_context(|| format!("loading the UNet of {}", pipeline.name))?;
        Ok((pipeline, unet))
    }
}
