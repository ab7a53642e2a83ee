//! The paged KV cache of batched serving (`kernels/paged_attention.cu`):
//! `paged_kv_store` writes each row's K and V heads through its block table,
//! `paged_attn` is causal grouped-query attention of each row over its own
//! sequence. The cache holds f32 or f16 (one kernel of each per op); the
//! arithmetic is f32.

use metallic::backend::{PagedLayout, QkvLayout};

use super::attention::MAX_HEAD_DIM;
use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("paged_attention");

/// Warps of one attention block: 8, or 4 with METALLIC_CUDA_PAGED_WARPS=4
/// when the backend opens (for comparison). Eight measured faster at one
/// row a step (fewer tiles in each warp's serial walk) and level at 64 rows
/// (BENCHMARKS.md). Fixed per process: the warp count sets the order of a
/// row's sums, so changing it between steps would break batch invariance.
fn warps_from_env() -> usize {
    match std::env::var("METALLIC_CUDA_PAGED_WARPS").as_deref() {
        Ok("4") => 4,
        _ => 8,
    }
}

/// Element type of the paged cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvType {
    F32,
    F16,
}

pub(crate) struct PagedAttention {
    store: [Func; 2],
    attn: [Func; 2],
    warps: usize,
}

/// One layer's paged K and V (device addresses) and their element type.
pub(crate) struct PagedCache {
    pub k: u64,
    pub v: u64,
    pub ty: KvType,
}

/// The step's per-row inputs: block tables `[m, table_stride]` and positions `[m]`.
pub(crate) struct Rows {
    pub tables: u64,
    pub pos: u64,
    pub m: usize,
}

pub(crate) fn check(paged: &PagedLayout, layout: &QkvLayout) -> CudaResult<()> {
    let (nh, nkv, hd) = (layout.n_heads, layout.n_kv_heads, layout.head_dim);
    if hd == 0 || hd > MAX_HEAD_DIM || nkv == 0 || nh % nkv != 0 {
        return Err(CudaError::Invalid(format!(
            "paged attention layout {nh} heads / {nkv} kv heads / dim {hd}"
        )));
    }
    // Kernels index with 32-bit block ids, positions and table offsets.
    let positions = paged.table_stride.checked_mul(paged.block_size);
    if positions.is_none_or(|p| p > i32::MAX as usize) || paged.n_blocks > i32::MAX as usize {
        return Err(CudaError::Invalid(format!(
            "paged cache of {} blocks of {} positions, {} per sequence: too large for 32-bit indices",
            paged.n_blocks, paged.block_size, paged.table_stride
        )));
    }
    Ok(())
}

fn geometry(paged: &PagedLayout, layout: &QkvLayout) -> [Arg; 6] {
    [
        Arg::from(layout.n_heads as i32),
        Arg::from(layout.n_kv_heads as i32),
        Arg::from(layout.head_dim as i32),
        Arg::from(paged.block_size as i32),
        Arg::from(paged.n_blocks as i32),
        Arg::from(paged.table_stride as i32),
    ]
}

impl PagedAttention {
    pub fn load(l: &mut Loader) -> CudaResult<PagedAttention> {
        let m = l.module(&SOURCE)?;
        let warps = warps_from_env();
        Ok(PagedAttention {
            store: [
                m.function("paged_kv_store_f32")?,
                m.function("paged_kv_store_f16")?,
            ],
            attn: [
                m.function(&format!("paged_attn_f32_w{warps}"))?,
                m.function(&format!("paged_attn_f16_w{warps}"))?,
            ],
            warps,
        })
    }

    /// K and V heads of rows `0..m` of `qkv` into the cache at `pos[i]`
    /// through row `i` of the tables.
    pub fn store(
        &self,
        dev: &Device,
        qkv: u64,
        cache: &PagedCache,
        paged: &PagedLayout,
        rows: &Rows,
        layout: &QkvLayout,
    ) -> CudaResult<()> {
        check(paged, layout)?;
        let g = geometry(paged, layout);
        // One thread per cached value (of K and of V).
        dev.launch(
            self.store[cache.ty as usize],
            ew_grid(rows.m * layout.n_kv_heads * layout.head_dim),
            EW_BLOCK,
            0,
            &[
                Arg(qkv),
                Arg(cache.k),
                Arg(cache.v),
                Arg(rows.tables),
                Arg(rows.pos),
                Arg::from(rows.m as i32),
                Arg::from(layout.row_width() as i32),
                g[0],
                g[1],
                g[2],
                g[3],
                g[4],
                g[5],
            ],
        )
    }

    /// `out[m, n_heads * head_dim]`: row `i` attends to positions
    /// `0..=pos[i]` of its own sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        dev: &Device,
        qkv: u64,
        cache: &PagedCache,
        paged: &PagedLayout,
        rows: &Rows,
        layout: &QkvLayout,
        out: u64,
    ) -> CudaResult<()> {
        check(paged, layout)?;
        if rows.m > i32::MAX as usize {
            return Err(CudaError::Invalid(format!(
                "paged attention of {} rows",
                rows.m
            )));
        }
        let g = geometry(paged, layout);
        let scale = 1.0 / (layout.head_dim as f32).sqrt();
        dev.launch(
            self.attn[cache.ty as usize],
            (rows.m as u32, layout.n_heads as u32, 1),
            (self.warps * 32) as u32,
            0,
            &[
                Arg(qkv),
                Arg(cache.k),
                Arg(cache.v),
                Arg(rows.tables),
                Arg(rows.pos),
                Arg::from(layout.row_width() as i32),
                g[0],
                g[1],
                g[2],
                g[3],
                g[4],
                g[5],
                Arg::from(scale),
                Arg(out),
            ],
        )
    }
}
