//! Causal grouped-query attention over the paged KV cache (see
//! `metallic::backend::PagedLayout`): the tiled core of `attention.rs`, with
//! the cache row of position `t` found through the row's block table. So a row's output depends only on
//! its own query, positions and cache contents, never on the other rows of the
//! step: the property that makes batched serving batch-invariant.
//!
//! The cache holds f32 or f16 ([`KvElem`]); values are rounded once when
//! stored and read back as f32, so the arithmetic is the same for both.

use crate::attention;
use metallic::backend::{PagedLayout, QkvLayout};

pub use crate::attention::KvElem;

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

/// The paged cache as [`attention::attend`] reads it: row `i`'s position
/// `t` through its block table.
struct Paged<'a, T> {
    k: &'a [T],
    v: &'a [T],
    paged: &'a PagedLayout,
    layout: &'a QkvLayout,
    tables: &'a [i32],
    pos: &'a [i32],
}

impl<T: KvElem> Paged<'_, T> {
    fn table(&self, i: usize) -> &[i32] {
        &self.tables[i * self.paged.table_stride..(i + 1) * self.paged.table_stride]
    }
}

impl<T: KvElem> attention::Keys for Paged<'_, T> {
    type Elem = T;
    fn k(&self) -> &[T] {
        self.k
    }
    fn v(&self) -> &[T] {
        self.v
    }
    #[inline]
    fn at(&self, i: usize, kvh: usize, t: usize) -> usize {
        let bs = self.paged.block_size;
        let block = self.tables[i * self.paged.table_stride + t / bs] as usize;
        slot_offset(self.paged, self.layout, block, kvh, t % bs)
    }
    /// The same blocks up to the later of the two positions: rows of one
    /// sequence (a prefill chunk), or sequences sharing a cached prefix that
    /// far, read the same keys.
    fn same_keys(&self, i: usize, j: usize) -> bool {
        let last = self.pos[i].max(self.pos[j]) as usize / self.paged.block_size;
        self.table(i)[..=last] == self.table(j)[..=last]
    }
}

/// `out[i, h*hd..]` = softmax(q_h . K^T * scale) V over positions `0..=pos[i]`
/// of row `i`'s sequence, by the tiled core of `attention.rs`: rows of one
/// sequence share key tiles, rows of different sequences never do, and each
/// query's arithmetic is its own, so serial and parallel runs and a row alone
/// or in any batch give the same result. `check_rows` must have passed.
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
    let keys = Paged {
        k: k_cache,
        v: v_cache,
        paged,
        layout: l,
        tables,
        pos,
    };
    attention::attend(
        crate::attention_simd::kernels(),
        parallel,
        &keys,
        qkv,
        pos,
        m,
        l,
        out,
    )
}
