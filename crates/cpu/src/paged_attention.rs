//! Causal grouped-query attention over the paged KV cache (see
//! `metallic::backend::PagedLayout`): the tiled core of `attention.rs`, with
//! the cache row of position `t` found through the row's block table. A row's
//! output depends only on its own query, positions and cache contents, never
//! on the other rows of the step: the property that makes batched serving
//! batch-invariant.
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

#[cfg(test)]
mod tests {
    use super::*;
    use metallic::rng::Xoshiro256;

    /// Qwen2.5-0.5B's heads: groups of seven query heads, head dim 64.
    const L: QkvLayout = QkvLayout {
        n_heads: 14,
        n_kv_heads: 2,
        head_dim: 64,
    };
    const PAGED: PagedLayout = PagedLayout {
        block_size: 16,
        n_blocks: 24,
        table_stride: 6,
    };

    /// Sequence A; C shares A's first two blocks (a cached prefix of 32
    /// positions); B and D own other blocks, scattered.
    const A: [i32; 6] = [3, 17, 9, 0, 21, 5];
    const B: [i32; 6] = [7, 13, 20, 1, 2, 4];
    const C: [i32; 6] = [3, 17, 11, 6, 8, 10];
    const D: [i32; 6] = [12, 14, 15, 16, 18, 19];

    /// The positions `0..96` of a sequence with block table `table`, gathered
    /// from the paged cache into the flat cache layout of `attention.rs`.
    fn flat<T: KvElem>(cache: &[T], table: &[i32]) -> Vec<f32> {
        let cap = PAGED.table_stride * PAGED.block_size;
        let hd = L.head_dim;
        let mut out = vec![0.0; L.n_kv_heads * cap * hd];
        for h in 0..L.n_kv_heads {
            for t in 0..cap {
                let bs = PAGED.block_size;
                let at = slot_offset(&PAGED, &L, table[t / bs] as usize, h, t % bs);
                let dst = (h * cap + t) * hd;
                T::to_f32_slice(&cache[at..at + hd], &mut out[dst..dst + hd]);
            }
        }
        out
    }

    /// A batch of a prefill chunk of A (after C's row, which shares A's first
    /// blocks), a decode row of B and one of D: each row's result equals, bit
    /// for bit, the flat cache's attention for that row alone over its own
    /// sequence, serially and on the pool, for f32 and f16 caches.
    fn check<T: KvElem>() {
        let mut r = Xoshiro256::new(7);
        let len = PAGED.layer_len(&L);
        let mut random = |n: usize| -> Vec<T> {
            (0..n)
                .map(|_| T::from_f32((r.next_f64() * 2.0 - 1.0) as f32))
                .collect()
        };
        let (k, v) = (random(len), random(len));
        let mut seqs: Vec<(&[i32; 6], i32)> = vec![(&C, 30)];
        seqs.extend((31..90).map(|p| (&A, p)));
        seqs.extend([(&B, 40), (&D, 5)]);
        let m = seqs.len();
        let qkv: Vec<f32> = (0..m * L.row_width())
            .map(|_| (r.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let tables: Vec<i32> = seqs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let pos: Vec<i32> = seqs.iter().map(|&(_, p)| p).collect();
        check_rows(&PAGED, &tables, &pos, m).unwrap();
        let width = L.n_heads * L.head_dim;
        let cap = PAGED.table_stride * PAGED.block_size;
        let mut want = Vec::new();
        for (i, &(table, p)) in seqs.iter().enumerate() {
            let (fk, fv) = (flat(&k, table), flat(&v, table));
            let row = &qkv[i * L.row_width()..(i + 1) * L.row_width()];
            let mut out = vec![f32::NAN; width];
            attention::attention(false, row, &fk, &fv, cap, &[p], 1, &L, &mut out);
            want.extend(out);
        }
        for parallel in [false, true] {
            let mut got = vec![f32::NAN; m * width];
            attention(
                parallel, &qkv, &k, &v, &PAGED, &tables, &pos, m, &L, &mut got,
            );
            for i in 0..m {
                assert_eq!(
                    got[i * width..(i + 1) * width],
                    want[i * width..(i + 1) * width],
                    "row {i} (position {}), parallel {parallel}",
                    pos[i]
                );
            }
        }
    }

    #[test]
    fn batched_rows_equal_each_sequence_alone_over_the_flat_cache_f32() {
        check::<f32>();
    }

    #[test]
    fn batched_rows_equal_each_sequence_alone_over_the_flat_cache_f16() {
        check::<half::f16>();
    }

    #[test]
    fn rows_outside_their_table_or_the_cache_are_refused() {
        let tables: Vec<i32> = A.iter().chain(&[3, -1, 0, 0, 0, 0]).copied().collect();
        assert!(check_rows(&PAGED, &tables, &[95, 10], 2).is_ok());
        let err = check_rows(&PAGED, &tables, &[96, 10], 2).unwrap_err();
        assert!(err.contains("position 96 outside"), "{err}");
        let err = check_rows(&PAGED, &tables, &[5, 16], 2).unwrap_err();
        assert!(err.contains("block -1 outside"), "{err}");
        let err = check_rows(&PAGED, &tables[..6], &[5, 5], 2).unwrap_err();
        assert!(err.contains("2 rows need"), "{err}");
    }
}
