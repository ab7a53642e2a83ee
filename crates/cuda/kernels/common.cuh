// Helpers shared by every kernel file. The backend prepends this text (and
// formats.cuh) to each .cu source before NVRTC compiles it, so no CUDA
// headers are needed at run time: conversions and dp4a are inline PTX.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define FULL_MASK 0xffffffffu
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Programmatic dependent launch (sm_90+). Every kernel calls this first: it
// lets the next kernel on the stream be scheduled now (its launch latency then
// overlaps this kernel), and waits until the previous kernel has finished and
// its writes are visible. Nothing before it touches global memory, so with the
// launch attribute on or off the ordering is the same as plain stream order.
// Without the attribute (or below sm_90) both instructions are no-ops.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Round to nearest even in integer arithmetic (cvt.rn.bf16.f32 needs sm_80).
__device__ __forceinline__ u16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

// Signed 8-bit four-way dot product accumulated into c.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// 16-byte read-only load that bypasses L1 allocation: weights are streamed once.
__device__ __forceinline__ uint4 ldg_stream(const void* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// Ask L2 for the 128-byte line at p (no register result, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__device__ __forceinline__ float4 ldg_f4(const float* p) {
    return __ldg(reinterpret_cast<const float4*>(p));
}

// ---------------------------------------------------------------- matrix-vector products
// Shared by matmul_fdot.cu and matmul_vecdot.cu (m <= 8 activation rows):
// out[m, n] = x[m, k] W^T (+ bias). One warp computes one output column (a
// weight row) for all m rows. Arguments: the four weight pointers (see
// formats.cuh), n rows, k columns, x [m, k], out (already offset to this
// weight's first column), the row stride of out, an optional bias [n], and
// the fusion around the product:
//  * nw (null for none): an RMS norm of x's rows with weight nw [k] and
//    epsilon eps, applied as the activations are read (rms_scales below);
//  * epi: EPI_STORE writes the product, EPI_ADD adds it to out in place (the
//    residual add), EPI_SWIGLU treats rows [0, n/2) as gate and [n/2, n) as
//    up, computes both in one warp and writes silu(gate) * up to the n/2
//    columns of out.
// split (vecdot; fdot takes 1): warps sharing one weight row, each taking
// every split-th unit of it (split-K), so that products with few rows keep
// more loads in flight; their sums meet in shared memory (split_reduce).
// Each IMPL calls pdl_enter() itself, after whatever it may do before its
// producer has finished.

#define EPI_STORE 0
#define EPI_ADD 1
#define EPI_SWIGLU 2
// EPI_ROPE (the fused QKV product of decode, one activation row; the
// `_rope_m1` kernels only): rows in the pairs that rotary embedding moves
// together (rope_slot), one warp a pair; the pair is rotated, written, and
// its K or V values stored in the cache (RopeKv, rope_store_pair below).
#define EPI_ROPE 3

#define MATVEC_ARGS                                                                      \
    const u8 *p0, const u8 *p1, const u8 *p2, const u8 *p3, int n, int k, const float *x, \
        float *out, int ldo, const float *bias, const float *nw, float eps, int epi, int split

// Pass MATVEC_ARGS on to another function.
#define MATVEC_PASS p0, p1, p2, p3, n, k, x, out, ldo, bias, nw, eps, epi, split

// The RMS norm's scale of each of the M rows of x [M, k]: 1 / sqrt(mean(x^2)
// + eps), as rms_norm.cu computes it (squares summed in f64, the sum and the
// scale rounded the same way); only the order of the f64 sum differs, so the
// scale matches the separate kernel's to the last bit but in rare ties.
// Every thread of the block calls it, after pdl_enter; it synchronises.
template <int M>
__device__ __forceinline__ void rms_scales(const float* x, int k, float eps, float (&scale)[M]) {
    __shared__ double part[M][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int m = 0; m < M; m++) {
        // Four loads in flight before the first sum (the same order of sums).
        double ss = 0.0;
        for (int j0 = threadIdx.x; j0 < k; j0 += 4 * blockDim.x) {
            float f[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = j0 + i * blockDim.x;
                f[i] = j < k ? x[(long long)m * k + j] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (j0 + i * blockDim.x < k) {
                    double v = (double)f[i];
                    ss += v * v;
                }
            }
        }
        ss = warp_sum_d(ss);
        if (lane == 0) part[m][warp] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; m++) {
        double t = 0.0;
        for (int w = 0; w < nwarps; w++) t += part[m][w];
        scale[m] = (float)(1.0 / sqrt(t / (double)k + (double)eps));
    }
}

// x[j] of a row normed as rms_norm.cu writes it: (x * scale) * w, each rounded.
__device__ __forceinline__ float normed(float x, float scale, float w) {
    return __fmul_rn(__fmul_rn(x, scale), w);
}

// Four activations x[j..j+4] of row m, normed when nw is set.
template <int M>
__device__ __forceinline__ float4 ldx4(const float* x, int k, int m, int j, const float* nw,
                                       const float (&scale)[M]) {
    float4 a = ldg_f4(x + (long long)m * k + j);
    if (nw) {
        float4 w = ldg_f4(nw + j);
        a = make_float4(normed(a.x, scale[m], w.x), normed(a.y, scale[m], w.y),
                        normed(a.z, scale[m], w.z), normed(a.w, scale[m], w.w));
    }
    return a;
}

// Reduce a warp's partial sums and write (lane 0) per the epilogue: the
// product plus bias, stored or added to out (EPI_STORE, EPI_ADD). The add is
// add.cu's: out + (dot + bias).
template <int M>
__device__ __forceinline__ void matvec_store(float (&acc)[M], int lane, int row, float* out, int ldo,
                                           const float* bias, int epi) {
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
    if (lane == 0) {
        float b = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int m = 0; m < M; m++) {
            float* o = out + (long long)m * ldo + row;
            float v = acc[m] + b;
            *o = epi == EPI_ADD ? *o + v : v;
        }
    }
}

// matvec_store with the bias b and (EPI_ADD) the value of out the product is
// added to already loaded: the same operations.
template <int M>
__device__ __forceinline__ void matvec_store_first(float (&acc)[M], int lane, int row, float* out,
                                                 int ldo, float b, const float (&res)[M], int epi) {
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[m] + b;
            out[(long long)m * ldo + row] = epi == EPI_ADD ? res[m] + v : v;
        }
    }
}

// EPI_SWIGLU: gate row `row` and up row `row + nh` (nh = n / 2) reduced, and
// silu(gate) * up written to column `row`, with swiglu.cu's operations.
template <int M>
__device__ __forceinline__ void matvec_store_swiglu(float (&g)[M], float (&u)[M], int lane, int row,
                                                  int nh, float* out, int ldo, const float* bias) {
#pragma unroll
    for (int m = 0; m < M; m++) {
        g[m] = warp_sum(g[m]);
        u[m] = warp_sum(u[m]);
    }
    if (lane == 0) {
        float bg = bias ? bias[row] : 0.0f, bu = bias ? bias[row + nh] : 0.0f;
#pragma unroll
        for (int m = 0; m < M; m++) {
            float gv = g[m] + bg, uv = u[m] + bu;
            out[(long long)m * ldo + row] = __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), uv);
        }
    }
}

// Split-K: the partial sums of the S warps of a row group (warps g*S ..
// g*S + S - 1 of the block) added, in warp order, into lane 0 of the group's
// first warp; every other lane and warp ends with zeros, so matvec_store's
// reduction then yields the total. Every thread of the block calls it.
template <int M>
__device__ __forceinline__ void split_reduce(float (&g)[M], float (&u)[M], bool two, int S) {
    __shared__ float red[2][32][M];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int m = 0; m < M; m++) {
        g[m] = warp_sum(g[m]);
        if (two) u[m] = warp_sum(u[m]);
    }
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            red[0][warp][m] = g[m];
            red[1][warp][m] = u[m];
        }
    }
    __syncthreads();
    const bool first = warp % S == 0 && lane == 0;
#pragma unroll
    for (int m = 0; m < M; m++) {
        float a = 0.0f, b = 0.0f;
        if (first)
            for (int s = 0; s < S; s++) {
                a += red[0][warp + s][m];
                b += red[1][warp + s][m];
            }
        g[m] = a;
        u[m] = b;
    }
    __syncthreads();
}

// Rows a matrix-vector kernel loops over: n, or the n/2 gate rows for
// EPI_SWIGLU, or the n/2 pairs for EPI_ROPE.
__device__ __forceinline__ int matvec_rows(int n, int epi) {
    return epi == EPI_SWIGLU || epi == EPI_ROPE ? n / 2 : n;
}


#define MATVEC_M(NAME, IMPL, T, M) \
    extern "C" __global__ void NAME##_m##M(MATVEC_ARGS) { IMPL<T, M>(MATVEC_PASS); }

#define MATVEC_ALL_M(NAME, IMPL, T) \
    MATVEC_M(NAME, IMPL, T, 1)      \
    MATVEC_M(NAME, IMPL, T, 2)      \
    MATVEC_M(NAME, IMPL, T, 3)      \
    MATVEC_M(NAME, IMPL, T, 4)      \
    MATVEC_M(NAME, IMPL, T, 5)      \
    MATVEC_M(NAME, IMPL, T, 6)      \
    MATVEC_M(NAME, IMPL, T, 7)      \
    MATVEC_M(NAME, IMPL, T, 8)

// ---------------------------------------------------------------- rotary embedding

// Slot j (of hd / 2) of head h of a fused QKV row: the pair of values (i0, i1)
// it moves. A slot below dim / 2 of a Q or K head is a rotated pair, (2j,
// 2j + 1) in style 0 (normal), (j, j + dim/2) in style 1 (neox): true. The
// other slots (the unrotated tail [dim, hd) of Q and K heads, and V heads)
// are two neighbours: false. Shared by rope_kv_store.cu and the fused QKV
// products (EPI_ROPE below), so that they move the same values.
__device__ __forceinline__ bool rope_slot(int h, int j, int n_heads, int n_kv, int dim, int style,
                                          int& i0, int& i1) {
    const int half = dim / 2;
    if (h < n_heads + n_kv && j < half) {
        i0 = style == 1 ? j : 2 * j;
        i1 = style == 1 ? j + half : 2 * j + 1;
        return true;
    }
    i0 = h < n_heads + n_kv ? dim + 2 * (j - half) : 2 * j;
    i1 = i0 + 1;
    return false;
}

// Rotate the pair (x0, x1) of slot j at position p with rope.cu's operations
// (inverse frequency in f64, rounded, divided by the optional factor).
__device__ __forceinline__ void rope_rotate(float& x0, float& x1, int j, int p, int dim,
                                            float theta, float pos_scale, const float* factors) {
    float pf = __fmul_rn((float)p, pos_scale);
    float f = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)dim));
    if (factors) f = __fdiv_rn(f, factors[j]);
    float a = __fmul_rn(pf, f);
    float c = cosf(a), s = sinf(a);
    float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    float y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    x0 = y0;
    x1 = y1;
}

// ---------------------------------------------------------------- the fused QKV product (EPI_ROPE)
// Shared by the decode QKV products of matmul_vecdot.cu and matmul_fdot.cu:
// a warp computes the two rows that rope moves together, then rotates and
// stores them (rope_store_pair), so both kernels move the values
// rope_kv_store.cu makes of the unfused product.

// EPI_ROPE's arguments: positions [m], the layer's f32 caches [n_kv,
// capacity, hd], the rotary parameters (rope_kv_store.cu's).
struct RopeKv {
    const int* pos;
    float* kc;
    float* vc;
    const float* factors;
    int capacity, n_heads, n_kv, hd, dim, style;
    float theta, pos_scale;
};

// The two weight rows of a warp's pair p: SwiGLU's gate row p and up row
// p + nr; EPI_ROPE's pair of slot j of head h (rope_slot); else row p alone.
__device__ __forceinline__ void pair_rows(int p, int epi, int nr, const RopeKv& rk, int& ra,
                                          int& rb) {
    ra = p;
    rb = p + nr;
    if (epi == EPI_ROPE) {
        const int slots = rk.hd / 2, h = p / slots, j = p % slots;
        int i0, i1;
        rope_slot(h, j, rk.n_heads, rk.n_kv, rk.dim, rk.style, i0, i1);
        ra = h * rk.hd + i0;
        rb = h * rk.hd + i1;
    }
}

// EPI_ROPE's store (lane 0 after the reductions): the pair's product plus
// bias, as matvec_store writes it, rotated where the slot rotates (the
// values rope_kv_store.cu makes of it), written to out and, for K and V
// heads at positions inside the cache, to the cache.
template <int M>
__device__ __forceinline__ void rope_store_pair(float (&a)[M], float (&b)[M], int lane, int p,
                                                int ra, int rb, float* out, int ldo,
                                                const float* bias, const RopeKv& rk) {
#pragma unroll
    for (int m = 0; m < M; m++) {
        a[m] = warp_sum(a[m]);
        b[m] = warp_sum(b[m]);
    }
    if (lane != 0) return;
    const int slots = rk.hd / 2, h = p / slots, j = p % slots;
    int i0, i1;
    const bool rot = rope_slot(h, j, rk.n_heads, rk.n_kv, rk.dim, rk.style, i0, i1);
    const float ba = bias ? bias[ra] : 0.0f, bb = bias ? bias[rb] : 0.0f;
#pragma unroll
    for (int m = 0; m < M; m++) {
        float x0 = a[m] + ba, x1 = b[m] + bb;
        const int pos = rk.pos[m];
        if (rot) rope_rotate(x0, x1, j, pos, rk.dim, rk.theta, rk.pos_scale, rk.factors);
        out[(long long)m * ldo + ra] = x0;
        out[(long long)m * ldo + rb] = x1;
        if (h >= rk.n_heads && pos >= 0 && pos < rk.capacity) {
            const bool is_v = h >= rk.n_heads + rk.n_kv;
            const int kvh = h - rk.n_heads - (is_v ? rk.n_kv : 0);
            float* c = (is_v ? rk.vc : rk.kc) + ((long long)kvh * rk.capacity + pos) * rk.hd;
            c[i0] = x0;
            c[i1] = x1;
        }
    }
}

// An EPI_ROPE kernel's arguments after MATVEC_ARGS: the positions, then
// rope_kv_store.cu's arguments from n_heads on, in its order (the launchers
// build them in one place, ops/matmul_fdot.rs's rope_args).
#define ROPE_KV_ARGS                                                                        \
    const int *pos, int n_heads, int n_kv, int hd, int dim, float theta, float pos_scale, \
        const float *factors, int style, float *kc, float *vc, int capacity

// ROPE_KV_ARGS gathered into a RopeKv.
#define ROPE_KV \
    RopeKv { pos, kc, vc, factors, capacity, n_heads, n_kv, hd, dim, style, theta, pos_scale }

// ---------------------------------------------------------------- attention

// q . k over hd f32 values (attention.cu, paged_attention.cu).
__device__ __forceinline__ float dot_q_k(const float* q, const float* kr, int hd) {
    float s = 0.0f;
    if ((hd & 3) == 0) {
        for (int d = 0; d < hd; d += 4) {
            float4 a = *reinterpret_cast<const float4*>(q + d);
            float4 b = *reinterpret_cast<const float4*>(kr + d);
            s += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
    } else {
        for (int d = 0; d < hd; d++) s += q[d] * kr[d];
    }
    return s;
}

// q . k over HD dimensions known at compile time: every load of the row is
// issued before the first sum (0: the run-time `hd`).
// SM: the row is in shared memory (plain loads; __ldg is for global memory).
template <int HD, bool SM = false>
__device__ __forceinline__ float dot_q_k_n(const float* q, const float* kr, int hd) {
    if constexpr (HD == 0) {
        return dot_q_k(q, kr, hd);
    } else {
        float4 b[HD / 4];
#pragma unroll
        for (int i = 0; i < HD / 4; i++) {
            const float4* p = reinterpret_cast<const float4*>(kr) + i;
            if constexpr (SM) b[i] = *p;
            else b[i] = __ldg(p);
        }
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int i = 0; i < HD / 4; i += 2) {
            float4 a = *reinterpret_cast<const float4*>(q + 4 * i);
            s0 += a.x * b[i].x + a.y * b[i].y + a.z * b[i].z + a.w * b[i].w;
            float4 c = *reinterpret_cast<const float4*>(q + 4 * i + 4);
            s1 += c.x * b[i + 1].x + c.y * b[i + 1].y + c.z * b[i + 1].z + c.w * b[i + 1].w;
        }
        return s0 + s1;
    }
}

