//! A 2-D convolution with a faster backward pass for calibration.
//!
//! candle 0.11 differentiates `conv2d` with `conv_transpose2d` for the input gradient (on the CPU
//! a direct loop: 6–7x the forward's time, most of block reconstruction's time; on CUDA not
//! cuDNN) and a convolution with the output gradient as kernel for the weight gradient. Here the
//! forward is candle's own `conv2d` (bit-identical values), and the gradients, for stride 1, are
//!
//! - input: the convolution of the output gradient with the flipped, transposed kernel and
//!   padding `k − 1 − p` (a forward convolution, same speed as the forward pass);
//! - weight: one batched GEMM of the output gradient with the `k·k` shifted copies of the
//!   padded input (im2col).
//!
//! The value goes through an identity op ([`GradRoute`]) whose backward returns those gradients
//! for `x` and `w`, while the convolution itself runs on detached operands. Strided convolutions
//! (the downsamplers, a handful of layers) keep candle's backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape, Tensor};

use crate::error::Result;

/// `x.conv2d(w, padding, stride, 1, 1)` whose backward uses forward convolutions and a GEMM
/// (see the module docs). Same values as candle's `conv2d`.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if stride != 1 || !(x.track_op() || w.track_op()) {
        return Ok(x.conv2d(w, padding, stride, 1, 1)?);
    }
    let y = x.detach().conv2d(&w.detach(), padding, 1, 1, 1)?;
    Ok(y.apply_op3(x, w, GradRoute { padding })?)
}

/// Identity on its first operand; its backward sends the convolution gradients to the second
/// (`x`) and third (`w`).
struct GradRoute {
    padding: usize,
}

fn whole_buffer(l: &Layout) -> candle_core::Result<()> {
    if l.is_contiguous() && l.start_offset() == 0 {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(
            "conv gradient route: expected a fresh contiguous convolution output".into(),
        ))
    }
}

impl CustomOp3 for GradRoute {
    fn name(&self) -> &'static str {
        "conv2d-grad-route"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        whole_buffer(l1)?;
        Ok((s1.try_clone(l1)?, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        whole_buffer(l1)?;
        Ok((s1.try_clone(l1)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = self.padding;
        let (b, c_in, h, wd) = x.dims4()?;
        let (c_out, _, k, _) = w.dims4()?;
        let grad = grad.contiguous()?;
        let (_, _, ho, wo) = grad.dims4()?;
        // Input: correlate the output gradient with the flipped kernel, channels swapped.
        let grad_x = if x.track_op() {
            let wt = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
            // Stride 1: (h + 2p − k + 1) + 2(k − 1 − p) − k + 1 = h, the input's size exactly.
            let gx = grad.conv2d(&wt, k - 1 - p, 1, 1, 1)?;
            if gx.dims4()? != (b, c_in, h, wd) {
                return Err(candle_core::Error::Msg(format!(
                    "conv gradient route: input gradient {:?}, input {:?}",
                    gx.dims(),
                    x.dims()
                )));
            }
            Some(gx)
        } else {
            None
        };
        // Weight: Σ_b grad[b] · im2col(x[b])ᵀ, one batched GEMM.
        let grad_w = if w.track_op() {
            let xp = x
                .detach()
                .pad_with_zeros(2, p, p)?
                .pad_with_zeros(3, p, p)?;
            let mut cols = Vec::with_capacity(k * k);
            for i in 0..k {
                for j in 0..k {
                    cols.push(xp.narrow(2, i, ho)?.narrow(3, j, wo)?);
                }
            }
            // [B, k·k, C, Ho, Wo] -> [B, k·k·C, Ho·Wo]
            let xcol = Tensor::stack(&cols, 1)?.reshape((b, k * k * c_in, ho * wo))?;
            let g = grad.reshape((b, c_out, ho * wo))?;
            let gw = g.matmul(&xcol.transpose(1, 2)?)?.sum(0)?; // [O, k·k·C]
            Some(
                gw.reshape((c_out, k, k, c_in))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?,
            )
        } else {
            None
        };
        Ok((None, grad_x, grad_w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Seeded uniform values in [-1, 1) (xorshift).
    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
    }

    /// Same values as candle's conv2d (bit-identical) and the same gradients (to rounding) for
    /// 1x1 and 3x3 kernels, padding 0 and 1, odd sizes, x and w both learned or one of them.
    #[test]
    fn matches_candles_conv_and_its_gradients() {
        for (seed, (b, ci, co, h, w, k, p)) in [
            (2, 5, 7, 9, 6, 3, 1),
            (3, 4, 6, 5, 5, 1, 0),
            (1, 3, 2, 7, 8, 3, 0),
            (2, 8, 8, 4, 4, 3, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let x = Var::from_tensor(&randn(&[b, ci, h, w], seed as u64)).unwrap();
            let wt = Var::from_tensor(&randn(&[co, ci, k, k], 100 + seed as u64)).unwrap();
            let probe = randn(
                &[b, co, h + 2 * p + 1 - k, w + 2 * p + 1 - k],
                200 + seed as u64,
            );
            let loss = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap();
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), p, 1).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, 1, 1, 1).unwrap();
            assert_eq!(max_rel(&ours, &theirs), 0.0);
            let g1 = loss(&ours).backward().unwrap();
            let g2 = loss(&theirs).backward().unwrap();
            for (name, v) in [("x", &x), ("w", &wt)] {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert_eq!(a.dims(), e.dims(), "{name}");
                let r = max_rel(a, e);
                assert!(r < 1e-5, "case {seed} grad {name}: {r}");
            }
            // Only the weight learned (the input is data).
            let xd = x.as_tensor().detach();
            let g = loss(&conv2d(&xd, wt.as_tensor(), p, 1).unwrap())
                .backward()
                .unwrap();
            assert!(max_rel(g.get(&wt).unwrap(), g2.get(&wt).unwrap()) < 1e-5);
            assert!(g.get(&xd).is_none());
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward+backward time against candle's conv2d (printed, not asserted):
    /// `cargo test -p dmq-model --release --lib conv_grad::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing only"]
    fn forward_backward_time() {
        for (b, c, hw) in [(4usize, 64usize, 32usize), (16, 128, 16), (4, 256, 8)] {
            let x = Var::randn(0f32, 1., (b, c, hw, hw), &Device::Cpu).unwrap();
            let w = Var::randn(0f32, 0.05, (c, c, 3, 3), &Device::Cpu).unwrap();
            let time = |f: &dyn Fn() -> Tensor| {
                let t0 = std::time::Instant::now();
                for _ in 0..5 {
                    let g = f().sqr().unwrap().sum_all().unwrap().backward().unwrap();
                    assert!(g.get(&w).is_some());
                }
                t0.elapsed().as_secs_f64() / 5.0 * 1e3
            };
            let theirs = time(&|| x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap());
            let ours = time(&|| conv2d(x.as_tensor(), w.as_tensor(), 1, 1).unwrap());
            println!(
                "b{b} c{c} {hw}x{hw}: candle {theirs:.1} ms, ours {ours:.1} ms ({:.2}x)",
                theirs / ours
            );
        }
    }
}
