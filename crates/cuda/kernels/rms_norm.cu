// Row-wise RMS norm: out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w.
// One block per row. The sum of squares is accumulated in f64, as the host
// reference does, so rows of thousands of values keep their low bits.
//
// Rows of up to RMS_REG values a thread live in registers: the weights are
// loaded before the wait for the kernel that writes x (they never change),
// and x is read once. Longer rows loop. Both sum in the same order.

#define RMS_REG 8

__device__ __forceinline__ double block_sum_d(double ss, double* part) {
    ss = warp_sum_d(ss);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        double v = lane < nw ? part[lane] : 0.0;
        v = warp_sum_d(v);
        if (lane == 0) part[0] = v;
    }
    __syncthreads();
    return part[0];
}

extern "C" __global__ void rms_norm(const float* x, const float* w, int n, float eps, float* out) {
    __shared__ double part[32];
    const float* xr = x + (long long)blockIdx.x * n;
    float* orow = out + (long long)blockIdx.x * n;
    if (n <= RMS_REG * (int)blockDim.x) {
        float wv[RMS_REG], xv[RMS_REG];
#pragma unroll
        for (int i = 0; i < RMS_REG; i++) {
            int j = threadIdx.x + i * blockDim.x;
            wv[i] = j < n ? __ldg(w + j) : 0.0f;
        }
        pdl_enter();
#pragma unroll
        for (int i = 0; i < RMS_REG; i++) {
            int j = threadIdx.x + i * blockDim.x;
            xv[i] = j < n ? xr[j] : 0.0f;
        }
        double ss = 0.0;
#pragma unroll
        for (int i = 0; i < RMS_REG; i++) ss += (double)xv[i] * (double)xv[i];
        float scale = (float)(1.0 / sqrt(block_sum_d(ss, part) / (double)n + (double)eps));
#pragma unroll
        for (int i = 0; i < RMS_REG; i++) {
            int j = threadIdx.x + i * blockDim.x;
            if (j < n) orow[j] = __fmul_rn(__fmul_rn(xv[i], scale), wv[i]);
        }
        return;
    }
    pdl_enter();
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        double v = (double)xr[j];
        ss += v * v;
    }
    float scale = (float)(1.0 / sqrt(block_sum_d(ss, part) / (double)n + (double)eps));
    for (int j = threadIdx.x; j < n; j += blockDim.x) orow[j] = __fmul_rn(__fmul_rn(xr[j], scale), w[j]);
}
