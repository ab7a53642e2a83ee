// `fdot` matrix-vector products (m <= 8): f32 activations times weights
// decoded to f32 in registers, f32 products and sums. No activation rounding:
// the same arithmetic as the CPU's `fdot` (only the summation order differs).
// Every lane streams 16-byte chunks of its warp's weight row; the partial sums
// meet in a shuffle reduction. The norm prologue and the epilogues
// (common.cuh's MATVEC_ARGS) apply rms_norm.cu's, add.cu's, swiglu.cu's and
// rope_kv_store.cu's operations, so a fused product equals the separate
// kernels' result (the norm's scale but in rare ties of its f64 sum order).
//
//  * fdot_<f32|f16|bf16>_m<M>: float weights.
//  * fdot_<f32|f16|bf16>_rope_m1: float weights, decode's fused QKV product
//    (EPI_ROPE: bias, rope and the KV-cache write in the epilogue).
//  * fdot_<quant>_m<M>: quantised weights, 32 values at a time with the
//    reference dequantisation's operations (formats.cuh decode32).

// ---------------------------------------------------------------- float weights

template <int T, int M>
__device__ __forceinline__ void fma_chunk(float (&acc)[M], uint4 v, const float* x, int k, int c,
                                          const float* nw, const float (&sc)[M]) {
    if (T == T_F32) {
        float w[4] = {__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z),
                      __uint_as_float(v.w)};
#pragma unroll
        for (int m = 0; m < M; m++) {
            float4 a = ldx4<M>(x, k, m, 4 * c, nw, sc);
            acc[m] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w;
        }
    } else {
        u32 u[4] = {v.x, v.y, v.z, v.w};
        float w[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u16 lo = (u16)(u[j] & 0xffff), hi = (u16)(u[j] >> 16);
            w[2 * j] = T == T_F16 ? h2f(lo) : bf2f(lo);
            w[2 * j + 1] = T == T_F16 ? h2f(hi) : bf2f(hi);
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            float4 a = ldx4<M>(x, k, m, 8 * c, nw, sc);
            float4 b = ldx4<M>(x, k, m, 8 * c + 4, nw, sc);
            acc[m] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x +
                      w[5] * b.y + w[6] * b.z + w[7] * b.w;
        }
    }
}

// This lane's chunks c0, c0 + 32, c0 + 64, c0 + 96 of a weight row (those
// below nch; the rest are never used): four 16-byte loads in flight at once,
// so a row of k = 896 f16 values (112 chunks) costs one memory round trip,
// not the three a chunk-at-a-time tail took on lanes 16-31.
__device__ __forceinline__ void float_load(uint4 (&v)[4], const uint4* wr, int c0, int nch) {
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int c = c0 + 32 * u;
        v[u] = c < nch ? ldg_stream(wr + c) : make_uint4(0, 0, 0, 0);
    }
}

// acc += the loaded chunks' products, in chunk order (the loads' zeros for
// chunks past the row are skipped, not multiplied: 0 * inf would be NaN).
template <int T, int M>
__device__ __forceinline__ void float_fma(float (&acc)[M], const uint4 (&v)[4], int c0, int nch,
                                          int k, const float* x, const float* nw,
                                          const float (&sc)[M]) {
#pragma unroll
    for (int u = 0; u < 4; u++)
        if (c0 + 32 * u < nch) fma_chunk<T, M>(acc, v[u], x, k, c0 + 32 * u, nw, sc);
}

// One warp a row (both rows of a SwiGLU pair together, their loads in
// flight at once); each lane sums its chunks in ascending order, as a plain
// walk over the row would. The warp's first batch of weights is loaded
// before the wait on the producer kernel (weights do not depend on it).
//
// ROPE (EPI_ROPE, the fused QKV product of decode): the warp takes the pair
// of rows that rope rotates together (pair_rows), loaded and summed as
// SwiGLU's gate and up rows are, so each row's sum has the bits of the
// plain product's; rope_store_pair then adds the bias, rotates and writes
// the pair and its cache values. A template flag, not the run-time `epi`
// alone, so that the other kernels carry none of it.
template <int T, int M, bool ROPE = false>
__device__ void fdot_float(MATVEC_ARGS, const RopeKv rk = RopeKv{}) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int nr = matvec_rows(n, epi);
    const bool glu = !ROPE && epi == EPI_SWIGLU;
    const bool two = ROPE || glu;
    const int nch = k / (T == T_F32 ? 4 : 8);  // 16-byte chunks a row
    const uint4* w = reinterpret_cast<const uint4*>(p0);
    int row = blockIdx.x * warps + (threadIdx.x >> 5);
    // The warp's weight rows: row (and SwiGLU's up row row + nr), or the pair.
    int ra = row, rb = row + nr;
    if (ROPE) pair_rows(row, EPI_ROPE, nr, rk, ra, rb);
    uint4 v[4], vu[4];
    if (row < nr) {
        float_load(v, w + (long long)ra * nch, lane, nch);
        if (two) float_load(vu, w + (long long)rb * nch, lane, nch);
    }
    pdl_enter();
    float sc[M];
    if (nw) rms_scales<M>(x, k, eps, sc);
    bool preloaded = true;
    for (; row < nr; row += gridDim.x * warps) {
        if (ROPE) {
            pair_rows(row, EPI_ROPE, nr, rk, ra, rb);
        } else {
            ra = row;
            rb = row + nr;
        }
        const uint4* wr = w + (long long)ra * nch;
        const uint4* wu = w + (long long)rb * nch;
        float acc[M], up[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = up[m] = 0.0f;
        for (int c0 = lane; c0 < nch; c0 += 128) {
            if (!preloaded) {
                float_load(v, wr, c0, nch);
                if (two) float_load(vu, wu, c0, nch);
            }
            preloaded = false;
            float_fma<T, M>(acc, v, c0, nch, k, x, nw, sc);
            if (two) float_fma<T, M>(up, vu, c0, nch, k, x, nw, sc);
        }
        preloaded = false;
        if (ROPE) {
            rope_store_pair<M>(acc, up, lane, row, ra, rb, out, ldo, bias, rk);
        } else if (glu) {
            matvec_store_swiglu<M>(acc, up, lane, row, nr, out, ldo, bias);
        } else {
            matvec_store<M>(acc, lane, row, out, ldo, bias, epi);
        }
    }
}

// ---------------------------------------------------------------- quantised weights, f32 activations

template <int T, int M>
__device__ __forceinline__ void quant_row(float (&acc)[M], const W& w, int row, int k,
                                          const float* x, const float* nw, const float (&sc)[M]) {
    const int lane = threadIdx.x & 31;
    const int nch = k / 32;
    for (int c = lane; c < nch; c += 32) {
        float v[32];
        decode32<T>(w, row, k, c, v);
#pragma unroll
        for (int m = 0; m < M; m++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 32; i += 4) {
                float4 xv = ldx4<M>(x, k, m, 32 * c + i, nw, sc);
                s += v[i] * xv.x + v[i + 1] * xv.y + v[i + 2] * xv.z + v[i + 3] * xv.w;
            }
            acc[m] += s;
        }
    }
}

template <int T, int M>
__device__ void fdot_quant(MATVEC_ARGS) {
    pdl_enter();
    float sc[M];
    if (nw) rms_scales<M>(x, k, eps, sc);
    const W w{p0, p1, p2, p3};
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int nr = matvec_rows(n, epi);
    for (int row = blockIdx.x * warps + (threadIdx.x >> 5); row < nr; row += gridDim.x * warps) {
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.0f;
        quant_row<T, M>(acc, w, row, k, x, nw, sc);
        if (epi == EPI_SWIGLU) {
            float up[M];
#pragma unroll
            for (int m = 0; m < M; m++) up[m] = 0.0f;
            quant_row<T, M>(up, w, row + nr, k, x, nw, sc);
            matvec_store_swiglu<M>(acc, up, lane, row, nr, out, ldo, bias);
        } else {
            matvec_store<M>(acc, lane, row, out, ldo, bias, epi);
        }
    }
}


MATVEC_ALL_M(fdot_f32, fdot_float, T_F32)
MATVEC_ALL_M(fdot_f16, fdot_float, T_F16)
MATVEC_ALL_M(fdot_bf16, fdot_float, T_BF16)
MATVEC_ALL_M(fdot_q8_0, fdot_quant, T_Q8_0)
MATVEC_ALL_M(fdot_q4_0, fdot_quant, T_Q4_0)
MATVEC_ALL_M(fdot_q4_1, fdot_quant, T_Q4_1)
MATVEC_ALL_M(fdot_q4_k, fdot_quant, T_Q4_K)
MATVEC_ALL_M(fdot_q6_k, fdot_quant, T_Q6_K)
MATVEC_ALL_M(fdot_q5_0, fdot_quant, T_Q5_0)
MATVEC_ALL_M(fdot_q5_1, fdot_quant, T_Q5_1)
MATVEC_ALL_M(fdot_q5_k, fdot_quant, T_Q5_K)
MATVEC_ALL_M(fdot_q2_k, fdot_quant, T_Q2_K)
MATVEC_ALL_M(fdot_q3_k, fdot_quant, T_Q3_K)

// The fused QKV product of decode (EPI_ROPE) on float weights: one
// activation row; the arguments of matmul_vecdot.cu's vecdot_<t>_rope_m1
// (common.cuh's ROPE_KV_ARGS after MATVEC_ARGS).
#define FDOT_ROPE(NAME, T)                                               \
    extern "C" __global__ void NAME##_rope_m1(MATVEC_ARGS, ROPE_KV_ARGS) { \
        fdot_float<T, 1, true>(MATVEC_PASS, ROPE_KV);                     \
    }
FDOT_ROPE(fdot_f32, T_F32)
FDOT_ROPE(fdot_f16, T_F16)
FDOT_ROPE(fdot_bf16, T_BF16)
