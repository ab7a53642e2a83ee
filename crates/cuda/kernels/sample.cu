// Sampling on the device, so that only the chosen token id reaches the host.
// Semantics follow metallic::sampler (llama.cpp's chain): penalties over the
// last `window` accepted tokens, then greedy argmax (temperature <= 0), or
// top-k -> top-p -> min-p on the untempered logits and a draw from
// softmax(logit / T) of what is left, with xoshiro256** seeded like the host.
//
// Candidate sets are never sorted. Every filter keeps a prefix of the order
// (logit descending, id ascending), so a set is a boundary (key, id) in that
// order, and "the shortest prefix whose count / probability mass reaches X"
// is found with a 4-pass radix select over the logits' order-preserving keys
// (256-bin histograms of the measure), then a scan in id order over the ties.
// NaN logits count as -inf, as on the host.

struct SamplerState {
    u64 rng[4];
    int hist_len;
    int hist_start;
    int pad[2];
};

#define NEG_INF (-INFINITY)
#define SAMPLE_THREADS 1024

// Penalties (same f32 operations as the host) and NaN -> -inf, into work.
extern "C" __global__ void sample_prepare(const float* logits, float* work, int V,
                                          const unsigned* counts, int penalize, float rp,
                                          float freq, float pres) {
    pdl_enter();
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= V) return;
    float l = logits[t];
    if (l != l) l = NEG_INF;
    if (penalize) {
        unsigned c = counts[t];
        if (c > 0) {
            l = l <= 0.0f ? __fmul_rn(l, rp) : __fdiv_rn(l, rp);
            l = __fsub_rn(l, __fadd_rn(__fmul_rn((float)c, freq), pres));
        }
    }
    work[t] = l;
}

__device__ void accept_token(int t, int V, SamplerState* st, unsigned* counts, int* hist, int window) {
    if (window <= 0 || t < 0 || t >= V) return;
    if (st->hist_len < window) {
        hist[st->hist_len++] = t;
    } else {
        int old = hist[st->hist_start];
        counts[old] -= 1;
        hist[st->hist_start] = t;
        st->hist_start = (st->hist_start + 1) % window;
    }
    counts[t] += 1;
}

// Feed host-chosen tokens (the prompt) into the penalty window.
extern "C" __global__ void sampler_accept(const int* tokens, int n, int V, SamplerState* st,
                                          unsigned* counts, int* hist, int window) {
    pdl_enter();
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    for (int i = 0; i < n; i++) accept_token(tokens[i], V, st, counts, hist, window);
}

// ---------------------------------------------------------------- greedy

// Argmax (lowest id on ties, NaN never wins) over many blocks; the last block
// to finish merges the partials, writes the id (-1 when no logit is finite)
// and accepts it into the window.
extern "C" __global__ void sample_argmax(const float* x, int V, float* part_v, int* part_i,
                                         unsigned* counter, int* out_id, SamplerState* st,
                                         unsigned* counts, int* hist, int window) {
    pdl_enter();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ bool last;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < V; t += gridDim.x * blockDim.x) {
        float v = x[t];
        if (v > best) {  // ids rise along a thread's walk: strict > keeps the lowest
            best = v;
            bi = t;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, best, o);
        int oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
                best = sv[w];
                bi = si[w];
            }
        part_v[blockIdx.x] = best;
        part_i[blockIdx.x] = bi;
        __threadfence();
        unsigned ticket = atomicAdd(counter, 1u);
        last = ticket == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The whole last block merges the partials: one load per thread, past L1
    // (other blocks wrote them), then the same reduction as above.
    best = NEG_INF;
    bi = 0x7fffffff;
    for (int k = threadIdx.x; k < (int)gridDim.x; k += blockDim.x) {
        float v = __ldcg(part_v + k);
        int i = __ldcg(part_i + k);
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, best, o);
        int oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    float b = NEG_INF;
    int id = 0x7fffffff;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        if (sv[w] > b || (sv[w] == b && si[w] < id)) {
            b = sv[w];
            id = si[w];
        }
    int tok = b == NEG_INF ? -1 : id;
    *out_id = tok;
    accept_token(tok, V, st, counts, hist, window);
    *counter = 0;
}

// ---------------------------------------------------------------- filtered draw

__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A prefix of the order (key descending, id ascending): everything up to and
// including (key, id).
struct Bound {
    u32 key;
    int id;
};

__device__ __forceinline__ bool in_bound(u32 k, int t, Bound b) { return k > b.key || (k == b.key && t <= b.id); }

__device__ __forceinline__ Bound shorter(Bound a, Bound b) {
    if (a.key != b.key) return a.key > b.key ? a : b;
    return a.id <= b.id ? a : b;
}

#define M_COUNT 0
#define M_PROB 1
#define M_WEIGHT 2

struct Ctx {
    const float* w;
    int V;
    float max;
    float inv_t;
};

__device__ __forceinline__ double measure(const Ctx& c, int kind, float l) {
    if (kind == M_COUNT) return 1.0;
    if (kind == M_PROB) return (double)expf(__fsub_rn(l, c.max));
    return (double)expf(__fmul_rn(__fsub_rn(l, c.max), c.inv_t));
}

struct Shared {
    double hist[256];
    double warp_part[32];
    double dscratch;
    float fscratch[32];
    int iscratch[32];
    int chosen;
    double above;
    int found_id;
};

__device__ double block_sum(Shared& s, double v) {
    v = warp_sum_d(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) s.warp_part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double x = lane < (int)(blockDim.x >> 5) ? s.warp_part[lane] : 0.0;
        x = warp_sum_d(x);
        if (lane == 0) s.dscratch = x;
    }
    __syncthreads();
    return s.dscratch;
}

// Exclusive prefix sum of v over threads in order.
__device__ double block_exclusive_scan(Shared& s, double v) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double u = __shfl_up_sync(FULL_MASK, inc, o);
        if (lane >= o) inc += u;
    }
    __syncthreads();
    if (lane == 31) s.warp_part[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        double x = lane < nw ? s.warp_part[lane] : 0.0;
        double xi = x;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            double u = __shfl_up_sync(FULL_MASK, xi, o);
            if (lane >= o) xi += u;
        }
        if (lane < nw) s.warp_part[lane] = xi - x;  // exclusive warp offsets
    }
    __syncthreads();
    return s.warp_part[warp] + inc - v;
}

// In id order, the first token with pred(t) whose running measure (starting
// from `start`) reaches X (> X when strict); -1 when none does. Each thread
// walks a contiguous segment so that the order is the ids' order.
template <typename Pred>
__device__ int walk_ids(Shared& s, const Ctx& c, int kind, Pred pred, double start, double X, bool strict) {
    const int nt = blockDim.x;
    const int seg = (c.V + nt - 1) / nt;
    const int lo = threadIdx.x * seg, hi = min(c.V, lo + seg);
    double mine = 0.0;
    for (int t = lo; t < hi; t++) {
        float l = c.w[t];
        if (pred(l, t)) mine += measure(c, kind, l);
    }
    double base = start + block_exclusive_scan(s, mine);
    if (threadIdx.x == 0) s.found_id = -1;
    __syncthreads();
    double end = base + mine;
    bool crosses = strict ? end > X : end >= X;
    bool before = strict ? base > X : base >= X;
    if (crosses && !before) {
        double acc = base;
        for (int t = lo; t < hi; t++) {
            float l = c.w[t];
            if (!pred(l, t)) continue;
            acc += measure(c, kind, l);
            if (strict ? acc > X : acc >= X) {
                s.found_id = t;  // exactly one thread's segment holds the crossing
                break;
            }
        }
    }
    __syncthreads();
    return s.found_id;
}

// The shortest prefix of the order, within bound B, whose measure reaches X
// (exceeds it when strict). False when the whole of B stays below.
__device__ bool select_prefix(Shared& s, const Ctx& c, int kind, Bound B, double X, bool strict, Bound* out) {
    u32 pkey = 0, pmask = 0;
    double above = 0.0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) s.hist[i] = 0.0;
        __syncthreads();
        for (int t = threadIdx.x; t < c.V; t += blockDim.x) {
            float l = c.w[t];
            if (l == NEG_INF) continue;
            u32 k = fkey(l);
            if ((k & pmask) != pkey || !in_bound(k, t, B)) continue;
            atomicAdd(&s.hist[(k >> shift) & 255], measure(c, kind, l));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int chosen = -1;
            double a = above;
            for (int b = 255; b >= 0; b--) {
                double nb = a + s.hist[b];
                if (strict ? nb > X : nb >= X) {
                    chosen = b;
                    break;
                }
                a = nb;
            }
            s.chosen = chosen;
            s.above = a;
        }
        __syncthreads();
        int chosen = s.chosen;
        above = s.above;
        __syncthreads();
        if (chosen < 0) return false;
        pkey |= (u32)chosen << shift;
        pmask |= 0xffu << shift;
    }
    const u32 key = pkey;
    auto tie = [&](float l, int t) { return l != NEG_INF && fkey(l) == key && in_bound(key, t, B); };
    int id = walk_ids(s, c, kind, tie, above, X, strict);
    if (id < 0) {
        // Rounding between the histogram and the scan: take the last tie.
        int last = -1;
        for (int t = threadIdx.x; t < c.V; t += blockDim.x)
            if (tie(c.w[t], t)) last = max(last, t);
        for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(FULL_MASK, last, o));
        if ((threadIdx.x & 31) == 0) s.iscratch[threadIdx.x >> 5] = last;
        __syncthreads();
        if (threadIdx.x == 0) {
            int m = -1;
            for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = max(m, s.iscratch[w]);
            s.found_id = m;
        }
        __syncthreads();
        id = s.found_id;
        if (id < 0) return false;
    }
    *out = Bound{key, id};
    return true;
}

__device__ __forceinline__ u64 rotl(u64 x, int k) { return (x << k) | (x >> (64 - k)); }

// xoshiro256** step and the host's uniform double in [0, 1).
__device__ double next_f64(SamplerState* st) {
    u64* s = st->rng;
    u64 result = rotl(s[1] * 5, 7) * 9;
    u64 t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return (double)(result >> 11) * (1.0 / 9007199254740992.0);
}

// Top-k over a large vocabulary, first phase: block b takes the contiguous
// id range [b * chunk, (b + 1) * chunk) and writes its own top_k (in the order
// logit descending, id ascending) to slot b of cand_v / cand_i, in id order,
// padded with -inf. The global top_k lies in the union of the slots, and the
// finite entries of the slots, read in order, have ascending ids: so the
// filter below can run on the slots by index and map the index it draws to an
// id at the end, with the same ties and walks as on the whole vocabulary.
extern "C" __global__ void sample_topk_blocks(const float* w, int V, int top_k, float* cand_v,
                                              int* cand_i) {
    pdl_enter();
    __shared__ Shared s;
    const int chunk = (V + gridDim.x - 1) / gridDim.x;
    const int lo = min(V, (int)blockIdx.x * chunk), hi = min(V, lo + chunk);
    float* ov = cand_v + (long long)blockIdx.x * top_k;
    int* oi = cand_i + (long long)blockIdx.x * top_k;
    for (int i = threadIdx.x; i < top_k; i += blockDim.x) {
        ov[i] = NEG_INF;
        oi[i] = 0x7fffffff;
    }
    __syncthreads();
    if (hi <= lo) return;
    Ctx c{w + lo, hi - lo, 0.0f, 1.0f};
    Bound B{fkey(NEG_INF), -1};  // every finite logit
    Bound b;
    if (select_prefix(s, c, M_COUNT, B, (double)top_k, false, &b)) B = b;
    // Emit the kept values in id order: contiguous segments, then a scan.
    const int n = hi - lo, nt = blockDim.x;
    const int seg = (n + nt - 1) / nt;
    const int a = min(n, (int)threadIdx.x * seg), e = min(n, a + seg);
    int mine = 0;
    for (int t = a; t < e; t++) {
        float l = c.w[t];
        mine += (l != NEG_INF && in_bound(fkey(l), t, B)) ? 1 : 0;
    }
    int at = (int)block_exclusive_scan(s, (double)mine);
    for (int t = a; t < e; t++) {
        float l = c.w[t];
        if (l != NEG_INF && in_bound(fkey(l), t, B) && at < top_k) {
            ov[at] = l;
            oi[at] = lo + t;
            at++;
        }
    }
}

// One block of SAMPLE_THREADS threads. `map` (null for none) turns the index
// drawn in `w` into a token id (see sample_topk_blocks).
extern "C" __global__ void sample_filter(const float* w, int V, int top_k, float top_p,
                                         float min_p, float temperature, SamplerState* st,
                                         unsigned* counts, int* hist, int window, int* out_id,
                                         const int* map) {
    pdl_enter();
    __shared__ Shared s;
    __shared__ double u_shared;
    Ctx c{w, V, 0.0f, 1.0f / temperature};

    // The maximum (NaN is already -inf).
    float mx = NEG_INF;
    for (int t = threadIdx.x; t < V; t += blockDim.x) mx = fmaxf(mx, w[t]);
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) s.fscratch[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = NEG_INF;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, s.fscratch[i]);
        s.fscratch[0] = m;
        u_shared = next_f64(st);  // drawn up front; the host draws once per sample too
    }
    __syncthreads();
    mx = s.fscratch[0];
    c.max = mx;
    const double u = u_shared;
    int tok;
    if (mx == NEG_INF) {
        tok = -1;
    } else if (mx == INFINITY) {
        // Only the +inf tokens stay, equally likely, in id order.
        auto is_inf = [&](float l, int t) { return l == INFINITY; };
        double k = 0.0;
        for (int t = threadIdx.x; t < V; t += blockDim.x) k += w[t] == INFINITY ? 1.0 : 0.0;
        double n = block_sum(s, k);
        tok = walk_ids(s, c, M_COUNT, is_inf, 0.0, u * n, true);
        if (tok < 0) tok = walk_ids(s, c, M_COUNT, is_inf, 0.0, n, false);
    } else {
        const bool top_k_on = top_k > 0 && top_k < V;
        const bool top_p_on = top_p < 1.0f;
        Bound B{fkey(NEG_INF), -1};  // every finite logit
        if (top_k_on) {
            Bound b;
            if (select_prefix(s, c, M_COUNT, B, (double)top_k, false, &b)) B = b;
        }
        double z = 1.0;
        if (top_p_on) {
            double part = 0.0;
            for (int t = threadIdx.x; t < V; t += blockDim.x) {
                float l = w[t];
                if (l != NEG_INF && in_bound(fkey(l), t, B)) part += measure(c, M_PROB, l);
            }
            z = block_sum(s, part);
        }
        if (min_p > 0.0f) {
            float thr = __fadd_rn(mx, logf(fminf(min_p, 1.0f)));
            B = shorter(B, Bound{fkey(thr), 0x7fffffff});
        }
        if (top_p_on) {
            Bound b;
            if (select_prefix(s, c, M_PROB, B, (double)top_p * z, false, &b)) B = shorter(B, b);
        }
        double part = 0.0;
        for (int t = threadIdx.x; t < V; t += blockDim.x) {
            float l = w[t];
            if (l != NEG_INF && in_bound(fkey(l), t, B)) part += measure(c, M_WEIGHT, l);
        }
        double total = block_sum(s, part);
        double target = u * total;
        if (top_k_on || top_p_on) {
            // The host draws over the sorted candidates.
            Bound b;
            if (select_prefix(s, c, M_WEIGHT, B, target, true, &b) ||
                select_prefix(s, c, M_WEIGHT, B, total, false, &b))
                tok = b.id;
            else
                tok = -1;
        } else {
            // The host draws over the candidates in id order.
            auto kept = [&](float l, int t) { return l != NEG_INF && in_bound(fkey(l), t, B); };
            tok = walk_ids(s, c, M_WEIGHT, kept, 0.0, target, true);
            if (tok < 0) tok = walk_ids(s, c, M_WEIGHT, kept, 0.0, total, false);
        }
    }
    if (threadIdx.x == 0) {
        if (tok >= 0 && map) tok = map[tok];
        *out_id = tok;
        accept_token(tok, 0x7fffffff, st, counts, hist, window);
    }
}
