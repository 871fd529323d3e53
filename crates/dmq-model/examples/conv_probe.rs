use candle_core::{Device, Tensor, DType};
use std::time::Instant;

fn im2col_conv(x: &Tensor, w: &Tensor, pad: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (co, _, k, _) = w.dims4()?;
    let xp = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    let xp = xp.permute((0, 2, 3, 1))?.contiguous()?; // NHWC padded
    let mut cols = Vec::new();
    for kh in 0..k { for kw in 0..k { cols.push(xp.narrow(1, kh, h)?.narrow(2, kw, wd)?); } }
    let col = Tensor::cat(&cols, 3)?.reshape((b * h * wd, k * k * c))?; // [BHW, kh kw C]
    let wm = w.permute((0, 2, 3, 1))?.reshape((co, k * k * c))?;
    let y = col.matmul(&wm.t()?)?; // [BHW, Co]
    y.reshape((b, h, wd, co))?.permute((0, 3, 1, 2))?.contiguous()
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(b, c, co, s) in &[(64usize, 64usize, 64usize, 32usize), (64, 32, 32, 32), (1, 64, 64, 32), (64, 128, 128, 8)] {
        let x = Tensor::randn(0f32, 1., (b, c, s, s), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (co, c, 3, 3), &dev)?;
        let _ = x.conv2d(&w, 1, 1, 1, 1)?;
        let t0 = Instant::now(); let mut y1 = x.conv2d(&w, 1, 1, 1, 1)?; for _ in 0..2 { y1 = x.conv2d(&w, 1, 1, 1, 1)?; } let a = t0.elapsed().as_secs_f64() / 3.0;
        let _ = im2col_conv(&x, &w, 1)?;
        let t0 = Instant::now(); let mut y2 = im2col_conv(&x, &w, 1)?; for _ in 0..2 { y2 = im2col_conv(&x, &w, 1)?; } let bt = t0.elapsed().as_secs_f64() / 3.0;
        let d = (y1 - y2)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let gmac = (b * s * s * c * co * 9) as f64 / 1e9;
        println!("b{b} c{c}->{co} {s}x{s}: candle {:.1} ms ({:.1} GMAC/s), im2col {:.1} ms ({:.1} GMAC/s), maxdiff {d:.2e}", a*1e3, gmac/a, bt*1e3, gmac/bt);
    }
    Ok(())
}
