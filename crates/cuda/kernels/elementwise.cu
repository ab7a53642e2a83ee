// Element-wise ops of the forward pass.

// out[i, j] = silu(gate[i, j]) * up[i, j], gate_up rows being [gate | up].
extern "C" __global__ void swiglu(const float* gu, int m, int ffn, float* out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * ffn) return;
    long long i = t / ffn, j = t % ffn;
    float g = gu[i * 2 * ffn + j], u = gu[i * 2 * ffn + ffn + j];
    out[t] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// x[i] += y[i].
extern "C" __global__ void add(float* x, const float* y, long long len) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) x[i] += y[i];
}

// pos[0] = pos[m - 1] + 1: the next decode position, without a host round trip.
extern "C" __global__ void advance(int* pos, int m) {
    if (threadIdx.x == 0 && blockIdx.x == 0) pos[0] = pos[m - 1] + 1;
}
