pub mod bench;
pub mod compare;
pub mod eval;
pub mod fid;
pub mod gpu_check;
pub mod inspect;
pub mod latent;
pub mod ptqd;
pub mod quantize;
pub mod quantize_latent;
pub mod quantize_report;
pub mod sample;
pub mod sensitivity;

use clap::{Args, ValueEnum};

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
    /// A scheduler_config.json for a model folder without one (e.g. a bare transformer folder
    /// such as tiny-latent/pixart); ignored when the folder has its own.
    #[arg(long)]
    pub scheduler_config: Option<std::path::PathBuf>,
}

/// How a quantized model computes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecMode {
    /// Floating-point simulation: dequantized weights, fake-quantized inputs (what calibration
    /// optimises; any device and dtype).
    Sim,
    /// Integer kernels: weights kept packed (int8, int4 two per byte), inputs quantized to u8,
    /// u8 x i8 products summed in i32 (CPU, f32 only).
    Int,
}

impl ExecMode {
    pub fn name(self) -> &'static str {
        match self {
            ExecMode::Sim => "sim",
            ExecMode::Int => "int",
        }
    }
}

/// `--exec`, for commands that run quantized models.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// How a quantized model (a `dmq quantize` folder) computes: `sim` simulates the quantization
    /// in floating point, `int` runs integer kernels on the CPU (f32 only; the kernels' instruction
    /// set can be capped with $DMQ_EXEC_ISA=scalar|avx2|avx512vnni). Other models ignore `sim` and
    /// refuse `int`.
    #[arg(long, value_enum, default_value_t = ExecMode::Sim)]
    pub exec: ExecMode,
}

/// A loaded model and, for integer execution, what was built.
pub struct Loaded {
    pub pipeline: dmq_model::Pipeline,
    pub unet: dmq_model::UNet2DModel,
    pub int_info: Option<dmq_exec::IntModelInfo>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<(dmq_model::Pipeline, dmq_model::UNet2DModel)> {
        let l = self.load_exec(ExecMode::Sim)?;
        Ok((l.pipeline, l.unet))
    }

    /// The files of `--model` (not an artifact), with `--scheduler-config` filling in a missing
    /// scheduler.
    pub fn pipeline(&self) -> anyhow::Result<dmq_model::Pipeline> {
        let source = dmq_model::ModelSource::parse(self.model.as_deref())?;
        let mut pipeline = source.resolve()?;
        if pipeline.scheduler_config.is_none() {
            if let Some(p) = &self.scheduler_config {
                if !p.is_file() {
                    anyhow::bail!("--scheduler-config {}: no such file", p.display());
                }
                pipeline.scheduler_config = Some(dmq_model::source::FileRef::Path(p.clone()));
            }
        }
        Ok(pipeline)
    }

    /// The files of the quantized-model folder `dir`, as a pipeline.
    pub fn artifact_pipeline(&self, dir: &std::path::Path) -> anyhow::Result<dmq_model::Pipeline> {
        let m = dmq_quant::artifact::read_manifest(dir)?;
        let sched = dir.join("scheduler_config.json");
        Ok(dmq_model::Pipeline {
            name: dir.display().to_string(),
            class: dmq_quant::artifact::model_class(dir, &m)?,
            unet_config: dmq_model::source::FileRef::Path(dir.join("config.json")),
            unet_weights: dmq_model::source::FileRef::Path(dir.join("float.safetensors")),
            scheduler_config: if sched.is_file() {
                Some(dmq_model::source::FileRef::Path(sched))
            } else {
                None
            },
            vae: Some(dir.join("vae")).filter(|v| v.join("config.json").is_file()),
        })
    }

    /// Loads the model; a quantized model computes as `exec` says.
    pub fn load_exec(&self, exec: ExecMode) -> anyhow::Result<Loaded> {
        use anyhow::Context;
        let device = crate::device::parse_device(&self.device)?;
        let dtype = crate::device::parse_dtype(&self.dtype)?;
        if let Some(dir) = self.model.as_deref().map(std::path::Path::new) {
            if dmq_quant::artifact::is_artifact(dir) {
                let mut int_info = None;
                let unet = match exec {
                    ExecMode::Sim => {
                        dmq_quant::artifact::load(dir, &device, dtype)
                            .with_context(|| {
                                format!("loading the quantized model {}", dir.display())
                            })?
                            .1
                    }
                    ExecMode::Int => {
                        if !device.is_cpu() || dtype != candle_core::DType::F32 {
                            anyhow::bail!(
                                "--exec int runs on the CPU in f32; got --device {} --dtype {}",
                                self.device,
                                self.dtype
                            );
                        }
                        let isa = dmq_exec::Isa::detect().map_err(anyhow::Error::msg)?;
                        let (_, unet, info) = dmq_exec::load_int(dir, isa).with_context(|| {
                            format!(
                                "loading the quantized model {} for integer execution",
                                dir.display()
                            )
                        })?;
                        eprintln!(
                            "integer execution ({isa}): {} layers in integers, {} simulated, {:.2} MiB of weights",
                            info.int_layers.len(),
                            info.sim_layers.len(),
                            info.resident_weight_bytes(unet.num_params) as f64 / (1 << 20) as f64
                        );
                        int_info = Some(info);
                        unet
                    }
                };
                let pipeline = self.artifact_pipeline(dir)?;
                return Ok(Loaded {
                    pipeline,
                    unet,
                    int_info,
                });
            }
        }
        if exec == ExecMode::Int {
            anyhow::bail!(
                "--exec int needs a quantized model (a folder written by `dmq quantize`); {} is not one",
                self.model.as_deref().unwrap_or("the embedded default model")
            );
        }
        let pipeline = self.pipeline()?;
        let unet = pipeline
            .load_unet(&device, dtype)
            .with_context(|| format!("loading the UNet of {}", pipeline.name))?;
        Ok(Loaded {
            pipeline,
            unet,
            int_info: None,
        })
    }
}
