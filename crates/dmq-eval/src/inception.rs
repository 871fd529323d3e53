//! The FID Inception-v3 network (TF `inception-2015-12-05`, the graph that defines FID and sFID),
//! from `fid_inception_2015_12_05.safetensors` (pytorch-fid module names, BN not folded, no fc).
//! See `shared/models/fid-inception/README.md` for the architecture and its TF quirks:
//! BN eps 1e-3 with gamma = 1, branch average pools that exclude the padding, a max-pool branch in
//! `Mixed_7c`, pool3 = mean over the final 8x8 map; sFID features = `Mixed_6d.branch1x1`,
//! channels 0..7, flattened in NHWC order (2023 dims).
//!
//! The forward pass is batched and uses only candle tensor ops, so it runs on any candle device.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::preprocess::INCEPTION_SIZE;

/// BatchNorm epsilon of the TF graph (`BatchNormWithGlobalNormalization`, variance_epsilon).
pub const BN_EPS: f32 = 1e-3;
/// Length of the FID feature vector (pool3).
pub const POOL3_DIM: usize = 2048;
/// Length of the sFID feature vector (`mixed_6/conv`, 7 channels x 17 x 17).
pub const SPATIAL_DIM: usize = 7 * 17 * 17;

#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    #[error("{path}: cannot read the Inception weights: {source}")]
    Load {
        path: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: tensor `{name}` is missing (not an FID Inception weights file?)")]
    MissingTensor { path: String, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape {
        path: String,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {got:?}, expected F32")]
    WrongDType {
        path: String,
        name: String,
        got: DType,
    },
    #[error("{path}: tensor `{name}` has a non-finite value or a variance <= -eps")]
    BadValue { path: String, name: String },
    #[error("Inception input must be an F32 [N, 3, 299, 299] tensor, got {dtype:?} {dims:?}")]
    Input { dims: Vec<usize>, dtype: DType },
    #[error("cannot preprocess an empty {w}x{h} image for Inception")]
    EmptyImage { w: u32, h: u32 },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InceptionError>;

/// One conv layer of the network: name (pytorch-fid), channels, kernel, stride, padding (h, w).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    pub name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: (usize, usize),
}

fn spec(name: String, c_in: usize, c_out: usize, k: (usize, usize), s: usize) -> ConvSpec {
    // Stride-1 convs are TF `SAME` with odd kernels, i.e. (kh/2, kw/2) padding (asymmetric for
    // 1x7, 7x1, 1x3, 3x1); stride-2 convs are `VALID`. The two stride-1 `VALID` stem convs
    // (Conv2d_2a_3x3, Conv2d_4a_3x3) are wrapped in `valid`.
    let padding = if s == 1 { (k.0 / 2, k.1 / 2) } else { (0, 0) };
    ConvSpec {
        name,
        c_in,
        c_out,
        kernel: k,
        stride: s,
        padding,
    }
}

fn valid(mut s: ConvSpec) -> ConvSpec {
    s.padding = (0, 0);
    s
}

fn a_specs(p: &str, c_in: usize, pool: usize) -> Vec<ConvSpec> {
    vec![
        spec(format!("{p}.branch1x1"), c_in, 64, (1, 1), 1),
        spec(format!("{p}.branch5x5_1"), c_in, 48, (1, 1), 1),
        spec(format!("{p}.branch5x5_2"), 48, 64, (5, 5), 1),
        spec(format!("{p}.branch3x3dbl_1"), c_in, 64, (1, 1), 1),
        spec(format!("{p}.branch3x3dbl_2"), 64, 96, (3, 3), 1),
        spec(format!("{p}.branch3x3dbl_3"), 96, 96, (3, 3), 1),
        spec(format!("{p}.branch_pool"), c_in, pool, (1, 1), 1),
    ]
}

fn c_specs(p: &str, c7: usize) -> Vec<ConvSpec> {
    vec![
        spec(format!("{p}.branch1x1"), 768, 192, (1, 1), 1),
        spec(format!("{p}.branch7x7_1"), 768, c7, (1, 1), 1),
        spec(format!("{p}.branch7x7_2"), c7, c7, (1, 7), 1),
        spec(format!("{p}.branch7x7_3"), c7, 192, (7, 1), 1),
        spec(format!("{p}.branch7x7dbl_1"), 768, c7, (1, 1), 1),
        spec(format!("{p}.branch7x7dbl_2"), c7, c7, (7, 1), 1),
        spec(format!("{p}.branch7x7dbl_3"), c7, c7, (1, 7), 1),
        spec(format!("{p}.branch7x7dbl_4"), c7, c7, (7, 1), 1),
        spec(format!("{p}.branch7x7dbl_5"), c7, 192, (1, 7), 1),
        spec(format!("{p}.branch_pool"), 768, 192, (1, 1), 1),
    ]
}

fn e_specs(p: &str, c_in: usize) -> Vec<ConvSpec> {
    vec![
        spec(format!("{p}.branch1x1"), c_in, 320, (1, 1), 1),
        spec(format!("{p}.branch3x3_1"), c_in, 384, (1, 1), 1),
        spec(format!("{p}.branch3x3_2a"), 384, 384, (1, 3), 1),
        spec(format!("{p}.branch3x3_2b"), 384, 384, (3, 1), 1),
        spec(format!("{p}.branch3x3dbl_1"), c_in, 448, (1, 1), 1),
        spec(format!("{p}.branch3x3dbl_2"), 448, 384, (3, 3), 1),
        spec(format!("{p}.branch3x3dbl_3a"), 384, 384, (1, 3), 1),
        spec(format!("{p}.branch3x3dbl_3b"), 384, 384, (3, 1), 1),
        spec(format!("{p}.branch_pool"), c_in, 192, (1, 1), 1),
    ]
}

/// All 94 conv layers in file order of the TF graph (the same table as `layer_map.json`).
pub fn conv_specs() -> Vec<ConvSpec> {
    let n = |s: &str| s.to_string();
    let mut v = vec![
        spec(n("Conv2d_1a_3x3"), 3, 32, (3, 3), 2),
        valid(spec(n("Conv2d_2a_3x3"), 32, 32, (3, 3), 1)),
        spec(n("Conv2d_2b_3x3"), 32, 64, (3, 3), 1),
        spec(n("Conv2d_3b_1x1"), 64, 80, (1, 1), 1),
        valid(spec(n("Conv2d_4a_3x3"), 80, 192, (3, 3), 1)),
    ];
    v.extend(a_specs("Mixed_5b", 192, 32));
    v.extend(a_specs("Mixed_5c", 256, 64));
    v.extend(a_specs("Mixed_5d", 288, 64));
    v.extend([
        spec(n("Mixed_6a.branch3x3"), 288, 384, (3, 3), 2),
        spec(n("Mixed_6a.branch3x3dbl_1"), 288, 64, (1, 1), 1),
        spec(n("Mixed_6a.branch3x3dbl_2"), 64, 96, (3, 3), 1),
        spec(n("Mixed_6a.branch3x3dbl_3"), 96, 96, (3, 3), 2),
    ]);
    v.extend(c_specs("Mixed_6b", 128));
    v.extend(c_specs("Mixed_6c", 160));
    v.extend(c_specs("Mixed_6d", 160));
    v.extend(c_specs("Mixed_6e", 192));
    v.extend([
        spec(n("Mixed_7a.branch3x3_1"), 768, 192, (1, 1), 1),
        spec(n("Mixed_7a.branch3x3_2"), 192, 320, (3, 3), 2),
        spec(n("Mixed_7a.branch7x7x3_1"), 768, 192, (1, 1), 1),
        spec(n("Mixed_7a.branch7x7x3_2"), 192, 192, (1, 7), 1),
        spec(n("Mixed_7a.branch7x7x3_3"), 192, 192, (7, 1), 1),
        spec(n("Mixed_7a.branch7x7x3_4"), 192, 192, (3, 3), 2),
    ]);
    v.extend(e_specs("Mixed_7b", 1280));
    v.extend(e_specs("Mixed_7c", 2048));
    v
}

/// conv (no bias) -> BN (inference, eps 1e-3, as a per-channel affine) -> ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    /// `[1, C, 1, 1]`: `bn.weight / sqrt(running_var + eps)`.
    scale: Tensor,
    /// `[1, C, 1, 1]`: `bn.bias - running_mean * scale`.
    shift: Tensor,
    stride: usize,
    padding: (usize, usize),
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            // Asymmetric kernels (1x7, 7x1, 1x3, 3x1): candle's conv2d pads both axes equally,
            // so zero-pad explicitly and convolve without padding.
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_mul(&self.scale)?
            .broadcast_add(&self.shift)?
            .relu()?)
    }
}

/// The safetensors file, read on the CPU, with shape/dtype checks that name the file and tensor.
struct WeightFile<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl WeightFile<'_> {
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| InceptionError::MissingTensor {
                path: self.path(),
                name: name.to_string(),
            })?;
        if t.dims() != expected {
            return Err(InceptionError::WrongShape {
                path: self.path(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        if t.dtype() != DType::F32 {
            return Err(InceptionError::WrongDType {
                path: self.path(),
                name: name.to_string(),
                got: t.dtype(),
            });
        }
        Ok(t.clone())
    }

    fn vec(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.get(name, &[len])?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(InceptionError::BadValue {
                path: self.path(),
                name: name.to_string(),
            });
        }
        Ok(v)
    }

    fn conv_bn(&self, s: &ConvSpec, device: &Device) -> Result<ConvBn> {
        let l = &s.name;
        let weight = self.get(
            &format!("{l}.conv.weight"),
            &[s.c_out, s.c_in, s.kernel.0, s.kernel.1],
        )?;
        let gamma = self.vec(&format!("{l}.bn.weight"), s.c_out)?;
        let beta = self.vec(&format!("{l}.bn.bias"), s.c_out)?;
        let mean = self.vec(&format!("{l}.bn.running_mean"), s.c_out)?;
        let var_name = format!("{l}.bn.running_var");
        let var = self.vec(&var_name, s.c_out)?;
        if var.iter().any(|&v| v + BN_EPS <= 0.0) {
            return Err(InceptionError::BadValue {
                path: self.path(),
                name: var_name,
            });
        }
        // Same arithmetic as PyTorch's CPU inference batch norm: alpha = gamma / sqrt(var + eps),
        // beta = bias - mean * alpha, y = x * alpha + beta.
        let mut scale = Vec::with_capacity(s.c_out);
        let mut shift = Vec::with_capacity(s.c_out);
        for c in 0..s.c_out {
            let invstd = 1.0f32 / (var[c] + BN_EPS).sqrt();
            let a = invstd * gamma[c];
            scale.push(a);
            shift.push(beta[c] - mean[c] * a);
        }
        let chan = (1, s.c_out, 1, 1);
        Ok(ConvBn {
            weight: weight.to_device(device)?,
            scale: Tensor::from_vec(scale, chan, device)?,
            shift: Tensor::from_vec(shift, chan, device)?,
            stride: s.stride,
            padding: s.padding,
        })
    }
}

/// Inception-A (Mixed_5b/5c/5d).
#[derive(Debug, Clone)]
struct BlockA {
    b1x1: ConvBn,
    b5x5: [ConvBn; 2],
    b3x3dbl: [ConvBn; 3],
    pool: ConvBn,
}

/// Inception-B (Mixed_6a): stride-2 reduction.
#[derive(Debug, Clone)]
struct BlockB {
    b3x3: ConvBn,
    b3x3dbl: [ConvBn; 3],
}

/// Inception-C (Mixed_6b..6e), factorised 7x7.
#[derive(Debug, Clone)]
struct BlockC {
    b1x1: ConvBn,
    b7x7: [ConvBn; 3],
    b7x7dbl: [ConvBn; 5],
    pool: ConvBn,
}

/// Inception-D (Mixed_7a): stride-2 reduction.
#[derive(Debug, Clone)]
struct BlockD {
    b3x3: [ConvBn; 2],
    b7x7x3: [ConvBn; 4],
}

/// Inception-E (Mixed_7b with an avg-pool branch, Mixed_7c with a max-pool branch).
#[derive(Debug, Clone)]
struct BlockE {
    b1x1: ConvBn,
    b3x3_1: ConvBn,
    b3x3_2a: ConvBn,
    b3x3_2b: ConvBn,
    b3x3dbl_1: ConvBn,
    b3x3dbl_2: ConvBn,
    b3x3dbl_3a: ConvBn,
    b3x3dbl_3b: ConvBn,
    pool: ConvBn,
    max_pool: bool,
}

/// Feature tensors for a batch, f32 on the model's device.
#[derive(Debug, Clone)]
pub struct InceptionFeatures {
    /// `[N, 2048]`: TF `pool_3:0`, the FID features.
    pub pool3: Tensor,
    /// `[N, 2023]`: TF `mixed_6/conv:0` channels 0..7 in NHWC order, the sFID features.
    pub spatial: Tensor,
}

/// The FID Inception-v3 feature extractor.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: [ConvBn; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
    /// `[1, 1, 35, 35]` and `[1, 1, 17, 17]`, `[1, 1, 8, 8]`: 9 / (number of in-image taps) of a
    /// 3x3 stride-1 pad-1 window, turning a zero-padded `avg_pool2d` into TF's average pool that
    /// excludes the padding.
    avg_fix: [Tensor; 3],
    device: Device,
}

/// Takes `N` consecutive layers (in `conv_specs` order) off the front of the iterator.
fn take<const N: usize>(it: &mut impl Iterator<Item = ConvBn>) -> Result<[ConvBn; N]> {
    let v: Vec<ConvBn> = it.take(N).collect();
    v.try_into().map_err(|_| {
        InceptionError::from(candle_core::Error::Msg(
            "internal: conv table too short".into(),
        ))
    })
}

fn take1(it: &mut impl Iterator<Item = ConvBn>) -> Result<ConvBn> {
    let [c] = take::<1>(it)?;
    Ok(c)
}

fn count_fix(n: usize, device: &Device) -> Result<Tensor> {
    let taps = |i: usize| 1 + usize::from(i > 0) + usize::from(i + 1 < n);
    let v: Vec<f32> = (0..n * n)
        .map(|k| 9.0 / (taps(k / n) * taps(k % n)) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, n, n), device)?)
}

/// 3x3, stride 1, pad 1 average pool that excludes the padding (TF `SAME` avg pool,
/// PyTorch `count_include_pad=False`).
fn avg_pool_3x3_same(x: &Tensor, fix: &Tensor) -> Result<Tensor> {
    Ok(x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?
        .broadcast_mul(fix)?)
}

/// 3x3, stride 1, pad 1 max pool. Edge replication is exactly the same as -inf padding here:
/// every window already contains the edge value that gets replicated.
fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    Ok(x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride(3, 1)?)
}

fn seq(layers: &[ConvBn], x: &Tensor) -> Result<Tensor> {
    let mut x = x.clone();
    for l in layers {
        x = l.forward(&x)?;
    }
    Ok(x)
}

impl FidInception {
    /// Loads `fid_inception_2015_12_05.safetensors` (all 94 conv/BN layers; extra tensors are
    /// ignored). Errors name the file and, for a missing, wrongly shaped or non-F32 tensor, the
    /// tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
            InceptionError::Load {
                path: path.display().to_string(),
                source,
            }
        })?;
        let file = WeightFile { path, tensors };
        let layers = conv_specs()
            .iter()
            .map(|s| file.conv_bn(s, device))
            .collect::<Result<Vec<_>>>()?;
        let mut it = layers.into_iter();
        let it = &mut it;
        let stem = take::<5>(it)?;
        let mut block_a = || -> Result<BlockA> {
            Ok(BlockA {
                b1x1: take1(it)?,
                b5x5: take(it)?,
                b3x3dbl: take(it)?,
                pool: take1(it)?,
            })
        };
        let mixed_5 = [block_a()?, block_a()?, block_a()?];
        let mixed_6a = BlockB {
            b3x3: take1(it)?,
            b3x3dbl: take(it)?,
        };
        let mut block_c = || -> Result<BlockC> {
            Ok(BlockC {
                b1x1: take1(it)?,
                b7x7: take(it)?,
                b7x7dbl: take(it)?,
                pool: take1(it)?,
            })
        };
        let mixed_6 = [block_c()?, block_c()?, block_c()?, block_c()?];
        let mixed_7a = BlockD {
            b3x3: take(it)?,
            b7x7x3: take(it)?,
        };
        let mut block_e = |max_pool: bool| -> Result<BlockE> {
            let [b1x1, b3x3_1, b3x3_2a, b3x3_2b, b3x3dbl_1, b3x3dbl_2, b3x3dbl_3a, b3x3dbl_3b, pool] =
                take::<9>(it)?;
            Ok(BlockE {
                b1x1,
                b3x3_1,
                b3x3_2a,
                b3x3_2b,
                b3x3dbl_1,
                b3x3dbl_2,
                b3x3dbl_3a,
                b3x3dbl_3b,
                pool,
                max_pool,
            })
        };
        let mixed_7 = [block_e(false)?, block_e(true)?];
        debug_assert!(it.next().is_none());
        Ok(Self {
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7,
            avg_fix: [
                count_fix(35, device)?,
                count_fix(17, device)?,
                count_fix(8, device)?,
            ],
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `x`: `[N, 3, 299, 299]` f32, preprocessed (see [`crate::preprocess::to_model_input`]).
    /// Returns pool3 `[N, 2048]` and the sFID features `[N, 2023]`, f32 on the model's device.
    pub fn features(&self, x: &Tensor) -> Result<InceptionFeatures> {
        self.forward(x, None)
    }

    /// Like [`Self::features`], and also the spatial mean (over H, W) of every stage output,
    /// `[N, C]` each, named as the golden file's `debug.stage_mean.<stage>`: `Conv2d_1a_3x3`, ..,
    /// `maxpool1`, .., `maxpool2`, `Mixed_5b`, .., `Mixed_7c`.
    pub fn features_with_stage_means(
        &self,
        x: &Tensor,
    ) -> Result<(InceptionFeatures, Vec<(&'static str, Tensor)>)> {
        let mut stages = Vec::new();
        let f = self.forward(x, Some(&mut stages))?;
        Ok((f, stages))
    }

    fn forward(
        &self,
        x: &Tensor,
        mut stages: Option<&mut Vec<(&'static str, Tensor)>>,
    ) -> Result<InceptionFeatures> {
        let dims = x.dims();
        if dims.len() != 4
            || dims[1..] != [3, INCEPTION_SIZE, INCEPTION_SIZE]
            || x.dtype() != DType::F32
        {
            return Err(InceptionError::Input {
                dims: dims.to_vec(),
                dtype: x.dtype(),
            });
        }
        let n = dims[0];
        let mut record = |name: &'static str, t: &Tensor| -> Result<()> {
            if let Some(s) = stages.as_deref_mut() {
                // Summed in f64: an f32 running sum over 149x149 values would add ~1e-5 of
                // its own error and hide the network's.
                s.push((
                    name,
                    t.to_dtype(DType::F64)?.mean((2, 3))?.to_dtype(DType::F32)?,
                ));
            }
            Ok(())
        };
        let x = x.to_device(&self.device)?;
        const STEM: [&str; 5] = [
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
        ];
        let mut x = x;
        for (i, (layer, name)) in self.stem.iter().zip(STEM).enumerate() {
            x = layer.forward(&x)?;
            record(name, &x)?;
            if i == 2 || i == 4 {
                x = x.max_pool2d_with_stride(3, 2)?;
                record(if i == 2 { "maxpool1" } else { "maxpool2" }, &x)?;
            }
        }
        for (b, name) in self
            .mixed_5
            .iter()
            .zip(["Mixed_5b", "Mixed_5c", "Mixed_5d"])
        {
            x = Tensor::cat(
                &[
                    b.b1x1.forward(&x)?,
                    seq(&b.b5x5, &x)?,
                    seq(&b.b3x3dbl, &x)?,
                    b.pool.forward(&avg_pool_3x3_same(&x, &self.avg_fix[0])?)?,
                ],
                1,
            )?;
            record(name, &x)?;
        }
        let b = &self.mixed_6a;
        x = Tensor::cat(
            &[
                b.b3x3.forward(&x)?,
                seq(&b.b3x3dbl, &x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            1,
        )?;
        record("Mixed_6a", &x)?;
        let mut spatial = None;
        for (b, name) in self
            .mixed_6
            .iter()
            .zip(["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"])
        {
            let b1x1 = b.b1x1.forward(&x)?;
            if name == "Mixed_6d" {
                // TF `mixed_6/conv:0` [N, 17, 17, 192] NHWC -> [..., :7] -> reshape [N, -1].
                spatial = Some(
                    b1x1.narrow(1, 0, 7)?
                        .permute((0, 2, 3, 1))?
                        .contiguous()?
                        .reshape((n, SPATIAL_DIM))?,
                );
            }
            x = Tensor::cat(
                &[
                    b1x1,
                    seq(&b.b7x7, &x)?,
                    seq(&b.b7x7dbl, &x)?,
                    b.pool.forward(&avg_pool_3x3_same(&x, &self.avg_fix[1])?)?,
                ],
                1,
            )?;
            record(name, &x)?;
        }
        let b = &self.mixed_7a;
        x = Tensor::cat(
            &[
                seq(&b.b3x3, &x)?,
                seq(&b.b7x7x3, &x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            1,
        )?;
        record("Mixed_7a", &x)?;
        for (b, name) in self.mixed_7.iter().zip(["Mixed_7b", "Mixed_7c"]) {
            let t = b.b3x3_1.forward(&x)?;
            let d = b.b3x3dbl_2.forward(&b.b3x3dbl_1.forward(&x)?)?;
            let pooled = if b.max_pool {
                max_pool_3x3_same(&x)?
            } else {
                avg_pool_3x3_same(&x, &self.avg_fix[2])?
            };
            x = Tensor::cat(
                &[
                    b.b1x1.forward(&x)?,
                    b.b3x3_2a.forward(&t)?,
                    b.b3x3_2b.forward(&t)?,
                    b.b3x3dbl_3a.forward(&d)?,
                    b.b3x3dbl_3b.forward(&d)?,
                    b.pool.forward(&pooled)?,
                ],
                1,
            )?;
            record(name, &x)?;
        }
        // TF `pool_3`: 8x8 VALID average pool of the 8x8 map = mean over H, W.
        let pool3 = x.flatten_from(2)?.mean(D::Minus1)?;
        let spatial = spatial.expect("Mixed_6d is always run");
        Ok(InceptionFeatures { pool3, spatial })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table_has_94_layers_with_unique_names() {
        let s = conv_specs();
        assert_eq!(s.len(), 94);
        let names: std::collections::HashSet<_> = s.iter().map(|c| &c.name).collect();
        assert_eq!(names.len(), 94);
    }

    #[test]
    fn exclude_pad_average_pool() {
        let x = Tensor::arange(0f32, 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let fix = count_fix(3, &Device::Cpu).unwrap();
        let y = avg_pool_3x3_same(&x, &fix)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        // corner (0,0): mean of 0,1,3,4 = 2; centre: mean of 0..9 = 4; edge (0,1): 0,1,2,3,4,5 -> 2.5
        let y = &y[0];
        assert!((y[0][0] - 2.0).abs() < 1e-6);
        assert!((y[1][1] - 4.0).abs() < 1e-6);
        assert!((y[0][1] - 2.5).abs() < 1e-6);
        assert!((y[2][2] - 6.0).abs() < 1e-6);
    }

    #[test]
    fn same_max_pool_ignores_padding_even_for_negative_inputs() {
        let x = Tensor::arange(-9f32, 0.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let y = max_pool_3x3_same(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(
            y[0],
            vec![
                vec![-5.0, -4.0, -4.0],
                vec![-2.0, -1.0, -1.0],
                vec![-2.0, -1.0, -1.0]
            ]
        );
    }
}
