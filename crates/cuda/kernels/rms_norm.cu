// Row-wise RMS norm: out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w.
// One block per row. The sum of squares is accumulated in f64, as the host
// reference does, so rows of thousands of values keep their low bits.

extern "C" __global__ void rms_norm(const float* x, const float* w, int n, float eps, float* out) {
    __shared__ double part[32];
    const float* xr = x + (long long)blockIdx.x * n;
    float* orow = out + (long long)blockIdx.x * n;
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        double v = (double)xr[j];
        ss += v * v;
    }
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
    float scale = (float)(1.0 / sqrt(part[0] / (double)n + (double)eps));
    for (int j = threadIdx.x; j < n; j += blockDim.x) orow[j] = __fmul_rn(__fmul_rn(xr[j], scale), w[j]);
}
