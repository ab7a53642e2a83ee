//! `x += y`: the residual add (`kernels/add.cu`).

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("add");

pub(crate) struct Add {
    f: Func,
}

impl Add {
    pub fn load(l: &mut Loader) -> CudaResult<Add> {
        Ok(Add {
            f: l.module(&SOURCE)?.function("add")?,
        })
    }

    /// `x[0..len] += y[0..len]` (f32).
    pub fn launch(&self, dev: &Device, x: u64, y: u64, len: usize) -> CudaResult<()> {
        dev.launch(
            self.f,
            ew_grid(len),
            EW_BLOCK,
            0,
            &[Arg(x), Arg(y), Arg::from(len as i64)],
        )
    }
}
