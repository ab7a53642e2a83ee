// Causal grouped-query attention over the f32 KV cache [kv_heads, capacity, hd].
// Row i of the batch sees cache positions 0..=pos[i]; positions are read from
// device memory so that a decode step can be replayed as a graph. head_dim is
// at most 256 (each lane owns ceil(hd / 32) <= 8 output dimensions).
//
// Both kernels use the same scheme within a warp: lane j scores key t + j,
// the warp keeps an online softmax (running max, running sum), and each lane
// accumulates p * V for the dimensions it owns.

#define MAX_DPL 8  // output dimensions per lane

// Keys one decode block takes at least: short contexts are one block per head
// (no merge at all); long ones at most `splits` blocks of this many or more.
#define DECODE_CHUNK_MIN 256

// Decode (one query row): grid (n_heads, splits), 128 threads. The filled
// length L = pos[0] + 1 (read on the device, so a replayed graph sees it) is
// cut into `active` chunks of at least DECODE_CHUNK_MIN keys; blocks past
// them return at once. A block reduces its chunk to (max, sum, acc[hd]);
// with one chunk it writes the output itself, otherwise into `part`, and the
// last of the active blocks of a head to finish (counted in `counters`, which
// it resets) merges the chunks into out. At most 32 splits.
template <int HD>
__device__ __forceinline__ void attn_decode_body(const float* qkv, const float* kc,
                                                 const float* vc, const int* pos, int n_heads,
                                                 int n_kv, int hd_rt, int capacity, float scale,
                                                 float* part, unsigned* counters, float* out) {
    constexpr int DPL = HD ? (HD + 31) / 32 : MAX_DPL;
    const int hd = HD ? HD : hd_rt;
    __shared__ __align__(16) float q[256];
    __shared__ float wm[4], wl[4];
    __shared__ float wacc[4][256];
    __shared__ float sw[32];
    __shared__ float sinv;
    __shared__ bool last;
    const int h = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (n_heads / n_kv);
    const int L = min(pos[0] + 1, capacity);
    const int chunk = max((L + splits - 1) / splits, DECODE_CHUNK_MIN);
    const int active = (L + chunk - 1) / chunk;
    if (split >= active) return;
    const int t0 = split * chunk, t1 = min(L, t0 + chunk);

    for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = qkv[(long long)h * hd + d];
    __syncthreads();

    const float* kb = kc + (long long)kvh * capacity * hd;
    const float* vb = vc + (long long)kvh * capacity * hd;
    float mw = -INFINITY, lw = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    for (int base = t0 + warp * 32; base < t1; base += 128) {
        int t = base + lane;
        float s = -INFINITY;
        if (t < t1) s = dot_q_k_n<HD>(q, kb + (long long)t * hd, hd) * scale;
        float nm = fmaxf(mw, warp_max(s));
        float p = t < t1 ? expf(s - nm) : 0.0f;
        float corr = expf(mw - nm);
        lw = lw * corr + warp_sum(p);
        int n = min(32, t1 - base);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
        // Full tiles unrolled, so that the 32 rows' loads are in flight together
        // rather than one dependent latency per key.
        if (n == 32) {
#pragma unroll
            for (int j = 0; j < 32; j++) {
                float pj = __shfl_sync(FULL_MASK, p, j);
                const float* vr = vb + (long long)(base + j) * hd;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    int d = lane + 32 * i;
                    if (d < hd) acc[i] += pj * __ldg(vr + d);
                }
            }
        } else {
            for (int j = 0; j < n; j++) {
                float pj = __shfl_sync(FULL_MASK, p, j);
                const float* vr = vb + (long long)(base + j) * hd;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    int d = lane + 32 * i;
                    if (d < hd) acc[i] += pj * __ldg(vr + d);
                }
            }
        }
        mw = nm;
    }
    if (lane == 0) {
        wm[warp] = mw;
        wl[warp] = lw;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        int d = lane + 32 * i;
        if (d < hd) wacc[warp][d] = acc[i];
    }
    __syncthreads();
    // Merge the four warps; warps that saw no key have max -inf and weigh 0.
    float bm = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3]));
    float e[4];
#pragma unroll
    for (int w = 0; w < 4; w++) e[w] = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - bm);
    float bl = e[0] * wl[0] + e[1] * wl[1] + e[2] * wl[2] + e[3] * wl[3];
    if (active == 1) {
        float inv = 1.0f / bl;
        for (int d = threadIdx.x; d < hd; d += blockDim.x)
            out[(long long)h * hd + d] =
                (e[0] * wacc[0][d] + e[1] * wacc[1][d] + e[2] * wacc[2][d] + e[3] * wacc[3][d]) * inv;
        return;
    }
    const int stride = hd + 2;
    float* pp = part + ((long long)h * splits + split) * stride;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        pp[2 + d] = e[0] * wacc[0][d] + e[1] * wacc[1][d] + e[2] * wacc[2][d] + e[3] * wacc[3][d];
    if (threadIdx.x == 0) {
        pp[0] = bm;
        pp[1] = bl;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned ticket = atomicAdd(&counters[h], 1u);
        last = ticket == (unsigned)active - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Weights of the chunks from one warp (active <= splits <= 32), then
    // every thread sums its dimensions; partials are read past L1 (__ldcg),
    // since other blocks wrote them.
    const float* pb = part + (long long)h * splits * stride;
    if (warp == 0) {
        float ms = lane < active ? __ldcg(pb + lane * stride) : -INFINITY;
        float gm = warp_max(ms);
        float ew = lane < active ? expf(ms - gm) : 0.0f;
        float tot = warp_sum(lane < active ? ew * __ldcg(pb + lane * stride + 1) : 0.0f);
        sw[lane] = ew;
        if (lane == 0) sinv = 1.0f / tot;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < active; s++) o += sw[s] * __ldcg(pb + s * stride + 2 + d);
        out[(long long)h * hd + d] = o * sinv;
    }
    if (threadIdx.x == 0) counters[h] = 0;
}

extern "C" __global__ void attn_decode(const float* qkv, const float* kc, const float* vc,
                                       const int* pos, int n_heads, int n_kv, int hd,
                                       int capacity, float scale, float* part,
                                       unsigned* counters, float* out) {
    {
        // Ask L2 for this block's chunk of K and V rows before the wait for
        // the kernel that writes q and the newest row (PDL). Only a hint:
        // the length read here may be an older step's where launches
        // overlap, so the range is clamped to the cache and nothing read
        // here is used.
        const int L = min(max(pos[0] + 1, 0), capacity), splits = gridDim.y;
        const int chunk = max((L + splits - 1) / splits, DECODE_CHUNK_MIN);
        const int t0 = min(blockIdx.y * chunk, L), t1 = min(L, t0 + chunk);
        const long long kvh = blockIdx.x / max(n_heads / max(n_kv, 1), 1);
        const char* kb = reinterpret_cast<const char*>(kc + (kvh * capacity + t0) * hd);
        const char* vb = reinterpret_cast<const char*>(vc + (kvh * capacity + t0) * hd);
        const long long bytes = (long long)(t1 - t0) * hd * 4;
        for (long long o = 128LL * threadIdx.x; o < bytes; o += 128LL * blockDim.x) {
            prefetch_l2(kb + o);
            prefetch_l2(vb + o);
        }
    }
    pdl_enter();
    if (hd == 64)
        attn_decode_body<64>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out);
    else if (hd == 128)
        attn_decode_body<128>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out);
    else
        attn_decode_body<0>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out);
}

// Prefill (many query rows): grid (ceil(m / ROWS), n_heads), ROWS warps, one
// query row per warp. The block walks the keys in tiles of 32 staged in shared
// memory (K transposed and padded against bank conflicts), which its rows share.
// Dynamic shared memory: hd * 33 + 32 * hd + ROWS * hd floats.
extern "C" __global__ void attn_prefill(const float* qkv, const float* kc, const float* vc,
                                        const int* pos, int m, int width, int n_heads, int n_kv,
                                        int hd, int capacity, float scale, float* out) {
    pdl_enter();
    extern __shared__ __align__(16) float sm[];
    const int rows = blockDim.x >> 5;
    float* kt = sm;                   // [hd][33]
    float* vs = kt + hd * 33;         // [32][hd]
    float* qs = vs + 32 * hd;         // [rows][hd]
    __shared__ int lens[32];
    __shared__ int lmax;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv);
    const int i = blockIdx.x * rows + warp;
    const bool valid = i < m;
    int L = valid ? min(pos[i] + 1, capacity) : 0;
    if (lane == 0) lens[warp] = L;
    for (int d = lane; d < hd; d += 32) qs[warp * hd + d] = valid ? qkv[(long long)i * width + (long long)h * hd + d] : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        int mx = 0;
        for (int w = 0; w < rows; w++) mx = max(mx, lens[w]);
        lmax = mx;
    }
    __syncthreads();
    const int Lm = lmax;
    const float* kb = kc + (long long)kvh * capacity * hd;
    const float* vb = vc + (long long)kvh * capacity * hd;
    const float* q = qs + warp * hd;
    float mw = -INFINITY, lw = 0.0f, acc[MAX_DPL];
#pragma unroll
    for (int j = 0; j < MAX_DPL; j++) acc[j] = 0.0f;
    for (int t0 = 0; t0 < Lm; t0 += 32) {
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hd; e += blockDim.x) {
            int key = e / hd, d = e % hd;
            int t = t0 + key;
            bool in = t < Lm;
            kt[d * 33 + key] = in ? kb[(long long)t * hd + d] : 0.0f;
            vs[key * hd + d] = in ? vb[(long long)t * hd + d] : 0.0f;
        }
        __syncthreads();
        if (t0 >= L) continue;
        int t = t0 + lane;
        float s = -INFINITY;
        if (t < L) {
            float a = 0.0f;
            for (int d = 0; d < hd; d++) a += q[d] * kt[d * 33 + lane];
            s = a * scale;
        }
        float nm = fmaxf(mw, warp_max(s));
        float p = t < L ? expf(s - nm) : 0.0f;
        float corr = expf(mw - nm);
        lw = lw * corr + warp_sum(p);
        int n = min(32, L - t0);
#pragma unroll
        for (int j = 0; j < MAX_DPL; j++) acc[j] *= corr;
        for (int j = 0; j < n; j++) {
            float pj = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int c = 0; c < MAX_DPL; c++) {
                int d = lane + 32 * c;
                if (d < hd) acc[c] += pj * vs[j * hd + d];
            }
        }
        mw = nm;
    }
    if (!valid) return;
    float inv = 1.0f / lw;
    float* o = out + (long long)i * n_heads * hd + (long long)h * hd;
#pragma unroll
    for (int c = 0; c < MAX_DPL; c++) {
        int d = lane + 32 * c;
        if (d < hd) o[d] = acc[c] * inv;
    }
}
