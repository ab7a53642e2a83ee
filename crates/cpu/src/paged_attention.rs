//! Causal grouped-query attention over the paged KV cache (see
//! `metallic::backend::PagedLayout`): the same arithmetic as `attention.rs`,
//! position by position in the same order, with the cache row of position
//! `t` found through the row's block table. So a row's output depends only on
//! its own query, positions and cache contents, never on the other rows of the
//! step: the property that makes batched serving batch-invariant.
//!
//! The cache holds f32 or f16 ([`KvElem`]); values are rounded once when
//! stored and read back as f32, so the arithmetic is the same for both.

use crate::shared_out::SharedOut;
use metallic::backend::{PagedLayout, QkvLayout};
use rayon::prelude::*;

/// An element type of the paged cache.
pub trait KvElem: Copy + Send + Sync {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    #[inline]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    #[inline]
    fn from_f32(v: f32) -> half::f16 {
        half::f16::from_f32(v)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Offset of (block, kv head, slot) in a layer's K or V tensor.
#[inline]
fn slot_offset(paged: &PagedLayout, l: &QkvLayout, block: usize, kvh: usize, slot: usize) -> usize {
    ((block * l.n_kv_heads + kvh) * paged.block_size + slot) * l.head_dim
}

/// Check that every row's position and the blocks it will touch are inside
/// the cache; returns the cause otherwise. Runs before any write.
pub fn check_rows(
    paged: &PagedLayout,
    tables: &[i32],
    pos: &[i32],
    m: usize,
) -> Result<(), String> {
    if pos.len() < m || tables.len() < m * paged.table_stride {
        return Err(format!(
            "{m} rows need {m} positions and {} table entries; have {} and {}",
            m * paged.table_stride,
            pos.len(),
            tables.len()
        ));
    }
    for i in 0..m {
        let p = pos[i];
        if p < 0 || p as usize >= paged.table_stride * paged.block_size {
            return Err(format!(
                "row {i}: position {p} outside a table of {} blocks of {}",
                paged.table_stride, paged.block_size
            ));
        }
        let row = &tables[i * paged.table_stride..];
        for &b in &row[..=(p as usize / paged.block_size)] {
            if b < 0 || b as usize >= paged.n_blocks {
                return Err(format!(
                    "row {i}: block {b} outside the cache of {} blocks",
                    paged.n_blocks
                ));
            }
        }
    }
    Ok(())
}

/// Copy K and V heads of each row of `qkv` to its (block, slot).
#[allow(clippy::too_many_arguments)]
pub fn kv_store<T: KvElem>(
    qkv: &[f32],
    k_cache: &mut [T],
    v_cache: &mut [T],
    paged: &PagedLayout,
    tables: &[i32],
    pos: &[i32],
    m: usize,
    l: &QkvLayout,
) {
    let hd = l.head_dim;
    let width = l.row_width();
    for i in 0..m {
        let p = pos[i] as usize;
        let block = tables[i * paged.table_stride + p / paged.block_size] as usize;
        let slot = p % paged.block_size;
        let row = &qkv[i * width..(i + 1) * width];
        let k = &row[l.n_heads * hd..(l.n_heads + l.n_kv_heads) * hd];
        let v = &row[(l.n_heads + l.n_kv_heads) * hd..];
        for h in 0..l.n_kv_heads {
            let dst = slot_offset(paged, l, block, h, slot);
            let (kd, vd) = (&mut k_cache[dst..dst + hd], &mut v_cache[dst..dst + hd]);
            for (c, &x) in kd.iter_mut().zip(&k[h * hd..(h + 1) * hd]) {
                *c = T::from_f32(x);
            }
            for (c, &x) in vd.iter_mut().zip(&v[h * hd..(h + 1) * hd]) {
                *c = T::from_f32(x);
            }
        }
    }
}

/// `out[i, h*hd..]` = softmax(q_h . K^T * scale) V over positions `0..=pos[i]`
/// of row `i`'s sequence, over the (row, head) pairs in parallel or serially
/// (the same result either way: each pair is one task).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: KvElem>(
    parallel: bool,
    qkv: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    paged: &PagedLayout,
    tables: &[i32],
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
    let bs = paged.block_size;
    let head = |scores: &mut Vec<f32>, task: usize| {
        let (i, h) = (task / l.n_heads, task % l.n_heads);
        let len = pos[i] as usize + 1;
        let kvh = h / group;
        let table = &tables[i * paged.table_stride..];
        let at = |t: usize| slot_offset(paged, l, table[t / bs] as usize, kvh, t % bs);
        let q = &qkv[i * width + h * hd..i * width + (h + 1) * hd];
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for t in 0..len {
            let o = at(t);
            let kt = &k_cache[o..o + hd];
            let s = q.iter().zip(kt).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
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
            let off = at(t);
            let vt = &v_cache[off..off + hd];
            for (oj, vj) in o.iter_mut().zip(vt) {
                *oj += w * vj.to_f32();
            }
        }
    };
    if parallel {
        (0..m * l.n_heads)
            .into_par_iter()
            .for_each_init(Vec::<f32>::new, head);
    } else {
        let mut scores = Vec::new();
        (0..m * l.n_heads).for_each(|task| head(&mut scores, task));
    }
}
