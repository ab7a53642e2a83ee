// The paged KV cache of `metallic serve` (see metallic::backend::PagedLayout):
// each layer's K and V are [n_blocks, n_kv, block_size, hd], shared by every
// sequence; row i of a step reads its sequence's block table at
// tables[i * stride ..][.. stride] and its position at pos[i] (both uploaded by
// the scheduler each step, so a step's launches take no host values that vary).
// The cache holds f32 or f16 (suffix _f32 / _f16); arithmetic is f32 either way.
//
// Attention is one block per (row, head) of NW warps (8, or 4 for comparison;
// fixed per process: METALLIC_CUDA_PAGED_WARPS): warp w scores keys w*32 + 32 NW j +
// lane with an online softmax, then the warps merge in a fixed order. The order of every sum depends only on the row's own length, so
// a row's output is the same whatever else shares the step (batch invariance;
// `--deterministic` relies on it) and whatever chunk of a prompt it came in.

#define PA_MAX_DPL 8  // output dimensions per lane: head_dim <= 256

__device__ __forceinline__ float pa_load(const float* p) { return __ldg(p); }
__device__ __forceinline__ float pa_load(const u16* p) { return h2f(__ldg(p)); }
__device__ __forceinline__ void pa_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void pa_store(u16* p, float v) { *p = f2h(v); }

// q . k over hd dimensions of an f16 key, four at a time where hd allows (rows
// start at a multiple of hd elements, so 4 | hd keeps the vector loads aligned).
__device__ __forceinline__ float pa_dot(const float* q, const u16* k, int hd) {
    float s = 0.0f;
    if ((hd & 3) == 0) {
        for (int d = 0; d < hd; d += 4) {
            float4 a = *reinterpret_cast<const float4*>(q + d);
            uint2 b = __ldg(reinterpret_cast<const uint2*>(k + d));
            s += a.x * h2f((u16)(b.x & 0xffff)) + a.y * h2f((u16)(b.x >> 16)) +
                 a.z * h2f((u16)(b.y & 0xffff)) + a.w * h2f((u16)(b.y >> 16));
        }
    } else {
        for (int d = 0; d < hd; d++) s += q[d] * h2f(__ldg(k + d));
    }
    return s;
}

// q . k over HD dimensions known at compile time: every load of the key row
// is issued before the first sum (HD 0: the run-time `hd`). f32 keys take
// common.cuh's dot_q_k_n, f16 keys the same scheme converting each half.
template <int HD>
__device__ __forceinline__ float pa_dot_n(const float* q, const float* k, int hd) {
    return dot_q_k_n<HD>(q, k, hd);
}

template <int HD>
__device__ __forceinline__ float pa_dot_n(const float* q, const u16* k, int hd) {
    if constexpr (HD == 0) {
        return pa_dot(q, k, hd);
    } else {
        uint4 b[HD / 8];
#pragma unroll
        for (int i = 0; i < HD / 8; i++) b[i] = __ldg(reinterpret_cast<const uint4*>(k) + i);
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            float4 a = *reinterpret_cast<const float4*>(q + 8 * i);
            float4 c = *reinterpret_cast<const float4*>(q + 8 * i + 4);
            s0 += a.x * h2f((u16)(b[i].x & 0xffff)) + a.y * h2f((u16)(b[i].x >> 16)) +
                  a.z * h2f((u16)(b[i].y & 0xffff)) + a.w * h2f((u16)(b[i].y >> 16));
            s1 += c.x * h2f((u16)(b[i].z & 0xffff)) + c.y * h2f((u16)(b[i].z >> 16)) +
                  c.z * h2f((u16)(b[i].w & 0xffff)) + c.w * h2f((u16)(b[i].w >> 16));
        }
        return s0 + s1;
    }
}

// One thread per cached value of K (and of V): row i's K and V heads to
// (block tables[i][pos[i] / bs], slot pos[i] % bs). Rows whose position or
// block is outside the cache are skipped (the host checks them first).
template <typename T>
__device__ __forceinline__ void paged_kv_store_body(const float* qkv, T* kc, T* vc,
                                                    const int* tables, const int* pos, int m,
                                                    int width, int n_heads, int n_kv, int hd,
                                                    int bs, int n_blocks, int stride) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_row = (long long)n_kv * hd;
    if (t >= (long long)m * per_row) return;
    int i = (int)(t / per_row);
    int r = (int)(t % per_row);
    int h = r / hd, d = r % hd;
    int p = pos[i];
    if (p < 0 || p >= stride * bs) return;
    int b = tables[(long long)i * stride + p / bs];
    if (b < 0 || b >= n_blocks) return;
    const float* row = qkv + (long long)i * width;
    long long dst = (((long long)b * n_kv + h) * bs + p % bs) * hd + d;
    pa_store(kc + dst, row[(long long)(n_heads + h) * hd + d]);
    pa_store(vc + dst, row[(long long)(n_heads + n_kv + h) * hd + d]);
}

extern "C" __global__ void paged_kv_store_f32(const float* qkv, float* kc, float* vc,
                                              const int* tables, const int* pos, int m, int width,
                                              int n_heads, int n_kv, int hd, int bs, int n_blocks,
                                              int stride) {
    pdl_enter();
    paged_kv_store_body(qkv, kc, vc, tables, pos, m, width, n_heads, n_kv, hd, bs, n_blocks, stride);
}

extern "C" __global__ void paged_kv_store_f16(const float* qkv, u16* kc, u16* vc,
                                              const int* tables, const int* pos, int m, int width,
                                              int n_heads, int n_kv, int hd, int bs, int n_blocks,
                                              int stride) {
    pdl_enter();
    paged_kv_store_body(qkv, kc, vc, tables, pos, m, width, n_heads, n_kv, hd, bs, n_blocks, stride);
}

// Grid (m, n_heads), NW * 32 threads. out[i, h * hd ..] = softmax(q K^T
// scale) V over positions 0..=pos[i] of row i's sequence. A key whose block
// is outside the cache weighs nothing (the host rejects such tables first).
// HD: head_dim known at compile time (64, 128), 0 for any other (run time).
template <int NW, int HD, typename T>
__device__ __forceinline__ void paged_attn_body(const float* qkv, const T* kc, const T* vc,
                                                const int* tables, const int* pos, int width,
                                                int n_heads, int n_kv, int hd_rt, int bs,
                                                int n_blocks, int stride, float scale,
                                                float* out) {
    constexpr int DPL = HD ? (HD + 31) / 32 : PA_MAX_DPL;
    const int hd = HD ? HD : hd_rt;
    __shared__ __align__(16) float q[256];
    __shared__ float wm[NW], wl[NW];
    __shared__ float wacc[NW][256];
    const int i = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (n_heads / n_kv);
    const int L = max(0, min(pos[i] + 1, stride * bs));
    const int* table = tables + (long long)i * stride;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        q[d] = qkv[(long long)i * width + (long long)h * hd + d];
    __syncthreads();

    float mw = -INFINITY, lw = 0.0f, acc[DPL];
#pragma unroll
    for (int c = 0; c < DPL; c++) acc[c] = 0.0f;
    for (int base = warp * 32; base < L; base += NW * 32) {
        const int t = base + lane;
        float s = -INFINITY;
        long long off = -1;
        if (t < L) {
            int b = table[t / bs];
            if (b >= 0 && b < n_blocks) {
                off = (((long long)b * n_kv + kvh) * bs + t % bs) * hd;
                s = pa_dot_n<HD>(q, kc + off, hd) * scale;
            }
        }
        const float nm = fmaxf(mw, warp_max(s));
        // A tile whose keys all fall outside the cache keeps nm = -inf.
        const float p = off >= 0 ? expf(s - nm) : 0.0f;
        const float corr = mw == -INFINITY ? 0.0f : expf(mw - nm);
        lw = lw * corr + warp_sum(p);
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[c] *= corr;
        const int n = min(32, L - base);
        if (n == 32) {
            // A full tile unrolled: the 32 value rows' loads are in flight
            // together rather than one dependent latency per key.
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const float pj = __shfl_sync(FULL_MASK, p, j);
                const long long oj = __shfl_sync(FULL_MASK, off, j);
                if (oj < 0) continue;
                const T* vr = vc + oj;
#pragma unroll
                for (int c = 0; c < DPL; c++) {
                    const int d = lane + 32 * c;
                    if (d < hd) acc[c] += pj * pa_load(vr + d);
                }
            }
        } else {
            for (int j = 0; j < n; j++) {
                const float pj = __shfl_sync(FULL_MASK, p, j);
                const long long oj = __shfl_sync(FULL_MASK, off, j);
                if (oj < 0) continue;
                const T* vr = vc + oj;
#pragma unroll
                for (int c = 0; c < DPL; c++) {
                    const int d = lane + 32 * c;
                    if (d < hd) acc[c] += pj * pa_load(vr + d);
                }
            }
        }
        if (nm != -INFINITY) mw = nm;
    }
    if (lane == 0) {
        wm[warp] = mw;
        wl[warp] = lw;
    }
#pragma unroll
    for (int c = 0; c < DPL; c++) {
        const int d = lane + 32 * c;
        if (d < hd) wacc[warp][d] = acc[c];
    }
    __syncthreads();
    // Merge the warps in a fixed order; a warp that saw no key weighs 0.
    float bm = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; w++) bm = fmaxf(bm, wm[w]);
    float e[NW], bl = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; w++) {
        e[w] = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - bm);
        bl += e[w] * wl[w];
    }
    const float inv = bl > 0.0f ? 1.0f / bl : 0.0f;
    float* o = out + (long long)i * n_heads * hd + (long long)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; w++) a += e[w] * wacc[w][d];
        o[d] = a * inv;
    }
}

// The entry points: cache of f32 or f16 (suffix), NW warps a block (w4, w8).
#define PAGED_ATTN(NAME, T, NW)                                                                    \
    extern "C" __global__ void NAME(const float* qkv, const T* kc, const T* vc, const int* tables, \
                                    const int* pos, int width, int n_heads, int n_kv, int hd,      \
                                    int bs, int n_blocks, int stride, float scale, float* out) {   \
        pdl_enter();                                                                               \
        if (hd == 64)                                                                              \
            paged_attn_body<NW, 64>(qkv, kc, vc, tables, pos, width, n_heads, n_kv, hd, bs,        \
                                    n_blocks, stride, scale, out);                                 \
        else if (hd == 128)                                                                        \
            paged_attn_body<NW, 128>(qkv, kc, vc, tables, pos, width, n_heads, n_kv, hd, bs,       \
                                     n_blocks, stride, scale, out);                                \
        else                                                                                       \
            paged_attn_body<NW, 0>(qkv, kc, vc, tables, pos, width, n_heads, n_kv, hd, bs,         \
                                   n_blocks, stride, scale, out);                                  \
    }

PAGED_ATTN(paged_attn_f32_w4, float, 4)
PAGED_ATTN(paged_attn_f16_w4, u16, 4)
PAGED_ATTN(paged_attn_f32_w8, float, 8)
PAGED_ATTN(paged_attn_f16_w8, u16, 8)
