//! Rotary embedding and the KV-cache write as one kernel
//! (`kernels/rope_kv_store.cu`): the fused decode path's replacement for
//! `rope` then `kv_store`, for f32 caches, and for the paged cache of
//! batched serving (f32 or f16) the replacement for `rope` then
//! `paged_kv_store`.

use metallic::backend::{PagedLayout, QkvLayout};

use super::paged_attention::{PagedCache, Rows};
use super::rope::RopeParams;
use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("rope_kv_store");

pub(crate) struct RopeKvStore {
    f: Func,
    /// Paged caches of f32 and of f16 (`PagedCache::ty` order).
    paged: [Func; 2],
}

/// Whether the kernel handles this layout: it moves values in pairs, so heads
/// of an even size (a rotated dimension is even already).
pub(crate) fn supports(layout: &QkvLayout) -> bool {
    layout.head_dim.is_multiple_of(2)
}

/// The arguments that say which values rotate and how, in the order every
/// kernel that rotates a fused QKV row takes them (rope_kv_store.cu's two
/// kernels, the fused QKV products' `EPI_ROPE`): the head counts and size, then
/// [`RopeParams::args`].
pub(crate) fn rotation_args(layout: &QkvLayout, p: &RopeParams) -> [Arg; 8] {
    let r = p.args();
    [
        Arg::from(layout.n_heads as i32),
        Arg::from(layout.n_kv_heads as i32),
        Arg::from(layout.head_dim as i32),
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
    ]
}

impl RopeKvStore {
    pub fn load(l: &mut Loader) -> CudaResult<RopeKvStore> {
        let m = l.module(&SOURCE)?;
        Ok(RopeKvStore {
            f: m.function("rope_kv_store")?,
            paged: [
                m.function("paged_rope_kv_store_f32")?,
                m.function("paged_rope_kv_store_f16")?,
            ],
        })
    }

    /// Rotate the Q and K heads of `qkv[m, width]` at positions `pos[0..m]`
    /// and store K and V into f32 caches `[kv_heads, capacity, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        dev: &Device,
        qkv: u64,
        pos: u64,
        m: usize,
        layout: &QkvLayout,
        p: &RopeParams,
        k_cache: u64,
        v_cache: u64,
        capacity: usize,
    ) -> CudaResult<()> {
        if !supports(layout) {
            return Err(CudaError::Invalid(format!(
                "rope_kv_store: heads of {} values (an even count is needed)",
                layout.head_dim
            )));
        }
        let heads = layout.n_heads + 2 * layout.n_kv_heads;
        let r = rotation_args(layout, p);
        // One thread per pair of values of every head.
        dev.launch(
            self.f,
            ew_grid(m * heads * (layout.head_dim / 2)),
            EW_BLOCK,
            0,
            &[
                Arg(qkv),
                Arg(pos),
                Arg::from(m as i32),
                Arg::from(layout.row_width() as i32),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                Arg(k_cache),
                Arg(v_cache),
                Arg::from(capacity as i32),
            ],
        )
    }

    /// Rotate the Q and K heads of `qkv[m, width]` at positions `pos[i]`
    /// and store row `i`'s K and V through row `i` of the block tables into
    /// the paged cache `[n_blocks, kv_heads, block_size, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_paged(
        &self,
        dev: &Device,
        qkv: u64,
        cache: &PagedCache,
        paged: &PagedLayout,
        rows: &Rows,
        layout: &QkvLayout,
        p: &RopeParams,
    ) -> CudaResult<()> {
        super::paged_attention::check(paged, layout)?;
        if !supports(layout) {
            return Err(CudaError::Invalid(format!(
                "paged rope_kv_store: heads of {} values (an even count is needed)",
                layout.head_dim
            )));
        }
        let heads = layout.n_heads + 2 * layout.n_kv_heads;
        let r = rotation_args(layout, p);
        dev.launch(
            self.paged[cache.ty as usize],
            ew_grid(rows.m * heads * (layout.head_dim / 2)),
            EW_BLOCK,
            0,
            &[
                Arg(qkv),
                Arg(rows.pos),
                Arg::from(rows.m as i32),
                Arg::from(layout.row_width() as i32),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                Arg(cache.k),
                Arg(cache.v),
                Arg(rows.tables),
                Arg::from(paged.block_size as i32),
                Arg::from(paged.n_blocks as i32),
                Arg::from(paged.table_stride as i32),
            ],
        )
    }
}
