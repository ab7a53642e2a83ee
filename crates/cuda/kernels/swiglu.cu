// out[i, j] = silu(gate[i, j]) * up[i, j], gate_up rows being [gate | up].
// One thread per output value; the same f32 operations as the host's.
extern "C" __global__ void swiglu(const float* gu, int m, int ffn, float* out) {
    pdl_enter();
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * ffn) return;
    long long i = t / ffn, j = t % ffn;
    float g = gu[i * 2 * ffn + j], u = gu[i * 2 * ffn + ffn + j];
    out[t] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}
