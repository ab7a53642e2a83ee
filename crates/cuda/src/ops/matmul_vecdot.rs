//! `vecdot`: matrix-vector products for up to [`MAX_M`] rows with the
//! activations rounded to 8 bits per 32 values and integer (dp4a) dot
//! products against quantised weights (`kernels/matmul_vecdot.cu`). The same
//! arithmetic as the CPU's `vecdot`; float weights take f32 activations
//! through the `fdot` kernels, as there.
//!
//! The activations are quantised either inside every block of the product
//! (one launch a product) or once by a separate kernel whose result each
//! block copies (two launches, less work a block); the results are
//! identical. By default Q8_0 weights quantise inside the product and the
//! other types in the separate kernel: on the H200, Qwen2.5-0.5B decoded
//! 1097 vs 1047 tok/s in Q8_0 that way, and 1099 vs 1040 in Q4_0 the other
//! way (a 4-bit row streams in half the time, so the per-block quantisation
//! weighs more). [`Vecdot::set_fused`] (METALLIC_CUDA_VECDOT_FUSED=0/1 when
//! the backend opens) forces one way for every type.

use std::sync::atomic::{AtomicU8, Ordering};
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

/// Bytes of `m` rows of `k` quantised activations (in shared memory and in
/// the scratch buffer): int8 quants, then a 16-byte group record (scale,
/// scaled sum, half sums) per 32 values.
fn xq_bytes(m: usize, k: usize) -> usize {
    m * k + m * (k / 32) * 16
}

/// Whether `vecdot` reads rows of `k` values of type `t` for `m` rows.
pub(crate) fn supports(t: WType, k: usize, m: usize) -> bool {
    if t.has_vecdot() {
        k.is_multiple_of(t.block()) && xq_bytes(m, k) <= SMEM_LIMIT
    } else {
        super::matmul_fdot::supports_k(t, k)
    }
}

const AUTO: u8 = 0;
const FUSED: u8 = 1;
const SEPARATE: u8 = 2;

/// METALLIC_CUDA_VECDOT_FUSED: `1`/`on` quantises activations inside every
/// product, `0`/`off` in a separate kernel; unset, by weight type.
fn mode_from_env() -> u8 {
    match std::env::var("METALLIC_CUDA_VECDOT_FUSED").as_deref() {
        Ok("1" | "on" | "true" | "yes") => FUSED,
        Ok("0" | "off" | "false" | "no") => SEPARATE,
        _ => AUTO,
    }
}

pub(crate) struct Vecdot {
    /// `vecdot_<type>_m<M>` (quantising in the block) for the types with a
    /// dp4a kernel (null for the others).
    fused: [[Func; MAX_M]; WType::COUNT],
    /// `vecdotpre_<type>_m<M>` (copying what `quantize_act` made).
    pre: [[Func; MAX_M]; WType::COUNT],
    quantize: Func,
    /// AUTO, FUSED or SEPARATE.
    mode: AtomicU8,
    /// The activations quantised by `quantize_act`, grown on demand.
    xq: Mutex<Option<DeviceBuffer>>,
}

impl Vecdot {
    pub fn load(l: &mut Loader) -> CudaResult<Vecdot> {
        let module = l.module(&SOURCE)?;
        let mut fused = [[Func::null(); MAX_M]; WType::COUNT];
        let mut pre = [[Func::null(); MAX_M]; WType::COUNT];
        for t in WType::ALL.into_iter().filter(|t| t.has_vecdot()) {
            for m in 1..=MAX_M {
                for (set, prefix) in [(&mut fused, "vecdot"), (&mut pre, "vecdotpre")] {
                    let f = module.function(&format!("{prefix}_{}_m{m}", t.suffix()))?;
                    l.allow_smem(f)?;
                    set[t as usize][m - 1] = f;
                }
            }
        }
        Ok(Vecdot {
            fused,
            pre,
            quantize: module.function("quantize_act")?,
            mode: AtomicU8::new(mode_from_env()),
            xq: Mutex::new(None),
        })
    }

    /// Quantise activations inside every product (`Some(true)`), in a
    /// separate kernel first (`Some(false)`), or by weight type (`None`).
    /// Same results every way.
    pub fn set_fused(&self, on: Option<bool>) {
        let m = match on {
            None => AUTO,
            Some(true) => FUSED,
            Some(false) => SEPARATE,
        };
        self.mode.store(m, Ordering::Relaxed);
    }

    pub fn fused(&self) -> Option<bool> {
        match self.mode.load(Ordering::Relaxed) {
            FUSED => Some(true),
            SEPARATE => Some(false),
            _ => None,
        }
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

    /// `out[m, n] = x[m, k] W^T (+ bias)`; segments of types without a
    /// `vecdot` kernel (float, 3- and 2-bit) go to `fdot`.
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
        let forced = self.fused();
        let mut xq = 0;
        for seg in &w.segs {
            if !seg.ty.has_vecdot() {
                fdot.launch_segment(dev, seg, k, m, x, out, n, bias)?;
                continue;
            }
            if xq_bytes(m, k) > SMEM_LIMIT {
                return Err(CudaError::Invalid(format!(
                    "vecdot: rows of k = {k} are too long for m = {m}"
                )));
            }
            // Measured (see the module note): fused pays where rows are long
            // in bytes (8-bit weights).
            let fused = forced.unwrap_or(seg.ty == WType::Q8_0);
            let (f, xin) = if fused {
                (self.fused[seg.ty as usize][m - 1], x)
            } else {
                if xq == 0 {
                    xq = self.quantize(dev, x, m, k)?;
                }
                (self.pre[seg.ty as usize][m - 1], xq)
            };
            let sm = dev.sm_count as usize;
            let (warps, blocks) = matvec_grid(dev, seg.rows);
            // Each block quantises (or copies) the activations into shared
            // memory once; cap the blocks so that this is amortised over many
            // rows while every SM is still filled several times.
            let blocks = blocks.min(sm * 32 / warps);
            dev.launch(
                f,
                (blocks as u32, 1, 1),
                (warps * 32) as u32,
                xq_bytes(m, k) as u32,
                &matvec_args(seg, k, xin, out, n, bias),
            )?;
        }
        Ok(())
    }
}
