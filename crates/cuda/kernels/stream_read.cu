// Read t[0..len) once with 16-byte loads over a grid-stride loop: the device's
// streaming-read rate, the floor `metallic probe` compares matmuls with. The
// XOR of everything is written back only in a case the data decides, so the
// compiler must keep every load; the probe's buffer is scratch either way.
extern "C" __global__ void stream_read(int* t, long long len) {
    pdl_enter();
    long long n4 = len / 4;
    const int4* v = reinterpret_cast<const int4*>(t);
    long long stride = (long long)gridDim.x * blockDim.x;
    int acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        int4 x = __ldcs(v + i);
        acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    for (long long i = n4 * 4 + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        acc ^= t[i];
    if (acc == 0x13579bdf) t[0] = acc;
}
