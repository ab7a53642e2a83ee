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

// Read t[0..len) once with 16-byte loads over a grid-stride loop: the device's
// streaming-read rate, the floor `metallic probe` compares matmuls with. The
// XOR of everything is written back only in a case the data decides, so the
// compiler must keep every load; the probe's buffer is scratch either way.
extern "C" __global__ void stream_read(int* t, long long len) {
    long long n4 = len / 4;
    const int4* v = reinterpret_cast<const int4*>(t);
    long long stride = (long long)gridDim.x * blockDim.x;
    int acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        int4 x = __ldcs(v + i);
        acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    for (long long i = n4 * 4 + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        acc ^= t[i];
    if (acc == 0x13579bdf) t[0] = acc;
}
