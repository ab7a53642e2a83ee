//! Matrix products `out[m, n] = x[m, k] W^T (+ bias)` and the implementations
//! the dispatcher chooses between:
//!
//! * `gemv`: own kernels for m <= 8 over every weight type; quantised weights
//!   use int8 dp4a dot products against activations quantised once per block.
//! * `cublas`: cuBLAS GemmEx. F16/BF16/F32 weights are used as they are; a
//!   quantised weight is dequantised tile by tile into an f16 scratch buffer.
//!   Activations are converted to the weight's 16-bit type first.
//! * `gemv_f32`: the gemv kernels with f32 activations and weights decoded to
//!   f32: no activation rounding, for checks and for numerically fussy runs.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as cb;
use metallic::backend::{MatmulImpl, MatmulShape};
use metallic_gguf::GgmlType;

use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::{CudaError, CudaResult, DriverContext};
use crate::kernels::{Kernels, GEMV_MAX_M};
use crate::linear::{CudaLinear, Segment};
use crate::wtype::WType;

pub const IMPL_GEMV: usize = 0;
pub const IMPL_CUBLAS: usize = 1;
pub const IMPL_GEMV_F32: usize = 2;

/// The quantised-activation scratch is first sized for rows of this length,
/// so that the products of one step do not regrow it mid-step.
const XQ_MIN_K: usize = 16384;

/// Shared memory the dp4a kernels may use for the quantised activations.
const GEMV_SMEM_LIMIT: usize = 160 * 1024;

fn gemv_smem(m: usize, k: usize) -> usize {
    m * k + m * (k / 32) * 16
}

fn gemv_type_ok(t: GgmlType, k: usize, m: usize) -> bool {
    match WType::from_ggml(t) {
        Some(WType::F32) => k.is_multiple_of(4),
        Some(WType::F16 | WType::BF16) => k.is_multiple_of(8),
        Some(w) => k.is_multiple_of(w.block()) && gemv_smem(m, k) <= GEMV_SMEM_LIMIT,
        None => false,
    }
}

fn plain(s: &MatmulShape) -> bool {
    s.batch == 1 && !s.ta && s.tb && s.m >= 1
}

fn gemv_supports(s: &MatmulShape) -> bool {
    plain(s) && s.m <= GEMV_MAX_M && gemv_type_ok(s.dtype, s.k, s.m)
}

fn gemv_f32_supports(s: &MatmulShape) -> bool {
    plain(s)
        && s.m <= GEMV_MAX_M
        && match WType::from_ggml(s.dtype) {
            Some(WType::F32) => s.k.is_multiple_of(4),
            Some(WType::F16 | WType::BF16) => s.k.is_multiple_of(8),
            Some(_) => true,
            None => false,
        }
}

fn cublas_supports(s: &MatmulShape) -> bool {
    plain(s) && WType::from_ggml(s.dtype).is_some()
}

pub const IMPLS: &[MatmulImpl] = &[
    MatmulImpl {
        name: "gemv",
        supports: gemv_supports,
    },
    MatmulImpl {
        name: "cublas",
        supports: cublas_supports,
    },
    MatmulImpl {
        name: "gemv_f32",
        supports: gemv_f32_supports,
    },
];

/// gemv for decode-sized batches, cuBLAS above.
pub fn default_impl(s: &MatmulShape) -> usize {
    if gemv_supports(s) {
        IMPL_GEMV
    } else {
        IMPL_CUBLAS
    }
}

/// One matrix-vector launch over a segment.
#[allow(clippy::too_many_arguments)]
fn launch_gemv(
    dev: &Device,
    f: Func,
    quant_smem: bool,
    seg: &Segment,
    k: usize,
    m: usize,
    x: u64,
    out: u64,
    ldo: usize,
    bias: u64,
) -> CudaResult<()> {
    let sm = dev.sm_count as usize;
    let rows = seg.rows;
    let warps = if rows >= 16 * sm { 8 } else { 4 };
    let mut blocks = rows.div_ceil(warps);
    if quant_smem {
        // Each block quantises the activations once; cap the blocks so that the
        // work is amortised over many rows while filling every SM several times.
        blocks = blocks.min(sm * 32 / warps);
    }
    let smem = if quant_smem {
        gemv_smem(m, k) as u32
    } else {
        0
    };
    let p = seg.planes;
    dev.launch(
        f,
        (blocks as u32, 1, 1),
        (warps * 32) as u32,
        smem,
        &[
            Arg(p[0]),
            Arg(p[1]),
            Arg(p[2]),
            Arg(p[3]),
            Arg::from(rows as i32),
            Arg::from(k as i32),
            Arg(x),
            Arg(out + 4 * seg.row0 as u64),
            Arg::from(ldo as i32),
            Arg(if bias == 0 {
                0
            } else {
                bias + 4 * seg.row0 as u64
            }),
        ],
    )
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

fn elementwise_grid(len: usize) -> (u32, u32, u32) {
    (len.div_ceil(256) as u32, 1, 1)
}

/// `out[m, n] = x[m, k] W^T (+ bias)` with implementation `imp`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dev: &Arc<Device>,
    k_: &Kernels,
    blas: Result<&Blas, &CudaError>,
    xq_scratch: &Mutex<Option<DeviceBuffer>>,
    imp: usize,
    x: u64,
    w: &CudaLinear,
    m: usize,
    out: u64,
) -> CudaResult<()> {
    let (n, k) = (w.info.n, w.info.k);
    let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
    match imp {
        IMPL_GEMV | IMPL_GEMV_F32 => {
            if m == 0 || m > GEMV_MAX_M {
                return Err(CudaError::Invalid(format!(
                    "gemv runs 1..={GEMV_MAX_M} rows, not {m}"
                )));
            }
            let any_quant = w.segs.iter().any(|s| s.ty.is_quantized());
            let xq = if imp == IMPL_GEMV && any_quant {
                if gemv_smem(m, k) > GEMV_SMEM_LIMIT {
                    return Err(CudaError::Invalid(format!(
                        "gemv: k = {k} too long for m = {m}"
                    )));
                }
                // Sized for the largest batch at once, so that a decode step
                // (m = 1) and a prefill chunk share one buffer.
                let mut slot = xq_scratch.lock().unwrap_or_else(|e| e.into_inner());
                let buf = grow(
                    dev,
                    &mut slot,
                    gemv_smem(GEMV_MAX_M, k.max(XQ_MIN_K)),
                    "quantised activations",
                )?;
                dev.launch(
                    k_.quantize_act,
                    elementwise_grid(m * k),
                    256,
                    0,
                    &[Arg(x), Arg::from(m as i32), Arg::from(k as i32), Arg(buf)],
                )?;
                buf
            } else {
                0
            };
            for seg in &w.segs {
                let dp4a = imp == IMPL_GEMV && seg.ty.is_quantized();
                let x = if dp4a { xq } else { x };
                let f = if imp == IMPL_GEMV {
                    k_.gemv[seg.ty as usize][m - 1]
                } else {
                    k_.gemvx[seg.ty as usize][m - 1]
                };
                launch_gemv(dev, f, dp4a, seg, k, m, x, out, n, bias)?;
            }
            Ok(())
        }
        IMPL_CUBLAS => {
            let blas =
                blas.map_err(|e| CudaError::Invalid(format!("cuBLAS is unavailable: {e}")))?;
            let mut scratch = blas.scratch.lock().unwrap_or_else(|e| e.into_inner());
            let mut x16: [u64; 2] = [0, 0]; // f16, bf16 copies of x, made on first need
            for seg in &w.segs {
                match seg.ty {
                    WType::F32 => {
                        blas.gemm(
                            dev,
                            cb::cudaDataType::CUDA_R_32F,
                            seg.planes[0],
                            x,
                            out + 4 * seg.row0 as u64,
                            seg.rows,
                            m,
                            k,
                            n,
                        )?;
                    }
                    WType::BF16 | WType::F16 => {
                        let (slot, f, ty) = if seg.ty == WType::BF16 {
                            (1, k_.f32_to_bf16, cb::cudaDataType::CUDA_R_16BF)
                        } else {
                            (0, k_.f32_to_f16, cb::cudaDataType::CUDA_R_16F)
                        };
                        if x16[slot] == 0 {
                            x16[slot] = convert_x(dev, &mut scratch, f, slot, x, m * k)?;
                        }
                        blas.gemm(
                            dev,
                            ty,
                            seg.planes[0],
                            x16[slot],
                            out + 4 * seg.row0 as u64,
                            seg.rows,
                            m,
                            k,
                            n,
                        )?;
                    }
                    t => {
                        if x16[0] == 0 {
                            x16[0] = convert_x(dev, &mut scratch, k_.f32_to_f16, 0, x, m * k)?;
                        }
                        let tile_rows = (TILE_VALUES / k).clamp(1, seg.rows);
                        let wbuf = grow(
                            dev,
                            &mut scratch.weights,
                            tile_rows * k * 2,
                            "dequantised weight tile",
                        )?;
                        let deq = k_.dequant[t as usize];
                        let mut r0 = 0;
                        while r0 < seg.rows {
                            let rows = tile_rows.min(seg.rows - r0);
                            let p = seg.planes;
                            dev.launch(
                                deq,
                                elementwise_grid(rows * (k / 32)),
                                256,
                                0,
                                &[
                                    Arg(p[0]),
                                    Arg(p[1]),
                                    Arg(p[2]),
                                    Arg(p[3]),
                                    Arg::from(r0 as i32),
                                    Arg::from(rows as i32),
                                    Arg::from(k as i32),
                                    Arg(wbuf),
                                ],
                            )?;
                            blas.gemm(
                                dev,
                                cb::cudaDataType::CUDA_R_16F,
                                wbuf,
                                x16[0],
                                out + 4 * (seg.row0 + r0) as u64,
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
            if bias != 0 {
                dev.launch(
                    k_.bias_add,
                    elementwise_grid(m * n),
                    256,
                    0,
                    &[
                        Arg(out),
                        Arg(bias),
                        Arg::from(m as i32),
                        Arg::from(n as i32),
                        Arg::from(n as i32),
                    ],
                )?;
            }
            Ok(())
        }
        _ => Err(CudaError::Invalid(format!(
            "no matmul implementation #{imp}"
        ))),
    }
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
        elementwise_grid(len),
        256,
        0,
        &[Arg(x), Arg(dst), Arg::from(len as i64)],
    )?;
    Ok(dst)
}
