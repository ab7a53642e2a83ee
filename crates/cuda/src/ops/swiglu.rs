//! `out = silu(gate) * up` (`kernels/swiglu.cu`).

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("swiglu");

pub(crate) struct Swiglu {
    f: Func,
}

impl Swiglu {
    pub fn load(l: &mut Loader) -> CudaResult<Swiglu> {
        Ok(Swiglu {
            f: l.module(&SOURCE)?.function("swiglu")?,
        })
    }

    /// `out[m, ffn] = silu(gate_up[:, ..ffn]) * gate_up[:, ffn..]` (f32).
    pub fn launch(
        &self,
        dev: &Device,
        gate_up: u64,
        m: usize,
        ffn: usize,
        out: u64,
    ) -> CudaResult<()> {
        dev.launch(
            self.f,
            ew_grid(m * ffn),
            EW_BLOCK,
            0,
            &[
                Arg(gate_up),
                Arg::from(m as i32),
                Arg::from(ffn as i32),
                Arg(out),
            ],
        )
    }
}
