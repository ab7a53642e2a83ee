//! K and V heads of the fused QKV activation into the layer's cache
//! (`kernels/kv_store.cu`).

use metallic::backend::QkvLayout;

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("kv_store");

pub(crate) struct KvStore {
    f: Func,
}

impl KvStore {
    pub fn load(l: &mut Loader) -> CudaResult<KvStore> {
        Ok(KvStore {
            f: l.module(&SOURCE)?.function("kv_store")?,
        })
    }

    /// Rows `0..m` of `qkv` into caches `[kv_heads, capacity, head_dim]` at `pos[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        dev: &Device,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        capacity: usize,
        pos: u64,
        m: usize,
        layout: &QkvLayout,
    ) -> CudaResult<()> {
        // One thread per cached value (of K and of V).
        dev.launch(
            self.f,
            ew_grid(m * layout.n_kv_heads * layout.head_dim),
            EW_BLOCK,
            0,
            &[
                Arg(qkv),
                Arg(k_cache),
                Arg(v_cache),
                Arg(pos),
                Arg::from(m as i32),
                Arg::from(layout.row_width() as i32),
                Arg::from(layout.n_heads as i32),
                Arg::from(layout.n_kv_heads as i32),
                Arg::from(layout.head_dim as i32),
                Arg::from(capacity as i32),
            ],
        )
    }
}
