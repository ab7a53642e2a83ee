//! Rotary embedding and the KV-cache write as one kernel
//! (`kernels/rope_kv_store.cu`): the fused decode path's replacement for
//! `rope` then `kv_store`, for f32 caches.

use metallic::backend::QkvLayout;

use super::rope::RopeParams;
use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("rope_kv_store");

pub(crate) struct RopeKvStore {
    f: Func,
}

/// Whether the kernel handles this layout: it moves values in pairs, so heads
/// of an even size (a rotated dimension is even already).
pub(crate) fn supports(layout: &QkvLayout) -> bool {
    layout.head_dim.is_multiple_of(2)
}

impl RopeKvStore {
    pub fn load(l: &mut Loader) -> CudaResult<RopeKvStore> {
        Ok(RopeKvStore {
            f: l.module(&SOURCE)?.function("rope_kv_store")?,
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
        let r = p.args();
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
                Arg::from(layout.n_heads as i32),
                Arg::from(layout.n_kv_heads as i32),
                Arg::from(layout.head_dim as i32),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                Arg(k_cache),
                Arg(v_cache),
                Arg::from(capacity as i32),
            ],
        )
    }
}
