//! The CUDA backend's matmul registry: `out[m, n] = x[m, k] W^T (+ bias)`
//! and the implementations the dispatcher chooses between. A name means the
//! same arithmetic here as on the CPU backend:
//!
//! | index | name     | runs                                                       | supports            |
//! |-------|----------|------------------------------------------------------------|---------------------|
//! | 0     | `vecdot` | 8-bit activations x quantised rows (dp4a); f32 x float rows | m <= 8, every type  |
//! | 1     | `cublas` | cuBLAS GemmEx on f16/bf16 (f32 for F32 weights) operands    | every type          |
//! | 2     | `fdot`   | f32 activations x rows decoded to f32 in registers         | m <= 8, every type  |
//!
//! (`vecdot` has dp4a kernels for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K
//! and Q6_K; rows of Q2_K and Q3_K run the `fdot` kernels there.)
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
        CUBLAS => blas
            .map_err(|e| CudaError::Invalid(format!("cuBLAS is unavailable: {e}")))?
            .launch(dev, &k.cublas, x, w, m, out),
        _ => Err(CudaError::Invalid(format!(
            "no matmul implementation #{imp}"
        ))),
    }
}
