//! Multiply-add rate of one integer layer against candle's f32 convolution of the same shape:
//! `cargo run --release -p dmq-exec --example layer_speed [batch]`. For the peak-rate discussion
//! in docs/results/int-exec-cpu.md.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmq_exec::{ActQuant, Geometry, IntLayer, Isa, PartWeight};

fn time<T>(mut f: impl FnMut() -> T) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        f();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    println!("batch {batch}; threads {}", rayon::current_num_threads());
    let only: Option<usize> = std::env::args().nth(2).and_then(|s| s.parse().ok());
    for (case, (cin, cout, res, k, bits)) in [
        (128, 128, 32, 3, 8),
        (128, 128, 32, 3, 4),
        (256, 256, 16, 3, 8),
        (256, 256, 8, 3, 8),
        (256, 256, 16, 1, 8),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != case) {
            continue;
        }
        let taps = k * k;
        let codes: Vec<u8> = (0..cout * cin * taps).map(|i| (i * 7 % 15) as u8).collect();
        let parts = vec![PartWeight {
            scale: vec![0.01; cout],
            zero_point: vec![7; cout],
        }];
        let g = Geometry::Conv {
            kernel: k,
            stride: 1,
            padding: k / 2,
        };
        let layer = IntLayer::new(
            "bench",
            g,
            &codes,
            bits,
            cout,
            cin,
            &[(0, cin, 0, 0)],
            parts,
            None,
        )
        .unwrap();
        let n = batch * cin * res * res;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 97) as f32 - 40.0) * 0.01)
            .collect();
        let dims = [batch, cin, res, res];
        let q = ActQuant::new(0.01, 40, 8).unwrap();
        let macs = (batch * cout * cin * taps * res * res) as f64;
        let xt = Tensor::from_vec(x.clone(), &dims, &Device::Cpu).unwrap();
        let wt = Tensor::ones((cout, cin, k, k), candle_core::DType::F32, &Device::Cpu).unwrap();
        let tf = time(|| xt.conv2d(&wt, k / 2, 1, 1, 1).unwrap());
        print!(
            "{cin}->{cout} {k}x{k} at {res}x{res}, W{bits}: f32 candle {:.1} ms ({:.1} GMAC/s)",
            tf * 1e3,
            macs / tf / 1e9
        );
        for isa in Isa::available().into_iter().rev().take(2) {
            let t = time(|| layer.forward(isa, &x, &dims, &[q]).unwrap());
            print!("; {isa} {:.1} ms ({:.1} GMAC/s)", t * 1e3, macs / t / 1e9);
        }
        let segs = layer.segments().to_vec();
        let tq = time(|| {
            dmq_exec::quantize::quantize_input(
                Isa::Avx512Vnni,
                &x,
                dmq_exec::quantize::InputLayout::Nchw {
                    batch,
                    height: res,
                    width: res,
                },
                k / 2,
                &segs,
                &[q],
                layer.weight.padded_channels,
            )
            .unwrap()
        });
        println!("; quantize alone {:.1} ms", tq * 1e3);
    }
}
