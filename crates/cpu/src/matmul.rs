//! Matrix products against GGUF-format weights.
//!
//! `gemv` dequantises each weight row once and dots it with every activation
//! row; it is the reference every faster kernel is tested against.

use crate::shared_out::SharedOut;
use metallic::backend::{MatmulImpl, MatmulShape};
use metallic::error::{Error, Result};
use metallic_gguf::{quant, GgmlType};
use rayon::prelude::*;

use crate::linear::CpuLinear;

pub fn supported_type(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K
    )
}

fn gemv_supports(s: &MatmulShape) -> bool {
    s.batch == 1 && !s.ta && s.tb && supported_type(s.dtype)
}

pub const IMPLS: &[MatmulImpl] = &[MatmulImpl {
    name: "gemv",
    supports: gemv_supports,
}];

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `out[m, n] = x[m, k] * w^T + bias`.
pub fn gemv(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let (n, k) = (w.info.n, w.info.k);
    if x.len() < m * k || out.len() < m * n {
        return Err(Error::InvalidArgument(format!(
            "matmul buffers too small for m={m} n={n} k={k}"
        )));
    }
    let optr = SharedOut::new(out);
    const ROWS: usize = 16;
    let n_chunks = n.div_ceil(ROWS);
    (0..n_chunks).into_par_iter().try_for_each_init(
        || vec![0.0f32; k],
        |row, c| -> Result<()> {
            for r in c * ROWS..((c + 1) * ROWS).min(n) {
                let (part, pr) = w.locate(r).expect("row within n");
                quant::dequantize(part.ty, part.row(pr), row).map_err(Error::from)?;
                let b = w.bias.as_ref().map_or(0.0, |b| b[r]);
                for i in 0..m {
                    let v = dot(&x[i * k..(i + 1) * k], row) + b;
                    // SAFETY: column r of every row is written by this task only,
                    // and i * n + r < m * n <= out.len() (checked above).
                    unsafe { *optr.ptr().add(i * n + r) = v };
                }
            }
            Ok(())
        },
    )
}
