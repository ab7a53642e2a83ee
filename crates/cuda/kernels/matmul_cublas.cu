// The kernels around cuBLAS products (`matmul_cublas`): quantised weight tiles
// dequantised to f16, activations converted to the weight's 16-bit type, and
// the bias add after the product.

// Rows [row0, row0 + rows) of a quantised weight to f16 [rows, k], one thread
// per 32 values. Values are the reference dequantisation rounded to f16.
template <int T>
__device__ void dequant_rows(const W& w, int row0, int rows, int k, u16* out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int chunks = k / 32;
    if (t >= (long long)rows * chunks) return;
    int r = (int)(t / chunks), c = (int)(t % chunks);
    float v[32];
    decode32<T>(w, (long long)row0 + r, k, c, v);
    uint4* o = reinterpret_cast<uint4*>(out + (long long)r * k + 32 * c);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        u32 a[4];
#pragma unroll
        for (int e = 0; e < 4; e++)
            a[e] = (u32)f2h(v[8 * j + 2 * e]) | ((u32)f2h(v[8 * j + 2 * e + 1]) << 16);
        o[j] = make_uint4(a[0], a[1], a[2], a[3]);
    }
}

#define DEQUANT_ARGS const u8 *p0, const u8 *p1, const u8 *p2, const u8 *p3, int row0, int rows, int k, u16 *out
#define DEQUANT(NAME, T) \
    extern "C" __global__ void NAME(DEQUANT_ARGS) { pdl_enter(); dequant_rows<T>(W{p0, p1, p2, p3}, row0, rows, k, out); }

DEQUANT(dequant_q8_0, T_Q8_0)
DEQUANT(dequant_q4_0, T_Q4_0)
DEQUANT(dequant_q4_1, T_Q4_1)
DEQUANT(dequant_q4_k, T_Q4_K)
DEQUANT(dequant_q6_k, T_Q6_K)
DEQUANT(dequant_q5_0, T_Q5_0)
DEQUANT(dequant_q5_1, T_Q5_1)
DEQUANT(dequant_q5_k, T_Q5_K)
DEQUANT(dequant_q2_k, T_Q2_K)
DEQUANT(dequant_q3_k, T_Q3_K)

extern "C" __global__ void f32_to_f16(const float* x, u16* out, long long len) {
    pdl_enter();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) out[i] = f2h(x[i]);
}

extern "C" __global__ void f32_to_bf16(const float* x, u16* out, long long len) {
    pdl_enter();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) out[i] = f2bf(x[i]);
}

// out[i, j] += bias[j] for i < m, j < n; rows of out are ldo apart.
extern "C" __global__ void bias_add(float* out, const float* bias, int m, int n, int ldo) {
    pdl_enter();
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * n) return;
    int i = (int)(t / n), j = (int)(t % n);
    out[(long long)i * ldo + j] += bias[j];
}
