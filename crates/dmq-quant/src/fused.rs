//! Fused per-tensor fake quantization for inference (simulated sampling): one pass over the
//! tensor, `Δ·(clamp(round(x/Δ) + z, 0, 2^b − 1) − z)` with round half to even, on the CPU as a
//! loop and on CUDA as one kernel (`kernels/fake_quant.cu`). The composed version
//! ([`crate::uniform::fake_quant_ste`]) runs ~20 candle kernels with full-size temporaries for
//! each quantized layer input, which made simulated sampling ~2.6× slower than FP on the GPU.
//!
//! Same IEEE operations in the same order as the composed version, so the output is bit-identical
//! to it (tested); only `f32` is fused (the compute dtype of every non-f64 input).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::uniform::{qmax, validate_bits, QuantError, Result, UniformParams};

/// The fused op: per-tensor step, zero point and largest code, all exact in `f32`.
#[derive(Debug, Clone, Copy)]
pub struct FakeQuantPerTensor {
    delta: f32,
    zero: f32,
    qmax: f32,
}

impl FakeQuantPerTensor {
    /// The op of per-tensor `params` (one step, one zero point).
    pub fn new(params: &UniformParams) -> Result<Self> {
        if params.scale.len() != 1 || params.zero_point.len() != 1 {
            return Err(QuantError::InvalidParams(format!(
                "fused fake quantization is per tensor; got {} steps and {} zero points",
                params.scale.len(),
                params.zero_point.len()
            )));
        }
        Self::from_parts(params.scale[0], params.zero_point[0], params.bits)
    }

    /// The op of step `delta`, zero point `z` and `bits`.
    pub fn from_parts(delta: f32, z: i32, bits: u8) -> Result<Self> {
        validate_bits(bits)?;
        if !(delta.is_finite() && delta > 0.0) {
            return Err(QuantError::InvalidParams(format!(
                "step {delta} is not positive and finite"
            )));
        }
        // Zero points are integers; |z| < 2^24 keeps them exact in f32.
        if z.unsigned_abs() >= 1 << 24 {
            return Err(QuantError::InvalidParams(format!(
                "zero point {z} does not fit f32 exactly"
            )));
        }
        Ok(Self {
            delta,
            zero: z as f32,
            qmax: qmax(bits) as f32,
        })
    }

    /// The quantized value of one element (the CPU path; the kernel does the same operations).
    #[inline]
    fn apply(&self, x: f32) -> f32 {
        let q = ((x / self.delta).round_ties_even() + self.zero).clamp(0.0, self.qmax);
        (q - self.zero) * self.delta
    }

    /// Fake-quantizes an `f32` tensor (no gradient: for inference).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != DType::F32 {
            return Err(QuantError::InvalidParams(format!(
                "fused fake quantization takes f32, got {:?}",
                x.dtype()
            )));
        }
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }
}

impl CustomOp1 for FakeQuantPerTensor {
    fn name(&self) -> &'static str {
        "dmq-fake-quant-per-tensor"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("{}: f32 input expected", self.name());
        };
        // `forward` makes the input contiguous first.
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input expected", self.name());
        };
        let out: Vec<f32> = v[a..b].iter().map(|&x| self.apply(x)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fake_quant.ptx"));
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input expected", self.name());
        };
        let dev = storage.device.clone();
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let n = end - start;
        let func = dev.get_or_load_custom_func("dmq_fake_quant_f32", "dmq_fake_quant", PTX)?;
        // SAFETY: every element is written by the kernel below.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let n64 = n as u64;
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&out);
        b.arg(&n64);
        b.arg(&self.delta);
        b.arg(&self.zero);
        b.arg(&self.qmax);
        let cfg = LaunchConfig::for_num_elems(n.min(u32::MAX as usize) as u32);
        // SAFETY: the kernel's signature is (const float*, float*, u64, float, float, float).
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            layout.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniform::fake_quant_ste;
    use candle_core::Device;

    fn params(scale: f32, zp: i32, bits: u8) -> UniformParams {
        UniformParams {
            scale: vec![scale],
            zero_point: vec![zp],
            bits,
            axis: None,
        }
    }

    /// Bit-identical to the composed straight-through version, ties and clamped ends included.
    #[test]
    fn equals_composed_fake_quant_bit_for_bit() {
        let dev = Device::Cpu;
        let mut vals: Vec<f32> = (0..4000)
            .map(|i| ((i as f32) * 0.7311).sin() * 3.0)
            .collect();
        // Exact ties at Δ = 0.25: x/Δ = k + 0.5.
        vals.extend((-20..20).map(|k| (k as f32 + 0.5) * 0.25));
        vals.extend([0.0, -0.0, 1e-30, 100.0, -100.0]);
        let x = Tensor::from_vec(vals.clone(), (vals.len(),), &dev).unwrap();
        for (scale, zp, bits) in [
            (0.25f32, 7, 4),
            (0.013, 128, 8),
            (0.1, -3, 6),
            (0.5, 300, 8),
        ] {
            let p = params(scale, zp, bits);
            let fused = FakeQuantPerTensor::new(&p).unwrap().forward(&x).unwrap();
            let d = p.scale_tensor(x.dims(), DType::F32, &dev).unwrap();
            let z = p.zero_point_tensor(x.dims(), DType::F32, &dev).unwrap();
            let composed = fake_quant_ste(&x, &d, &z, bits).unwrap();
            let a: Vec<f32> = fused.to_vec1().unwrap();
            let b: Vec<f32> = composed.to_vec1().unwrap();
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(
                    u.to_bits(),
                    v.to_bits(),
                    "element {i} ({}): {u} vs {v}",
                    vals[i]
                );
            }
        }
    }

    /// Strided (transposed) input gives the same values as its contiguous copy.
    #[test]
    fn strided_input_matches_contiguous() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .affine(0.37, -4.0)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let op = FakeQuantPerTensor::new(&params(0.3, 5, 4)).unwrap();
        let t = op.forward(&x.t().unwrap()).unwrap();
        let c = op.forward(&x.t().unwrap().contiguous().unwrap()).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
        // Values land on the grid Δ·(q − z) with q in [0, 15].
        for v in c.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            let q = v / 0.3 + 5.0;
            assert!(
                (q - q.round()).abs() < 1e-4 && (-1e-4..=15.0001).contains(&q),
                "{v}"
            );
        }
    }

    #[test]
    fn rejects_per_channel_and_bad_steps() {
        let mut p = params(0.1, 0, 8);
        p.scale.push(0.2);
        p.zero_point.push(0);
        assert!(FakeQuantPerTensor::new(&p).is_err());
        assert!(FakeQuantPerTensor::new(&params(0.0, 0, 8)).is_err());
        assert!(FakeQuantPerTensor::new(&params(f32::NAN, 0, 8)).is_err());
        assert!(FakeQuantPerTensor::new(&params(0.1, 0, 9)).is_err());
    }
}
