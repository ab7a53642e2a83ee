//! Rotary position embedding in place on the fused QKV activation
//! (`kernels/rope.cu`).

use metallic::backend::QkvLayout;
use metallic::config::RopeStyle;

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("rope");

pub(crate) struct Rope {
    f: Func,
}

/// The rotation of one step: style, base, rotated dimensions, position scale
/// and the optional per-frequency divisors (`dim / 2` f32, 0 for none).
pub(crate) struct RopeParams {
    pub style: RopeStyle,
    pub theta: f32,
    pub dim: usize,
    pub pos_scale: f32,
    pub factors: u64,
}

impl RopeParams {
    /// The kernel arguments that follow the head dimension, in the order
    /// both rope kernels (`rope.cu`, `rope_kv_store.cu`) take them.
    pub fn args(&self) -> [Arg; 5] {
        [
            Arg::from(self.dim as i32),
            Arg::from(self.theta),
            Arg::from(self.pos_scale),
            Arg(self.factors),
            Arg::from(match self.style {
                RopeStyle::Normal => 0i32,
                RopeStyle::Neox => 1,
            }),
        ]
    }
}

impl Rope {
    pub fn load(l: &mut Loader) -> CudaResult<Rope> {
        Ok(Rope {
            f: l.module(&SOURCE)?.function("rope")?,
        })
    }

    /// Rotate the Q and K heads of `qkv[m, width]` at positions `pos[0..m]`.
    pub fn launch(
        &self,
        dev: &Device,
        qkv: u64,
        pos: u64,
        m: usize,
        layout: &QkvLayout,
        p: &RopeParams,
    ) -> CudaResult<()> {
        let heads = layout.n_heads + layout.n_kv_heads;
        let r = p.args();
        // One thread per rotated pair.
        dev.launch(
            self.f,
            ew_grid(m * heads * (p.dim / 2)),
            EW_BLOCK,
            0,
            &[
                Arg(qkv),
                Arg(pos),
                Arg::from(m as i32),
                Arg::from(layout.row_width() as i32),
                Arg::from(heads as i32),
                Arg::from(layout.head_dim as i32),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
            ],
        )
    }
}
