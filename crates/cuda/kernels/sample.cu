// Sampling on the device, so that only the chosen token id reaches the host.
// Semantics follow metallic::sampler (llama.cpp's chain): penalties over the
// last `window` accepted tokens, then greedy argmax (temperature <= 0), or
// top-k -> top-p -> min-p on the untempered logits and a draw from
// softmax(logit / T) of what is left, with xoshiro256** seeded like the host.
//
// Two filtered paths. sample_topk (0 < top_k <= TOPK_MAX over a large
// vocabulary, the default settings): every block takes its chunk's top_k by
// radix select on a unique 64-bit rank (logit key, then id), the last block
// to finish takes the global top_k of those candidates the same way, sorts
// them, and then runs the host's own sequence of sums on the sorted list, so
// its sums are the host's. sample_filter (every other setting, one block):
// candidate sets are never sorted; every filter keeps a prefix of the order
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

// The order-preserving key of a logit. -0.0 takes +0.0's key: the host's
// comparison holds them equal (their ids then decide).
__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    if (u == 0x80000000u) u = 0u;
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
    int ihist[256];  // the histogram of M_COUNT passes: integer counts
    double warp_part[32];
    double dscratch;
    float fscratch[32];
    int iscratch[32];
    int chosen;
    double above;
    int found_id;
};

// One count for `bin` (-1: none) in the shared histogram h. Lanes with the
// same bin add together (one atomic per distinct bin a warp instruction): the
// first radix passes see most values in a few bins, where per-lane atomics on
// one address would serialise. Every lane of the warp must call it.
__device__ __forceinline__ void hist_add(int* h, int bin) {
    const unsigned peers = __match_any_sync(FULL_MASK, bin);
    if (bin >= 0 && (int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&h[bin], __popc(peers));
}

// One warp finds the highest bin of the 256-bin histogram h at which the
// running measure, summed from the top bin down and starting at above0,
// reaches X (exceeds it when strict): its index in `chosen` (-1 when the whole
// histogram stays below) and the running measure before it in `above`, in
// every lane. Lane l holds bins 255 - 8l .. 248 - 8l; a warp scan gives each
// lane the sum above its bins, so the search takes a few steps instead of a
// chain of 256 dependent additions. For f64 measures the sums associate in
// another order than a serial scan: the same values to rounding, as the
// histogram's atomic additions (in no fixed order) already are.
template <typename T>
__device__ __forceinline__ void warp_pick_bin(const T* h, T above0, T X, bool strict, int& chosen,
                                              T& above) {
    const int lane = threadIdx.x & 31;
    T c[8];
    T sum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        c[j] = h[255 - 8 * lane - j];
        sum += c[j];
    }
    T incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        T u = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += u;
    }
    T excl = __shfl_up_sync(FULL_MASK, incl, 1);
    T a = above0 + (lane == 0 ? (T)0 : excl);
    int mine = -1;
    T mine_above = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        T nb = a + c[j];
        if (mine < 0 && (strict ? nb > X : nb >= X)) {
            mine = 255 - 8 * lane - j;
            mine_above = a;
        }
        a = nb;
    }
    const unsigned found = __ballot_sync(FULL_MASK, mine >= 0);
    const int src = found ? __ffs(found) - 1 : 0;
    chosen = found ? __shfl_sync(FULL_MASK, mine, src) : -1;
    above = __shfl_sync(FULL_MASK, mine_above, src);
}

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
    const bool count = kind == M_COUNT;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) {
            s.hist[i] = 0.0;
            s.ihist[i] = 0;
        }
        __syncthreads();
        // Trip counts uniform in a warp: hist_add needs every lane.
        for (int t0 = threadIdx.x & ~31; t0 < c.V; t0 += blockDim.x) {
            const int t = t0 + (threadIdx.x & 31);
            int bin = -1;
            float l = NEG_INF;
            if (t < c.V) {
                l = c.w[t];
                u32 k = fkey(l);
                if (l != NEG_INF && (k & pmask) == pkey && in_bound(k, t, B)) bin = (k >> shift) & 255;
            }
            if (count)
                hist_add(s.ihist, bin);
            else if (bin >= 0)
                atomicAdd(&s.hist[bin], measure(c, kind, l));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            int chosen;
            double a;
            if (count) {
                // Counts are exact integers: the same choice as in f64.
                int ai;
                warp_pick_bin<int>(s.ihist, (int)above, (int)X, strict, chosen, ai);
                a = (double)ai;
            } else {
                warp_pick_bin<double>(s.hist, above, X, strict, chosen, a);
            }
            if (threadIdx.x == 0) {
                s.chosen = chosen;
                s.above = a;
            }
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

// Among the +inf logits of w[0..V) (the host keeps exactly those, equally
// likely, in id order), the one that the uniform u draws. Every thread of the
// block calls it; rare, so a plain walk over the whole vocabulary.
__device__ int pick_infinite(Shared& s, const float* w, int V, double u) {
    Ctx c{w, V, INFINITY, 1.0f};
    auto is_inf = [&](float l, int t) { return l == INFINITY; };
    double k = 0.0;
    for (int t = threadIdx.x; t < V; t += blockDim.x) k += w[t] == INFINITY ? 1.0 : 0.0;
    double n = block_sum(s, k);
    int tok = walk_ids(s, c, M_COUNT, is_inf, 0.0, u * n, true);
    if (tok < 0) tok = walk_ids(s, c, M_COUNT, is_inf, 0.0, n, false);
    return tok;
}

// ---------------------------------------------------------------- two-phase top-k

// Threads of sample_topk (the launcher's TOPK_THREADS) and the largest top_k
// it takes (TOPK_MAX in sampler.rs).
#define TOPK_THREADS 512
#define TOPK_MAX 128
// Candidates the last block copies into shared memory before its selection;
// when more pass the lower bound, it selects from global memory instead.
#define TOPK_LIST 4096

// A logit and its id as one unique rank: larger is better in the host's order
// (logit descending, then id ascending; fkey puts -0.0 with +0.0). Only
// finite and +inf logits get a rank; every rank is >= 2^55, and 0 marks an
// empty slot.
__device__ __forceinline__ u64 rank_of(float l, int id) { return ((u64)fkey(l) << 32) | (u64)(~(u32)id); }

// The logit of a rank. -0.0 comes back as +0.0, which changes nothing below:
// a zero logit is only compared (equal either way) or has the maximum
// subtracted from it before an exp (exp(+-0) = 1, and x - +-0 = x).
__device__ __forceinline__ float rank_logit(u64 r) {
    const u32 key = (u32)(r >> 32);
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

__device__ __forceinline__ int rank_id(u64 r) { return (int)(~(u32)r); }

struct TopkShared {
    int hist[2][256];
    int chosen, above, in_bin;
    int n_list, n_top;
    bool last;
    double u;
    u64 bound;
    u64 list[TOPK_LIST];
    u64 top[TOPK_MAX];  // the selected ranks, in no order
    u64 sorted[TOPK_MAX];  // ... sorted, best first
    float logit[TOPK_MAX];
    float weight[TOPK_MAX];
    double prob[TOPK_MAX];
};

// The k largest ranks among the items: radix select, 8 bits a pass from the
// top, with integer counts, stopping as soon as the chosen bin is taken
// whole; ranks are unique, so the selection is everything >= the returned
// threshold. With fewer than k items, 1 (all of them). `items(f)` calls
// f(rank, valid) for this thread's share in a loop whose trip count is
// uniform in a warp. Every thread of the block calls it.
template <typename Items>
__device__ u64 topk_threshold(TopkShared& s, int k, Items items) {
    for (int i = threadIdx.x; i < 512; i += blockDim.x) (&s.hist[0][0])[i] = 0;
    __syncthreads();
    u64 prefix = 0, mask = 0;
    int need = k, cur = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        int* h = s.hist[cur];
        items([&](u64 r, bool valid) {
            hist_add(h, valid && (r & mask) == prefix ? (int)((r >> shift) & 255) : -1);
        });
        // The other histogram was last read before the previous pass's
        // second barrier: clear it for the next pass now.
        for (int i = threadIdx.x; i < 256; i += blockDim.x) s.hist[cur ^ 1][i] = 0;
        __syncthreads();
        if (threadIdx.x < 32) {
            int chosen, above;
            warp_pick_bin<int>(h, 0, need, false, chosen, above);
            if (threadIdx.x == 0) {
                s.chosen = chosen;
                s.above = above;
                s.in_bin = chosen >= 0 ? h[chosen] : 0;
            }
        }
        __syncthreads();
        const int chosen = s.chosen;
        // Only the first pass can fall short: later ones look inside a bin
        // that holds at least `need`.
        if (chosen < 0) return 1;
        prefix |= (u64)chosen << shift;
        mask |= 0xffull << shift;
        need -= s.above;
        if (s.in_bin == need) return prefix;  // the bin whole: everything >= prefix
        cur ^= 1;
    }
    return prefix;  // not reached: the last pass's bin holds one rank
}

// The k largest ranks among the items (see topk_threshold) into s.top[0 ..
// s.n_top), in no order. Every thread of the block calls it.
// The item walks topk_collect takes (f(rank, valid) for each item; every
// lane of a warp calls f the same number of times). Functors rather than
// generic lambdas: NVRTC in JIT mode (CUDA 13.0's) takes a lambda with an
// `auto` parameter for a host function and rejects it.

// A block's chunk [lo, hi) of the logits, four loads in flight before the
// first is used (a block's chunk is about 1,200 logits: one round at Qwen's
// vocabulary); 64-bit positions, so a vocabulary near 2^31 cannot overflow.
// NaN counts as -inf; -inf never enters.
struct ChunkItems {
    const float* w;
    long long lo, hi;
    int lane;
    template <typename F>
    __device__ void operator()(F f) const {
        for (long long t0 = lo + (threadIdx.x & ~31); t0 < hi; t0 += 4 * blockDim.x) {
            float l[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const long long t = t0 + j * blockDim.x + lane;
                l[j] = t < hi ? w[t] : NEG_INF;
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const bool valid = l[j] == l[j] && l[j] != NEG_INF;
                f(valid ? rank_of(l[j], (int)(t0 + j * blockDim.x + lane)) : 0ull, valid);
            }
        }
    }
};

// The last block's shared list of candidates.
struct ListItems {
    const u64* list;
    int n;
    int lane;
    template <typename F>
    __device__ void operator()(F f) const {
        for (int i0 = threadIdx.x & ~31; i0 < n; i0 += blockDim.x) {
            const int i = i0 + lane;
            f(i < n ? list[i] : 0ull, i < n);
        }
    }
};

// Every block's slots, read past L1 (other blocks wrote them), those at or
// above the bound L valid (the list overflowed).
struct CandItems {
    const u64* cand;
    int total;
    u64 L;
    int lane;
    template <typename F>
    __device__ void operator()(F f) const {
        for (int i0 = threadIdx.x & ~31; i0 < total; i0 += blockDim.x) {
            const int i = i0 + lane;
            const u64 r = i < total ? __ldcg(cand + i) : 0ull;
            f(r, r >= L);
        }
    }
};

template <typename Items>
__device__ void topk_collect(TopkShared& s, int k, Items items) {
    if (threadIdx.x == 0) s.n_top = 0;
    const u64 T = topk_threshold(s, k, items);  // its first barrier orders the store above
    items([&](u64 r, bool valid) {
        if (valid && r >= T) {
            const int i = atomicAdd(&s.n_top, 1);
            if (i < TOPK_MAX) s.top[i] = r;
        }
    });
    __syncthreads();
}

// Filtered draw for 0 < top_k <= TOPK_MAX over a large vocabulary, in one
// launch of gridDim.x blocks of TOPK_THREADS. Block b takes the contiguous
// ids [b * chunk, (b + 1) * chunk) and writes its top_k ranks to slot b of
// cand (0 for an empty entry) and the smallest of them to bounds[b] (0 when
// it has fewer than top_k). The global top_k lies in the union of the slots,
// and at or above the largest bound (the block holding it has top_k ranks at
// or above it). The last block to finish (atomic ticket in *counter, reset
// for the next launch) selects the global top_k from the candidates, sorts
// them, and runs the host's sequence on the sorted list: the maximum, the
// top-p normaliser z (f64, in sorted order), min-p, the top-p prefix, and the
// draw from softmax(logit / T); then writes the id (-1 when no logit is
// finite) and accepts it into the penalty window. With a +inf maximum, the
// host keeps every +inf token of the vocabulary, which the slots may not
// hold: that case walks the whole of w.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    sample_topk(const float* w, int V, int top_k, float top_p, float min_p, float temperature,
                u64* cand, u64* bounds, unsigned* counter, SamplerState* st, unsigned* counts,
                int* hist, int window, int* out_id) {
    pdl_enter();
    __shared__ TopkShared s;
    __shared__ Shared fs;
    const int lane = threadIdx.x & 31;
    const int k = max(1, min(top_k, TOPK_MAX));  // the launcher passes 1 ..= TOPK_MAX
    const int chunk = (V + gridDim.x - 1) / gridDim.x;
    const int lo = min(V, (int)blockIdx.x * chunk);
    const int hi = (int)min((long long)V, (long long)lo + chunk);

    // Phase 1: this block's top k. NaN counts as -inf; -inf never enters.
    // Four loads in flight before the first is used (a block's chunk is
    // about 1,200 logits: one round at Qwen's vocabulary).
    const ChunkItems chunk_items{w, lo, hi, lane};
    topk_collect(s, k, chunk_items);
    const int n = min(s.n_top, k);
    u64* slot = cand + (long long)blockIdx.x * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) slot[i] = i < n ? s.top[i] : 0ull;
    if (threadIdx.x < 32) {
        u64 m = ~0ull;
        for (int i = lane; i < n; i += 32) m = min(m, s.top[i]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = min(m, __shfl_xor_sync(FULL_MASK, m, o));
        if (lane == 0) bounds[blockIdx.x] = n == k ? m : 0ull;
    }
    // Every writer's stores are visible device-wide before the ticket.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s.last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!s.last) return;
    __threadfence();

    // Phase 2 (the last block): the global top k. Other blocks wrote the
    // slots: loads go past L1.
    if (threadIdx.x == 0) {
        s.u = next_f64(st);  // drawn once per sample, as on the host
        s.bound = 1;
        s.n_list = 0;
    }
    __syncthreads();
    {
        u64 b = 1;
        for (int i = threadIdx.x; i < (int)gridDim.x; i += blockDim.x) b = max(b, __ldcg(bounds + i));
        if (b > 1) atomicMax(&s.bound, b);
    }
    __syncthreads();
    const u64 L = s.bound;
    const int total = gridDim.x * k;
    // The candidates at or above L into shared memory, a warp's in one
    // atomic, four loads in flight.
    for (int i0 = threadIdx.x & ~31; i0 < total; i0 += 4 * blockDim.x) {
        u64 r[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = i0 + j * blockDim.x + lane;
            r[j] = i < total ? __ldcg(cand + i) : 0ull;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const bool keep = r[j] >= L;
            const unsigned m = __ballot_sync(FULL_MASK, keep);
            int base = 0;
            if (lane == 0 && m) base = atomicAdd(&s.n_list, __popc(m));
            base = __shfl_sync(FULL_MASK, base, 0);
            const int at = base + __popc(m & ((1u << lane) - 1u));
            if (keep && at < TOPK_LIST) s.list[at] = r[j];
        }
    }
    __syncthreads();
    const int n_list = s.n_list;
    if (n_list <= TOPK_LIST) {
        topk_collect(s, k, ListItems{s.list, n_list, lane});
    } else {
        topk_collect(s, k, CandItems{cand, total, L, lane});
    }
    const int nt = min(s.n_top, k);
    // Sorted by counting: a rank's place is the number of larger ones.
    if (threadIdx.x < nt) {
        const u64 r = s.top[threadIdx.x];
        int at = 0;
        for (int j = 0; j < nt; j++) at += s.top[j] > r ? 1 : 0;
        s.sorted[at] = r;
    }
    __syncthreads();
    const float mx = nt > 0 ? rank_logit(s.sorted[0]) : NEG_INF;
    const float inv_t = 1.0f / temperature;
    int tok = -1;
    if (mx == INFINITY) {
        tok = pick_infinite(fs, w, V, s.u);
    } else if (nt > 0) {
        // The host's terms, each computed once in parallel: exp(l - max) (its
        // f32 exp, then widened) and the draw's weight exp((l - max) / T).
        if (threadIdx.x < nt) {
            const float l = rank_logit(s.sorted[threadIdx.x]);
            s.logit[threadIdx.x] = l;
            s.prob[threadIdx.x] = (double)expf(__fsub_rn(l, mx));
            s.weight[threadIdx.x] = expf(__fmul_rn(__fsub_rn(l, mx), inv_t));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Then the host's sums, in its order (crates/core/src/sampler.rs:
            // filter, top_p_prefix, draw): chains of f64 additions in lane 0.
            const bool top_p_on = top_p < 1.0f;
            if (top_p_on) {
                double z = 0.0;
                if (lane == 0)
                    for (int i = 0; i < nt; i++) z += s.prob[i];
                z = __shfl_sync(FULL_MASK, z, 0);
                // Each probability over z, the host's quotients, in parallel.
                for (int i = lane; i < nt; i += 32) s.prob[i] = s.prob[i] / z;
                __syncwarp();
            }
            if (lane != 0) return;
            int m = nt;
            if (min_p > 0.0f) {
                // Sorted, so min-p keeps a prefix (and at least the maximum).
                const float thr = __fadd_rn(mx, logf(fminf(min_p, 1.0f)));
                m = 0;
                while (m < nt && s.logit[m] >= thr) m++;
            }
            if (top_p_on) {
                double cum = 0.0;
                for (int i = 0; i < m; i++) {
                    cum += s.prob[i];
                    if (cum >= (double)top_p) {
                        m = i + 1;
                        break;
                    }
                }
            }
            double sum = 0.0;
            for (int i = 0; i < m; i++) sum += (double)s.weight[i];
            const double target = s.u * sum;
            double acc = 0.0;
            int pick = -1;
            for (int i = 0; i < m; i++) {
                acc += (double)s.weight[i];
                if (acc > target) {
                    pick = i;
                    break;
                }
            }
            // Rounding left the target at the very top: the last candidate
            // with any weight, as on the host.
            for (int i = m - 1; pick < 0 && i >= 0; i--)
                if (s.weight[i] > 0.0f) pick = i;
            if (pick < 0) pick = 0;
            tok = rank_id(s.sorted[pick]);
        }
    }
    if (threadIdx.x == 0) {
        *out_id = tok;
        accept_token(tok, V, st, counts, hist, window);
        *counter = 0;
    }
}

// ---------------------------------------------------------------- one-block filter

// Every filtered setting sample_topk does not take (top_k off or above
// TOPK_MAX, small vocabularies): one block of SAMPLE_THREADS threads.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_filter(const float* w, int V, int top_k, float top_p, float min_p, float temperature,
                  SamplerState* st, unsigned* counts, int* hist, int window, int* out_id) {
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
        tok = pick_infinite(s, w, V, u);
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
        *out_id = tok;
        accept_token(tok, V, st, counts, hist, window);
    }
}
