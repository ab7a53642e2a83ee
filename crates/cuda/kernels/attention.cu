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
// The decode block's own shared arrays, declared once in the kernel for
// every instance of the body.
struct DecodeShared {
    __align__(16) float q[256];
    float wm[4], wl[4];
    float wacc[4][256];
    float sw[32];
    float sinv;
    bool last;
};

// Keys and values come from the cache (SM false) or from the block's copy
// of its chunk in shared memory (SM true: rows t0..t1 at ks / vs, K rows
// padded to hd + 4 floats so that the lanes' 16-byte loads of 32 different
// rows fall in different banks); the arithmetic is the same either way.
template <int HD, bool SM>
__device__ __forceinline__ void attn_decode_body(const float* qkv, const float* kc,
                                                 const float* vc, const int* pos, int n_heads,
                                                 int n_kv, int hd_rt, int capacity, float scale,
                                                 float* part, unsigned* counters, float* out,
                                                 const float* ks, const float* vs,
                                                 DecodeShared& sh) {
    constexpr int DPL = HD ? (HD + 31) / 32 : MAX_DPL;
    const int hd = HD ? HD : hd_rt;
    float* q = sh.q;
    float* wm = sh.wm;
    float* wl = sh.wl;
    auto& wacc = sh.wacc;
    float* sw = sh.sw;
    float& sinv = sh.sinv;
    bool& last = sh.last;
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

    // Row t of K is at kb + (t - tb) * kst, of V at vb + (t - tb) * vst.
    const float* kb = SM ? ks : kc + (long long)kvh * capacity * hd;
    const float* vb = SM ? vs : vc + (long long)kvh * capacity * hd;
    const int kst = SM ? hd + 4 : hd, vst = hd, tb = SM ? t0 : 0;
    float mw = -INFINITY, lw = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    for (int base = t0 + warp * 32; base < t1; base += 128) {
        int t = base + lane;
        float s = -INFINITY;
        if (t < t1) {
            const float* kr = kb + (long long)(t - tb) * kst;
            s = dot_q_k_n<HD, SM>(q, kr, hd) * scale;
        }
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
                const float* vr = vb + (long long)(base + j - tb) * vst;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    int d = lane + 32 * i;
                    if (d < hd) acc[i] += pj * (SM ? vr[d] : __ldg(vr + d));
                }
            }
        } else {
            for (int j = 0; j < n; j++) {
                float pj = __shfl_sync(FULL_MASK, p, j);
                const float* vr = vb + (long long)(base + j - tb) * vst;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    int d = lane + 32 * i;
                    if (d < hd) acc[i] += pj * (SM ? vr[d] : __ldg(vr + d));
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

// Chunk bounds of decode block `split` for a filled length L (the body's).
__device__ __forceinline__ void decode_chunk(int L, int split, int splits, int& t0, int& t1,
                                             int& active) {
    const int chunk = max((L + splits - 1) / splits, DECODE_CHUNK_MIN);
    active = (L + chunk - 1) / chunk;
    t0 = min(split * chunk, L);
    t1 = min(L, t0 + chunk);
}

// 16 bytes global -> shared without the registers (sm_80 on; a plain copy
// before).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
#else
    *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// Copy rows r0..r1 of a KV head's K and V (16-byte pieces, hd % 4 == 0)
// into the block's shared chunk that starts at row t0.
__device__ __forceinline__ void stage_rows(const float* kb, const float* vb, int hd, int t0,
                                           int r0, int r1, float* ks, float* vs, bool async) {
    const int q4 = hd / 4;  // 16-byte pieces a row
    const int pieces = (r1 - r0) * q4;
    for (int i = threadIdx.x; i < pieces; i += blockDim.x) {
        const int t = r0 + i / q4, d = 4 * (i % q4);
        float* kd = ks + (t - t0) * (hd + 4) + d;
        float* vd = vs + (t - t0) * hd + d;
        const float* kg = kb + (long long)t * hd + d;
        const float* vg = vb + (long long)t * hd + d;
        if (async) {
            cp_async16(kd, kg);
            cp_async16(vd, vg);
        } else {
            *reinterpret_cast<float4*>(kd) = *reinterpret_cast<const float4*>(kg);
            *reinterpret_cast<float4*>(vd) = *reinterpret_cast<const float4*>(vg);
        }
    }
}

// sm_keys > 0 (the launcher sizes the dynamic shared memory for that many
// rows of K and V, and only where hd % 4 == 0 and the caches are 16-byte
// aligned): a block whose chunk has at most sm_keys rows copies them to
// shared memory, the rows older than the newest ones before the wait for
// the kernel that writes q and the newest row (PDL): those were written by
// earlier steps' kernels, long finished. The length read before the wait
// may be an older step's where launches overlap, so only rows below both
// lengths' newest row are taken from the early copy; the rest are copied
// after the wait. Otherwise the chunk's rows are only asked of L2 early.
extern "C" __global__ void attn_decode(const float* qkv, const float* kc, const float* vc,
                                       const int* pos, int n_heads, int n_kv, int hd,
                                       int capacity, float scale, float* part,
                                       unsigned* counters, float* out, int sm_keys) {
    extern __shared__ __align__(16) float sm[];
    __shared__ DecodeShared sh;
    const int splits = gridDim.y, split = blockIdx.y;
    const long long kvh = blockIdx.x / max(n_heads / max(n_kv, 1), 1);
    const float* kb = kc + kvh * capacity * hd;
    const float* vb = vc + kvh * capacity * hd;
    float* ks = sm;
    float* vs = sm + sm_keys * (hd + 4);
    int early = 0, e0 = 0;  // rows e0..early were copied before the wait
    {
        const int L = min(max(pos[0] + 1, 0), capacity);
        int t0, t1, active;
        decode_chunk(L, split, splits, t0, t1, active);
        if (sm_keys > 0 && t1 - t0 <= sm_keys) {
            e0 = t0;
            early = max(t0, min(t1, L - 1));
            stage_rows(kb, vb, hd, t0, t0, early, ks, vs, true);
        } else {
            const char* kp = reinterpret_cast<const char*>(kb + (long long)t0 * hd);
            const char* vp = reinterpret_cast<const char*>(vb + (long long)t0 * hd);
            const long long bytes = (long long)(t1 - t0) * hd * 4;
            for (long long o = 128LL * threadIdx.x; o < bytes; o += 128LL * blockDim.x) {
                prefetch_l2(kp + o);
                prefetch_l2(vp + o);
            }
        }
    }
    pdl_enter();
    const int L = min(pos[0] + 1, capacity);
    int t0, t1, active;
    decode_chunk(L, split, splits, t0, t1, active);
    const bool use_sm = sm_keys > 0 && t1 - t0 <= sm_keys;
    if (use_sm) {
        // The early rows count only where the chunk starts where it did
        // before the wait and below the newest row of this step.
        const int from = e0 == t0 ? max(t0, min(early, L - 1)) : t0;
        stage_rows(kb, vb, hd, t0, from, t1, ks, vs, false);
        cp_async_wait_all();
        __syncthreads();
    } else {
        // Copies issued before the wait for a chunk that has since moved
        // (an older length) are not used, but must land before the block
        // ends.
        cp_async_wait_all();
    }
    if (hd == 64) {
        if (use_sm)
            attn_decode_body<64, true>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
        else
            attn_decode_body<64, false>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
    } else if (hd == 128) {
        if (use_sm)
            attn_decode_body<128, true>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
        else
            attn_decode_body<128, false>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
    } else if (use_sm) {
        attn_decode_body<0, true>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
    } else {
        attn_decode_body<0, false>(qkv, kc, vc, pos, n_heads, n_kv, hd, capacity, scale, part, counters, out, ks, vs, sh);
    }
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

// ---------------------------------------------------------------- prefill on tensor cores

// Prefill attention with f16 tensor-core products (mma.sync m16n8k16, f32
// accumulators), for head dimensions 64 and 128 on sm_80 and newer: grid
// (ceil(m / 64), n_heads), 4 warps, 16 query rows a warp. The block walks the
// keys in tiles of 64 staged in shared memory as f16 (K as [key][d], V
// transposed as [d][key], each row padded by 8 halves so that the fragment
// loads hit 32 different banks), and keeps flash attention's online softmax
// in f32: S = Q K^T (Q, K rounded to f16), p = exp(S * scale - max) rounded to
// f16 for P V. Same scheme and rounding as llama.cpp's f16 flash attention;
// the f32 kernel above stays for other head dimensions, older GPUs and the
// exact path (CudaBackend::set_attention_f16).
#define MMA_ROWS 64
#define MMA_KEYS 64

__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// d += a * b: a 16x16 f16 (row), b 16x8 f16 (col), d 16x8 f32.
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

template <int HD>
__device__ __forceinline__ void attn_prefill_mma_body(const float* qkv, const float* kc,
                                                      const float* vc, const int* pos, int m,
                                                      int width, int n_heads, int n_kv,
                                                      int capacity, float scale, float* out,
                                                      u16* smem) {
    constexpr int KLD = HD + 8;        // halves per K row in shared memory
    constexpr int VLD = MMA_KEYS + 8;  // halves per transposed V row
    constexpr int KS = HD / 16;        // k-steps of S = Q K^T
    constexpr int DT = HD / 8;         // 8-wide output tiles
    u16* ks = smem;                    // [MMA_KEYS][KLD]
    u16* vt = smem + MMA_KEYS * KLD;   // [HD][VLD]
    __shared__ int lmax_w[4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;  // fragment row group, thread in group
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv);
    const int r0 = blockIdx.x * MMA_ROWS + warp * 16;  // the warp's first query row
    const int ra = r0 + g, rb = r0 + g + 8;              // the thread's two rows
    const int la = ra < m ? min(pos[ra] + 1, capacity) : 0;
    const int lb = rb < m ? min(pos[rb] + 1, capacity) : 0;
    {
        int l = max(la, lb);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) l = max(l, __shfl_xor_sync(FULL_MASK, l, o));
        if (lane == 0) lmax_w[warp] = l;
    }
    // Q fragments (rows ra, rb; d = 16 s + 2 t (+1), + 8), f16.
    u32 qa[KS][4];
    {
        const float* qra = qkv + (long long)ra * width + (long long)h * HD;
        const float* qrb = qkv + (long long)rb * width + (long long)h * HD;
#pragma unroll
        for (int s = 0; s < KS; s++) {
            const int d = 16 * s + 2 * t;
            float2 a0 = ra < m ? *reinterpret_cast<const float2*>(qra + d) : make_float2(0.f, 0.f);
            float2 b0 = rb < m ? *reinterpret_cast<const float2*>(qrb + d) : make_float2(0.f, 0.f);
            float2 a1 = ra < m ? *reinterpret_cast<const float2*>(qra + d + 8) : make_float2(0.f, 0.f);
            float2 b1 = rb < m ? *reinterpret_cast<const float2*>(qrb + d + 8) : make_float2(0.f, 0.f);
            qa[s][0] = pack_h2(a0.x, a0.y);
            qa[s][1] = pack_h2(b0.x, b0.y);
            qa[s][2] = pack_h2(a1.x, a1.y);
            qa[s][3] = pack_h2(b1.x, b1.y);
        }
    }
    __syncthreads();
    const int lmax = max(max(lmax_w[0], lmax_w[1]), max(lmax_w[2], lmax_w[3]));
    const float* kb = kc + (long long)kvh * capacity * HD;
    const float* vb = vc + (long long)kvh * capacity * HD;
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, sa = 0.0f, sb = 0.0f;  // running max and sum, rows ra, rb
    for (int k0 = 0; k0 < lmax; k0 += MMA_KEYS) {
        __syncthreads();  // the previous tile is no longer read
        // Stage keys k0..k0+63 (zeros past lmax: their p is 0, and 0 * V must not meet garbage).
        for (int e = threadIdx.x; e < MMA_KEYS * HD / 4; e += blockDim.x) {
            const int key = e / (HD / 4), d = 4 * (e % (HD / 4));
            float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
            if (k0 + key < lmax) {
                kv = *reinterpret_cast<const float4*>(kb + (long long)(k0 + key) * HD + d);
                vv = *reinterpret_cast<const float4*>(vb + (long long)(k0 + key) * HD + d);
            }
            *reinterpret_cast<uint2*>(ks + key * KLD + d) = make_uint2(pack_h2(kv.x, kv.y), pack_h2(kv.z, kv.w));
            vt[(d + 0) * VLD + key] = f2h(vv.x);
            vt[(d + 1) * VLD + key] = f2h(vv.y);
            vt[(d + 2) * VLD + key] = f2h(vv.z);
            vt[(d + 3) * VLD + key] = f2h(vv.w);
        }
        __syncthreads();
        if (k0 >= lmax_w[warp]) continue;  // no row of this warp sees these keys (warp-uniform)
        // S = Q K^T: 8 tiles of 8 keys.
        float sc[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
            const u16* kr = ks + (8 * j + g) * KLD + 2 * t;
#pragma unroll
            for (int s = 0; s < KS; s++) {
                u32 b0 = *reinterpret_cast<const u32*>(kr + 16 * s);
                u32 b1 = *reinterpret_cast<const u32*>(kr + 16 * s + 8);
                mma_16816(sc[j], qa[s], b0, b1);
            }
        }
        // Causal mask, scale, online softmax (a row's four threads share its max).
        float xa = -INFINITY, xb = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int key = k0 + 8 * j + 2 * t + c;
                sc[j][c] = key < la ? sc[j][c] * scale : -INFINITY;
                sc[j][2 + c] = key < lb ? sc[j][2 + c] * scale : -INFINITY;
                xa = fmaxf(xa, sc[j][c]);
                xb = fmaxf(xb, sc[j][2 + c]);
            }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            xa = fmaxf(xa, __shfl_xor_sync(FULL_MASK, xa, off));
            xb = fmaxf(xb, __shfl_xor_sync(FULL_MASK, xb, off));
        }
        const float na = fmaxf(ma, xa), nb = fmaxf(mb, xb);
        // A row with no key yet keeps max -inf: its p and correction are 0 and 1.
        const float ca = na == -INFINITY ? 1.0f : expf(ma - na);
        const float cb = nb == -INFINITY ? 1.0f : expf(mb - nb);
        sa *= ca;
        sb *= cb;
        u32 pa[4][4];  // P as A fragments, 16 keys each
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float p0 = na == -INFINITY ? 0.0f : expf(sc[j][0] - na);
            float p1 = na == -INFINITY ? 0.0f : expf(sc[j][1] - na);
            float p2 = nb == -INFINITY ? 0.0f : expf(sc[j][2] - nb);
            float p3 = nb == -INFINITY ? 0.0f : expf(sc[j][3] - nb);
            sa += p0 + p1;
            sb += p2 + p3;
            pa[j / 2][(j & 1) * 2 + 0] = pack_h2(p0, p1);
            pa[j / 2][(j & 1) * 2 + 1] = pack_h2(p2, p3);
        }
        ma = na;
        mb = nb;
#pragma unroll
        for (int j = 0; j < DT; j++) {
            o[j][0] *= ca;
            o[j][1] *= ca;
            o[j][2] *= cb;
            o[j][3] *= cb;
        }
        // O += P V over 4 steps of 16 keys.
#pragma unroll
        for (int s = 0; s < 4; s++) {
#pragma unroll
            for (int j = 0; j < DT; j++) {
                const u16* vr = vt + (8 * j + g) * VLD + 16 * s + 2 * t;
                u32 b0 = *reinterpret_cast<const u32*>(vr);
                u32 b1 = *reinterpret_cast<const u32*>(vr + 8);
                mma_16816(o[j], pa[s], b0, b1);
            }
        }
    }
    // A row's sum is spread over its four threads.
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        sa += __shfl_xor_sync(FULL_MASK, sa, off);
        sb += __shfl_xor_sync(FULL_MASK, sb, off);
    }
    const long long ld = (long long)n_heads * HD;
    if (ra < m && la > 0) {
        const float inv = 1.0f / sa;
        float* orow = out + (long long)ra * ld + (long long)h * HD + 2 * t;
#pragma unroll
        for (int j = 0; j < DT; j++)
            *reinterpret_cast<float2*>(orow + 8 * j) = make_float2(o[j][0] * inv, o[j][1] * inv);
    }
    if (rb < m && lb > 0) {
        const float inv = 1.0f / sb;
        float* orow = out + (long long)rb * ld + (long long)h * HD + 2 * t;
#pragma unroll
        for (int j = 0; j < DT; j++)
            *reinterpret_cast<float2*>(orow + 8 * j) = make_float2(o[j][2] * inv, o[j][3] * inv);
    }
}

// Dynamic shared memory: none (the tiles are static, 36 KB). hd is 64 or
// 128; the launcher keeps other shapes, and GPUs before sm_80 (no
// m16n8k16 f16 mma), on attn_prefill.
extern "C" __global__ void __launch_bounds__(128) attn_prefill_mma(
    const float* qkv, const float* kc, const float* vc, const int* pos, int m, int width,
    int n_heads, int n_kv, int hd, int capacity, float scale, float* out) {
    pdl_enter();
#if __CUDA_ARCH__ >= 800
    // One buffer for both head dimensions (the larger's K and V^T tiles), so
    // that the two instantiations do not each reserve their own.
    __shared__ __align__(16) u16 smem[MMA_KEYS * (128 + 8) + 128 * (MMA_KEYS + 8)];
    if (hd == 64)
        attn_prefill_mma_body<64>(qkv, kc, vc, pos, m, width, n_heads, n_kv, capacity, scale, out, smem);
    else if (hd == 128)
        attn_prefill_mma_body<128>(qkv, kc, vc, pos, m, width, n_heads, n_kv, capacity, scale, out, smem);
#endif
}
