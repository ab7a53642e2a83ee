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

__device__ __forceinline__ void rk_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void rk_store(u16* p, float v) { *p = f2h(v); }

// Slot j of head h of one row at position p (common.cuh's rope_slot and
// rope_rotate), shared by both kernels: a rotated pair is rotated in place;
// then the pair goes to `cache` (the head's cache row, or null for Q heads
// and positions outside the cache: nothing is stored).
template <typename T>
__device__ __forceinline__ void rope_store_slot(float* head, T* cache, int h, int j, int p,
                                                int n_heads, int n_kv, int dim, float theta,
                                                float pos_scale, const float* factors,
                                                int style) {
    int i0, i1;
    if (rope_slot(h, j, n_heads, n_kv, dim, style, i0, i1)) {
        float x0 = head[i0], x1 = head[i1];
        rope_rotate(x0, x1, j, p, dim, theta, pos_scale, factors);
        head[i0] = x0;
        head[i1] = x1;
        if (cache) {
            rk_store(cache + i0, x0);
            rk_store(cache + i1, x1);
        }
        return;
    }
    if (cache) {
        rk_store(cache + i0, head[i0]);
        rk_store(cache + i1, head[i1]);
    }
}

extern "C" __global__ void rope_kv_store(float* qkv, const int* pos, int m, int width, int n_heads,
                                         int n_kv, int hd, int dim, float theta, float pos_scale,
                                         const float* factors, int style, float* kc, float* vc,
                                         int capacity) {
    pdl_enter();
    const int slots = hd / 2;
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
    rope_store_slot(head, cache, h, j, p, n_heads, n_kv, dim, theta, pos_scale, factors, style);
}

// The same for the paged cache of `metallic serve` (see paged_attention.cu):
// row i's K and V heads go to (block tables[i][pos[i] / bs], slot pos[i] % bs)
// of the layer's [n_blocks, n_kv, bs, hd] cache of f32 or f16 (suffix); rows
// whose position or block is outside the cache are rotated but not stored
// (the host checks them first). The values equal rope then paged_kv_store.
template <typename T>
__device__ __forceinline__ void paged_rope_kv_store_body(
    float* qkv, const int* pos, int m, int width, int n_heads, int n_kv, int hd, int dim,
    float theta, float pos_scale, const float* factors, int style, T* kc, T* vc,
    const int* tables, int bs, int n_blocks, int stride) {
    const int slots = hd / 2;
    const int heads = n_heads + 2 * n_kv;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)m * heads * slots) return;
    const int j = (int)(t % slots);
    const long long rh = t / slots;
    const int h = (int)(rh % heads), i = (int)(rh / heads);
    const int p = pos[i];
    float* head = qkv + (long long)i * width + (long long)h * hd;
    T* cache = nullptr;
    if (h >= n_heads && p >= 0 && p < stride * bs) {
        const int b = tables[(long long)i * stride + p / bs];
        if (b >= 0 && b < n_blocks) {
            const bool is_v = h >= n_heads + n_kv;
            const int kvh = h - n_heads - (is_v ? n_kv : 0);
            cache = (is_v ? vc : kc) + (((long long)b * n_kv + kvh) * bs + p % bs) * hd;
        }
    }
    rope_store_slot(head, cache, h, j, p, n_heads, n_kv, dim, theta, pos_scale, factors, style);
}

extern "C" __global__ void paged_rope_kv_store_f32(float* qkv, const int* pos, int m, int width,
                                                   int n_heads, int n_kv, int hd, int dim,
                                                   float theta, float pos_scale,
                                                   const float* factors, int style, float* kc,
                                                   float* vc, const int* tables, int bs,
                                                   int n_blocks, int stride) {
    pdl_enter();
    paged_rope_kv_store_body(qkv, pos, m, width, n_heads, n_kv, hd, dim, theta, pos_scale, factors,
                             style, kc, vc, tables, bs, n_blocks, stride);
}

extern "C" __global__ void paged_rope_kv_store_f16(float* qkv, const int* pos, int m, int width,
                                                   int n_heads, int n_kv, int hd, int dim,
                                                   float theta, float pos_scale,
                                                   const float* factors, int style, u16* kc,
                                                   u16* vc, const int* tables, int bs,
                                                   int n_blocks, int stride) {
    pdl_enter();
    paged_rope_kv_store_body(qkv, pos, m, width, n_heads, n_kv, hd, dim, theta, pos_scale, factors,
                             style, kc, vc, tables, bs, n_blocks, stride);
}
