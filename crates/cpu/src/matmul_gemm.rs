//! `gemm`: the prefill kernel. Weight rows are dequantised a tile at a time
//! into a per-thread f32 buffer and multiplied by all `m` activation rows with
//! the `gemm` crate's blocked, SIMD micro-kernels; each tile's dequantisation
//! is paid once for `m` rows. F16 rows are converted with F16C where the CPU
//! has it (the same values as the gguf crate's portable conversion, which
//! otherwise took a tenth of an F16 prefill product). Where the CPU has AVX2
//! or AVX-512, all-F16 weights skip the tile buffer and the `gemm` crate for
//! matmul_f16.rs's register tiles (the same arithmetic, twice as fast).

use std::cell::RefCell;

use gemm::Parallelism;
use metallic::error::Result;
use metallic_gguf::{quant, GgmlType};
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
    // F16 weights: register tiles converting in place (same arithmetic, see
    // matmul_f16.rs), where the CPU has AVX2 or AVX-512.
    #[cfg(target_arch = "x86_64")]
    if crate::matmul_f16::applies(w) {
        return crate::matmul_f16::gemm_f16(x, w, m, out);
    }
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
                    dequantize_row(part.ty, part.row(pr), &mut buf[j * k..(j + 1) * k])?;
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

/// One weight row of type `ty` to f32: the gguf crate's values, F16 through
/// F16C where the CPU has it.
fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if ty == GgmlType::F16 && crate::vec_dot::SimdLevel::Avx2.available() {
        assert!(src.len() >= 2 * dst.len());
        // SAFETY: the CPU has F16C and AVX (the AVX2 level checks both);
        // `src` holds the row's `dst.len()` halves (checked above).
        unsafe { x86::f16_row(src, dst) };
        return Ok(());
    }
    Ok(quant::dequantize(ty, src, dst)?)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `dst[i]` = the f16 at bytes `2i..2i + 2` of `src`, eight at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_row(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for j in i..n {
            dst[j] =
                metallic_gguf::quant::f16_to_f32(u16::from_le_bytes([src[2 * j], src[2 * j + 1]]));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 bit pattern (a row of 65,536 values and a ragged tail)
    /// converts to the gguf crate's f32, bit for bit (NaNs as NaNs).
    #[test]
    fn f16_rows_convert_to_the_gguf_crates_values() {
        let bytes: Vec<u8> = (0..=u16::MAX)
            .chain(0..5)
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let n = bytes.len() / 2;
        let mut want = vec![0.0f32; n];
        quant::dequantize(GgmlType::F16, &bytes, &mut want).unwrap();
        let mut got = vec![f32::NAN; n];
        dequantize_row(GgmlType::F16, &bytes, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "f16 {:#06x}: {g} vs {w}",
                i % 65536
            );
        }
    }
}
