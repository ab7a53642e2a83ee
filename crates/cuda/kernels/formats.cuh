// Weight formats on the device. Each GGUF block format is uploaded with its
// fields split into separate arrays so that the bulk (the quants) can be read
// with aligned 16-byte loads; the values are exactly GGUF's, only moved.
// A weight matrix of n rows and k columns is passed as four pointers:
//
//   type   p0                     p1                      p2              p3
//   F32    f32 [n*k]
//   F16    f16 [n*k]
//   BF16   bf16 [n*k]
//   Q8_0   i8 quants [n*k]        f16 d [n*k/32]
//   Q4_0   nibbles [n*k/2]        f16 d [n*k/32]
//   Q4_1   nibbles [n*k/2]        (f16 d, f16 m) [n*k/32]
//   Q4_K   nibbles [n*k/2]        16-byte header (d, dmin, scales[12]) [n*k/256]
//   Q6_K   low nibbles [n*k/2]    high bits [n*k/4]       i8 scales [n*k/16]  f16 d [n*k/256]
//   Q5_0   nibbles [n*k/2]        f16 d [n*k/32]          u32 qh [n*k/32]
//   Q5_1   nibbles [n*k/2]        (f16 d, f16 m) [n*k/32] u32 qh [n*k/32]
//   Q5_K   nibbles [n*k/2]        16-byte header as Q4_K  qh[32] [n*k/256]
//   Q2_K   2-bit quants [n*k/4]   scales[16] [n*k/256]    (f16 d, f16 dmin) [n*k/256]
//   Q3_K   2-bit quants [n*k/4]   hmask[32] [n*k/256]     scales[12] [n*k/256] f16 d [n*k/256]
//
// Nibble and bit orders inside each block are GGUF's. Type ids are ggml's.

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30

struct W {
    const u8* p0;
    const u8* p1;
    const u8* p2;
    const u8* p3;
};

__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The same from the 12 scale bytes held in three words (no local memory).
__device__ __forceinline__ int scale_byte(u32 a, u32 b, u32 c, int i) {
    u32 w = i < 4 ? a : i < 8 ? b : c;
    return (int)((w >> ((i & 3) * 8)) & 0xFF);
}

__device__ __forceinline__ void scale_min_k4_w(int j, u32 a, u32 b, u32 c, int& sc, int& m) {
    if (j < 4) {
        sc = scale_byte(a, b, c, j) & 63;
        m = scale_byte(a, b, c, j + 4) & 63;
    } else {
        int q4 = scale_byte(a, b, c, j + 4);
        sc = (q4 & 0xF) | ((scale_byte(a, b, c, j - 4) >> 6) << 4);
        m = (q4 >> 4) | ((scale_byte(a, b, c, j) >> 6) << 4);
    }
}

// Values [32c, 32c + 32) of row `row`, computed with the same operations in the
// same order as the reference dequantisation (no fused multiply-adds), so that
// the results are bit-identical to the host's.
template <int T>
__device__ __forceinline__ void decode32(const W& w, long long row, int k, int c, float* out) {
    if (T == T_F32) {
        const float* p = reinterpret_cast<const float*>(w.p0) + row * k + 32 * c;
#pragma unroll
        for (int i = 0; i < 32; i += 4) {
            float4 v = *reinterpret_cast<const float4*>(p + i);
            out[i] = v.x; out[i + 1] = v.y; out[i + 2] = v.z; out[i + 3] = v.w;
        }
    } else if (T == T_F16 || T == T_BF16) {
        const u16* p = reinterpret_cast<const u16*>(w.p0) + row * k + 32 * c;
#pragma unroll
        for (int i = 0; i < 32; i += 8) {
            uint4 v = *reinterpret_cast<const uint4*>(p + i);
            u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u16 lo = (u16)(a[j] & 0xffff), hi = (u16)(a[j] >> 16);
                out[i + 2 * j] = T == T_F16 ? h2f(lo) : bf2f(lo);
                out[i + 2 * j + 1] = T == T_F16 ? h2f(hi) : bf2f(hi);
            }
        }
    } else if (T == T_Q8_0) {
        float d = h2f(reinterpret_cast<const u16*>(w.p1)[row * (k / 32) + c]);
        const i8* q = reinterpret_cast<const i8*>(w.p0) + row * k + 32 * c;
#pragma unroll
        for (int i = 0; i < 32; i++) out[i] = __fmul_rn((float)q[i], d);
    } else if (T == T_Q4_0 || T == T_Q4_1) {
        const u8* q = w.p0 + row * (k / 2) + 16 * c;
        float d, m = 0.0f;
        if (T == T_Q4_0) {
            d = h2f(reinterpret_cast<const u16*>(w.p1)[row * (k / 32) + c]);
        } else {
            u32 dm = reinterpret_cast<const u32*>(w.p1)[row * (k / 32) + c];
            d = h2f((u16)(dm & 0xffff));
            m = h2f((u16)(dm >> 16));
        }
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int lo = q[i] & 0xF, hi = q[i] >> 4;
            if (T == T_Q4_0) {
                out[i] = __fmul_rn((float)(lo - 8), d);
                out[i + 16] = __fmul_rn((float)(hi - 8), d);
            } else {
                out[i] = __fadd_rn(__fmul_rn((float)lo, d), m);
                out[i + 16] = __fadd_rn(__fmul_rn((float)hi, d), m);
            }
        }
    } else if (T == T_Q4_K) {
        long long sb = row * (k / 256) + c / 8;
        int j = c % 8;
        const u8* h = w.p1 + sb * 16;
        float d = h2f(*reinterpret_cast<const u16*>(h));
        float dmin = h2f(*reinterpret_cast<const u16*>(h + 2));
        int sc, mn;
        scale_min_k4(j, h + 4, sc, mn);
        float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)mn);
        const u8* q = w.p0 + sb * 128 + (j / 2) * 32;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) out[l] = __fsub_rn(__fmul_rn(d1, (float)((q[l] >> shift) & 0xF)), m1);
    } else if (T == T_Q5_0 || T == T_Q5_1) {
        long long b = row * (k / 32) + c;
        const u8* q = w.p0 + b * 16;
        u32 qh = reinterpret_cast<const u32*>(w.p2)[b];
        float d, m = 0.0f;
        if (T == T_Q5_0) {
            d = h2f(reinterpret_cast<const u16*>(w.p1)[b]);
        } else {
            u32 dm = reinterpret_cast<const u32*>(w.p1)[b];
            d = h2f((u16)(dm & 0xffff));
            m = h2f((u16)(dm >> 16));
        }
#pragma unroll
        for (int j = 0; j < 16; j++) {
            int x0 = (q[j] & 0xF) | (((qh >> j) << 4) & 0x10);
            int x1 = (q[j] >> 4) | ((qh >> (j + 12)) & 0x10);
            if (T == T_Q5_0) {
                out[j] = __fmul_rn((float)(x0 - 16), d);
                out[j + 16] = __fmul_rn((float)(x1 - 16), d);
            } else {
                out[j] = __fadd_rn(__fmul_rn((float)x0, d), m);
                out[j + 16] = __fadd_rn(__fmul_rn((float)x1, d), m);
            }
        }
    } else if (T == T_Q5_K) {
        long long sb = row * (k / 256) + c / 8;
        int j = c % 8;
        const u8* h = w.p1 + sb * 16;
        float d = h2f(*reinterpret_cast<const u16*>(h));
        float dmin = h2f(*reinterpret_cast<const u16*>(h + 2));
        int sc, mn;
        scale_min_k4(j, h + 4, sc, mn);
        float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)mn);
        const u8* q = w.p0 + sb * 128 + (j / 2) * 32;
        const u8* qh = w.p2 + sb * 32;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> shift) & 0xF) + (((qh[l] >> j) & 1) << 4);
            out[l] = __fsub_rn(__fmul_rn(d1, (float)v), m1);
        }
    } else if (T == T_Q2_K || T == T_Q3_K) {
        // Group g of 32 values: half g / 4, 2-bit field s = g % 4, two scales.
        long long sb = row * (k / 256) + c / 8;
        int g = c % 8, half = g / 4, s = g % 4;
        const u8* q = w.p0 + sb * 64 + 32 * half;
        if (T == T_Q2_K) {
            u32 dd = reinterpret_cast<const u32*>(w.p2)[sb];
            float d = h2f((u16)(dd & 0xffff)), dmin = h2f((u16)(dd >> 16));
            const u8* scales = w.p1 + sb * 16 + 8 * half + 2 * s;
#pragma unroll
            for (int grp = 0; grp < 2; grp++) {
                int sc = scales[grp];
                float dl = __fmul_rn(d, (float)(sc & 0xF)), ml = __fmul_rn(dmin, (float)(sc >> 4));
#pragma unroll
                for (int i = 0; i < 16; i++)
                    out[16 * grp + i] = __fsub_rn(__fmul_rn(dl, (float)((q[16 * grp + i] >> (2 * s)) & 3)), ml);
            }
        } else {
            const u32* sw = reinterpret_cast<const u32*>(w.p2 + sb * 12);
            u32 a0 = sw[0], a1 = sw[1], tmp = sw[2];
            // The 6-bit scales 8 * half + 2 * s + {0, 1} (ggml's kmask unpacking).
            int is = 8 * half + 2 * s;
            u32 aux = is < 4 ? (a0 & 0x0F0F0F0F) | ((tmp & 0x03030303) << 4)
                    : is < 8 ? (a1 & 0x0F0F0F0F) | (((tmp >> 2) & 0x03030303) << 4)
                    : is < 12 ? ((a0 >> 4) & 0x0F0F0F0F) | (((tmp >> 4) & 0x03030303) << 4)
                              : ((a1 >> 4) & 0x0F0F0F0F) | (((tmp >> 6) & 0x03030303) << 4);
            float d = h2f(reinterpret_cast<const u16*>(w.p3)[sb]);
            const u8* hm = w.p1 + sb * 32;
            int mask = 1 << (4 * half + s);
#pragma unroll
            for (int grp = 0; grp < 2; grp++) {
                int sc = (int)(i8)((aux >> (8 * ((is + grp) & 3))) & 0xFF);
                float dl = __fmul_rn(d, (float)(sc - 32));
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    int low = (q[16 * grp + i] >> (2 * s)) & 3;
                    int v = low - ((hm[16 * grp + i] & mask) ? 0 : 4);
                    out[16 * grp + i] = __fmul_rn(dl, (float)v);
                }
            }
        }
    } else if (T == T_Q6_K) {
        long long sb = row * (k / 256) + c / 8;
        int e0 = 32 * (c % 8);
        int n = e0 / 128, i = (e0 % 128) / 32;
        float d = h2f(reinterpret_cast<const u16*>(w.p3)[sb]);
        const u8* ql = w.p0 + sb * 128 + 64 * n + (i & 1) * 32;
        const u8* qh = w.p1 + sb * 64 + 32 * n;
        const i8* sc = reinterpret_cast<const i8*>(w.p2) + sb * 16 + 8 * n + 2 * i;
        int nshift = (i >> 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = (((ql[l] >> nshift) & 0xF) | (((qh[l] >> (2 * i)) & 3) << 4)) - 32;
            out[l] = __fmul_rn(__fmul_rn(d, (float)sc[l / 16]), (float)q);
        }
    }
}
