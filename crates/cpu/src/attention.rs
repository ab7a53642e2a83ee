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
