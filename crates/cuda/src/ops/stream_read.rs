//! Streaming read of a buffer: the probe's bandwidth floor
//! (`kernels/stream_read.cu`).

use super::kernel_source;
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("stream_read");

pub(crate) struct StreamRead {
    f: Func,
}

impl StreamRead {
    pub fn load(l: &mut Loader) -> CudaResult<StreamRead> {
        Ok(StreamRead {
            f: l.module(&SOURCE)?.function("stream_read")?,
        })
    }

    /// Read `t[0..len]` (i32) once.
    pub fn launch(&self, dev: &Device, t: u64, len: usize) -> CudaResult<()> {
        // A few resident blocks per SM keep enough loads in flight to saturate HBM.
        let grid = (dev.sm_count * 4, 1, 1);
        dev.launch(self.f, grid, 512, 0, &[Arg(t), Arg::from(len as i64)])
    }
}
