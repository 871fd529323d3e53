// Fused per-tensor fake quantization, y = Δ·(clamp(rint(x/Δ) + z, 0, qmax) − z), for simulated
// sampling: one read and one write per element instead of the ~20 candle kernels (and their
// full-size temporaries) that the composed straight-through version needs. Every operation is an
// IEEE round-to-nearest one (division included), so the result is bit-identical to the composed
// version and to the CPU loop in fused.rs.
extern "C" __global__ void dmq_fake_quant_f32(const float *x, float *y, unsigned long long n,
                                              float delta, float zero, float qmax) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        float q = rintf(__fdiv_rn(x[i], delta)) + zero;
        q = fminf(fmaxf(q, 0.0f), qmax);
        y[i] = __fmul_rn(q - zero, delta);
    }
}
