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
// weight's first column), the row stride of out, and an optional bias [n].
// Each IMPL calls pdl_enter() itself, after whatever it may do before its
// producer has finished.

#define MATVEC_ARGS                                                                      \
    const u8 *p0, const u8 *p1, const u8 *p2, const u8 *p3, int n, int k, const float *x, \
        float *out, int ldo, const float *bias

template <int M>
__device__ __forceinline__ void matvec_store(float (&acc)[M], int lane, int row, float* out, int ldo,
                                           const float* bias) {
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
    if (lane == 0) {
        float b = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int m = 0; m < M; m++) out[(long long)m * ldo + row] = acc[m] + b;
    }
}


#define MATVEC_M(NAME, IMPL, T, M) \
    extern "C" __global__ void NAME##_m##M(MATVEC_ARGS) { IMPL<T, M>(p0, p1, p2, p3, n, k, x, out, ldo, bias); }

#define MATVEC_ALL_M(NAME, IMPL, T) \
    MATVEC_M(NAME, IMPL, T, 1)      \
    MATVEC_M(NAME, IMPL, T, 2)      \
    MATVEC_M(NAME, IMPL, T, 3)      \
    MATVEC_M(NAME, IMPL, T, 4)      \
    MATVEC_M(NAME, IMPL, T, 5)      \
    MATVEC_M(NAME, IMPL, T, 6)      \
    MATVEC_M(NAME, IMPL, T, 7)      \
    MATVEC_M(NAME, IMPL, T, 8)
