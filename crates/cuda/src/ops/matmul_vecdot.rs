//! `vecdot`: matrix-vector products for up to [`MAX_M`] rows with the
//! activations rounded to 8 bits per 32 values and integer (dp4a) dot
//! products against quantised weights (`kernels/matmul_vecdot.cu`). The same
//! arithmetic as the CPU's `vecdot`; float weights take f32 activations
//! through the `fdot` kernels, as there.

use super::kernel_source;
use super::matmul_fdot::{check_m, matvec_args, matvec_grid, Fdot, MAX_M};
use crate::compile::KernelSource;
use crate::device::{Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;
use crate::linear::CudaLinear;
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("matmul_vecdot");

/// Shared memory the kernels may use for the quantised activations.
const SMEM_LIMIT: usize = 160 * 1024;

/// Shared-memory bytes of `m` rows of `k` quantised activations, which every
/// block makes from the f32 activations itself: int8 quants, then a
/// 16-byte group record (scale, scaled sum, half sums) per 32 values.
fn xq_bytes(m: usize, k: usize) -> usize {
    m * k + m * (k / 32) * 16
}

/// Whether `vecdot` reads rows of `k` values of type `t` for `m` rows.
pub(crate) fn supports(t: WType, k: usize, m: usize) -> bool {
    match t {
        WType::F32 | WType::F16 | WType::BF16 => super::matmul_fdot::supports_k(t, k),
        _ => k.is_multiple_of(t.block()) && xq_bytes(m, k) <= SMEM_LIMIT,
    }
}

pub(crate) struct Vecdot {
    /// `vecdot_<type>_m<M>` for quantised types (null for float types).
    f: [[Func; MAX_M]; WType::COUNT],
}

impl Vecdot {
    pub fn load(l: &mut Loader) -> CudaResult<Vecdot> {
        let module = l.module(&SOURCE)?;
        let mut f = [[Func::null(); MAX_M]; WType::COUNT];
        for t in WType::ALL.into_iter().filter(|t| t.is_quantized()) {
            for m in 1..=MAX_M {
                let func = module.function(&format!("vecdot_{}_m{m}", t.suffix()))?;
                l.allow_smem(func)?;
                f[t as usize][m - 1] = func;
            }
        }
        Ok(Vecdot { f })
    }

    /// `out[m, n] = x[m, k] W^T (+ bias)`; float segments go to `fdot`.
    pub fn launch(
        &self,
        dev: &Device,
        fdot: &Fdot,
        x: u64,
        w: &CudaLinear,
        m: usize,
        out: u64,
    ) -> CudaResult<()> {
        check_m(m)?;
        let (n, k) = (w.info.n, w.info.k);
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        for seg in &w.segs {
            if !seg.ty.is_quantized() {
                fdot.launch_segment(dev, seg, k, m, x, out, n, bias)?;
                continue;
            }
            if xq_bytes(m, k) > SMEM_LIMIT {
                return Err(CudaError::Invalid(format!(
                    "vecdot: rows of k = {k} are too long for m = {m}"
                )));
            }
            let sm = dev.sm_count as usize;
            let (warps, blocks) = matvec_grid(dev, seg.rows);
            // Each block quantises the activations into shared memory once;
            // cap the blocks so that this is amortised over many rows while
            // every SM is still filled several times.
            let blocks = blocks.min(sm * 32 / warps);
            dev.launch(
                self.f[seg.ty as usize][m - 1],
                (blocks as u32, 1, 1),
                (warps * 32) as u32,
                xq_bytes(m, k) as u32,
                &matvec_args(seg, k, x, out, n, bias),
            )?;
        }
        Ok(())
    }
}
