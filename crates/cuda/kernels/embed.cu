// Token embedding: out[i, :] = dequant(table row ids[i]), for every weight type.

// out[i, :] = row ids[i] of a block-quantised table (k % 32 == 0). One thread
// per 32 values. Ids outside the table give zeros (the host checks ids it writes;
// sampled ids are always inside).
template <int T>
__device__ void embed_quant(const W& w, int rows, int k, const int* ids, int m, float* out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int chunks = k / 32;
    if (t >= (long long)m * chunks) return;
    int i = (int)(t / chunks), c = (int)(t % chunks);
    int id = ids[i];
    float v[32];
    if (id >= 0 && id < rows) {
        decode32<T>(w, id, k, c, v);
    } else {
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = 0.0f;
    }
    float4* o = reinterpret_cast<float4*>(out + (long long)i * k + 32 * c);
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
}

// Float tables, one thread per value (any k).
template <int T>
__device__ void embed_float(const W& w, int rows, int k, const int* ids, int m, float* out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * k) return;
    int i = (int)(t / k), j = (int)(t % k);
    int id = ids[i];
    float v = 0.0f;
    if (id >= 0 && id < rows) {
        long long e = (long long)id * k + j;
        if (T == T_F32) v = reinterpret_cast<const float*>(w.p0)[e];
        else if (T == T_F16) v = h2f(reinterpret_cast<const u16*>(w.p0)[e]);
        else v = bf2f(reinterpret_cast<const u16*>(w.p0)[e]);
    }
    out[t] = v;
}

#define EMBED_ARGS const u8 *p0, const u8 *p1, const u8 *p2, const u8 *p3, int rows, int k, const int *ids, int m, float *out
#define EMBED(NAME, IMPL, T) \
    extern "C" __global__ void NAME(EMBED_ARGS) { pdl_enter(); IMPL<T>(W{p0, p1, p2, p3}, rows, k, ids, m, out); }

EMBED(embed_f32, embed_float, T_F32)
EMBED(embed_f16, embed_float, T_F16)
EMBED(embed_bf16, embed_float, T_BF16)
EMBED(embed_q8_0, embed_quant, T_Q8_0)
EMBED(embed_q4_0, embed_quant, T_Q4_0)
EMBED(embed_q4_1, embed_quant, T_Q4_1)
EMBED(embed_q4_k, embed_quant, T_Q4_K)
EMBED(embed_q6_k, embed_quant, T_Q6_K)
EMBED(embed_q5_0, embed_quant, T_Q5_0)
EMBED(embed_q5_1, embed_quant, T_Q5_1)
EMBED(embed_q5_k, embed_quant, T_Q5_K)
EMBED(embed_q2_k, embed_quant, T_Q2_K)
EMBED(embed_q3_k, embed_quant, T_Q3_K)
