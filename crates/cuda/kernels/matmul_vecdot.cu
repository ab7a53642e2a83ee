// `vecdot` matrix-vector products (m <= 8) for quantised weights: activations
// rounded to 8 bits per 32 values, integer dot products against the weights'
// own quants, one float multiply per block. The same arithmetic as the CPU's
// `vecdot` (ggml's Q8 activation scheme). Float weights take f32 activations:
// the launcher runs the `fdot` kernels for them.
//
// The activations are quantised to int8 per 32 values (scale d and the sums
// of the quants of each 16-value half; rounding as ggml's quantize_row_q8_1:
// d = amax / 127, q = round(x / d)) into shared memory, then the inner loop
// is dp4a. Two ways, with identical results: vecdot_<t>_m<M> quantises the
// f32 activations in every block; vecdotpre_<t>_m<M> copies what one
// quantize_act launch made before it. Before it waits for the kernel that
// writes x (programmatic dependent launch), each warp asks L2 for its first
// weight row, so weight traffic overlaps the previous kernel.
//
// The in-block quantisation also takes the fusion of common.cuh's
// MATVEC_ARGS: the RMS norm applied before rounding (the same quants as the
// separate norm's output gives), and the residual-add and SwiGLU epilogues.

// ---------------------------------------------------------------- quantised weights, dp4a

// Per 32-value group of the quantised activations: d, d * sum(q), and the
// integer sums of the quants of each 16-value half.
struct XGroup {
    float d;
    float s;
    int s0;
    int s1;
};

// Quantise x[m, k] once per product, into the layout the kernels copy to
// shared memory: int8 quants [m][k], then XGroup [m][k/32]. One warp per
// 32-value group. Rounding as ggml's quantize_row_q8_1: d = amax / 127,
// q = round(x / d).
extern "C" __global__ void quantize_act(const float* x, int m, int k, u8* out) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    const int g = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int groups = m * (k / 32);
    if (g >= groups) return;
    i8* xq = reinterpret_cast<i8*>(out);
    XGroup* xg = reinterpret_cast<XGroup*>(out + (long long)m * k);
    float v = x[(long long)g * 32 + lane];
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q = (int)roundf(v * id);
    xq[(long long)g * 32 + lane] = (i8)q;
    int s0 = warp_sum_i(lane < 16 ? q : 0);
    int s1 = warp_sum_i(lane < 16 ? 0 : q);
    if (lane == 0) xg[g] = XGroup{d, d * (float)(s0 + s1), s0, s1};
}

__device__ __forceinline__ int dot16(uint4 w, uint4 a, int c = 0) {
    c = dp4a((int)w.x, (int)a.x, c);
    c = dp4a((int)w.y, (int)a.y, c);
    c = dp4a((int)w.z, (int)a.z, c);
    return dp4a((int)w.w, (int)a.w, c);
}

__device__ __forceinline__ uint4 lds16(const i8* p) { return *reinterpret_cast<const uint4*>(p); }

__device__ __forceinline__ uint4 nib_lo(uint4 v) {
    return make_uint4(v.x & 0x0F0F0F0F, v.y & 0x0F0F0F0F, v.z & 0x0F0F0F0F, v.w & 0x0F0F0F0F);
}
__device__ __forceinline__ uint4 nib_hi(uint4 v) {
    return make_uint4((v.x >> 4) & 0x0F0F0F0F, (v.y >> 4) & 0x0F0F0F0F, (v.z >> 4) & 0x0F0F0F0F,
                      (v.w >> 4) & 0x0F0F0F0F);
}

// Bits 4i..4i+3 of a block's fifth-bit word (Q5_0, Q5_1) moved to bit 4 of
// bytes 0..3: OR-ed into four nibbles, they make four 5-bit quants.
__device__ __forceinline__ u32 fifth_bits(u32 qh, int i) {
    u32 v = qh >> (4 * i);
    return ((v << 4) & 0x00000010u) | ((v << 11) & 0x00001000u) | ((v << 18) & 0x00100000u) |
           ((v << 25) & 0x10000000u);
}
__device__ __forceinline__ uint4 with_fifth(uint4 nib, u32 qh16) {
    return make_uint4(nib.x | fifth_bits(qh16, 0), nib.y | fifth_bits(qh16, 1),
                      nib.z | fifth_bits(qh16, 2), nib.w | fifth_bits(qh16, 3));
}
// Bit s of each of 16 bytes (Q5_K's qh, s < 8) moved to bit 4 of that byte.
__device__ __forceinline__ uint4 fifth_k(uint4 qh, int s) {
    return make_uint4(((qh.x >> s) & 0x01010101u) << 4, ((qh.y >> s) & 0x01010101u) << 4,
                      ((qh.z >> s) & 0x01010101u) << 4, ((qh.w >> s) & 0x01010101u) << 4);
}
__device__ __forceinline__ uint4 or4(uint4 a, uint4 b) {
    return make_uint4(a.x | b.x, a.y | b.y, a.z | b.z, a.w | b.w);
}

// Units of work per row: 16-byte chunks for Q8_0, Q4_K, Q5_K; blocks for
// Q4_0/Q4_1/Q5_0/Q5_1; 64-value slices for Q6_K.
template <int T>
__device__ __forceinline__ int units_per_row(int k) {
    return T == T_Q8_0 ? k / 16 : T == T_Q6_K ? k / 64 : k / 32;
}

// The one-block types (Q8_0's 16-byte chunks, Q4_0/Q4_1/Q5_0/Q5_1 blocks):
// a unit's weight bits, loaded apart from their use so that a warp can hold
// its first units in registers before it waits for its activations.
template <int T>
__device__ __forceinline__ constexpr bool unit_is_raw() {
    return T == T_Q8_0 || T == T_Q4_0 || T == T_Q4_1 || T == T_Q5_0 || T == T_Q5_1;
}

// v: 16 bytes of quants; a: the block's f16 scale (or Q4_1/Q5_1's scale and
// minimum); b: Q5's fifth bits.
struct Raw {
    uint4 v;
    u32 a;
    u32 b;
};

template <int T>
__device__ __forceinline__ Raw q_raw(const W& w, long long row, int k, int u) {
    const int kg = k / 32;
    Raw r;
    r.b = 0;
    if (T == T_Q8_0) {
        r.v = ldg_stream(w.p0 + row * k + 16 * u);
        r.a = __ldg(reinterpret_cast<const u16*>(w.p1) + row * kg + u / 2);
    } else {
        r.v = ldg_stream(w.p0 + row * (k / 2) + 16 * u);
        if (T == T_Q4_0 || T == T_Q5_0)
            r.a = __ldg(reinterpret_cast<const u16*>(w.p1) + row * kg + u);
        else
            r.a = __ldg(reinterpret_cast<const u32*>(w.p1) + row * kg + u);
        if (T == T_Q5_0 || T == T_Q5_1) r.b = __ldg(reinterpret_cast<const u32*>(w.p2) + row * kg + u);
    }
    return r;
}

template <int T, int M>
__device__ __forceinline__ void q_dot(float (&acc)[M], const Raw& r, int k, int u, const i8* xq,
                                      const XGroup* xg) {
    const int kg = k / 32;
    if (T == T_Q8_0) {
        float dw = h2f((u16)r.a);
#pragma unroll
        for (int m = 0; m < M; m++) {
            int s = dot16(r.v, lds16(xq + m * k + 16 * u));
            acc[m] += dw * xg[m * kg + u / 2].d * (float)s;
        }
    } else if (unit_is_raw<T>()) {
        // Q4_0/Q4_1 blocks: x = d (q - 8) or d q + m. Q5_0/Q5_1: the same
        // nibbles with the fifth bit of element j at bit j of the block's qh
        // word; x = d (q - 16) or d q + m.
        uint4 lo = nib_lo(r.v), hi = nib_hi(r.v);
        if (T == T_Q5_0 || T == T_Q5_1) {
            lo = with_fifth(lo, r.b & 0xffff);
            hi = with_fifth(hi, r.b >> 16);
        }
        constexpr bool has_min = T == T_Q4_1 || T == T_Q5_1;
        constexpr int offset = T == T_Q5_0 ? 16 : 8;
        float dw = h2f((u16)(r.a & 0xffff)), mw = has_min ? h2f((u16)(r.a >> 16)) : 0.0f;
#pragma unroll
        for (int m = 0; m < M; m++) {
            const i8* a = xq + m * k + 32 * u;
            int s = dot16(hi, lds16(a + 16), dot16(lo, lds16(a)));
            XGroup g = xg[m * kg + u];
            if (!has_min)
                acc[m] += dw * g.d * (float)(s - offset * (g.s0 + g.s1));
            else
                acc[m] += dw * g.d * (float)s + mw * g.s;
        }
    }
}

template <int T, int M>
__device__ __forceinline__ void q_unit(float (&acc)[M], const W& w, long long row, int k, int u,
                                       const i8* xq, const XGroup* xg) {
    const int kg = k / 32;
    if constexpr (unit_is_raw<T>()) {
        q_dot<T, M>(acc, q_raw<T>(w, row, k, u), k, u, xq, xg);
    } else if (T == T_Q4_K) {
        long long sb = row * (k / 256) + u / 8;
        int j64 = (u % 8) / 2, h = u % 2;
        uint4 v = ldg_stream(w.p0 + sb * 128 + j64 * 32 + 16 * h);
        uint4 hd = __ldg(reinterpret_cast<const uint4*>(w.p1 + sb * 16));
        float d = h2f((u16)(hd.x & 0xffff)), dmin = h2f((u16)(hd.x >> 16));
        int sca, ma, scb, mb;
        scale_min_k4_w(2 * j64, hd.y, hd.z, hd.w, sca, ma);
        scale_min_k4_w(2 * j64 + 1, hd.y, hd.z, hd.w, scb, mb);
        uint4 lo = nib_lo(v), hi = nib_hi(v);
        int ga = (u / 8) * 8 + 2 * j64;  // activation group of the low nibbles
#pragma unroll
        for (int m = 0; m < M; m++) {
            int sa = dot16(lo, lds16(xq + m * k + ga * 32 + 16 * h));
            int sbv = dot16(hi, lds16(xq + m * k + (ga + 1) * 32 + 16 * h));
            XGroup xa = xg[m * kg + ga], xb = xg[m * kg + ga + 1];
            int xsa = h ? xa.s1 : xa.s0, xsb = h ? xb.s1 : xb.s0;
            acc[m] += d * (xa.d * (float)(sca * sa) + xb.d * (float)(scb * sbv)) -
                      dmin * (xa.d * (float)(ma * xsa) + xb.d * (float)(mb * xsb));
        }
    } else if (T == T_Q6_K) {
        long long sb = row * (k / 256) + u / 4;
        int nh = (u % 4) / 2, t = u % 2;
        const u8* ql = w.p0 + sb * 128 + 64 * nh + 16 * t;
        uint4 l0 = ldg_stream(ql), l1 = ldg_stream(ql + 32);
        uint4 qh = ldg_stream(w.p1 + sb * 64 + 32 * nh + 16 * t);
        float d = h2f(__ldg(reinterpret_cast<const u16*>(w.p3) + sb));
        const i8* sc = reinterpret_cast<const i8*>(w.p2) + sb * 16 + 8 * nh + t;
        int s0 = sc[0], s1 = sc[2], s2 = sc[4], s3 = sc[6];
        uint4 q[4];
        q[0] = make_uint4((l0.x & 0x0F0F0F0F) | ((qh.x & 0x03030303) << 4),
                          (l0.y & 0x0F0F0F0F) | ((qh.y & 0x03030303) << 4),
                          (l0.z & 0x0F0F0F0F) | ((qh.z & 0x03030303) << 4),
                          (l0.w & 0x0F0F0F0F) | ((qh.w & 0x03030303) << 4));
        q[1] = make_uint4((l1.x & 0x0F0F0F0F) | (((qh.x >> 2) & 0x03030303) << 4),
                          (l1.y & 0x0F0F0F0F) | (((qh.y >> 2) & 0x03030303) << 4),
                          (l1.z & 0x0F0F0F0F) | (((qh.z >> 2) & 0x03030303) << 4),
                          (l1.w & 0x0F0F0F0F) | (((qh.w >> 2) & 0x03030303) << 4));
        q[2] = make_uint4(((l0.x >> 4) & 0x0F0F0F0F) | (((qh.x >> 4) & 0x03030303) << 4),
                          ((l0.y >> 4) & 0x0F0F0F0F) | (((qh.y >> 4) & 0x03030303) << 4),
                          ((l0.z >> 4) & 0x0F0F0F0F) | (((qh.z >> 4) & 0x03030303) << 4),
                          ((l0.w >> 4) & 0x0F0F0F0F) | (((qh.w >> 4) & 0x03030303) << 4));
        q[3] = make_uint4(((l1.x >> 4) & 0x0F0F0F0F) | (((qh.x >> 6) & 0x03030303) << 4),
                          ((l1.y >> 4) & 0x0F0F0F0F) | (((qh.y >> 6) & 0x03030303) << 4),
                          ((l1.z >> 4) & 0x0F0F0F0F) | (((qh.z >> 6) & 0x03030303) << 4),
                          ((l1.w >> 4) & 0x0F0F0F0F) | (((qh.w >> 6) & 0x03030303) << 4));
        int scs[4] = {s0, s1, s2, s3};
        int g0 = (u / 4) * 8 + 4 * nh;  // activation group of set 0
#pragma unroll
        for (int m = 0; m < M; m++) {
            float a = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                XGroup g = xg[m * kg + g0 + i];
                int s = dot16(q[i], lds16(xq + m * k + (g0 + i) * 32 + 16 * t));
                int xs = t ? g.s1 : g.s0;
                a += g.d * (float)(scs[i] * (s - 32 * xs));
            }
            acc[m] += d * a;
        }
    } else if (T == T_Q5_K) {
        // Q4_K's unit with the fifth bits: qh[l] (p2) holds bit j for value l
        // of 32-value group j of the super-block.
        long long sb = row * (k / 256) + u / 8;
        int j64 = (u % 8) / 2, h = u % 2;
        uint4 v = ldg_stream(w.p0 + sb * 128 + j64 * 32 + 16 * h);
        uint4 qh = __ldg(reinterpret_cast<const uint4*>(w.p2 + sb * 32 + 16 * h));
        uint4 hd = __ldg(reinterpret_cast<const uint4*>(w.p1 + sb * 16));
        float d = h2f((u16)(hd.x & 0xffff)), dmin = h2f((u16)(hd.x >> 16));
        int sca, ma, scb, mb;
        scale_min_k4_w(2 * j64, hd.y, hd.z, hd.w, sca, ma);
        scale_min_k4_w(2 * j64 + 1, hd.y, hd.z, hd.w, scb, mb);
        uint4 lo = or4(nib_lo(v), fifth_k(qh, 2 * j64));
        uint4 hi = or4(nib_hi(v), fifth_k(qh, 2 * j64 + 1));
        int ga = (u / 8) * 8 + 2 * j64;  // activation group of the low nibbles
#pragma unroll
        for (int m = 0; m < M; m++) {
            int sa = dot16(lo, lds16(xq + m * k + ga * 32 + 16 * h));
            int sbv = dot16(hi, lds16(xq + m * k + (ga + 1) * 32 + 16 * h));
            XGroup xa = xg[m * kg + ga], xb = xg[m * kg + ga + 1];
            int xsa = h ? xa.s1 : xa.s0, xsb = h ? xb.s1 : xb.s0;
            acc[m] += d * (xa.d * (float)(sca * sa) + xb.d * (float)(scb * sbv)) -
                      dmin * (xa.d * (float)(ma * xsa) + xb.d * (float)(mb * xsb));
        }
    }
}

// Quantise x[m, k] (f32) into shared memory, with the same operations as
// quantize_act: each thread takes 8 values, 4 lanes make a 32-value group.
// With nw set, the values are first normed as rms_norm.cu does (scale per
// row from rms_scales), so the quants equal those of the separate norm's output.
// nw0: the norm weights of the thread's first chunk, loaded before the wait.
template <int M>
__device__ __forceinline__ void quantize_block(const float* x, int k, i8* xq, XGroup* xg,
                                               const float* nw, const float (&sc)[M],
                                               const float4 (&nw0)[2]) {
    const int chunks = M * k / 8;  // a multiple of 4: k % 32 == 0
    for (int base = 0; base < chunks; base += blockDim.x) {
        const int c = base + threadIdx.x;
        const bool ok = c < chunks;  // uniform within a group of 4 lanes
        float v[8];
        if (ok) {
            float4 a = ldg_f4(x + 8LL * c), b = ldg_f4(x + 8LL * c + 4);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
            if (nw) {
                const int row = (int)(8LL * c / k), j = (int)(8LL * c - (long long)row * k);
                float s = sc[0];
#pragma unroll
                for (int m = 1; m < M; m++) s = row == m ? sc[m] : s;
                float4 wa = base == 0 ? nw0[0] : ldg_f4(nw + j);
                float4 wb = base == 0 ? nw0[1] : ldg_f4(nw + j + 4);
                v[0] = normed(v[0], s, wa.x); v[1] = normed(v[1], s, wa.y);
                v[2] = normed(v[2], s, wa.z); v[3] = normed(v[3], s, wa.w);
                v[4] = normed(v[4], s, wb.x); v[5] = normed(v[5], s, wb.y);
                v[6] = normed(v[6], s, wb.z); v[7] = normed(v[7], s, wb.w);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = 0.0f;
        }
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
        amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, 2));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        u32 lo = 0, hi = 0;
        int s = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int q = (int)roundf(v[j] * id);
            s += q;
            if (j < 4) lo |= ((u32)q & 0xFFu) << (8 * j);
            else hi |= ((u32)q & 0xFFu) << (8 * (j - 4));
        }
        // Lanes 0, 1 of a group hold its first 16 values, lanes 2, 3 the rest.
        int half = s + __shfl_xor_sync(FULL_MASK, s, 1);
        int other = __shfl_xor_sync(FULL_MASK, half, 2);
        if (ok) {
            *reinterpret_cast<uint2*>(xq + 8LL * c) = make_uint2(lo, hi);
            if ((c & 3) == 0) xg[c >> 2] = XGroup{d, d * (float)(half + other), half, other};
        }
    }
}

// PRE: `x` holds the activations already quantised by quantize_act (copied
// to shared memory); else `x` is f32 and each block quantises it itself,
// normed first when nw is set (PRE takes no norm: the launcher never asks).
// EPI_SWIGLU: each warp walks its gate row and its up row together.
//
// Before the wait for the kernel that writes x (programmatic dependent
// launch), everything that does not depend on it is loaded: for the one-block
// types the first RAW units of the warp's first row (RAW / 2 each of the gate
// and up rows) go to registers, the rest of the row is asked of L2; the
// thread's first chunk of the norm weights and the first row's bias too. What
// is left after the wait is the activations' round trip, two barriers and
// the arithmetic, the same arithmetic in the same order as without the
// preload (a lane's units in ascending order), so the results do not change.
// RAW (0, 1, 2 or 4): the units a lane preloads (the launcher picks the
// fewest that hold the lane's share, as registers limit the blocks an SM
// keeps); 0 for none.
template <int T, int M, bool PRE, int RAW>
__device__ void vecdot_quant(MATVEC_ARGS, const RopeKv rk = RopeKv{}) {
    extern __shared__ __align__(16) u8 smem[];
    i8* xq = reinterpret_cast<i8*>(smem);
    XGroup* xg = reinterpret_cast<XGroup*>(smem + M * k);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int nr = matvec_rows(n, epi);
    const W w{p0, p1, p2, p3};
    const int nu = units_per_row<T>(k);
    // `split` warps share a row: a row group per `split` warps, each warp
    // taking every split-th run of 32 units. The loop bound is uniform over
    // the block (split_reduce synchronises).
    const int S = split, rpb = warps / S, sub = warp % S;
    const bool two = epi == EPI_SWIGLU || epi == EPI_ROPE;
    const int row0 = blockIdx.x * rpb + warp / S;
    int ra0, rb0;  // the weight rows of the first row (pair)
    pair_rows(row0, epi, nr, rk, ra0, rb0);
    const int u0 = lane + 32 * sub;  // the lane's first unit; then every 32 S-th
    constexpr int per_row = RAW > 1 ? RAW / 2 : 1;  // SwiGLU: of the gate row, then the up row
    // Whether this kernel preloads: a one-block type, RAW units, and for a
    // pair of rows at least one of each (the launcher never asks for RAW 1 there).
    const bool raw = unit_is_raw<T>() && RAW > 0 && (!two || RAW > 1);
    Raw pre[RAW > 0 ? RAW : 1];
    float4 nw0[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
    float b0 = 0.0f;  // the first row's bias (lane 0 of its first warp)
    {
        // Weights, norm weights and bias are never written: safe to read
        // before the wait.
        const long long rb = T == T_Q8_0 ? k : k / 2;  // bytes of plane 0 per row
        if (row0 < nr) {
            if (raw) {
#pragma unroll
                for (int i = 0; i < RAW; i++) {
                    // Single rows: slots 0..RAW-1 are the lane's first RAW
                    // units; SwiGLU: per_row of the gate row, then of the up row.
                    const int j = two ? i % per_row : i;
                    const int u = u0 + 32 * S * j;
                    const long long r = two && i >= per_row ? rb0 : ra0;
                    if (u < nu) pre[i] = q_raw<T>(w, r, k, u);
                }
            }
            // The rest of the row to L2 (none where the preload holds all of it).
            const int done = raw ? (two ? per_row : RAW) : 0;  // units preloaded a row
            if (nu > 32 * S * done)
                for (long long o = (lane + 32LL * sub) * 128; o < rb; o += 32LL * S * 128) {
                    prefetch_l2(p0 + ra0 * rb + o);
                    if (two) prefetch_l2(p0 + rb0 * rb + o);
                }
            if (!two && lane == 0 && sub == 0 && bias) b0 = __ldg(bias + row0);
        }
        if (nw && !PRE && (int)threadIdx.x < M * k / 8) {
            const int j = (int)(8LL * threadIdx.x % k);
            nw0[0] = ldg_f4(nw + j);
            nw0[1] = ldg_f4(nw + j + 4);
        }
    }
    pdl_enter();
    // The residual the first row adds to (EPI_ADD), read now so that it is
    // here when the dot product is.
    float res0[M];
#pragma unroll
    for (int m = 0; m < M; m++) res0[m] = 0.0f;
    if (epi == EPI_ADD && lane == 0 && sub == 0 && row0 < nr) {
#pragma unroll
        for (int m = 0; m < M; m++) res0[m] = out[(long long)m * ldo + row0];
    }
    if (PRE) {
        const uint4* src = reinterpret_cast<const uint4*>(x);
        uint4* dst = reinterpret_cast<uint4*>(smem);
        const int n16 = (M * k + M * (k / 32) * 16) / 16;
        for (int i = threadIdx.x; i < n16; i += blockDim.x) dst[i] = __ldg(src + i);
    } else {
        float sc[M];
        if (nw) rms_scales<M>(x, k, eps, sc);
        quantize_block<M>(x, k, xq, xg, nw, sc, nw0);
    }
    __syncthreads();
    for (int r0 = blockIdx.x * rpb; r0 < nr; r0 += gridDim.x * rpb) {
        const int row = r0 + warp / S;
        const bool first = r0 == blockIdx.x * rpb;
        int ra, rb;
        pair_rows(row, epi, nr, rk, ra, rb);
        float acc[M], up[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = up[m] = 0.0f;
        if (row < nr) {
            int start = u0;
            if (raw && first) {
                // The preloaded units, then the rest of the row as below.
#pragma unroll
                for (int i = 0; i < RAW; i++) {
                    const int j = two ? i % per_row : i;
                    const int u = u0 + 32 * S * j;
                    if (two) {
                        if (u < nu) q_dot<T, M>(i < per_row ? acc : up, pre[i], k, u, xq, xg);
                    } else if (u < nu) {
                        q_dot<T, M>(acc, pre[i], k, u, xq, xg);
                    }
                }
                start = u0 + 32 * S * (two ? per_row : RAW);
            }
            if (two) {
#pragma unroll 2
                for (int u = start; u < nu; u += 32 * S) {
                    q_unit<T, M>(acc, w, ra, k, u, xq, xg);
                    q_unit<T, M>(up, w, rb, k, u, xq, xg);
                }
            } else {
#pragma unroll 4
                for (int u = start; u < nu; u += 32 * S) q_unit<T, M>(acc, w, row, k, u, xq, xg);
            }
        }
        if (S > 1) split_reduce<M>(acc, up, two, S);
        if (sub != 0 || row >= nr) continue;
        if (epi == EPI_ROPE)
            rope_store_pair<M>(acc, up, lane, row, ra, rb, out, ldo, bias, rk);
        else if (two)
            matvec_store_swiglu<M>(acc, up, lane, row, nr, out, ldo, bias);
        else if (first)
            matvec_store_first<M>(acc, lane, row, out, ldo, b0, res0, epi);
        else
            matvec_store<M>(acc, lane, row, out, ldo, bias, epi);
    }
}

template <int T, int M>
__device__ void vecdot_fused(MATVEC_ARGS) { vecdot_quant<T, M, false, 0>(MATVEC_PASS); }
template <int T, int M>
__device__ void vecdot_pre(MATVEC_ARGS) { vecdot_quant<T, M, true, 0>(MATVEC_PASS); }

// One activation row, quantised in the block, with 1, 2 or 4 units a lane
// preloaded: vecdot_<t>_p<RAW>_m1 (the decode step's products). Q8_0's and
// every p1 are bounded to 64 registers, so that four blocks of 8 warps (the
// grid of products of many rows) fit an SM at once: a block that is not
// resident cannot preload while its producer runs. The 4- and 5-bit p2 and
// p4 would spill there (before the wait, which defeats the preload): they
// keep their registers and fewer blocks an SM. The launcher falls back to
// vecdot_<t>_m1 where a variant cannot take the block.
#define VECDOT_PRELOAD_R(NAME, T, R, BOUNDS)                        \
    extern "C" __global__ void BOUNDS NAME##_p##R##_m1(MATVEC_ARGS) { \
        vecdot_quant<T, 1, false, R>(MATVEC_PASS);                  \
    }
#define BOUND64 __launch_bounds__(256, 4)
#define VECDOT_PRELOAD(NAME, T, B24)  \
    VECDOT_PRELOAD_R(NAME, T, 1, BOUND64) \
    VECDOT_PRELOAD_R(NAME, T, 2, B24)     \
    VECDOT_PRELOAD_R(NAME, T, 4, B24)

MATVEC_ALL_M(vecdot_q8_0, vecdot_fused, T_Q8_0)
MATVEC_ALL_M(vecdot_q4_0, vecdot_fused, T_Q4_0)
MATVEC_ALL_M(vecdot_q4_1, vecdot_fused, T_Q4_1)
MATVEC_ALL_M(vecdot_q4_k, vecdot_fused, T_Q4_K)
MATVEC_ALL_M(vecdot_q6_k, vecdot_fused, T_Q6_K)
MATVEC_ALL_M(vecdot_q5_0, vecdot_fused, T_Q5_0)
MATVEC_ALL_M(vecdot_q5_1, vecdot_fused, T_Q5_1)
MATVEC_ALL_M(vecdot_q5_k, vecdot_fused, T_Q5_K)
MATVEC_ALL_M(vecdotpre_q8_0, vecdot_pre, T_Q8_0)
MATVEC_ALL_M(vecdotpre_q4_0, vecdot_pre, T_Q4_0)
MATVEC_ALL_M(vecdotpre_q4_1, vecdot_pre, T_Q4_1)
MATVEC_ALL_M(vecdotpre_q4_k, vecdot_pre, T_Q4_K)
MATVEC_ALL_M(vecdotpre_q6_k, vecdot_pre, T_Q6_K)
MATVEC_ALL_M(vecdotpre_q5_0, vecdot_pre, T_Q5_0)
MATVEC_ALL_M(vecdotpre_q5_1, vecdot_pre, T_Q5_1)
MATVEC_ALL_M(vecdotpre_q5_k, vecdot_pre, T_Q5_K)
VECDOT_PRELOAD(vecdot_q8_0, T_Q8_0, BOUND64)
VECDOT_PRELOAD(vecdot_q4_0, T_Q4_0, )
VECDOT_PRELOAD(vecdot_q4_1, T_Q4_1, )
VECDOT_PRELOAD(vecdot_q5_0, T_Q5_0, )
VECDOT_PRELOAD(vecdot_q5_1, T_Q5_1, )

// The fused QKV product of decode (EPI_ROPE): one row, quantised in the
// block; the one-block types preload a unit of each row of the pair. After
// MATVEC_ARGS the positions, then rope_kv_store.cu's arguments from n_heads
// on, in its order.
#define VECDOT_ROPE(NAME, T, R)                                          \
    extern "C" __global__ void NAME##_rope_m1(MATVEC_ARGS, ROPE_KV_ARGS) { \
        vecdot_quant<T, 1, false, R>(MATVEC_PASS, ROPE_KV);                 \
    }
VECDOT_ROPE(vecdot_q8_0, T_Q8_0, 2)
VECDOT_ROPE(vecdot_q4_0, T_Q4_0, 2)
VECDOT_ROPE(vecdot_q4_1, T_Q4_1, 2)
VECDOT_ROPE(vecdot_q5_0, T_Q5_0, 2)
VECDOT_ROPE(vecdot_q5_1, T_Q5_1, 2)
VECDOT_ROPE(vecdot_q4_k, T_Q4_K, 0)
VECDOT_ROPE(vecdot_q6_k, T_Q6_K, 0)
VECDOT_ROPE(vecdot_q5_k, T_Q5_K, 0)
