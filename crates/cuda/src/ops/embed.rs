//! Token embedding rows for every weight type (`kernels/embed.cu`).

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;
use crate::linear::Segment;
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("embed");

pub(crate) struct Embed {
    /// `embed_<type>`, by [`WType`].
    f: [Func; WType::COUNT],
}

impl Embed {
    pub fn load(l: &mut Loader) -> CudaResult<Embed> {
        let m = l.module(&SOURCE)?;
        let mut f = [Func::null(); WType::COUNT];
        for t in WType::ALL {
            f[t as usize] = m.function(&format!("embed_{}", t.suffix()))?;
        }
        Ok(Embed { f })
    }

    /// `out[i, 0..k] = dequant(table row ids[i])` for `m` ids (f32 out, i32 ids).
    pub fn launch(
        &self,
        dev: &Device,
        table: &Segment,
        k: usize,
        ids: u64,
        m: usize,
        out: u64,
    ) -> CudaResult<()> {
        // Quantised tables: one thread per 32 values; float tables: one per value.
        let threads = if table.ty.is_quantized() {
            m * (k / 32)
        } else {
            m * k
        };
        let p = table.planes;
        dev.launch(
            self.f[table.ty as usize],
            ew_grid(threads),
            EW_BLOCK,
            0,
            &[
                Arg(p[0]),
                Arg(p[1]),
                Arg(p[2]),
                Arg(p[3]),
                Arg::from(table.rows as i32),
                Arg::from(k as i32),
                Arg(ids),
                Arg::from(m as i32),
                Arg(out),
            ],
        )
    }
}
