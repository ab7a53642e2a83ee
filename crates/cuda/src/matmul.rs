//! The CUDA backend's matmul registry: `out[m, n] = x[m, k] W^T (+ bias)`
//! and the implementations the dispatcher chooses between. A name means the
//! same arithmetic here as on the CPU backend:
//!
//! | index | name     | runs                                                       | supports            |
//! |-------|----------|------------------------------------------------------------|---------------------|
//! | 0     | `vecdot` | 8-bit activations x quantised rows (dp4a); f32 x float rows | m <= 8, every type  |
//! | 1     | `cublas` | cuBLAS GemmEx on f16/bf16 (f32 for F32 weights) operands    | every type          |
//! | 2     | `fdot`   | f32 activations x rows decoded to f32 in registers         | m <= 8, every type  |
//! | 3     | `vecdot_chunked` | `vecdot` in launches of at most 8 rows             | every m             |
//!
//! (`vecdot` has dp4a kernels for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K
//! and Q6_K; rows of Q2_K and Q3_K run the `fdot` kernels there.)
//!
//! `vecdot_chunked` is the batch-invariant path (`metallic serve
//! --deterministic`): a `vecdot` kernel quantises each activation row by
//! itself (per 32 values) and reduces each output element in one warp, lane
//! order and unit order fixed by `k` alone; the row count `M` of a launch
//! only repeats that per-row work. So a row's result is the same bits in a
//! launch of 1 row or of 8, and cutting `m` rows into launches of at most 8
//! keeps it whatever `m` is. Never the default: above 8 rows cuBLAS is
//! faster, but its algorithm (and so the rounding) depends on `m`.
//!
//! Default rule ([`default_impl`]): `vecdot` for decode-sized batches,
//! `cublas` above. `fdot` is the exact path (no activation rounding), for
//! checks and numerically fussy runs (METALLIC_MATMUL_BACKEND=fdot).

use std::sync::Arc;

use metallic::backend::{MatmulImpl, MatmulShape};

use crate::device::Device;
use crate::error::{CudaError, CudaResult};
use crate::kernels::Kernels;
use crate::linear::CudaLinear;
use crate::ops::matmul_cublas::Blas;
use crate::ops::{matmul_fdot, matmul_vecdot};
use crate::wtype::WType;

pub const VECDOT: usize = 0;
pub const CUBLAS: usize = 1;
pub const FDOT: usize = 2;
pub const VECDOT_CHUNKED: usize = 3;

fn plain(s: &MatmulShape) -> bool {
    s.batch == 1 && !s.ta && s.tb && s.m >= 1
}

fn vecdot_supports(s: &MatmulShape) -> bool {
    plain(s)
        && s.m <= matmul_fdot::MAX_M
        && WType::from_ggml(s.dtype).is_some_and(|t| matmul_vecdot::supports(t, s.k, s.m))
}

fn fdot_supports(s: &MatmulShape) -> bool {
    plain(s)
        && s.m <= matmul_fdot::MAX_M
        && WType::from_ggml(s.dtype).is_some_and(|t| matmul_fdot::supports_k(t, s.k))
}

/// Rows per launch of `vecdot_chunked` for rows of `k` values of `dtype`:
/// the most that `vecdot` takes (it fits the quantised rows in shared memory).
fn chunk_rows(s: &MatmulShape) -> usize {
    (1..=matmul_fdot::MAX_M)
        .rev()
        .find(|&m| vecdot_supports(&MatmulShape { m, ..*s }))
        .unwrap_or(0)
}

fn vecdot_chunked_supports(s: &MatmulShape) -> bool {
    plain(s) && chunk_rows(s) > 0
}

fn cublas_supports(s: &MatmulShape) -> bool {
    plain(s) && WType::from_ggml(s.dtype).is_some()
}

pub const IMPLS: &[MatmulImpl] = &[
    MatmulImpl {
        name: "vecdot",
        supports: vecdot_supports,
    },
    MatmulImpl {
        name: "cublas",
        supports: cublas_supports,
    },
    MatmulImpl {
        name: "fdot",
        supports: fdot_supports,
    },
    MatmulImpl {
        name: "vecdot_chunked",
        supports: vecdot_chunked_supports,
    },
];

/// `vecdot` for decode-sized batches, cuBLAS above.
pub fn default_impl(s: &MatmulShape) -> usize {
    if vecdot_supports(s) {
        VECDOT
    } else {
        CUBLAS
    }
}

/// `out[m, n] = x[m, k] W^T (+ bias)` with implementation `imp`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    dev: &Arc<Device>,
    k: &Kernels,
    blas: Result<&Blas, &CudaError>,
    imp: usize,
    x: u64,
    w: &CudaLinear,
    m: usize,
    out: u64,
) -> CudaResult<()> {
    match imp {
        VECDOT => k.vecdot.launch(dev, &k.fdot, x, w, m, out),
        FDOT => k.fdot.launch(dev, x, w, m, out),
        VECDOT_CHUNKED => {
            let shape = MatmulShape {
                op: metallic::backend::MatmulOp::Matmul,
                dtype: w.info.dtype,
                batch: 1,
                m: 1,
                n: w.info.n,
                k: w.info.k,
                ta: false,
                tb: true,
            };
            let chunk = chunk_rows(&shape);
            if chunk == 0 {
                return Err(CudaError::Invalid(format!(
                    "vecdot_chunked: no vecdot kernel for rows of {} x {}",
                    w.info.k,
                    w.info.dtype.name()
                )));
            }
            let (row_x, row_out) = (4 * w.info.k as u64, 4 * w.info.n as u64);
            for r0 in (0..m).step_by(chunk) {
                let rows = chunk.min(m - r0);
                let (xr, outr) = (x + r0 as u64 * row_x, out + r0 as u64 * row_out);
                k.vecdot.launch(dev, &k.fdot, xr, w, rows, outr)?;
            }
            Ok(())
        }
        CUBLAS => blas
            .map_err(|e| CudaError::Invalid(format!("cuBLAS is unavailable: {e}")))?
            .launch(dev, &k.cublas, x, w, m, out),
        _ => Err(CudaError::Invalid(format!(
            "no matmul implementation #{imp}"
        ))),
    }
}
