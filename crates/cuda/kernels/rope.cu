// Rotary position embedding, in place on the Q and K heads of the fused QKV
// activation [m, width]. Positions come from device memory, so a decode step
// can be replayed as a graph. One thread per rotated pair.
//
// style 0 (normal): pairs (2j, 2j + 1); style 1 (neox): pairs (j, j + dim/2).
// Inverse frequencies are computed in f64 and rounded, like the host's, then
// divided by the optional per-frequency factors.

extern "C" __global__ void rope(float* qkv, const int* pos, int m, int width, int heads, int hd,
                                int dim, float theta, float pos_scale, const float* factors,
                                int style) {
    pdl_enter();
    const int half = dim / 2;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * heads * half) return;
    int j = (int)(t % half);
    long long rh = t / half;
    int h = (int)(rh % heads), i = (int)(rh / heads);
    float p = __fmul_rn((float)pos[i], pos_scale);
    float f = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)dim));
    if (factors) f = __fdiv_rn(f, factors[j]);
    float a = __fmul_rn(p, f);
    float c = cosf(a), s = sinf(a);
    float* head = qkv + (long long)i * width + (long long)h * hd;
    int i0 = style == 1 ? j : 2 * j;
    int i1 = style == 1 ? j + half : 2 * j + 1;
    float x0 = head[i0], x1 = head[i1];
    head[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    head[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}
