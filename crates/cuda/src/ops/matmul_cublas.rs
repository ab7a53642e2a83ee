//! `cublas`: matrix products through cuBLAS GemmEx (`kernels/matmul_cublas.cu`
//! holds the kernels around it). F32 weights multiply f32 activations (no
//! TF32); F16/BF16 weights multiply activations rounded to their 16-bit type;
//! a quantised weight is dequantised to f16 (once at load where memory allows,
//! see `dense_copies`; else tile by tile into a scratch buffer before each
//! product) and multiplies activations rounded to f16. Sums are f32.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as cb;

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::{CudaResult, DriverContext};
use crate::kernels::Loader;
use crate::linear::CudaLinear;
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("matmul_cublas");

/// The kernels around the cuBLAS products.
pub(crate) struct CublasKernels {
    /// `dequant_<type>` for quantised types (null for float types).
    dequant: [Func; WType::COUNT],
    f32_to_f16: Func,
    f32_to_bf16: Func,
    bias_add: Func,
}

impl CublasKernels {
    pub fn load(l: &mut Loader) -> CudaResult<CublasKernels> {
        let m = l.module(&SOURCE)?;
        let mut dequant = [Func::null(); WType::COUNT];
        for t in WType::ALL.into_iter().filter(|t| t.is_quantized()) {
            dequant[t as usize] = m.function(&format!("dequant_{}", t.suffix()))?;
        }
        Ok(CublasKernels {
            dequant,
            f32_to_f16: m.function("f32_to_f16")?,
            f32_to_bf16: m.function("f32_to_bf16")?,
            bias_add: m.function("bias_add")?,
        })
    }

    /// Rows `row0..row0 + rows` of a quantised segment to f16 `[rows, k]`.
    #[allow(clippy::too_many_arguments)]
    fn dequant(
        &self,
        dev: &Device,
        ty: WType,
        planes: [u64; 4],
        row0: usize,
        rows: usize,
        k: usize,
        out: u64,
    ) -> CudaResult<()> {
        // One thread per 32 values.
        dev.launch(
            self.dequant[ty as usize],
            ew_grid(rows * (k / 32)),
            EW_BLOCK,
            0,
            &[
                Arg(planes[0]),
                Arg(planes[1]),
                Arg(planes[2]),
                Arg(planes[3]),
                Arg::from(row0 as i32),
                Arg::from(rows as i32),
                Arg::from(k as i32),
                Arg(out),
            ],
        )
    }

    /// `out[i, j] += bias[j]` for `m` rows of `n`.
    fn bias_add(&self, dev: &Device, out: u64, bias: u64, m: usize, n: usize) -> CudaResult<()> {
        dev.launch(
            self.bias_add,
            ew_grid(m * n),
            EW_BLOCK,
            0,
            &[
                Arg(out),
                Arg(bias),
                Arg::from(m as i32),
                Arg::from(n as i32),
                Arg::from(n as i32),
            ],
        )
    }
}

/// cuBLAS handle with a fixed workspace (so that products can be captured
/// in graphs) and the scratch buffers of the dequantise-then-GEMM path.
pub(crate) struct Blas {
    handle: cb::cublasHandle_t,
    _workspace: DeviceBuffer,
    scratch: Mutex<Scratch>,
}

unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

#[derive(Default)]
struct Scratch {
    weights: Option<DeviceBuffer>,
    acts: Option<DeviceBuffer>,
}

/// Largest weight tile dequantised at once (f16 values).
const TILE_VALUES: usize = 32 << 20;
const WORKSPACE_BYTES: usize = 32 << 20;

impl Drop for Blas {
    fn drop(&mut self) {
        unsafe {
            let _ = cb::cublasDestroy_v2(self.handle);
        }
    }
}

fn grow(
    dev: &Arc<Device>,
    slot: &mut Option<DeviceBuffer>,
    bytes: usize,
    what: &str,
) -> CudaResult<u64> {
    if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
        *slot = None;
        *slot = Some(DeviceBuffer::new(dev, bytes, what)?);
    }
    Ok(slot.as_ref().map(|b| b.ptr).unwrap_or(0))
}

impl Blas {
    pub fn new(dev: &Arc<Device>) -> CudaResult<Blas> {
        crate::driver::cublas()?;
        dev.bind()?;
        let handle = cudarc::cublas::result::create_handle().ctx("cublasCreate")?;
        let workspace = DeviceBuffer::new(dev, WORKSPACE_BYTES, "cuBLAS workspace")?;
        unsafe {
            cudarc::cublas::result::set_stream(handle, dev.stream.0 as cb::cudaStream_t)
                .ctx("cublasSetStream")?;
            cb::cublasSetWorkspace_v2(
                handle,
                workspace.ptr as *mut std::ffi::c_void,
                WORKSPACE_BYTES,
            )
            .result()
            .ctx("cublasSetWorkspace")?;
        }
        Ok(Blas {
            handle,
            _workspace: workspace,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// C[m, rows] (row stride ldc) = X[m, k] W[rows, k]^T via column-major
    /// C^T = W X^T: op(A) = W^T stored k x rows, B = X^T stored k x m.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dev: &Device,
        ty: cb::cudaDataType,
        w: u64,
        x: u64,
        c: u64,
        rows: usize,
        m: usize,
        k: usize,
        ldc: usize,
    ) -> CudaResult<()> {
        if !dev.note(&[
            0xB1A5,
            ty as u64,
            w,
            x,
            c,
            rows as u64,
            m as u64,
            k as u64,
            ldc as u64,
        ]) {
            return Ok(());
        }
        let alpha = 1.0f32;
        let beta = 0.0f32;
        unsafe {
            cudarc::cublas::result::gemm_ex(
                self.handle,
                cb::cublasOperation_t::CUBLAS_OP_T,
                cb::cublasOperation_t::CUBLAS_OP_N,
                rows as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                w as *const std::ffi::c_void,
                ty,
                k as i32,
                x as *const std::ffi::c_void,
                ty,
                k as i32,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                cb::cudaDataType::CUDA_R_32F,
                ldc as i32,
                cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cb::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
            .ctx("cublasGemmEx")
        }
    }
}

impl Blas {
    /// `out[m, n] = x[m, k] W^T (+ bias)`.
    pub fn launch(
        &self,
        dev: &Arc<Device>,
        kern: &CublasKernels,
        x: u64,
        w: &CudaLinear,
        m: usize,
        out: u64,
    ) -> CudaResult<()> {
        let (n, k) = (w.info.n, w.info.k);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut x16: [u64; 2] = [0, 0]; // f16, bf16 copies of x, made on first need
        for seg in &w.segs {
            let out_seg = out + 4 * seg.row0 as u64;
            match seg.ty {
                WType::F32 => {
                    let ty = cb::cudaDataType::CUDA_R_32F;
                    self.gemm(dev, ty, seg.planes[0], x, out_seg, seg.rows, m, k, n)?;
                }
                WType::BF16 | WType::F16 => {
                    let (slot, f, ty) = if seg.ty == WType::BF16 {
                        (1, kern.f32_to_bf16, cb::cudaDataType::CUDA_R_16BF)
                    } else {
                        (0, kern.f32_to_f16, cb::cudaDataType::CUDA_R_16F)
                    };
                    if x16[slot] == 0 {
                        x16[slot] = convert_x(dev, &mut scratch, f, slot, x, m * k)?;
                    }
                    self.gemm(
                        dev,
                        ty,
                        seg.planes[0],
                        x16[slot],
                        out_seg,
                        seg.rows,
                        m,
                        k,
                        n,
                    )?;
                }
                t => {
                    if x16[0] == 0 {
                        x16[0] = convert_x(dev, &mut scratch, kern.f32_to_f16, 0, x, m * k)?;
                    }
                    if let Some(dense) = &seg.dense {
                        // Dequantised once at load (`dense_copies`).
                        let ty = cb::cudaDataType::CUDA_R_16F;
                        self.gemm(dev, ty, dense.ptr, x16[0], out_seg, seg.rows, m, k, n)?;
                        continue;
                    }
                    let tile_rows = (TILE_VALUES / k).clamp(1, seg.rows);
                    let wbuf = grow(
                        dev,
                        &mut scratch.weights,
                        tile_rows * k * 2,
                        "dequantised weight tile",
                    )?;
                    let mut r0 = 0;
                    while r0 < seg.rows {
                        let rows = tile_rows.min(seg.rows - r0);
                        kern.dequant(dev, t, seg.planes, r0, rows, k, wbuf)?;
                        self.gemm(
                            dev,
                            cb::cudaDataType::CUDA_R_16F,
                            wbuf,
                            x16[0],
                            out_seg + 4 * r0 as u64,
                            rows,
                            m,
                            k,
                            n,
                        )?;
                        r0 += rows;
                    }
                }
            }
        }
        if let Some(b) = &w.bias {
            kern.bias_add(dev, out, b.ptr, m, n)?;
        }
        Ok(())
    }
}

/// Budget of the dense copies below: METALLIC_CUDA_DENSE_WEIGHTS=off makes
/// none, `on` makes them while memory lasts, `auto` (the default) while they
/// take at most a quarter of the device memory free when the backend opened.
pub(crate) fn dense_budget(free: u64) -> usize {
    match std::env::var("METALLIC_CUDA_DENSE_WEIGHTS").as_deref() {
        Ok("0" | "off" | "false" | "no") => 0,
        Ok("1" | "on" | "true" | "yes") => usize::MAX,
        _ => (free / 4) as usize,
    }
}

/// Dequantise every quantised segment of `w` once to f16 for the products
/// cuBLAS runs (more than 8 rows: prefill chunks, batched decode steps of
/// `metallic serve`), while `budget` (bytes, taken from) lasts. The values are
/// the ones the tile-by-tile path dequantises before each product, so the
/// arithmetic is the same; the copy saves that pass (a read of the blocks
/// and a write of twice as many f16 bytes) on every product. A copy that
/// cannot be allocated is skipped: the segment keeps the per-product path.
pub(crate) fn dense_copies(
    dev: &Arc<Device>,
    kern: &CublasKernels,
    w: &mut CudaLinear,
    budget: &std::sync::atomic::AtomicUsize,
) -> CudaResult<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let k = w.info.k;
    for seg in w.segs.iter_mut().filter(|s| s.ty.is_quantized()) {
        let Some(bytes) = seg.rows.checked_mul(k).and_then(|v| v.checked_mul(2)) else {
            continue;
        };
        let took = budget.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(bytes));
        if took.is_err() {
            continue;
        }
        let Ok(buf) = DeviceBuffer::new(dev, bytes, "dense f16 copy of a quantised weight") else {
            budget.fetch_add(bytes, Relaxed);
            continue;
        };
        kern.dequant(dev, seg.ty, seg.planes, 0, seg.rows, k, buf.ptr)?;
        seg.dense = Some(buf);
    }
    Ok(())
}

/// The activations converted to a 16-bit type in a scratch buffer (slot 0: f16,
/// slot 1: bf16 — both live in one buffer, halves apart).
fn convert_x(
    dev: &Arc<Device>,
    scratch: &mut Scratch,
    f: Func,
    slot: usize,
    x: u64,
    len: usize,
) -> CudaResult<u64> {
    let half = len * 2;
    let base = grow(dev, &mut scratch.acts, 2 * half, "16-bit activations")?;
    let dst = base + (slot * half) as u64;
    dev.launch(
        f,
        ew_grid(len),
        EW_BLOCK,
        0,
        &[Arg(x), Arg(dst), Arg::from(len as i64)],
    )?;
    Ok(dst)
}
