// Rotary position embedding and the KV-cache write in one pass (the fused
// decode path): the Q and K heads of the fused QKV activation [m, width] are
// rotated in place as rope.cu does, and the rotated K heads and the V heads
// are copied into the layer's f32 cache [kv_heads, capacity, head_dim] at the
// row's position as kv_store.cu does (positions outside the cache are not
// stored). Positions come from device memory.
//
// One thread per pair of values (2 t, 2 t + 1 of a head's hd / 2 slots) of
// every Q, K and V head of every row. A slot below dim / 2 rotates its pair:
// (2j, 2j + 1) in style 0 (normal), (j, j + dim/2) in style 1 (neox); the
// slots above copy the unrotated tail (and V) two values at a time. The same
// operations as rope.cu's, so the values equal the two separate kernels'.

extern "C" __global__ void rope_kv_store(float* qkv, const int* pos, int m, int width, int n_heads,
                                         int n_kv, int hd, int dim, float theta, float pos_scale,
                                         const float* factors, int style, float* kc, float* vc,
                                         int capacity) {
    pdl_enter();
    const int slots = hd / 2, half = dim / 2;
    const int heads = n_heads + 2 * n_kv;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * heads * slots) return;
    const int j = (int)(t % slots);
    const long long rh = t / slots;
    const int h = (int)(rh % heads), i = (int)(rh / heads);
    const int p = pos[i];
    float* head = qkv + (long long)i * width + (long long)h * hd;
    // The cache of this head (null for Q heads and positions outside it).
    float* cache = nullptr;
    if (h >= n_heads && p >= 0 && p < capacity) {
        const bool is_v = h >= n_heads + n_kv;
        const int kvh = h - n_heads - (is_v ? n_kv : 0);
        cache = (is_v ? vc : kc) + ((long long)kvh * capacity + p) * hd;
    }
    int i0, i1;
    if (h < n_heads + n_kv && j < half) {
        float pf = __fmul_rn((float)p, pos_scale);
        float f = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)dim));
        if (factors) f = __fdiv_rn(f, factors[j]);
        float a = __fmul_rn(pf, f);
        float c = cosf(a), s = sinf(a);
        i0 = style == 1 ? j : 2 * j;
        i1 = style == 1 ? j + half : 2 * j + 1;
        float x0 = head[i0], x1 = head[i1];
        float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        float y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
        head[i0] = y0;
        head[i1] = y1;
        if (cache) {
            cache[i0] = y0;
            cache[i1] = y1;
        }
        return;
    }
    // V heads entirely, and the unrotated tail [dim, hd) of Q and K heads.
    if (h < n_heads + n_kv) {
        i0 = dim + 2 * (j - half);
    } else {
        i0 = 2 * j;
    }
    i1 = i0 + 1;
    if (cache) {
        cache[i0] = head[i0];
        cache[i1] = head[i1];
    }
}
