//! The fixed 2-D sin-cos position table of DiT and PixArt patch embeddings (a non-persistent
//! buffer in diffusers, so never in a checkpoint: computed here).
//!
//! Token `k = i·W + j` (row `i`, column `j`) gets `[sincos(D/2, x_j) | sincos(D/2, y_i)]` with
//! grid coordinates `x_j = j / (W / base) / scale` (f32, as torch computes them), and
//! `sincos(n, p) = [sin(p·ω_k) | cos(p·ω_k)]`, `ω_k = 10000^(−k/(n/2))`, in f64 as diffusers does,
//! then rounded to f32.

/// `[grid_h · grid_w, dim]` row-major. `base_size` is `sample_size / patch_size`.
pub fn sincos_2d(
    dim: usize,
    grid_h: usize,
    grid_w: usize,
    base_size: usize,
    interpolation_scale: f64,
) -> Vec<f32> {
    let coords = |n: usize| -> Vec<f32> {
        let step = (n as f64 / base_size as f64) as f32;
        (0..n)
            .map(|i| i as f32 / step / interpolation_scale as f32)
            .collect()
    };
    let ys = coords(grid_h);
    let xs = coords(grid_w);
    let half = dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / (half as f64 / 2.0)))
        .collect();
    let mut out = Vec::with_capacity(grid_h * grid_w * dim);
    let push_1d = |out: &mut Vec<f32>, p: f32| {
        let p = p as f64;
        out.extend(omega.iter().map(|w| (p * w).sin() as f32));
        out.extend(omega.iter().map(|w| (p * w).cos() as f32));
    };
    for &y in &ys {
        for &x in &xs {
            push_1d(&mut out, x);
            push_1d(&mut out, y);
        }
    }
    out
}
