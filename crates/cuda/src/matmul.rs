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
//! `vecdot` and `fdot` also run a product with an RMS norm of its input and a
//! residual-add or SwiGLU epilogue in one kernel ([`fuses`], `Fusion`):
//! `Backend::matmul_fused` of the decode path. The decode QKV product also
//! takes rope and the KV-cache write into its epilogue ([`fuses_rope`],
//! [`run_rope`]): `vecdot`'s dp4a kernels for their types, and the `fdot`
//! kernels for float weights under `vecdot` or `fdot` (both multiply float
//! rows with the `fdot` kernels).
//!
//! `vecdot_chunked` is the batch-invariant path (`metallic serve
//! --deterministic`): a `vecdot` kernel quantises each activation row by
//! itself (per 32 values) and reduces each output element in one warp, lane
//! order and unit order fixed by `k` alone; the row count `M` of a launch
//! only repeats that per-row work. So a row's result is the same bits in a
//! launch of 1 row or of 8, and cutting `m` rows into launches of at most 8
//! keeps it whatever `m` is. Never the default: above 8 rows cuBLAS is
//! faster, but its algorithm (and so the rounding) depends on `m`. It never
//! splits a row over warps (`vecdot`'s split-K depends on `m`), and it does
//! not fuse.
//!
//! Default rule ([`default_impl`]): `vecdot` for decode-sized batches,
//! `cublas` above. `fdot` is the exact path (no activation rounding), for
//! checks and numerically fussy runs (METALLIC_MATMUL_BACKEND=fdot).

use std::sync::Arc;

use metallic::backend::{MatmulImpl, MatmulShape, QkvLayout};

use crate::device::Device;
use crate::error::{CudaError, CudaResult};
use crate::kernels::Kernels;
use crate::linear::CudaLinear;
use crate::ops::matmul_cublas::Blas;
use crate::ops::matmul_fdot::{Fdot, Fusion, RopeStore};
use crate::ops::matmul_vecdot::Vecdot;
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

/// Whether implementation `imp` runs `m` rows with a norm prologue and an
/// epilogue in its own kernels: `vecdot` and `fdot` (matrix-vector, m <= 8);
/// SwiGLU also needs gate|up in one segment.
pub fn fuses(imp: usize, w: &CudaLinear, m: usize, fu: &Fusion) -> bool {
    (imp == VECDOT || imp == FDOT)
        && (1..=matmul_fdot::MAX_M).contains(&m)
        && matmul_fdot::check_fusion(w, fu).is_ok()
}

/// Whether implementation `imp` runs the decode QKV product of `w` (one
/// row) with rope and the KV-cache write in its epilogue ([`run_rope`]), in
/// the arithmetic its plain product has, so that the result is the bits of
/// the product then `rope_kv_store`: `vecdot` with its dp4a kernels, and
/// float weights on `vecdot` or `fdot`, which both multiply them with the
/// `fdot` kernels. Never `fdot` on quantised weights (its kernels there
/// are not `vecdot`'s), `cublas` or `vecdot_chunked`.
pub fn fuses_rope(imp: usize, w: &CudaLinear, layout: &QkvLayout) -> bool {
    match imp {
        VECDOT => Vecdot::supports_rope(w, layout) || Fdot::supports_rope(w, layout),
        FDOT => Fdot::supports_rope(w, layout),
        _ => false,
    }
}

/// The decode QKV product of one row with implementation `imp`: `qkv =
/// norm(x) W^T (+ bias)` rotated, and its K and V heads written into the
/// f32 caches at `pos[0]`, in one kernel where [`fuses_rope`] says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_rope(
    dev: &Arc<Device>,
    k: &Kernels,
    imp: usize,
    x: u64,
    w: &CudaLinear,
    out: u64,
    norm: u64,
    eps: f32,
    st: &RopeStore<'_>,
) -> CudaResult<()> {
    if !fuses_rope(imp, w, st.layout) {
        return Err(matmul_fdot::no_rope_product(
            &format!("matmul implementation #{imp}"),
            w,
        ));
    }
    if Fdot::supports_rope(w, st.layout) {
        k.fdot.launch_rope(dev, x, w, out, norm, eps, st)
    } else {
        k.vecdot.launch_rope(dev, x, w, out, norm, eps, st)
    }
}

/// `out = epilogue(norm(x)[m, k] W^T (+ bias))` with implementation `imp`;
/// only the plain product (`Fusion::NONE`) on `cublas`.
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
    fu: &Fusion,
) -> CudaResult<()> {
    if !fu.is_none() && !fuses(imp, w, m, fu) {
        return Err(CudaError::Invalid(format!(
            "matmul implementation #{imp} cannot fuse {fu:?} for {m} rows"
        )));
    }
    match imp {
        VECDOT => k.vecdot.launch(dev, &k.fdot, x, w, m, out, fu, true),
        FDOT => k.fdot.launch(dev, x, w, m, out, fu),
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
                k.vecdot
                    .launch(dev, &k.fdot, xr, w, rows, outr, fu, false)?;
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
