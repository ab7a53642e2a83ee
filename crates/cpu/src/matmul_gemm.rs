//! `gemm`: the prefill kernel. Weight rows are dequantised a tile at a time
//! into a per-thread f32 buffer and multiplied by all `m` activation rows with
//! the `gemm` crate's blocked, SIMD micro-kernels; each tile's dequantisation
//! is paid once for `m` rows.

use std::cell::RefCell;

use gemm::Parallelism;
use metallic::error::Result;
use metallic_gguf::quant;
use rayon::prelude::*;

use crate::linear::CpuLinear;
use crate::shared_out::SharedOut;

/// Weight rows per tile: 64 rows of up to ~5k values stay within L2.
const TILE: usize = 64;

thread_local! {
    static TILE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[m, n] = x[m, k] * w^T + bias`.
pub fn gemm(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let (n, k) = crate::matmul::check_buffers(x, w, m, out)?;
    let optr = SharedOut::new(out);
    let xp = SharedIn(x.as_ptr());
    (0..n.div_ceil(TILE))
        .into_par_iter()
        .try_for_each(|t| -> Result<()> {
            let r0 = t * TILE;
            let rows = TILE.min(n - r0);
            TILE_BUF.with_borrow_mut(|buf| -> Result<()> {
                buf.resize(TILE * k, 0.0);
                for j in 0..rows {
                    let (part, pr) = w.locate(r0 + j).expect("row within n");
                    quant::dequantize(part.ty, part.row(pr), &mut buf[j * k..(j + 1) * k])?;
                }
                // SAFETY: dst is columns r0..r0+rows of every output row: in
                // bounds (m * n <= out.len()) and written by this task only.
                // lhs is x[m, k] (row-major); rhs[kk, j] = buf[j * k + kk].
                unsafe {
                    gemm::gemm(
                        m,
                        rows,
                        k,
                        optr.ptr().add(r0),
                        1,
                        n as isize,
                        false,
                        xp.ptr(),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                if let Some(bias) = &w.bias {
                    for i in 0..m {
                        for j in 0..rows {
                            // SAFETY: as above.
                            unsafe { *optr.ptr().add(i * n + r0 + j) += bias[r0 + j] };
                        }
                    }
                }
                Ok(())
            })
        })
}

/// The activations, read by every task.
#[derive(Clone, Copy)]
struct SharedIn(*const f32);
// SAFETY: read-only for the duration of the parallel section.
unsafe impl Send for SharedIn {}
unsafe impl Sync for SharedIn {}

impl SharedIn {
    // Through a method, so closures capture the wrapper, not the raw field.
    fn ptr(&self) -> *const f32 {
        self.0
    }
}
