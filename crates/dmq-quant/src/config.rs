//! `QuantConfig`: a quantization recipe, read from TOML or JSON (one schema), with every
//! hyper-parameter of the shared PTQ base (spec `docs/methods/dmq.md` §1-3, §5, §7) as a field
//! carrying the spec's default, and per-layer overrides addressed by diffusers checkpoint path.
//!
//! # Schema (TOML; JSON uses the same keys and nesting)
//!
//! ```toml
//! format_version = 1                 # required; only 1 is read
//! name = "base-w4a8"                 # required
//! description = "..."
//!
//! [weights]                          # §1.1, §1.2
//! bits = 4                           # 2..=8
//! granularity = "per_channel"        # "per_channel" | "per_tensor"
//! symmetric = false
//! range = "mse"                      # "minmax" | "mse"
//! mse_candidates = 80
//! mse_grid = 0.01
//! mse_p = 2.4
//! rounding = "adaround"              # "nearest" | "adaround" (needs reconstruction.enabled)
//!
//! [activations]                      # §1.3, §1.5
//! bits = 8                           # 2..=16; 16 = activations stay float (A16)
//! granularity = "per_tensor"         # only "per_tensor" is accepted for activations
//! symmetric = false
//! range = "minmax_ema"               # "minmax_ema" | "percentile"
//! ema_momentum = 0.95                # in (0, 1)
//! ema_batch = 16
//! ema_reset_per_step = true
//! percentile = 99.99                 # in (50, 100]; used by range = "percentile"
//! per_step = true
//!
//! [calibration]                      # §2.2, §7.3
//! sampler = "ddim"                   # "ddim" | "ddpm"
//! steps = 100
//! eta = 0.0                          # in [0, 1]; must be 0 for "ddpm"
//! steps_sampled = 20                 # 1..=steps
//! samples_per_step = 256
//! trajectories = "shared"            # "shared" (Q-Diffusion) | "per_step" (DMQ)
//! seed = 0
//! batch = 32
//!
//! [reconstruction]                   # §1.2, §3
//! enabled = true
//! unit = "block"                     # "block" | "layer"
//! inputs = "quantized"               # "quantized" | "float"
//! iters = 20000                      # >= 1 when enabled
//! batch = 32
//! lr = 0.001
//! loss_p = 2.0
//! adaround_lambda = 0.01
//! adaround_zeta = 1.1
//! adaround_gamma = -0.1
//! beta_start = 20.0
//! beta_end = 2.0
//! warmup = 0.2
//! act_steps = false                  # Q-Diffusion's LSQ-style activation-step stage (§3.3)
//! act_iters = 5000
//! act_lr = 0.0004
//! act_loss_p = 2.4
//!
//! [les]                              # DMQ Learned Equivalent Scaling (§4); absent = off
//! enabled = true
//! iters = 6000                       # per layer; >= 1 when enabled
//! batch = 32
//! lr = 0.001                         # Adam, cosine-annealed to 0 over iters
//! weighting = "adaptive"             # "adaptive" (§4.3) | "linear" | "uniform"
//! momentum = 0.95                    # running per-step loss of "adaptive", in (0, 1)
//! r = 20.0                           # exponent of "adaptive", slope of "linear", >= 0
//! fold = true                        # fold γ into the producer layer where the graph allows
//!
//! [pts]                              # DMQ Power-of-Two Scaling with voting (§6); absent = off
//! enabled = true
//! layers = ["*.conv_shortcut"]       # globs of layers whose input (both split halves) gets PTS
//! max_shift = 3                      # factors 2^-s, s = 0..=max_shift ({1, 1/2, 1/4, 1/8})
//! threshold = 0.85                   # vote share κ needed to use the mode, in (0, 1]
//!
//! [layers]                           # §5
//! keep_float = ["conv_in", "conv_out", "time_embedding.*", "*.time_emb_proj",
//!               "*.attn_scores", "*.attn_values", "class_embedding.*"]
//! split_skip = true
//!
//! [ptqd]                             # optional: PTQD on top of the recipe (docs/methods-ptqd.md)
//! parts = ["cnc", "bc", "vsc"]       # corrections applied when sampling, unless chosen there
//! samples = 64                       # FP trajectories the noise statistics are measured on
//! seed = 1                           # their noise seed
//! batch = 32                         # trajectories run together
//! mixed_act_bits = []                # lower activation bit widths for step-aware mixed precision
//!
//! [mixed_precision]                  # optional: Qua²SeDiMo bit allocation (docs/methods-qua2sedimo.md)
//! avg_bits = 3.5                     # average stored bits per weight of the quantized layers
//! # lambda_bits = 0.05               # or, instead of a budget: minimise cost + λ·average bits
//! options = "all"                    # "all" (uniform, k-means per channel/tensor) | "uniform"
//!
//! [[overrides]]                      # later entries win
//! pattern = "up_blocks.*.conv_shortcut"
//! weight_bits = 8                    # each of these five is optional
//! act_bits = 8
//! granularity = "per_channel"
//! weight_quantizer = "uniform"       # "uniform" | "kmeans" (codebook, needs rounding = "nearest")
//! keep_float = false
//! ```
//!
//! `[mixed_precision]` is resolved by the caller (`dmq quantize`) into one override per layer
//! before the pipeline runs; the pipeline itself only reads the overrides.
//!
//! Every section and every field except `format_version` and `name` may be left out and then
//! takes the default shown. Unknown keys, out-of-range values and unknown enum values are errors
//! that name the file and the dotted field (`weights.bits`, `overrides[1].pattern`).
//!
//! # Patterns
//!
//! `layers.keep_float` entries and `overrides[].pattern` are globs ([`globset`]) over the whole
//! checkpoint path (anchored at both ends, case-sensitive): `*` matches any run of characters
//! **including dots**, so `*.time_emb_proj` matches `down_blocks.0.resnets.0.time_emb_proj` and
//! `up_blocks.*.conv_shortcut` matches `up_blocks.0.resnets.1.conv_shortcut`; `?` matches one
//! character, `[0-3]` a class, `{to_q,to_k}` alternatives. A pattern without metacharacters
//! matches exactly one path (`conv_in` does not match `conv_in_2`). Beware that `down_blocks.1*`
//! would also match `down_blocks.10…`; write `down_blocks.1.*`.
//!
//! # Resolution of one layer ([`QuantConfig::layer_plan`])
//!
//! 1. Start from `weights.bits`, `activations.bits`, `weights.granularity`; the layer is float if
//!    any `layers.keep_float` pattern matches.
//! 2. Apply every override whose pattern matches, in file order (later wins field by field):
//!    `keep_float` sets or clears the float flag; `weight_bits`, `act_bits`, `granularity`
//!    replace the values used when the layer is quantized. Setting bits does **not** un-float a
//!    `keep_float` layer (a broad pattern such as `up_blocks.*` with `weight_bits = 8` must not
//!    quantize `up_blocks.0.resnets.0.time_emb_proj`); write `keep_float = false` for that.
//! 3. A float layer has no weight or activation bits; activation bits of 16 mean float inputs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// The only `format_version` this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// `layers.keep_float` of the spec's DMQ column (§5.1), in diffusers checkpoint paths: first and
/// last conv, the time-embedding MLP, every ResBlock time projection, the attention matmuls, and
/// the class embedding of class-conditional models.
pub const DEFAULT_KEEP_FLOAT: [&str; 7] = [
    "conv_in",
    "conv_out",
    "time_embedding.*",
    "*.time_emb_proj",
    "*.attn_scores",
    "*.attn_values",
    "class_embedding.*",
];

/// `--fast`: samples per calibration step (see [`QuantConfig::fast`]).
pub const FAST_SAMPLES_PER_STEP: usize = 8;
/// `--fast`: calibrated sampling steps.
pub const FAST_STEPS_SAMPLED: usize = 10;
/// `--fast`: reconstruction iterations per unit (AdaRound and the activation-step stage).
pub const FAST_ITERS: usize = 50;
/// `--fast`: LES iterations per layer (every weight-quantized layer learns its own scale, ~3× as
/// many layers as reconstruction units, and each step differentiates through the input).
pub const FAST_LES_ITERS: usize = 10;
/// `--fast`: reconstruction mini-batch.
pub const FAST_RECON_BATCH: usize = 4;
/// `--fast`: FP trajectories of PTQD's noise statistics.
pub const FAST_PTQD_SAMPLES: usize = 8;

/// The recipes shipped in `configs/` (repository root), embedded at build time.
const BUILTINS: [(&str, &str); 13] = [
    ("rtn-w8a8", include_str!("../../../configs/rtn-w8a8.toml")),
    ("rtn-w4a8", include_str!("../../../configs/rtn-w4a8.toml")),
    ("base-w8a8", include_str!("../../../configs/base-w8a8.toml")),
    ("base-w4a8", include_str!("../../../configs/base-w4a8.toml")),
    ("base-w4a6", include_str!("../../../configs/base-w4a6.toml")),
    ("dmq-w8a8", include_str!("../../../configs/dmq-w8a8.toml")),
    ("dmq-w4a8", include_str!("../../../configs/dmq-w4a8.toml")),
    ("dmq-w4a6", include_str!("../../../configs/dmq-w4a6.toml")),
    ("ptqd-w4a8", include_str!("../../../configs/ptqd-w4a8.toml")),
    ("ptqd-w4a6", include_str!("../../../configs/ptqd-w4a6.toml")),
    (
        "ptqd-w4a8-mp",
        include_str!("../../../configs/ptqd-w4a8-mp.toml"),
    ),
    ("mp-w3.5a8", include_str!("../../../configs/mp-w3.5a8.toml")),
    ("mp-w3.0a8", include_str!("../../../configs/mp-w3.0a8.toml")),
];

/// A problem with a recipe, naming the file (or `configs/<name>.toml (built-in)`) and the field.
#[derive(Debug, thiserror::Error)]
pub enum QuantConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Malformed TOML/JSON, or a file that is neither `.toml` nor `.json`.
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    /// An unknown key, a value of the wrong type, an unknown enum value, an out-of-range value.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
    #[error("unknown built-in recipe `{name}`; built-in recipes: {}", known.join(", "))]
    UnknownBuiltin { name: String, known: Vec<String> },
}

impl QuantConfigError {
    /// The dotted field an error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, QuantConfigError>;

/// Weight quantizer granularity (§1.1): one (Δ, z) per output channel, or one per tensor (PTQD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    PerChannel,
    PerTensor,
}

/// How a layer's weight is quantized: uniform affine `Δ·(q − z)` (the engine's default) or a
/// k-means codebook ([`crate::kmeans`]; Qua²SeDiMo's K-Means-C/-A by granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightQuantizer {
    #[default]
    Uniform,
    Kmeans,
}

/// Which quantizer options the mixed-precision allocation may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixedOptions {
    /// Uniform per channel and k-means per channel/per tensor at 3 and 4 bits, uniform 8-bit.
    #[default]
    All,
    /// Uniform per channel at 3, 4 and 8 bits only (for recipes with learned rounding).
    Uniform,
}

/// `[mixed_precision]`: per-layer weight options chosen under an average-bits budget from a
/// sensitivity analysis (`dmq sensitivity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedPrecisionConfig {
    /// Stored bits per weight of the weight-quantized layers, codebooks/steps included: the
    /// budget of the exact allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_bits: Option<f64>,
    /// The paper's objective instead of a budget: minimise predicted cost + λ·(average bits),
    /// in the sensitivity report's cost units per average bit. Exactly one of `avg_bits` and
    /// `lambda_bits` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_bits: Option<f64>,
    #[serde(default)]
    pub options: MixedOptions,
}

/// What a mixed-precision allocation optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BitObjective {
    /// Best predicted quality at this average of stored bits per weight (or fewer).
    Budget(f64),
    /// Best predicted cost + λ·(average bits), no budget.
    Lagrangian(f64),
}

impl MixedPrecisionConfig {
    /// The objective this section asks for (validated: exactly one is set).
    pub fn objective(&self) -> Option<BitObjective> {
        match (self.avg_bits, self.lambda_bits) {
            (Some(b), None) => Some(BitObjective::Budget(b)),
            (None, Some(l)) => Some(BitObjective::Lagrangian(l)),
            _ => None,
        }
    }
}

impl std::fmt::Display for BitObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BitObjective::Budget(b) => write!(f, "{b} average bits"),
            BitObjective::Lagrangian(l) => write!(f, "cost + {l}·bits"),
        }
    }
}

/// How the weight range is initialised (§1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRange {
    /// Plain min/max (Q-Diffusion CIFAR `'max'`).
    Minmax,
    /// Grid search over shrunk ranges minimising `mean |ŵ − w|^p` (DMQ, Q-Diffusion LDM).
    Mse,
}

/// How weights are rounded (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    Nearest,
    /// Learned by block reconstruction; needs `reconstruction.enabled`.
    Adaround,
}

/// How the activation range is found (§1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActRange {
    /// Per-tensor min/max with an exponential moving average over calibration batches (DMQ).
    MinmaxEma,
    /// Lower and upper percentiles `100 − p` and `p` of the calibration values.
    Percentile,
}

/// Sampler of the full-precision calibration trajectories (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Ddim,
    Ddpm,
}

/// Whether every calibrated step takes its samples from the same trajectories (Q-Diffusion,
/// §2.2) or from fresh trajectories per step (DMQ, §2.1; costs `steps_sampled` times more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trajectories {
    Shared,
    PerStep,
}

/// What one reconstruction unit is (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconUnit {
    /// ResNet blocks and attention blocks as a whole, every other layer alone.
    Block,
    /// Every layer alone.
    Layer,
}

/// Where the inputs of a reconstruction unit come from (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconInputs {
    /// The network with every earlier unit already quantized (reference `asym=True`).
    Quantized,
    /// The full-precision network.
    Float,
}

/// `[weights]`: the weight quantizer (§1.1, §1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightConfig {
    /// 2..=8.
    pub bits: u8,
    pub granularity: Granularity,
    /// Symmetric signed range without zero point; the base is asymmetric.
    pub symmetric: bool,
    pub range: WeightRange,
    /// Number of shrink factors `1 − mse_grid·i`, `i = 0..mse_candidates` (80).
    pub mse_candidates: usize,
    /// Shrink step (0.01).
    pub mse_grid: f64,
    /// Exponent of the MSE-search error (2.4).
    pub mse_p: f64,
    pub rounding: Rounding,
}

impl Default for WeightConfig {
    fn default() -> Self {
        Self {
            bits: 4,
            granularity: Granularity::PerChannel,
            symmetric: false,
            range: WeightRange::Mse,
            mse_candidates: 80,
            mse_grid: 0.01,
            mse_p: 2.4,
            rounding: Rounding::Adaround,
        }
    }
}

/// `[activations]`: the quantizer of every quantized layer's input (§1.3, §1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivationConfig {
    /// 2..=16; 16 keeps activations in float (weight-only quantization).
    pub bits: u8,
    /// Only `per_tensor` is accepted.
    pub granularity: Granularity,
    pub symmetric: bool,
    pub range: ActRange,
    /// EMA momentum of min/max, in (0, 1) (0.95).
    pub ema_momentum: f64,
    /// Calibration samples per EMA update (16).
    pub ema_batch: usize,
    /// Restart the EMA at every calibrated step (fixes pitfall §8.2: the reference code lets
    /// ≈ 29 % of the previous step's range leak into the next one).
    pub ema_reset_per_step: bool,
    /// Upper percentile for `range = "percentile"`, in (50, 100]; the lower one is `100 − p`.
    pub percentile: f64,
    /// One parameter set per calibrated sampling step (DMQ) instead of one for all (Q-Diffusion).
    pub per_step: bool,
}

impl Default for ActivationConfig {
    fn default() -> Self {
        Self {
            bits: 8,
            granularity: Granularity::PerTensor,
            symmetric: false,
            range: ActRange::MinmaxEma,
            ema_momentum: 0.95,
            ema_batch: 16,
            ema_reset_per_step: true,
            percentile: 99.99,
            per_step: true,
        }
    }
}

/// `[calibration]`: full-precision trajectories that give the calibration set (§2).
///
/// The time grid is the model's own scheduler config (`timestep_spacing`), the one `dmq sample`
/// uses; `steps` must equal the number of sampling steps used at evaluation for the per-step
/// activation sets to line up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    pub sampler: Sampler,
    /// Sampling steps of a trajectory (100).
    pub steps: usize,
    /// DDIM noise weight, in [0, 1] (0: deterministic).
    pub eta: f64,
    /// How many of the `steps` are calibrated: [`CalibrationConfig::sampled_steps`] (20).
    pub steps_sampled: usize,
    /// Calibration samples (UNet inputs) taken at every calibrated step (256).
    pub samples_per_step: usize,
    pub trajectories: Trajectories,
    pub seed: u64,
    /// Batch size of trajectory generation (32).
    pub batch: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            sampler: Sampler::Ddim,
            steps: 100,
            eta: 0.0,
            steps_sampled: 20,
            samples_per_step: 256,
            trajectories: Trajectories::Shared,
            seed: 0,
            batch: 32,
        }
    }
}

impl CalibrationConfig {
    /// The calibrated sampling-step indices (0 = first, noisiest step): `⌊i·steps/steps_sampled⌋`
    /// for `i = 0..steps_sampled`, e.g. 0, 5, …, 95 for 20 of 100 (Q-Diffusion's
    /// `range(0, nsteps, nsteps // cali_st)`, §2.2, when `steps_sampled` divides `steps`).
    pub fn sampled_steps(&self) -> Vec<usize> {
        if self.steps_sampled == 0 {
            return Vec::new();
        }
        (0..self.steps_sampled)
            .map(|i| i * self.steps / self.steps_sampled)
            .collect()
    }

    /// Total calibration samples, `steps_sampled × samples_per_step` (5120).
    pub fn total_samples(&self) -> usize {
        self.steps_sampled * self.samples_per_step
    }
}

/// `[reconstruction]`: BRECQ-style block reconstruction with AdaRound (§1.2, §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconstructionConfig {
    pub enabled: bool,
    pub unit: ReconUnit,
    pub inputs: ReconInputs,
    /// Adam iterations per unit (20 000); at least 1 when enabled.
    pub iters: usize,
    /// Mini-batch drawn at random from all calibration samples (32).
    pub batch: usize,
    /// Adam learning rate of the rounding variables (1e-3).
    pub lr: f64,
    /// Exponent of the reconstruction loss `lp_loss` (2).
    pub loss_p: f64,
    /// λ of the rounding regulariser (0.01).
    pub adaround_lambda: f64,
    /// ζ of the rectified sigmoid (1.1), > 1.
    pub adaround_zeta: f64,
    /// γ of the rectified sigmoid (−0.1), < 0.
    pub adaround_gamma: f64,
    /// β at the end of the warm-up (20).
    pub beta_start: f64,
    /// β at the last iteration (2).
    pub beta_end: f64,
    /// Fraction of iterations with the regulariser off and β held at `beta_start` (0.2).
    pub warmup: f64,
    /// Second stage learning the activation step sizes (Q-Diffusion/PTQD, §3.3); off in the base.
    pub act_steps: bool,
    /// Iterations of that stage (5000).
    pub act_iters: usize,
    /// Its Adam learning rate, cosine-annealed to 0 (4e-4).
    pub act_lr: f64,
    /// Its loss exponent (2.4).
    pub act_loss_p: f64,
}

impl Default for ReconstructionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            unit: ReconUnit::Block,
            inputs: ReconInputs::Quantized,
            iters: 20_000,
            batch: 32,
            lr: 1e-3,
            loss_p: 2.0,
            adaround_lambda: 0.01,
            adaround_zeta: 1.1,
            adaround_gamma: -0.1,
            beta_start: 20.0,
            beta_end: 2.0,
            warmup: 0.2,
            act_steps: false,
            act_iters: 5000,
            act_lr: 4e-4,
            act_loss_p: 2.4,
        }
    }
}

/// `[layers]`: which layers stay float, and split quantization (§5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayerSelection {
    /// Globs of layers kept in float (weights and input activations).
    pub keep_float: Vec<String>,
    /// Split quantization of decoder skip concatenations (§5.2): the first layer consuming the raw
    /// concatenation (the decoder ResBlock's `conv_shortcut`) gets two quantizer halves. Which
    /// layers those are is the caller's decision.
    pub split_skip: bool,
}

impl Default for LayerSelection {
    fn default() -> Self {
        Self {
            keep_float: DEFAULT_KEEP_FLOAT.iter().map(|s| s.to_string()).collect(),
            split_skip: true,
        }
    }
}

/// How the LES loss weights the calibrated sampling steps (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWeighting {
    /// `w = (1 − share)^r`, share = the step's part of the running per-step loss (the reference).
    Adaptive,
    /// The paper's static alternative `w_k = 1 + (1 − k/K)·r` (step position k of K).
    Linear,
    /// Every step weighs 1.
    Uniform,
}

/// `[les]`: DMQ's Learned Equivalent Scaling (§4), layer by layer on full-precision inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LesConfig {
    pub enabled: bool,
    /// Adam iterations per layer (6000).
    pub iters: usize,
    /// Mini-batch drawn at random from all calibration samples (32).
    pub batch: usize,
    /// Initial learning rate, cosine-annealed to 0 (1e-3).
    pub lr: f64,
    pub weighting: TimeWeighting,
    /// Momentum of the running per-step loss of `adaptive` (0.95).
    pub momentum: f64,
    /// Exponent `r` of `adaptive` / slope of `linear` (20).
    pub r: f64,
    /// Fold `γ` into the layer that produces the input where the graph allows (an attention
    /// output projection's `γ` into the value projection); elsewhere it stays a per-input-channel
    /// factor of the activation step.
    pub fold: bool,
}

impl Default for LesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            iters: 6000,
            batch: 32,
            lr: 1e-3,
            weighting: TimeWeighting::Adaptive,
            momentum: 0.95,
            r: 20.0,
            fold: true,
        }
    }
}

/// `[pts]`: DMQ's Power-of-Two Scaling of activation steps, chosen per channel and sampling
/// step by voting (§6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PtsConfig {
    pub enabled: bool,
    /// Globs of the layers whose input quantizers get PTS (the ResBlock shortcuts, §6.1).
    pub layers: Vec<String>,
    /// Largest shift: candidate factors `2^-s` for `s = 0..=max_shift` (3: {1, 1/2, 1/4, 1/8}).
    pub max_shift: u8,
    /// Share of samples that must agree on a channel's best factor (κ = 0.85).
    pub threshold: f64,
}

impl Default for PtsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            layers: vec!["*.conv_shortcut".into()],
            max_shift: 3,
            threshold: 0.85,
        }
    }
}

impl PtsConfig {
    /// Whether the layer at `path` gets PTS.
    pub fn applies_to(&self, path: &str) -> bool {
        self.enabled
            && self.layers.iter().any(|p| {
                glob(p)
                    .map(|g| g.compile_matcher().is_match(path))
                    .unwrap_or(false)
            })
    }
}

/// One `[[overrides]]` entry: values for every layer whose path matches `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub pattern: String,
    /// 2..=8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits: Option<u8>,
    /// 2..=16 (16 = float inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_bits: Option<u8>,
    /// Weight granularity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    /// Uniform or k-means weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_quantizer: Option<WeightQuantizer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_float: Option<bool>,
}

/// One of PTQD's sampler-side corrections (spec `docs/methods/ptqd.md` §2.2-2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PtqdPart {
    /// Correlated noise correction: divide by `1 + k_t`.
    Cnc,
    /// Bias correction: subtract the per-channel mean of the residual error.
    Bc,
    /// Variance schedule calibration: lower the sampler's noise by the residual variance.
    Vsc,
}

impl PtqdPart {
    pub const ALL: [PtqdPart; 3] = [PtqdPart::Cnc, PtqdPart::Bc, PtqdPart::Vsc];

    /// `cnc`, `bc` or `vsc`.
    pub fn name(self) -> &'static str {
        match self {
            PtqdPart::Cnc => "cnc",
            PtqdPart::Bc => "bc",
            PtqdPart::Vsc => "vsc",
        }
    }

    /// Parses one name (as [`PtqdPart::name`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// `[ptqd]`: PTQD (He et al. 2023) on top of the recipe: noise statistics of the quantized model
/// measured against the full-precision one along FP trajectories of the calibration protocol,
/// the corrections applied when sampling, and optional step-aware mixed precision of the
/// activations. What dmq does exactly: `docs/methods-ptqd.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PtqdConfig {
    /// Corrections applied when sampling unless the user chooses others; unique entries.
    pub parts: Vec<PtqdPart>,
    /// FP trajectories along which the statistics are measured (64; the reference code uses
    /// 1024 trajectories of 20 steps, dmq's protocol has 100 steps per trajectory).
    pub samples: usize,
    /// Seed of those trajectories (1, not the calibration seed 0: the statistics are then not
    /// measured on the trajectories the activation ranges were fitted to).
    pub seed: u64,
    /// Trajectories run together (32).
    pub batch: usize,
    /// Lower activation bit widths offered to step-aware mixed precision, each below
    /// `activations.bits` (empty: off). Per sampling step the lowest width whose SNR passes the
    /// paper's criterion is used, else `activations.bits`.
    pub mixed_act_bits: Vec<u8>,
}

impl Default for PtqdConfig {
    fn default() -> Self {
        Self {
            parts: PtqdPart::ALL.to_vec(),
            samples: 64,
            seed: 1,
            batch: 32,
            mixed_act_bits: Vec::new(),
        }
    }
}

/// A whole recipe. See the module documentation for the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub weights: WeightConfig,
    #[serde(default)]
    pub activations: ActivationConfig,
    #[serde(default)]
    pub calibration: CalibrationConfig,
    #[serde(default)]
    pub reconstruction: ReconstructionConfig,
    /// DMQ's LES; `None` (section absent): off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub les: Option<LesConfig>,
    /// DMQ's PTS; `None` (section absent): off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pts: Option<PtsConfig>,
    #[serde(default)]
    pub layers: LayerSelection,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// PTQD on top of the recipe; `None`: no PTQD (absent from the serialized recipe then, so
    /// recipes and artifacts written before PTQD existed read and fingerprint the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptqd: Option<PtqdConfig>,
    /// Qua²SeDiMo's bit allocation; `None`: off (absent from the serialized recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_precision: Option<MixedPrecisionConfig>,
}

impl Default for QuantConfig {
    /// Every value at the spec default; equal to `base-w4a8` except for name and description.
    fn default() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            name: "default".into(),
            description: String::new(),
            weights: WeightConfig::default(),
            activations: ActivationConfig::default(),
            calibration: CalibrationConfig::default(),
            reconstruction: ReconstructionConfig::default(),
            les: None,
            pts: None,
            layers: LayerSelection::default(),
            overrides: Vec::new(),
            ptqd: None,
            mixed_precision: None,
        }
    }
}

/// How one layer is to be quantized, resolved from defaults, `keep_float` and overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPlan {
    /// `None`: float weights.
    pub weight_bits: Option<u8>,
    /// `None`: float input activations.
    pub act_bits: Option<u8>,
    /// Weight granularity.
    pub granularity: Granularity,
    /// `layers.split_skip` of the recipe; whether this layer consumes a skip concatenation is for
    /// the caller to decide.
    pub split_skip: bool,
}

impl LayerPlan {
    /// Neither weights nor activations quantized.
    pub fn is_float(&self) -> bool {
        self.weight_bits.is_none() && self.act_bits.is_none()
    }
}

/// A pattern of a recipe that matches no layer of a model ([`QuantConfig::check_patterns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternWarning {
    /// `overrides[2].pattern` or `layers.keep_float[7]`.
    pub field: String,
    pub pattern: String,
    /// Number of layer paths checked.
    pub layers: usize,
}

impl fmt::Display for PatternWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` = \"{}\" matches none of the model's {} layers",
            self.field, self.pattern, self.layers
        )
    }
}

/// The compiled patterns of a recipe.
struct Matchers {
    keep_float: GlobSet,
    overrides: GlobSet,
}

fn glob(pattern: &str) -> std::result::Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .case_insensitive(false)
        .build()
}

/// Byte offset → 1-based (line, column) of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Maps a serde error at `path` to a field error; `missing field `x`` names `path.x`.
fn field_error(file: &str, path: String, message: String) -> QuantConfigError {
    let top = path == "." || path.is_empty();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (top, missing) {
        (true, Some(name)) => name.to_string(),
        (true, None) => "<top level>".to_string(),
        (false, Some(name)) => format!("{path}.{name}"),
        (false, None) => path,
    };
    QuantConfigError::Field {
        file: file.to_string(),
        field,
        message,
    }
}

/// `format_version`, read before the rest so that a file of another version is reported as such
/// rather than by its first unknown key.
#[derive(Deserialize)]
struct VersionProbe<V> {
    format_version: Option<V>,
}

fn check_version(file: &str, version: Option<Option<i128>>) -> Result<()> {
    // None: the probe itself failed (syntax or type error), reported by the full parse.
    match version {
        Some(None) => Err(QuantConfigError::Field {
            file: file.into(),
            field: "format_version".into(),
            message: format!("missing; this dmq reads format_version = {FORMAT_VERSION}"),
        }),
        Some(Some(v)) if v != i128::from(FORMAT_VERSION) => Err(QuantConfigError::Field {
            file: file.into(),
            field: "format_version".into(),
            message: format!(
                "unsupported version {v}; this dmq reads format_version = {FORMAT_VERSION}"
            ),
        }),
        _ => Ok(()),
    }
}

fn check_range<T: PartialOrd + fmt::Display>(
    file: &str,
    field: &str,
    value: T,
    lo: T,
    hi: T,
    what: &str,
) -> Result<()> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(QuantConfigError::Field {
            file: file.into(),
            field: field.into(),
            message: format!("{value} is out of range: {what}"),
        })
    }
}

fn require(file: &str, field: &str, ok: bool, message: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(QuantConfigError::Field {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        })
    }
}

/// A finite float strictly inside (lo, hi) or within [lo, hi], as `open_lo`/`open_hi` say.
fn check_float(
    file: &str,
    field: &str,
    value: f64,
    (lo, open_lo): (f64, bool),
    (hi, open_hi): (f64, bool),
) -> Result<()> {
    let ok = value.is_finite()
        && if open_lo { value > lo } else { value >= lo }
        && if open_hi { value < hi } else { value <= hi };
    let range = format!(
        "{}{lo}, {hi}{}",
        if open_lo { "(" } else { "[" },
        if open_hi { ")" } else { "]" }
    );
    require(
        file,
        field,
        ok,
        format!("{value:?} is out of range: must be in {range}"),
    )
}

const WEIGHT_BITS: (u8, u8) = (2, 8);
const ACT_BITS: (u8, u8) = (2, 16);
/// Activation bits at or above which inputs stay float.
const ACT_FLOAT_BITS: u8 = 16;

impl QuantConfig {
    /// Reads a recipe; `.toml` is TOML, `.json` JSON (extension case-insensitive). The result is
    /// validated ([`QuantConfig::validate`]).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        let parse: fn(&str, &str) -> Result<Self> = match ext.as_deref() {
            Some("toml") => Self::from_toml_str,
            Some("json") => Self::from_json_str,
            _ => {
                return Err(QuantConfigError::Syntax {
                    file,
                    message: "unknown recipe format: the file name must end in .toml or .json"
                        .into(),
                })
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| QuantConfigError::Io {
            file: file.clone(),
            source,
        })?;
        parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self> {
        let probe = toml::from_str::<VersionProbe<i128>>(text)
            .ok()
            .map(|p| p.format_version);
        check_version(file, probe)?;
        let de = toml::Deserializer::parse(text).map_err(|e| toml_syntax(file, text, &e))?;
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.message().to_string();
            if let Some(span) = inner.span() {
                let (line, col) = line_col(text, span.start);
                message.push_str(&format!(" (line {line}, column {col})"));
            }
            field_error(file, path, message)
        })?;
        cfg.validate_in(file)?;
        Ok(cfg)
    }

    /// Parses and validates JSON text; `file` names it in errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let probe = serde_json::from_str::<VersionProbe<i128>>(text)
            .ok()
            .map(|p| p.format_version);
        check_version(file, probe)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                QuantConfigError::Syntax {
                    file: file.into(),
                    message: format!("invalid JSON: {inner}"),
                }
            } else {
                field_error(file, path, inner.to_string())
            }
        })?;
        de.end().map_err(|e| QuantConfigError::Syntax {
            file: file.into(),
            message: format!("invalid JSON: {e}"),
        })?;
        cfg.validate_in(file)?;
        Ok(cfg)
    }

    /// The TOML form (no comments); [`QuantConfig::from_toml_str`] reads it back equal.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a QuantConfig always serializes to TOML")
    }

    /// The JSON form (pretty, two-space indent); [`QuantConfig::from_json_str`] reads it back equal.
    pub fn to_json(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(self).expect("a QuantConfig always serializes to JSON");
        s.push('\n');
        s
    }

    /// The names of the built-in recipes, as [`QuantConfig::builtin`] takes them.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTINS.iter().map(|(name, _)| *name).collect()
    }

    /// A built-in recipe (`configs/<name>.toml`, embedded at build time).
    pub fn builtin(name: &str) -> Result<Self> {
        match BUILTINS.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::from_toml_str(text, &format!("configs/{n}.toml (built-in)")),
            None => Err(QuantConfigError::UnknownBuiltin {
                name: name.into(),
                known: Self::builtin_names()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }),
        }
    }

    /// Checks every value of an in-memory recipe (the readers do this already).
    pub fn validate(&self) -> Result<()> {
        self.validate_in("<in-memory recipe>")
    }

    fn validate_in(&self, file: &str) -> Result<()> {
        require(
            file,
            "format_version",
            self.format_version == FORMAT_VERSION,
            format!(
                "unsupported version {}; this dmq reads format_version = {FORMAT_VERSION}",
                self.format_version
            ),
        )?;
        require(
            file,
            "name",
            !self.name.trim().is_empty(),
            "must not be empty",
        )?;

        let w = &self.weights;
        let (lo, hi) = WEIGHT_BITS;
        check_range(file, "weights.bits", w.bits, lo, hi, "must be 2..=8")?;
        require(
            file,
            "weights.mse_candidates",
            w.mse_candidates >= 1,
            "must be at least 1",
        )?;
        check_float(
            file,
            "weights.mse_grid",
            w.mse_grid,
            (0.0, true),
            (1.0, true),
        )?;
        require(
            file,
            "weights.mse_grid",
            (w.mse_candidates as f64 - 1.0) * w.mse_grid < 1.0,
            format!(
                "{} candidates of grid {} shrink the range to zero or below: \
                 (mse_candidates − 1)·mse_grid must be < 1",
                w.mse_candidates, w.mse_grid
            ),
        )?;
        check_float(
            file,
            "weights.mse_p",
            w.mse_p,
            (0.0, true),
            (f64::INFINITY, true),
        )?;
        require(
            file,
            "weights.rounding",
            w.rounding != Rounding::Adaround || self.reconstruction.enabled,
            "\"adaround\" learns the rounding by reconstruction: set reconstruction.enabled = \
             true or rounding = \"nearest\"",
        )?;

        let a = &self.activations;
        let (lo, hi) = ACT_BITS;
        check_range(
            file,
            "activations.bits",
            a.bits,
            lo,
            hi,
            "must be 2..=16 (16 = float activations)",
        )?;
        require(
            file,
            "activations.granularity",
            a.granularity == Granularity::PerTensor,
            "activations are quantized per tensor only (spec §1.3): use \"per_tensor\"",
        )?;
        check_float(
            file,
            "activations.ema_momentum",
            a.ema_momentum,
            (0.0, true),
            (1.0, true),
        )?;
        require(
            file,
            "activations.ema_batch",
            a.ema_batch >= 1,
            "must be at least 1",
        )?;
        check_float(
            file,
            "activations.percentile",
            a.percentile,
            (50.0, true),
            (100.0, false),
        )?;

        let c = &self.calibration;
        require(
            file,
            "calibration.steps",
            c.steps >= 1,
            "must be at least 1",
        )?;
        require(
            file,
            "calibration.steps_sampled",
            c.steps_sampled >= 1 && c.steps_sampled <= c.steps,
            format!(
                "{} is out of range: must be 1..=calibration.steps ({})",
                c.steps_sampled, c.steps
            ),
        )?;
        require(
            file,
            "calibration.samples_per_step",
            c.samples_per_step >= 1,
            "must be at least 1",
        )?;
        require(
            file,
            "calibration.batch",
            c.batch >= 1,
            "must be at least 1",
        )?;
        check_float(file, "calibration.eta", c.eta, (0.0, false), (1.0, false))?;
        require(
            file,
            "calibration.eta",
            c.sampler == Sampler::Ddim || c.eta == 0.0,
            "eta applies to the \"ddim\" sampler only: leave it at 0.0 for \"ddpm\"",
        )?;

        let r = &self.reconstruction;
        if r.enabled {
            require(
                file,
                "reconstruction.iters",
                r.iters >= 1,
                "must be at least 1 when reconstruction.enabled = true",
            )?;
            if r.act_steps {
                require(
                    file,
                    "reconstruction.act_iters",
                    r.act_iters >= 1,
                    "must be at least 1 when reconstruction.act_steps = true",
                )?;
            }
        }
        require(
            file,
            "reconstruction.batch",
            r.batch >= 1,
            "must be at least 1",
        )?;
        let positive = (0.0, true);
        let unbounded = (f64::INFINITY, true);
        check_float(file, "reconstruction.lr", r.lr, positive, unbounded)?;
        check_float(file, "reconstruction.loss_p", r.loss_p, positive, unbounded)?;
        check_float(
            file,
            "reconstruction.adaround_lambda",
            r.adaround_lambda,
            (0.0, false),
            unbounded,
        )?;
        check_float(
            file,
            "reconstruction.adaround_zeta",
            r.adaround_zeta,
            (1.0, true),
            unbounded,
        )?;
        check_float(
            file,
            "reconstruction.adaround_gamma",
            r.adaround_gamma,
            (f64::NEG_INFINITY, true),
            (0.0, true),
        )?;
        check_float(
            file,
            "reconstruction.beta_end",
            r.beta_end,
            positive,
            unbounded,
        )?;
        check_float(
            file,
            "reconstruction.beta_start",
            r.beta_start,
            (r.beta_end, false),
            unbounded,
        )?;
        check_float(
            file,
            "reconstruction.warmup",
            r.warmup,
            (0.0, false),
            (1.0, true),
        )?;
        check_float(file, "reconstruction.act_lr", r.act_lr, positive, unbounded)?;
        check_float(
            file,
            "reconstruction.act_loss_p",
            r.act_loss_p,
            positive,
            unbounded,
        )?;

        if let Some(l) = &self.les {
            if l.enabled {
                require(
                    file,
                    "les.iters",
                    l.iters >= 1,
                    "must be at least 1 when les.enabled = true",
                )?;
            }
            require(file, "les.batch", l.batch >= 1, "must be at least 1")?;
            check_float(file, "les.lr", l.lr, positive, unbounded)?;
            check_float(file, "les.momentum", l.momentum, (0.0, true), (1.0, true))?;
            check_float(file, "les.r", l.r, (0.0, false), unbounded)?;
        }
        if let Some(p) = &self.pts {
            for (i, g) in p.layers.iter().enumerate() {
                glob(g).map_err(|e| QuantConfigError::Field {
                    file: file.into(),
                    field: format!("pts.layers[{i}]"),
                    message: format!("invalid pattern: {e}"),
                })?;
            }
            check_range(file, "pts.max_shift", p.max_shift, 0, 7, "must be 0..=7")?;
            check_float(
                file,
                "pts.threshold",
                p.threshold,
                (0.0, true),
                (1.0, false),
            )?;
        }
        if let Some(p) = &self.ptqd {
            for (i, part) in p.parts.iter().enumerate() {
                require(
                    file,
                    &format!("ptqd.parts[{i}]"),
                    !p.parts[..i].contains(part),
                    format!("\"{}\" is listed twice", part.name()),
                )?;
            }
            require(file, "ptqd.samples", p.samples >= 1, "must be at least 1")?;
            require(file, "ptqd.batch", p.batch >= 1, "must be at least 1")?;
            require(
                file,
                "ptqd.mixed_act_bits",
                p.mixed_act_bits.is_empty() || self.activations.bits < ACT_FLOAT_BITS,
                "mixed precision picks among activation quantizers: activations.bits must be \
                 below 16",
            )?;
            for (i, &b) in p.mixed_act_bits.iter().enumerate() {
                let field = format!("ptqd.mixed_act_bits[{i}]");
                check_range(
                    file,
                    &field,
                    b,
                    ACT_BITS.0,
                    self.activations.bits.saturating_sub(1),
                    &format!(
                        "must be 2..activations.bits ({}): the lower widths offered per step",
                        self.activations.bits
                    ),
                )?;
                require(
                    file,
                    &field,
                    !p.mixed_act_bits[..i].contains(&b),
                    format!("{b} is listed twice"),
                )?;
            }
        }

        for (i, p) in self.layers.keep_float.iter().enumerate() {
            glob(p).map_err(|e| QuantConfigError::Field {
                file: file.into(),
                field: format!("layers.keep_float[{i}]"),
                message: format!("invalid pattern: {e}"),
            })?;
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let field = |name: &str| format!("overrides[{i}].{name}");
            glob(&o.pattern).map_err(|e| QuantConfigError::Field {
                file: file.into(),
                field: field("pattern"),
                message: format!("invalid pattern: {e}"),
            })?;
            if let Some(b) = o.weight_bits {
                let (lo, hi) = WEIGHT_BITS;
                check_range(file, &field("weight_bits"), b, lo, hi, "must be 2..=8")?;
            }
            if let Some(b) = o.act_bits {
                let (lo, hi) = ACT_BITS;
                check_range(
                    file,
                    &field("act_bits"),
                    b,
                    lo,
                    hi,
                    "must be 2..=16 (16 = float activations)",
                )?;
            }
            require(
                file,
                &field("pattern"),
                o.weight_bits.is_some()
                    || o.act_bits.is_some()
                    || o.granularity.is_some()
                    || o.weight_quantizer.is_some()
                    || o.keep_float.is_some(),
                "the override sets nothing: give weight_bits, act_bits, granularity, \
                 weight_quantizer or keep_float",
            )?;
        }
        if let Some(mp) = &self.mixed_precision {
            require(
                file,
                "mixed_precision",
                mp.avg_bits.is_some() != mp.lambda_bits.is_some(),
                "set exactly one of avg_bits (a budget) and lambda_bits (cost + λ·bits)",
            )?;
            if let Some(b) = mp.avg_bits {
                require(
                    file,
                    "mixed_precision.avg_bits",
                    b.is_finite() && (2.0..=16.0).contains(&b),
                    "must be a number in 2..=16",
                )?;
            }
            if let Some(l) = mp.lambda_bits {
                require(
                    file,
                    "mixed_precision.lambda_bits",
                    l.is_finite() && l >= 0.0,
                    "must be a finite number >= 0",
                )?;
            }
        }
        Ok(())
    }

    fn matchers(&self) -> std::result::Result<Matchers, globset::Error> {
        let mut keep = GlobSetBuilder::new();
        for p in &self.layers.keep_float {
            keep.add(glob(p)?);
        }
        let mut over = GlobSetBuilder::new();
        for o in &self.overrides {
            over.add(glob(&o.pattern)?);
        }
        Ok(Matchers {
            keep_float: keep.build()?,
            overrides: over.build()?,
        })
    }

    fn matchers_or_panic(&self) -> Matchers {
        self.matchers().unwrap_or_else(|e| {
            panic!(
                "recipe `{}` has an invalid pattern (validate() reports it): {e}",
                self.name
            )
        })
    }

    fn plan_with(&self, m: &Matchers, path: &str) -> LayerPlan {
        let mut float = m.keep_float.is_match(path);
        let mut weight_bits = self.weights.bits;
        let mut act_bits = self.activations.bits;
        let mut granularity = self.weights.granularity;
        // `matches` returns the indices in ascending order: file order, so later entries win.
        for i in m.overrides.matches(path) {
            let o = &self.overrides[i];
            if let Some(k) = o.keep_float {
                float = k;
            }
            if let Some(b) = o.weight_bits {
                weight_bits = b;
            }
            if let Some(b) = o.act_bits {
                act_bits = b;
            }
            if let Some(g) = o.granularity {
                granularity = g;
            }
        }
        LayerPlan {
            weight_bits: (!float).then_some(weight_bits),
            act_bits: (!float && act_bits < ACT_FLOAT_BITS).then_some(act_bits),
            granularity,
            split_skip: self.layers.split_skip,
        }
    }

    /// The weight quantizer of each of `paths` (uniform unless an override says `kmeans`; later
    /// overrides win). Only meaningful for layers whose plan has weight bits.
    ///
    /// # Panics
    /// As [`QuantConfig::layer_plan`].
    pub fn weight_quantizers<S: AsRef<str>>(
        &self,
        paths: &[S],
    ) -> BTreeMap<String, WeightQuantizer> {
        let m = self.matchers_or_panic();
        paths
            .iter()
            .map(|p| {
                let mut q = WeightQuantizer::Uniform;
                for i in m.overrides.matches(p.as_ref()) {
                    if let Some(w) = self.overrides[i].weight_quantizer {
                        q = w;
                    }
                }
                (p.as_ref().to_string(), q)
            })
            .collect()
    }

    /// Whether any override asks for k-means weights.
    pub fn has_kmeans(&self) -> bool {
        self.overrides
            .iter()
            .any(|o| o.weight_quantizer == Some(WeightQuantizer::Kmeans))
    }

    /// How the layer at checkpoint path `path` is quantized (see the module docs for the order).
    ///
    /// # Panics
    /// If a pattern is not a valid glob, which [`QuantConfig::validate`] (and every reader)
    /// reports as an error first.
    pub fn layer_plan(&self, path: &str) -> LayerPlan {
        self.plan_with(&self.matchers_or_panic(), path)
    }

    /// [`QuantConfig::layer_plan`] for many paths, compiling the patterns once.
    ///
    /// # Panics
    /// As [`QuantConfig::layer_plan`].
    pub fn layer_plans<S: AsRef<str>>(&self, paths: &[S]) -> BTreeMap<String, LayerPlan> {
        let m = self.matchers_or_panic();
        paths
            .iter()
            .map(|p| (p.as_ref().to_string(), self.plan_with(&m, p.as_ref())))
            .collect()
    }

    /// Patterns that match none of `layers` (a model's checkpoint paths): every override, and
    /// every `keep_float` entry not in [`DEFAULT_KEEP_FLOAT`] (the default list is meant for any
    /// model, e.g. `class_embedding.*` exists only in class-conditional ones). Invalid patterns
    /// are not reported here (validation rejects them).
    pub fn check_patterns<S: AsRef<str>>(&self, layers: &[S]) -> Vec<PatternWarning> {
        let matches_any = |pattern: &str| match glob(pattern) {
            Ok(g) => {
                let m = g.compile_matcher();
                layers.iter().any(|l| m.is_match(l.as_ref()))
            }
            Err(_) => true,
        };
        let mut warnings = Vec::new();
        for (i, p) in self.layers.keep_float.iter().enumerate() {
            if !DEFAULT_KEEP_FLOAT.contains(&p.as_str()) && !matches_any(p) {
                warnings.push(PatternWarning {
                    field: format!("layers.keep_float[{i}]"),
                    pattern: p.clone(),
                    layers: layers.len(),
                });
            }
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if !matches_any(&o.pattern) {
                warnings.push(PatternWarning {
                    field: format!("overrides[{i}].pattern"),
                    pattern: o.pattern.clone(),
                    layers: layers.len(),
                });
            }
        }
        warnings
    }

    /// Index of the activation parameter set used at sampling step `step` (0 = first step): the
    /// nearest calibrated step of [`CalibrationConfig::sampled_steps`] by position (ties to the
    /// earlier one), as proposed in spec §7.3; always 0 without `activations.per_step`.
    pub fn activation_set(&self, step: usize) -> usize {
        if !self.activations.per_step {
            return 0;
        }
        let steps = self.calibration.sampled_steps();
        let mut best = 0;
        for (i, &s) in steps.iter().enumerate() {
            if s.abs_diff(step) < steps[best].abs_diff(step) {
                best = i;
            }
        }
        best
    }

    /// The `--fast` variant: at most [`FAST_SAMPLES_PER_STEP`] samples at each of at most
    /// [`FAST_STEPS_SAMPLED`] calibrated steps, at most [`FAST_ITERS`] reconstruction iterations
    /// per unit (both stages) on mini-batches of at most [`FAST_RECON_BATCH`], at most
    /// [`FAST_PTQD_SAMPLES`] PTQD trajectories; everything else
    /// (bits, layer selection, sampler, β schedule as fractions of the iterations) unchanged. The
    /// name gets the suffix `-fast`.
    ///
    /// Sized for a whole recipe on 2 CPU cores within 10 minutes for the 8.95 M-parameter
    /// `ddpm-cifar10-small` (1.6 G MAC per image, ≈ 9 image-forwards/s): trajectories
    /// 8 × 100 steps ≈ 90 s; reconstruction of 34 units × 50 iterations at batch 4 (measured:
    /// a 64-channel 32×32 ResNet block takes ≈ 0.2 s per iteration at batch 8, forward and
    /// backward) ≈ 3 minutes; captured block inputs and activation ranges ≈ 1 minute. A smoke
    /// setting, not a quality one.
    pub fn fast(&self) -> QuantConfig {
        let mut c = self.clone();
        let cal = &mut c.calibration;
        cal.samples_per_step = cal.samples_per_step.min(FAST_SAMPLES_PER_STEP);
        cal.steps_sampled = cal.steps_sampled.min(FAST_STEPS_SAMPLED);
        let r = &mut c.reconstruction;
        r.iters = r.iters.min(FAST_ITERS);
        r.act_iters = r.act_iters.min(FAST_ITERS);
        r.batch = r.batch.min(FAST_RECON_BATCH);
        if let Some(l) = &mut c.les {
            l.iters = l.iters.min(FAST_LES_ITERS);
            l.batch = l.batch.min(FAST_RECON_BATCH);
        }
        if let Some(p) = &mut c.ptqd {
            p.samples = p.samples.min(FAST_PTQD_SAMPLES);
        }
        if !c.name.ends_with("-fast") {
            c.name.push_str("-fast");
        }
        c
    }
}

fn toml_syntax(file: &str, text: &str, e: &toml::de::Error) -> QuantConfigError {
    let mut message = format!("invalid TOML: {}", e.message());
    if let Some(span) = e.span() {
        let (line, col) = line_col(text, span.start);
        message.push_str(&format!(" (line {line}, column {col})"));
    }
    QuantConfigError::Syntax {
        file: file.into(),
        message,
    }
}
