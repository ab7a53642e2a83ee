//! `pos[0] = pos[m - 1] + 1` on the device (`kernels/advance.cu`).

use super::kernel_source;
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("advance");

pub(crate) struct Advance {
    f: Func,
}

impl Advance {
    pub fn load(l: &mut Loader) -> CudaResult<Advance> {
        Ok(Advance {
            f: l.module(&SOURCE)?.function("advance")?,
        })
    }

    /// `pos[0] = pos[m - 1] + 1` (i32, m >= 1).
    pub fn launch(&self, dev: &Device, pos: u64, m: usize) -> CudaResult<()> {
        dev.launch(self.f, (1, 1, 1), 32, 0, &[Arg(pos), Arg::from(m as i32)])
    }
}
