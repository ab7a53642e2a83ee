//! `vecdot`: matrix-vector products for up to [`MAX_M`] rows with the
//! activations rounded to 8 bits per 32 values and integer (dp4a) dot
//! products against quantised weights (`kernels/matmul_vecdot.cu`). The same
//! arithmetic as the CPU's `vecdot`; float weights take f32 activations
//! through the `fdot` kernels, as there.

use std::sync::{Arc, Mutex};

use super::matmul_fdot::{check_m, matvec_args, matvec_grid, Fdot, MAX_M};
use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;
use crate::linear::CudaLinear;
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("matmul_vecdot");

/// Shared memory the kernels may use for the quantised activations.
const SMEM_LIMIT: usize = 160 * 1024;

/// The quantised-activation scratch is first sized for rows of this length,
/// so that the products of one step do not regrow it mid-step.
const XQ_MIN_K: usize = 16384;

/// Bytes of `m` rows of `k` quantised activations: int8 quants, then a
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
    quantize: Func,
    /// The quantised activations, grown on demand.
    xq: Mutex<Option<DeviceBuffer>>,
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
        Ok(Vecdot {
            f,
            quantize: module.function("quantize_act")?,
            xq: Mutex::new(None),
        })
    }

    /// Quantise `x[m, k]` into the scratch buffer; its address.
    fn quantize(&self, dev: &Arc<Device>, x: u64, m: usize, k: usize) -> CudaResult<u64> {
        // Sized for the largest batch at once, so that a decode step (m = 1)
        // and a prefill chunk share one buffer.
        let want = xq_bytes(MAX_M, k.max(XQ_MIN_K));
        let mut slot = self.xq.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.bytes < want) {
            *slot = None;
            *slot = Some(DeviceBuffer::new(dev, want, "quantised activations")?);
        }
        let buf = slot.as_ref().expect("just set").ptr;
        // One warp per 32-value group.
        dev.launch(
            self.quantize,
            ew_grid(m * k),
            EW_BLOCK,
            0,
            &[Arg(x), Arg::from(m as i32), Arg::from(k as i32), Arg(buf)],
        )?;
        Ok(buf)
    }

    /// `out[m, n] = x[m, k] W^T (+ bias)`; float segments go to `fdot`.
    pub fn launch(
        &self,
        dev: &Arc<Device>,
        fdot: &Fdot,
        x: u64,
        w: &CudaLinear,
        m: usize,
        out: u64,
    ) -> CudaResult<()> {
        check_m(m)?;
        let (n, k) = (w.info.n, w.info.k);
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        let mut xq = 0;
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
            if xq == 0 {
                xq = self.quantize(dev, x, m, k)?;
            }
            let sm = dev.sm_count as usize;
            let (warps, blocks) = matvec_grid(dev, seg.rows);
            // Each block copies the activations to shared memory once; cap the
            // blocks so that the copy is amortised over many rows while every
            // SM is still filled several times.
            let blocks = blocks.min(sm * 32 / warps);
            dev.launch(
                self.f[seg.ty as usize][m - 1],
                (blocks as u32, 1, 1),
                (warps * 32) as u32,
                xq_bytes(m, k) as u32,
                &matvec_args(seg, k, xq, out, n, bias),
            )?;
        }
        Ok(())
    }
}
