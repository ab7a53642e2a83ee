//! Causal grouped-query attention over the f32 KV cache, and the tiled
//! (flash-attention style) core that the paged cache's attention shares; its
//! SIMD kernels are in `attention_simd.rs`.

use crate::attention_simd::{kernels, AttnKernels, Tile, PAD, TILE};
use crate::shared_out::SharedOut;
use metallic::backend::QkvLayout;
use rayon::prelude::*;

/// Copy K and V heads of each row of `qkv` to the cache at its position.
pub fn kv_store(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    capacity: usize,
    pos: &[i32],
    m: usize,
    l: &QkvLayout,
) {
    let hd = l.head_dim;
    let width = l.row_width();
    for (i, &p) in pos.iter().enumerate().take(m) {
        let p = p as usize;
        let row = &qkv[i * width..(i + 1) * width];
        let k = &row[l.n_heads * hd..(l.n_heads + l.n_kv_heads) * hd];
        let v = &row[(l.n_heads + l.n_kv_heads) * hd..];
        for h in 0..l.n_kv_heads {
            let dst = (h * capacity + p) * hd;
            k_cache[dst..dst + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            v_cache[dst..dst + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }
}

/// An element type of a KV cache: f32, or f16 in the paged cache. Values are
/// rounded once when stored and read back as f32, so the attention's
/// arithmetic is the same for both.
pub trait KvElem: Copy + Send + Sync {
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = src[i]` as f32 (both of one length).
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    /// The values themselves where they are f32 already.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
}

impl KvElem for f32 {
    #[inline]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline]
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    #[inline]
    fn as_f32(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }
}

impl KvElem for half::f16 {
    #[inline]
    fn from_f32(v: f32) -> half::f16 {
        half::f16::from_f32(v)
    }
    #[inline]
    fn to_f32_slice(src: &[half::f16], dst: &mut [f32]) {
        // The slice conversion uses F16C / FP16 instructions where the CPU has them.
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst)
    }
    #[inline]
    fn as_f32(_: &[half::f16]) -> Option<&[f32]> {
        None
    }
}

/// Where a call's rows find their keys and values: the flat cache here, the
/// block tables in `paged_attention.rs`.
pub(crate) trait Keys: Sync {
    type Elem: KvElem;
    fn k(&self) -> &[Self::Elem];
    fn v(&self) -> &[Self::Elem];
    /// Offset in `k()` and `v()` of the `head_dim` values of position `t` of
    /// KV head `kvh`, as row `i` reads them (`t <= pos[i]`).
    fn at(&self, i: usize, kvh: usize, t: usize) -> usize;
    /// Whether row `j` finds every position up to its own and row `i`'s where
    /// row `i` finds them (the same sequence), so the rows can share key tiles.
    fn same_keys(&self, i: usize, j: usize) -> bool;
}

/// The flat cache: KV head `h`'s position `t` at `(h * capacity + t) * head_dim`.
struct Flat<'a> {
    k: &'a [f32],
    v: &'a [f32],
    capacity: usize,
    head_dim: usize,
}

impl Keys for Flat<'_> {
    type Elem = f32;
    fn k(&self) -> &[f32] {
        self.k
    }
    fn v(&self) -> &[f32] {
        self.v
    }
    #[inline]
    fn at(&self, _: usize, kvh: usize, t: usize) -> usize {
        (kvh * self.capacity + t) * self.head_dim
    }
    fn same_keys(&self, _: usize, _: usize) -> bool {
        true
    }
}

/// Per-thread buffers of [`attend`], grown to the largest call and reused, so
/// a decode step allocates nothing.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, `hdp` floats each (zero-padded).
    q: Vec<f32>,
    /// Running outputs, `hdp` floats each.
    o: Vec<f32>,
    /// Running max and sum of each query.
    ml: Vec<[f32; 2]>,
    /// Keys each query sees: its position + 1.
    lim: Vec<u32>,
    /// Keys each query sees from the current tile's first.
    seen: Vec<u32>,
    /// Queries that see any key of the current tile.
    active: Vec<u32>,
    /// The key tile transposed (`head_dim` x TILE) and the value tile (TILE x hdp).
    kt: Vec<f32>,
    v: Vec<f32>,
    /// Where each key of the tile starts, in the cache or in `rows`.
    offs: Vec<usize>,
    /// The tile's keys as f32 rows, where the cache holds another type.
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Keys and values read by one call: what decides whether to use the pool.
/// `pos` must already be checked (non-negative, within the cache).
pub fn work(pos: &[i32], m: usize, l: &QkvLayout) -> usize {
    pos[..m].iter().map(|&p| p as usize + 1).sum::<usize>() * l.n_heads * l.head_dim
}

/// `out[i, h*hd..]` = softmax(q_h . K^T * scale) V over positions `0..=pos[i]`,
/// over (KV head, block of rows) tasks in parallel or, for decode-sized work,
/// serially (the same result either way).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    parallel: bool,
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    capacity: usize,
    pos: &[i32],
    m: usize,
    l: &QkvLayout,
    out: &mut [f32],
) {
    let keys = Flat {
        k: k_cache,
        v: v_cache,
        capacity,
        head_dim: l.head_dim,
    };
    attend(kernels(), parallel, &keys, qkv, pos, m, l, out)
}

/// How the work is cut into tasks: blocks of `rows` rows, and each KV head's
/// group of query heads in `splits` parts of `heads` heads. Enough queries per
/// task (rows times heads) that each key and value tile loaded serves many;
/// on the pool, several tasks per thread, and where there are fewer tasks
/// than threads (decode) the heads split, though each part then loads the
/// tiles again. The result does not depend on it.
fn task_shape(parallel: bool, m: usize, group: usize, n_kv_heads: usize) -> (usize, usize, usize) {
    let by_reuse = (96 / group).max(1);
    if !parallel {
        return (by_reuse, group, 1);
    }
    let threads = crate::matmul::threads();
    let rows = by_reuse.min((m * n_kv_heads).div_ceil(4 * threads)).max(1);
    let tasks = m.div_ceil(rows) * n_kv_heads;
    let heads = group.div_ceil(threads.div_ceil(tasks).min(group));
    (rows, heads, group.div_ceil(heads))
}

/// Flash-style attention: for each task (a KV head, a block of rows and some
/// of the KV head's query heads), the tasks' queries walk the keys in tiles of
/// [`TILE`], each tile transposed once into scratch and used by all of them,
/// softmax kept online (running max and sum), so no row-by-length score
/// matrix exists. Rows that do not share keys (other sequences of a batch)
/// run as separate groups within a task.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<S: Keys>(
    kern: &AttnKernels,
    parallel: bool,
    keys: &S,
    qkv: &[f32],
    pos: &[i32],
    m: usize,
    l: &QkvLayout,
    out: &mut [f32],
) {
    let group = l.n_heads / l.n_kv_heads;
    if parallel && m == 1 {
        let len = pos[0] as usize + 1;
        let chunks = position_chunks(len, l.n_kv_heads, crate::matmul::threads());
        if chunks > 1 {
            return attend_chunks(kern, keys, qkv, pos, len, chunks, l, out);
        }
    }
    let (rows, heads, splits) = task_shape(parallel, m, group, l.n_kv_heads);
    let blocks = m.div_ceil(rows);
    let per_block = l.n_kv_heads * splits;
    let optr = SharedOut::new(out);
    let task = |s: &mut Scratch, t: usize| {
        // Later rows see more keys: hand their tasks out first.
        let b = blocks - 1 - t / per_block;
        let (kvh, part) = (t % per_block / splits, t % splits);
        let hs = part * heads..((part + 1) * heads).min(group);
        let end = ((b + 1) * rows).min(m);
        let mut i = b * rows;
        while i < end {
            let mut j = i + 1;
            while j < end && keys.same_keys(i, j) {
                j += 1;
            }
            let dest = Dest::Out(optr);
            attend_rows(
                kern,
                s,
                keys,
                qkv,
                pos,
                i..j,
                kvh,
                hs.clone(),
                l,
                None,
                dest,
            );
            i = j;
        }
    };
    let tasks = blocks * per_block;
    if parallel {
        let one = |t: usize| SCRATCH.with(|cell| task(&mut cell.borrow_mut(), t));
        // On the decode team where the caller set one (a decode step's
        // attention is tens of microseconds: waking the rayon pool for it
        // cost about as much, and its threads then competed for the cores
        // with the team's spinning workers), else in the current pool.
        if crate::team::current(|team| team.run(tasks, &one)).is_none() {
            (0..tasks).into_par_iter().for_each(one);
        }
    } else {
        SCRATCH.with(|cell| {
            let s = &mut cell.borrow_mut();
            (0..tasks).for_each(|t| task(s, t));
        });
    }
}

/// Keys a position chunk of a long decode step takes at least (see
/// [`position_chunks`]): two tiles, so that a chunk's fixed costs (its
/// queries, its partial results) stay small beside its keys. Two tiles
/// rather than four: SmolLM2 decode at ~300 keys on 2 threads, seven
/// alternating rounds, 1-9% faster every round (BENCHMARKS.md).
const CHUNK_MIN: usize = 2 * TILE;

/// How many chunks of positions a single-row step of `len` keys is cut into,
/// per KV head: 1 (no split) below two chunks' worth of keys; else enough
/// chunks for two tasks a thread, each at least [`CHUNK_MIN`] keys. Splitting
/// positions rather than heads keeps every tile packed once: a long
/// context's attention on SmolLM2 (3 KV heads) ran 3 tasks on 2 threads, and
/// splitting heads instead re-packed each tile three times and was slower.
fn position_chunks(len: usize, n_kv_heads: usize, threads: usize) -> usize {
    if threads <= 1 || len < 2 * CHUNK_MIN {
        return 1;
    }
    (2 * threads).div_ceil(n_kv_heads).clamp(1, len / CHUNK_MIN)
}

thread_local! {
    /// The partial results of [`attend_chunks`] (on the calling thread,
    /// reused: a decode step allocates nothing once it has grown).
    static PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where [`attend_rows`] puts its queries' results: normalised into `out`,
/// or (a chunk of positions) the running max, sum and unnormalised output of
/// query head `h` at `buf[(h * chunks + chunk) * (hd + 2)..]`, merged later.
#[derive(Clone, Copy)]
enum Dest {
    Out(SharedOut),
    Partial {
        buf: SharedOut,
        chunk: usize,
        chunks: usize,
    },
}

/// One row's attention (`pos[0] + 1 = len` keys) split into `chunks` ranges of
/// whole tiles per KV head, on the current team or pool; then each query
/// head's partial results are merged (flash-decoding): the maxima brought to
/// the largest, sums and outputs weighted by `exp(m_c - m)`.
#[allow(clippy::too_many_arguments)]
fn attend_chunks<S: Keys>(
    kern: &AttnKernels,
    keys: &S,
    qkv: &[f32],
    pos: &[i32],
    len: usize,
    chunks: usize,
    l: &QkvLayout,
    out: &mut [f32],
) {
    let (group, hd) = (l.n_heads / l.n_kv_heads, l.head_dim);
    let stride = hd + 2;
    let tiles = len.div_ceil(TILE);
    PARTIALS.with_borrow_mut(|parts| {
        parts.clear();
        parts.resize(l.n_heads * chunks * stride, 0.0);
        let buf = SharedOut::new(parts);
        let one = |t: usize| {
            let (kvh, chunk) = (t / chunks, t % chunks);
            let range =
                (chunk * tiles / chunks * TILE)..((chunk + 1) * tiles / chunks * TILE).min(len);
            let dest = Dest::Partial { buf, chunk, chunks };
            SCRATCH.with(|cell| {
                let s = &mut cell.borrow_mut();
                attend_rows(
                    kern,
                    s,
                    keys,
                    qkv,
                    pos,
                    0..1,
                    kvh,
                    0..group,
                    l,
                    Some(range),
                    dest,
                );
            });
        };
        let tasks = l.n_kv_heads * chunks;
        if crate::team::current(|team| team.run(tasks, &one)).is_none() {
            (0..tasks).into_par_iter().for_each(one);
        }
        for h in 0..l.n_heads {
            let p = &parts[h * chunks * stride..(h + 1) * chunks * stride];
            let mx = p
                .chunks_exact(stride)
                .fold(f32::NEG_INFINITY, |a, c| a.max(c[0]));
            let o = &mut out[h * hd..(h + 1) * hd];
            o.fill(0.0);
            let mut sum = 0.0f32;
            for c in p.chunks_exact(stride) {
                let w = (c[0] - mx).exp();
                sum += c[1] * w;
                for (y, &x) in o.iter_mut().zip(&c[2..]) {
                    *y += x * w;
                }
            }
            let inv = 1.0 / sum;
            for y in o.iter_mut() {
                *y *= inv;
            }
        }
    });
}

/// Attention of rows `rows` (which share their keys) for the query heads
/// `hs` (of `0..group`) of KV head `kvh`, into their slices of `out`.
#[allow(clippy::too_many_arguments)]
fn attend_rows<S: Keys>(
    kern: &AttnKernels,
    s: &mut Scratch,
    keys: &S,
    qkv: &[f32],
    pos: &[i32],
    rows: std::ops::Range<usize>,
    kvh: usize,
    hs: std::ops::Range<usize>,
    l: &QkvLayout,
    positions: Option<std::ops::Range<usize>>,
    dest: Dest,
) {
    let hd = l.head_dim;
    let hdp = hd.next_multiple_of(PAD);
    let group = l.n_heads / l.n_kv_heads;
    let width = l.row_width();
    let scale = 1.0 / (hd as f32).sqrt();
    let g = hs.len();
    let nq = rows.len() * g;
    // Query qi is head kvh * group + hs.start + qi % g of row rows.start + qi / g.
    s.q.clear();
    s.q.resize(nq * hdp, 0.0);
    s.o.clear();
    s.o.resize(nq * hdp, 0.0);
    s.ml.clear();
    s.ml.resize(nq, [f32::NEG_INFINITY, 0.0]);
    s.lim.clear();
    for (r, i) in rows.clone().enumerate() {
        for hh in 0..g {
            let h = kvh * group + hs.start + hh;
            let q = &qkv[i * width + h * hd..][..hd];
            let qi = r * g + hh;
            for (d, &x) in s.q[qi * hdp..][..hd].iter_mut().zip(q) {
                *d = x * scale;
            }
            s.lim.push(pos[i] as u32 + 1);
        }
    }
    s.seen.clear();
    s.seen.resize(nq, 0);
    s.kt.clear();
    s.kt.resize(hd * TILE, 0.0);
    s.v.clear();
    s.v.resize(TILE * hdp, 0.0);
    s.offs.clear();
    // Every key the rows see, or (a chunk of a long step) the chunk's.
    let all = 0..rows.clone().map(|i| pos[i] as usize + 1).max().unwrap_or(0);
    let keys_range = positions.unwrap_or(all);
    let len = keys_range.end;
    let (kc, vc) = (keys.k(), keys.v());
    for t0 in keys_range.step_by(TILE) {
        let nk = TILE.min(len - t0);
        if nk < TILE {
            s.kt.fill(0.0);
        }
        s.offs.clear();
        s.offs
            .extend((0..nk).map(|j| keys.at(rows.start, kvh, t0 + j)));
        // The value tile straight from an f32 cache where its rows lie one
        // after another unpadded (the flat cache, a paged block): the copy
        // was a third of a long context's attention time. Same values.
        let direct = match S::Elem::as_f32(vc) {
            Some(vf) if hd == hdp && s.offs.windows(2).all(|w| w[1] == w[0] + hd) => {
                Some(&vf[s.offs[0]..s.offs[0] + nk * hd])
            }
            _ => None,
        };
        if direct.is_none() {
            for (j, &at) in s.offs.iter().enumerate() {
                S::Elem::to_f32_slice(&vc[at..at + hd], &mut s.v[j * hdp..j * hdp + hd]);
            }
        }
        if let Some(kc) = S::Elem::as_f32(kc) {
            kern.pack_keys(kc, &s.offs, hd, &mut s.kt);
        } else {
            s.rows.resize(TILE * hd, 0.0);
            for (j, at) in s.offs.iter_mut().enumerate() {
                S::Elem::to_f32_slice(&kc[*at..*at + hd], &mut s.rows[j * hd..(j + 1) * hd]);
                *at = j * hd;
            }
            kern.pack_keys(&s.rows, &s.offs, hd, &mut s.kt);
        }
        s.active.clear();
        for (qi, (&lim, seen)) in s.lim.iter().zip(s.seen.iter_mut()).enumerate() {
            let lim = (lim as usize).min(len);
            if lim > t0 {
                *seen = (lim - t0).min(TILE) as u32;
                s.active.push(qi as u32);
            }
        }
        let mut tile = Tile {
            kt: &s.kt,
            v: direct.unwrap_or(&s.v),
            hd,
            hdp,
            nk,
            q: &s.q,
            o: &mut s.o,
            ml: &mut s.ml,
            seen: &s.seen,
        };
        kern.tile(&mut tile, &s.active);
    }
    let out_width = l.n_heads * hd;
    let out = match dest {
        Dest::Out(out) => out,
        Dest::Partial { buf, chunk, chunks } => {
            for hh in 0..g {
                let h = kvh * group + hs.start + hh;
                // SAFETY: query head h's slot of this chunk belongs to this task
                // alone; the buffer holds n_heads * chunks slots of hd + 2.
                let slot = unsafe {
                    std::slice::from_raw_parts_mut(
                        buf.ptr().add((h * chunks + chunk) * (hd + 2)),
                        hd + 2,
                    )
                };
                slot[0] = s.ml[hh][0];
                slot[1] = s.ml[hh][1];
                slot[2..].copy_from_slice(&s.o[hh * hdp..][..hd]);
            }
            return;
        }
    };
    for (r, i) in rows.enumerate() {
        for hh in 0..g {
            let qi = r * g + hh;
            let h = kvh * group + hs.start + hh;
            let inv = 1.0 / s.ml[qi][1];
            // SAFETY: each (row, head) belongs to exactly one task, which
            // writes its own hd-wide slice of out.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.ptr().add(i * out_width + h * hd), hd)
            };
            for (y, &x) in o.iter_mut().zip(&s.o[qi * hdp..][..hd]) {
                *y = x * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vec_dot::SimdLevel;
    use metallic::rng::Xoshiro256;

    /// Six query heads on two KV heads (groups of three), head dim 12: no
    /// size here is a power of two or a multiple of a SIMD width.
    const L: QkvLayout = QkvLayout {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 12,
    };
    const CAPACITY: usize = 53;

    fn values(r: &mut Xoshiro256, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (r.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// A cache holding random K/V at positions `0..filled` and NaN beyond,
    /// so that reading past a row's position shows up in the result.
    fn cache(r: &mut Xoshiro256, l: &QkvLayout, cap: usize, filled: usize) -> (Vec<f32>, Vec<f32>) {
        let mut k = vec![f32::NAN; l.n_kv_heads * cap * l.head_dim];
        let mut v = k.clone();
        for h in 0..l.n_kv_heads {
            let at = h * cap * l.head_dim;
            let len = filled * l.head_dim;
            k[at..at + len].copy_from_slice(&values(r, len));
            v[at..at + len].copy_from_slice(&values(r, len));
        }
        (k, v)
    }

    /// softmax(q . K^T / sqrt(hd)) V over positions `0..=pos`, in f64, with
    /// query head h reading KV head h / (n_heads / n_kv_heads).
    fn reference(
        l: &QkvLayout,
        cap: usize,
        qkv: &[f32],
        k: &[f32],
        v: &[f32],
        pos: &[i32],
    ) -> Vec<f64> {
        let hd = l.head_dim;
        let group = l.n_heads / l.n_kv_heads;
        let mut out = Vec::new();
        for (i, &p) in pos.iter().enumerate() {
            for h in 0..l.n_heads {
                let q = &qkv[i * l.row_width() + h * hd..][..hd];
                let base = (h / group) * cap * hd;
                let scores: Vec<f64> = (0..=p as usize)
                    .map(|t| {
                        let kt = &k[base + t * hd..][..hd];
                        q.iter()
                            .zip(kt)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for j in 0..hd {
                    out.push(
                        e.iter()
                            .enumerate()
                            .map(|(t, w)| w / sum * v[base + t * hd + j] as f64)
                            .sum(),
                    );
                }
            }
        }
        out
    }

    /// Attention at one SIMD level.
    #[allow(clippy::too_many_arguments)]
    fn at_level(
        kern: &AttnKernels,
        parallel: bool,
        l: &QkvLayout,
        cap: usize,
        qkv: &[f32],
        k: &[f32],
        v: &[f32],
        pos: &[i32],
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; pos.len() * l.n_heads * l.head_dim];
        let keys = Flat {
            k,
            v,
            capacity: cap,
            head_dim: l.head_dim,
        };
        attend(kern, parallel, &keys, qkv, pos, pos.len(), l, &mut out);
        out
    }

    fn assert_close(got: &[f32], want: &[f64], l: &QkvLayout, what: &str, tol: f64) {
        let width = l.n_heads * l.head_dim;
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() < tol,
                "{what}: row {} head {}: {g} vs {w}",
                i / width,
                i % width / l.head_dim
            );
        }
    }

    /// Stores the rows' K/V at `pos` over a cache of `prefix` positions, runs
    /// attention serially and on the pool at every SIMD level this CPU has,
    /// and checks each against the f64 reference over the same cache; at
    /// each level serial and pooled agree bit for bit, and so does each row
    /// attended alone (no row's result depends on the others of its call).
    fn check_layout(seed: u64, l: &QkvLayout, cap: usize, prefix: usize, pos: &[i32]) {
        let mut r = Xoshiro256::new(seed);
        let m = pos.len();
        let (mut k, mut v) = cache(&mut r, l, cap, prefix);
        let qkv = values(&mut r, m * l.row_width());
        kv_store(&qkv, &mut k, &mut v, cap, pos, m, l);
        // The stored rows are the K and V heads of each row, at its position.
        for (i, &p) in pos.iter().enumerate() {
            let row = &qkv[i * l.row_width()..];
            for h in 0..l.n_kv_heads {
                let at = (h * cap + p as usize) * l.head_dim;
                let kh = (l.n_heads + h) * l.head_dim;
                let vh = (l.n_heads + l.n_kv_heads + h) * l.head_dim;
                assert_eq!(k[at..at + l.head_dim], row[kh..kh + l.head_dim]);
                assert_eq!(v[at..at + l.head_dim], row[vh..vh + l.head_dim]);
            }
        }
        let want = reference(l, cap, &qkv, &k, &v, pos);
        let width = l.n_heads * l.head_dim;
        let mut serial = vec![f32::NAN; m * width];
        attention(false, &qkv, &k, &v, cap, pos, m, l, &mut serial);
        let mut pooled = vec![f32::NAN; m * width];
        attention(true, &qkv, &k, &v, cap, pos, m, l, &mut pooled);
        assert_eq!(serial, pooled, "serial and pooled paths differ");
        assert_close(&serial, &want, l, "default level", 1e-5);
        let mut levels = 0;
        for level in SimdLevel::ALL {
            let Some(kern) = AttnKernels::for_level(level) else {
                continue;
            };
            let name = level.name();
            let serial = at_level(&kern, false, l, cap, &qkv, &k, &v, pos);
            let pooled = at_level(&kern, true, l, cap, &qkv, &k, &v, pos);
            assert_eq!(serial, pooled, "{name}: serial and pooled paths differ");
            assert_close(&serial, &want, l, name, 1e-5);
            for (i, &p) in pos.iter().enumerate() {
                let row = &qkv[i * l.row_width()..(i + 1) * l.row_width()];
                let alone = at_level(&kern, false, l, cap, row, &k, &v, &[p]);
                assert_eq!(
                    alone,
                    serial[i * width..(i + 1) * width],
                    "{name}: row {i} alone differs from row {i} of the call"
                );
            }
            levels += 1;
        }
        assert!(levels >= 1, "the scalar level always runs");
        assert_eq!(
            work(pos, m, l),
            pos.iter().map(|&p| p as usize + 1).sum::<usize>() * width
        );
    }

    fn check(seed: u64, prefix: usize, pos: &[i32]) {
        check_layout(seed, &L, CAPACITY, prefix, pos)
    }

    #[test]
    fn decode_step_attends_to_every_cached_position() {
        // 37 cached positions, the new token at 37: 38 keys.
        check(1, 37, &[37]);
    }

    /// A long single-row step on a pool splits its positions into chunks
    /// per KV head and merges them (`attend_chunks`): within 1e-5 of the f64
    /// reference at every SIMD level, and of the serial one-pass result, for
    /// head dimensions 64 (value tiles read in place) and 12 (padded copies),
    /// lengths just past the split and far beyond it, 2 and 8 threads.
    #[test]
    fn long_decode_split_into_position_chunks_matches_the_reference() {
        for (nh, nkv, hd, cap, at) in [
            (6, 2, 64, 1400, 1300),
            (6, 2, 12, 600, 2 * CHUNK_MIN),
            (6, 2, 64, 700, 600),
            (9, 3, 64, 2048, 700),
        ] {
            let l = QkvLayout {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let len = at + 1;
            assert!(position_chunks(len, nkv, 2) > 1 && position_chunks(len, nkv, 8) > 1);
            assert_eq!(position_chunks(2 * CHUNK_MIN - 1, 2, 8), 1);
            let mut r = Xoshiro256::new(hd as u64 + at as u64);
            let (mut k, mut v) = cache(&mut r, &l, cap, at);
            // Sharp scores (queries times 8) and a sink at position 3 (keys
            // there along the queries), so that the chunks' maxima differ.
            let mut qkv = values(&mut r, l.row_width());
            for x in &mut qkv[..l.n_heads * hd] {
                *x *= 8.0;
            }
            for kvh in 0..l.n_kv_heads {
                for d in 0..hd {
                    k[(kvh * cap + 3) * hd + d] = qkv[kvh * (l.n_heads / l.n_kv_heads) * hd + d];
                }
            }
            let pos = [at as i32];
            kv_store(&qkv, &mut k, &mut v, cap, &pos, 1, &l);
            let want = reference(&l, cap, &qkv, &k, &v, &pos);
            let mut serial = vec![f32::NAN; l.n_heads * hd];
            attention(false, &qkv, &k, &v, cap, &pos, 1, &l, &mut serial);
            for threads in [2, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for level in SimdLevel::ALL {
                    let Some(kern) = AttnKernels::for_level(level) else {
                        continue;
                    };
                    let got = pool.install(|| at_level(&kern, true, &l, cap, &qkv, &k, &v, &pos));
                    let what = format!("hd {hd}, {len} keys, {threads} threads, {}", level.name());
                    assert_close(&got, &want, &l, &what, 1e-5);
                    for (g, s) in got.iter().zip(&serial) {
                        assert!((g - s).abs() <= 1e-5, "{what}: {g} vs serial {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn decode_at_position_zero_returns_the_value_row() {
        let mut r = Xoshiro256::new(2);
        let (mut k, mut v) = cache(&mut r, &L, CAPACITY, 0);
        let qkv = values(&mut r, L.row_width());
        kv_store(&qkv, &mut k, &mut v, CAPACITY, &[0], 1, &L);
        let mut out = vec![f32::NAN; L.n_heads * L.head_dim];
        attention(false, &qkv, &k, &v, CAPACITY, &[0], 1, &L, &mut out);
        // One key: weight 1 on its value, which each head takes from its KV head.
        let v_row = &qkv[(L.n_heads + L.n_kv_heads) * L.head_dim..];
        for h in 0..L.n_heads {
            let kvh = h / (L.n_heads / L.n_kv_heads);
            assert_eq!(
                out[h * L.head_dim..(h + 1) * L.head_dim],
                v_row[kvh * L.head_dim..(kvh + 1) * L.head_dim]
            );
        }
    }

    #[test]
    fn prefill_is_causal_from_an_empty_cache() {
        let pos: Vec<i32> = (0..13).collect();
        check(3, 0, &pos);
    }

    #[test]
    fn prefill_continues_after_a_cached_prefix() {
        let pos: Vec<i32> = (19..30).collect();
        check(4, 19, &pos);
    }

    #[test]
    fn a_full_cache_is_read_to_its_last_position() {
        let pos: Vec<i32> = (CAPACITY as i32 - 3..CAPACITY as i32).collect();
        check(5, CAPACITY - 3, &pos);
    }

    /// Groups of 1, 3 and 7 query heads per KV head, head dims 12 and 64
    /// (and 80: a block of four AVX-512 vectors and one more).
    const LAYOUTS: [QkvLayout; 5] = [
        QkvLayout {
            n_heads: 3,
            n_kv_heads: 3,
            head_dim: 12,
        },
        QkvLayout {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 64,
        },
        QkvLayout {
            n_heads: 7,
            n_kv_heads: 1,
            head_dim: 12,
        },
        QkvLayout {
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
        },
        QkvLayout {
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 80,
        },
    ];

    #[test]
    fn ragged_prefill_over_several_key_tiles_matches_the_reference() {
        // 70 rows after a cached prefix of 45: keys 46..=115, two whole tiles
        // of 64 and a ragged one, rows split over tasks at odd places.
        let pos: Vec<i32> = (45..115).collect();
        for (n, l) in LAYOUTS.iter().enumerate() {
            check_layout(10 + n as u64, l, 131, 45, &pos);
        }
    }

    #[test]
    fn prefill_from_empty_and_decode_deep_in_the_cache_match_the_reference() {
        let pos: Vec<i32> = (0..67).collect();
        for (n, l) in LAYOUTS.iter().enumerate() {
            check_layout(20 + n as u64, l, 67, 0, &pos);
            // 129 keys: two whole tiles and one key.
            check_layout(30 + n as u64, l, 131, 128, &[128]);
        }
    }

    #[test]
    fn rows_in_any_order_see_only_their_own_positions() {
        // A batch is not sorted by position, and rows of a task see different
        // numbers of tiles: 0, 1 and 2 tiles past a row's own.
        let pos = [70, 3, 64, 63, 0, 127, 65];
        let filled = 128;
        let mut r = Xoshiro256::new(40);
        let l = LAYOUTS[3];
        let cap = 130;
        let (k, v) = cache(&mut r, &l, cap, filled);
        let qkv = values(&mut r, pos.len() * l.row_width());
        let want = reference(&l, cap, &qkv, &k, &v, &pos);
        for level in SimdLevel::ALL {
            let Some(kern) = AttnKernels::for_level(level) else {
                continue;
            };
            for parallel in [false, true] {
                let got = at_level(&kern, parallel, &l, cap, &qkv, &k, &v, &pos);
                assert_close(&got, &want, &l, level.name(), 1e-5);
            }
        }
    }

    /// Decode attention on the decode team (heads split over its threads)
    /// writes what the serial call does, bit for bit, for every team size.
    #[test]
    fn decode_on_the_team_matches_the_serial_call_bit_for_bit() {
        let mut r = Xoshiro256::new(60);
        let kern = kernels();
        for l in LAYOUTS {
            let cap = 150;
            let (k, v) = cache(&mut r, &l, cap, 140);
            for pos in [vec![139], vec![5, 139, 77]] {
                let qkv = values(&mut r, pos.len() * l.row_width());
                let serial = at_level(kern, false, &l, cap, &qkv, &k, &v, &pos);
                for threads in [2, 3, 8] {
                    let team = crate::team::Team::new(threads);
                    let teamed = crate::team::with(&team, || {
                        at_level(kern, true, &l, cap, &qkv, &k, &v, &pos)
                    });
                    let same = serial
                        .iter()
                        .zip(&teamed)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{l:?} pos={pos:?} threads={threads}");
                }
            }
        }
    }

    #[test]
    fn every_simd_level_is_close_to_the_scalar_level() {
        // Scores far apart (large queries): the softmax's exp and its running
        // max are exercised, not only near-uniform weights.
        let l = LAYOUTS[3];
        let cap = 200;
        let pos: Vec<i32> = (100..190).collect();
        let mut r = Xoshiro256::new(50);
        let (mut k, mut v) = cache(&mut r, &l, cap, 100);
        let mut qkv = values(&mut r, pos.len() * l.row_width());
        for x in qkv.iter_mut() {
            *x *= 6.0;
        }
        kv_store(&qkv, &mut k, &mut v, cap, &pos, pos.len(), &l);
        let scalar = AttnKernels::for_level(SimdLevel::Scalar).unwrap();
        let want = at_level(&scalar, true, &l, cap, &qkv, &k, &v, &pos);
        let reference = reference(&l, cap, &qkv, &k, &v, &pos);
        for level in SimdLevel::ALL {
            let Some(kern) = AttnKernels::for_level(level) else {
                continue;
            };
            let got = at_level(&kern, true, &l, cap, &qkv, &k, &v, &pos);
            let name = level.name();
            // Scores up to ~50: f32 rounding of a score moves its weight by
            // ~1e-6 relative, so outputs (|v| <= 6) are ~1e-5 off in f32.
            assert_close(&got, &reference, &l, name, 1e-4);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{name} vs scalar: {worst}");
        }
    }
}
