// Copy the K and V heads of each row of the fused QKV activation into the
// layer's cache [kv_heads, capacity, head_dim] at the row's position (read from
// device memory). Positions outside the cache are skipped.

extern "C" __global__ void kv_store(const float* qkv, float* kc, float* vc, const int* pos, int m,
                                    int width, int n_heads, int n_kv, int hd, int capacity) {
    pdl_enter();
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_row = (long long)n_kv * hd;
    if (t >= (long long)m * per_row) return;
    int i = (int)(t / per_row);
    int r = (int)(t % per_row);
    int h = r / hd, d = r % hd;
    int p = pos[i];
    if (p < 0 || p >= capacity) return;
    const float* row = qkv + (long long)i * width;
    long long dst = ((long long)h * capacity + p) * hd + d;
    kc[dst] = row[(long long)(n_heads + h) * hd + d];
    vc[dst] = row[(long long)(n_heads + n_kv + h) * hd + d];
}
