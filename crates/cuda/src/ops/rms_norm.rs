//! Row-wise RMS norm (`kernels/rms_norm.cu`).

use super::kernel_source;
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("rms_norm");

pub(crate) struct RmsNorm {
    f: Func,
}

impl RmsNorm {
    pub fn load(l: &mut Loader) -> CudaResult<RmsNorm> {
        Ok(RmsNorm {
            f: l.module(&SOURCE)?.function("rms_norm")?,
        })
    }

    /// `out[i, :] = x[i, :] / rms(x[i, :]) * w` for `m` rows of `n` (f32).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        dev: &Device,
        x: u64,
        w: u64,
        m: usize,
        n: usize,
        eps: f32,
        out: u64,
    ) -> CudaResult<()> {
        // One block per row; long rows get more threads.
        let threads = if n >= 4096 { 1024 } else { 256 };
        dev.launch(
            self.f,
            (m as u32, 1, 1),
            threads,
            0,
            &[
                Arg(x),
                Arg(w),
                Arg::from(n as i32),
                Arg::from(eps),
                Arg(out),
            ],
        )
    }
}
