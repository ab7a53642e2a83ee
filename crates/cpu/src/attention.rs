//! Causal grouped-query attention over the f32 KV cache.

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

thread_local! {
    /// Scores of the serial (decode-sized) path, reused across calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keys and values read by one call: what decides whether to use the pool.
/// `pos` must already be checked (non-negative, within the cache).
pub fn work(pos: &[i32], m: usize, l: &QkvLayout) -> usize {
    pos[..m].iter().map(|&p| p as usize + 1).sum::<usize>() * l.n_heads * l.head_dim
}

/// `out[i, h*hd..]` = softmax(q_h . K^T * scale) V over positions `0..=pos[i]`,
/// over the (row, head) pairs in parallel or, for decode-sized work, serially.
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
    let hd = l.head_dim;
    let width = l.row_width();
    let group = l.n_heads / l.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let optr = SharedOut::new(out);
    let out_width = l.n_heads * hd;
    let head = |scores: &mut Vec<f32>, task: usize| {
        let (i, h) = (task / l.n_heads, task % l.n_heads);
        let len = pos[i] as usize + 1;
        let kvh = h / group;
        let q = &qkv[i * width + h * hd..i * width + (h + 1) * hd];
        let kb = &k_cache[kvh * capacity * hd..];
        let vb = &v_cache[kvh * capacity * hd..];
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for t in 0..len {
            let kt = &kb[t * hd..(t + 1) * hd];
            let s = q.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        // SAFETY: each (row, head) task owns its own hd-wide slice of out.
        let o =
            unsafe { std::slice::from_raw_parts_mut(optr.ptr().add(i * out_width + h * hd), hd) };
        o.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let w = p * inv;
            let vt = &vb[t * hd..(t + 1) * hd];
            for (oj, vj) in o.iter_mut().zip(vt) {
                *oj += w * vj;
            }
        }
    };
    if parallel {
        (0..m * l.n_heads)
            .into_par_iter()
            .for_each_init(Vec::<f32>::new, head);
    } else {
        SCORES.with(|cell| {
            let scores = &mut cell.borrow_mut();
            (0..m * l.n_heads).for_each(|task| head(scores, task));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn cache(r: &mut Xoshiro256, filled: usize) -> (Vec<f32>, Vec<f32>) {
        let mut k = vec![f32::NAN; L.n_kv_heads * CAPACITY * L.head_dim];
        let mut v = k.clone();
        for h in 0..L.n_kv_heads {
            let at = h * CAPACITY * L.head_dim;
            let len = filled * L.head_dim;
            k[at..at + len].copy_from_slice(&values(r, len));
            v[at..at + len].copy_from_slice(&values(r, len));
        }
        (k, v)
    }

    /// softmax(q . K^T / sqrt(hd)) V over positions `0..=pos`, in f64, with
    /// query head h reading KV head h / (n_heads / n_kv_heads).
    fn reference(qkv: &[f32], k: &[f32], v: &[f32], pos: &[i32]) -> Vec<f64> {
        let hd = L.head_dim;
        let group = L.n_heads / L.n_kv_heads;
        let mut out = Vec::new();
        for (i, &p) in pos.iter().enumerate() {
            for h in 0..L.n_heads {
                let q = &qkv[i * L.row_width() + h * hd..][..hd];
                let base = (h / group) * CAPACITY * hd;
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

    /// Stores the rows' K/V at `pos`, runs attention serially and on the
    /// pool, and checks both against the f64 reference over the same cache.
    fn check(seed: u64, prefix: usize, pos: &[i32]) {
        let mut r = Xoshiro256::new(seed);
        let m = pos.len();
        let (mut k, mut v) = cache(&mut r, prefix);
        let qkv = values(&mut r, m * L.row_width());
        kv_store(&qkv, &mut k, &mut v, CAPACITY, pos, m, &L);
        // The stored rows are the K and V heads of each row, at its position.
        for (i, &p) in pos.iter().enumerate() {
            let row = &qkv[i * L.row_width()..];
            for h in 0..L.n_kv_heads {
                let at = (h * CAPACITY + p as usize) * L.head_dim;
                let kh = (L.n_heads + h) * L.head_dim;
                let vh = (L.n_heads + L.n_kv_heads + h) * L.head_dim;
                assert_eq!(k[at..at + L.head_dim], row[kh..kh + L.head_dim]);
                assert_eq!(v[at..at + L.head_dim], row[vh..vh + L.head_dim]);
            }
        }
        let want = reference(&qkv, &k, &v, pos);
        let width = L.n_heads * L.head_dim;
        let mut serial = vec![f32::NAN; m * width];
        attention(false, &qkv, &k, &v, CAPACITY, pos, m, &L, &mut serial);
        let mut pooled = vec![f32::NAN; m * width];
        attention(true, &qkv, &k, &v, CAPACITY, pos, m, &L, &mut pooled);
        assert_eq!(serial, pooled, "serial and pooled paths differ");
        for (i, (&g, &w)) in serial.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 1e-5,
                "row {} head {}: {g} vs {w}",
                i / width,
                i % width / L.head_dim
            );
        }
        assert_eq!(
            work(pos, m, &L),
            pos.iter().map(|&p| p as usize + 1).sum::<usize>() * width
        );
    }

    #[test]
    fn decode_step_attends_to_every_cached_position() {
        // 37 cached positions, the new token at 37: 38 keys.
        check(1, 37, &[37]);
    }

    #[test]
    fn decode_at_position_zero_returns_the_value_row() {
        let mut r = Xoshiro256::new(2);
        let (mut k, mut v) = cache(&mut r, 0);
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
}
