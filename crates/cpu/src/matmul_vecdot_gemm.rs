//! `vecdot_gemm`: the prefill kernel for Q4_0, Q4_1 and Q8_0 weights with
//! 8-bit activations, `vecdot`'s arithmetic (per-32 Q8 activation blocks of
//! `q8_act.rs`, exact integer block dots, one float scale per block) laid out
//! as a register-tiled GEMM with AVX-512 VNNI (`vpdpbusd`).
//!
//! Each task takes [`NR`] = 16 weight rows and repacks them into a per-thread
//! tile where one 64-byte load holds four consecutive levels of every one of
//! the 16 rows (as llama.cpp's repacked Q4_0 layout does): one `vpdpbusd`
//! against four activation bytes broadcast to every lane then advances 16
//! output columns at once, and a block's 32 levels take 8 of them. A
//! micro-tile is [`MR`] = 6 activation rows by the 16 rows; per block and row the
//! integer sum is scaled once (`d_w * d_a`) and the weights' offset (Q4_0's
//! `-8`, Q4_1's minimum, the `+128` that makes Q8_0 levels unsigned) enters
//! through the activations' block sums `s`, as in `vecdot`. The repack is
//! paid once per 16 rows for all `m` activation rows, so it stays a few
//! percent of a prefill product and no second copy of the weights is kept.
//!
//! Without AVX-512 VNNI (or for parts of other types) the product runs
//! through `vecdot`'s multi-row kernels: the same arithmetic, and the default
//! rule keeps such machines on `gemm`.

use std::cell::RefCell;

use metallic::error::Result;
use metallic_gguf::GgmlType;
use rayon::prelude::*;

use crate::linear::CpuLinear;
use crate::q8_act::{Q8Acts, Q8Row, QK};
use crate::shared_out::SharedOut;
use crate::vec_dot::{self, f16_at, Kernels, SimdLevel};

/// Weight rows per tile: one 512-bit register of f32 or i32 lanes.
pub const NR: usize = 16;
/// Activation rows per micro-tile: six rows keep two integer chains, a
/// float accumulator and an offset accumulator each in registers (24 of
/// AVX-512's 32) next to the weights. `metallic probe --prefill-m 128` on
/// the development machine: six ran the Qwen2.5-0.5B Q4_0 products ~10%
/// faster than four; eight spilled registers and was slower than four.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR: usize = 6;

thread_local! {
    // Reused across calls: buffers grow to the largest shape, then stay.
    static ACTS: RefCell<Q8Acts> = RefCell::new(Q8Acts::default());
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
}

/// Weight types with a tile kernel.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Whether every part of `w` can share one tile layout: all 4-bit (Q4_0 and
/// Q4_1 may mix, their offsets are per row) or all Q8_0.
fn tiles_fit(w: &CpuLinear) -> bool {
    let nibbles = |t: GgmlType| matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1);
    w.parts.iter().all(|p| supported(p.ty))
        && (w.parts.iter().all(|p| nibbles(p.ty)) || w.parts.iter().all(|p| !nibbles(p.ty)))
        && w.info.k.is_multiple_of(QK)
}

/// [`NR`] weight rows repacked for the kernel; block `b` holds, for each
/// group `g` of four levels, the four level bytes of row 0, then of row 1,
/// ... of row 15. 4-bit rows keep ggml's nibble pairs (byte `i` holds levels
/// `i` and `i + 16`), so 4 groups cover a block; Q8_0 rows are stored as
/// unsigned levels `q + 128`, 8 groups a block. Rows past the product's end
/// are zero (they add nothing and are never stored).
#[derive(Default)]
pub struct Tile {
    q: Vec<u8>,
    /// Per block and row: the weight scale `d`.
    d: Vec<f32>,
    /// Per block and row: what multiplies the activations' block sum `s`:
    /// `-8 d` (Q4_0), the minimum `m` (Q4_1), `-128 d` (Q8_0).
    b: Vec<f32>,
    nb: usize,
    nibbles: bool,
}

impl Tile {
    /// Bytes of levels per block of [`NR`] rows.
    fn block_bytes(&self) -> usize {
        if self.nibbles {
            NR * QK / 2
        } else {
            NR * QK
        }
    }

    /// Repack rows `r0..r0 + rows` of `w` (`rows <= NR`; `tiles_fit(w)`).
    fn repack(&mut self, w: &CpuLinear, r0: usize, rows: usize) {
        let nb = w.info.k / QK;
        self.nb = nb;
        self.nibbles = matches!(w.parts[0].ty, GgmlType::Q4_0 | GgmlType::Q4_1);
        let bb = self.block_bytes();
        let per_row = bb / NR;
        self.q.clear();
        self.q.resize(nb * bb, 0);
        self.d.clear();
        self.d.resize(nb * NR, 0.0);
        self.b.clear();
        self.b.resize(nb * NR, 0.0);
        for j in 0..rows {
            let (part, pr) = w.locate(r0 + j).expect("row within n");
            let (bytes, qs_at) = match part.ty {
                GgmlType::Q4_0 => (18, 2),
                GgmlType::Q4_1 => (20, 4),
                _ => (34, 2),
            };
            let row = part.row(pr);
            for blk in 0..nb {
                let src = &row[blk * bytes..(blk + 1) * bytes];
                let d = f16_at(src, 0);
                self.d[blk * NR + j] = d;
                self.b[blk * NR + j] = match part.ty {
                    GgmlType::Q4_0 => -8.0 * d,
                    GgmlType::Q4_1 => f16_at(src, 2),
                    _ => -128.0 * d,
                };
                let qs = &src[qs_at..qs_at + per_row];
                let dst = &mut self.q[blk * bb..(blk + 1) * bb];
                for g in 0..per_row / 4 {
                    let o = g * NR * 4 + j * 4;
                    for t in 0..4 {
                        // Q8_0: i8 level to u8 level + 128 (flip the sign bit).
                        let v = qs[g * 4 + t];
                        dst[o + t] = if self.nibbles { v } else { v ^ 0x80 };
                    }
                }
            }
        }
    }
}

/// `out[m, n] = x[m, k] * w^T + bias` with the detected SIMD level.
pub fn vecdot_gemm(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    vecdot_gemm_with(vec_dot::kernels(), x, w, m, out)
}

/// Whether `kern`'s level runs the tile kernel (else `vecdot`'s kernels).
pub fn has_tile_kernel(kern: &Kernels) -> bool {
    kern.level() == SimdLevel::Avx512
}

/// As [`vecdot_gemm`] with a given kernel set (tests compare the levels).
pub fn vecdot_gemm_with(
    kern: &Kernels,
    x: &[f32],
    w: &CpuLinear,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    let (_, k) = crate::matmul::check_buffers(x, w, m, out)?;
    if m == 0 || !has_tile_kernel(kern) || !tiles_fit(w) {
        return crate::matmul_vecdot::vecdot_with(kern, x, w, m, out);
    }
    ACTS.with_borrow_mut(|acts| {
        acts.quantize_parallel(x, m, k);
        tiles(acts, w, m, out)
    })
}

fn tiles(acts: &Q8Acts, w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let n = w.info.n;
    let arows: Vec<Q8Row<'_>> = (0..m).map(|i| acts.row(i)).collect();
    let optr = SharedOut::new(out);
    (0..n.div_ceil(NR)).into_par_iter().for_each(|t| {
        TILE.with_borrow_mut(|tile| {
            let r0 = t * NR;
            let cols = NR.min(n - r0);
            tile.repack(w, r0, cols);
            let mut bias = [0.0f32; NR];
            if let Some(b) = &w.bias {
                bias[..cols].copy_from_slice(&b[r0..r0 + cols]);
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the CPU has the AVX-512 VNNI
            // level (`has_tile_kernel`); every activation row has the tile's
            // `nb` blocks; the kernel writes columns r0..r0 + cols (masked) of
            // rows 0..m of `out`, which holds m * n values, and no other task
            // writes those columns.
            unsafe {
                x86::tile_rows(tile, &arows, optr.ptr(), n, r0, cols, &bias)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (tile, &arows, optr, bias);
        })
    });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Tile, MR, NR};
    use crate::q8_act::{Q8Row, QK};

    /// Every activation row of `a` times the tile, plus `bias`, stored to
    /// columns `c0..c0 + cols` of the rows of `out` (row stride `n`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    pub unsafe fn tile_rows(
        t: &Tile,
        a: &[Q8Row<'_>],
        out: *mut f32,
        n: usize,
        c0: usize,
        cols: usize,
        bias: &[f32; NR],
    ) {
        let mask = ((1u32 << cols) - 1) as __mmask16;
        let bias = _mm512_loadu_ps(bias.as_ptr());
        let store = Store {
            out,
            n,
            c0,
            mask,
            bias,
        };
        let mut i = 0;
        while i + MR <= a.len() {
            let rows: &[Q8Row<'_>; MR] = a[i..i + MR].try_into().unwrap();
            let v = if t.nibbles {
                micro::<MR, true>(t, rows)
            } else {
                micro::<MR, false>(t, rows)
            };
            store.rows(i, &v);
            i += MR;
        }
        let rest = &a[i..];
        macro_rules! tail {
            ($r:literal) => {{
                let rows: &[Q8Row<'_>; $r] = rest.try_into().unwrap();
                let v = if t.nibbles {
                    micro::<$r, true>(t, rows)
                } else {
                    micro::<$r, false>(t, rows)
                };
                store.rows(i, &v);
            }};
        }
        match rest.len() {
            5 => tail!(5),
            4 => tail!(4),
            3 => tail!(3),
            2 => tail!(2),
            1 => tail!(1),
            _ => {}
        }
    }

    /// Where a micro-tile's results go: columns `c0..` (the `mask`ed
    /// lanes) of rows of `out`, each plus the bias.
    struct Store {
        out: *mut f32,
        n: usize,
        c0: usize,
        mask: __mmask16,
        bias: __m512,
    }

    impl Store {
        /// Rows `i..i + v.len()`.
        #[inline(always)]
        unsafe fn rows(&self, i: usize, v: &[__m512]) {
            for (j, v) in v.iter().enumerate() {
                let p = self.out.add((i + j) * self.n + self.c0);
                _mm512_mask_storeu_ps(p, self.mask, _mm512_add_ps(*v, self.bias));
            }
        }
    }

    /// `R` activation rows times the tile's 16 rows: per row a vector of 16
    /// outputs (without bias). Per block the integer dot of each (row,
    /// column) pair is exact (at most 32 x 255 x 127 in an i32 lane), in
    /// two chains (even and odd level groups) so that `vpdpbusd`'s latency
    /// overlaps; then one convert, one scale multiply-add and one
    /// multiply-add of the offset term per row.
    #[inline(always)]
    unsafe fn micro<const R: usize, const NIBBLES: bool>(
        t: &Tile,
        a: &[Q8Row<'_>; R],
    ) -> [__m512; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut corr = [_mm512_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0f);
        let bb = t.block_bytes();
        let (q, d, bv) = (t.q.as_ptr(), t.d.as_ptr(), t.b.as_ptr());
        for b in 0..t.nb {
            let mut i0 = [_mm512_setzero_si512(); R];
            let mut i1 = [_mm512_setzero_si512(); R];
            let wq = q.add(b * bb);
            if NIBBLES {
                for g in 0..4 {
                    let raw = _mm512_loadu_si512(wq.add(64 * g) as *const _);
                    let lo = _mm512_and_si512(raw, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
                    for r in 0..R {
                        let p = a[r].qs.as_ptr().add(b * QK + 4 * g);
                        let alo = _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                        let ahi =
                            _mm512_set1_epi32(std::ptr::read_unaligned(p.add(16) as *const i32));
                        i0[r] = _mm512_dpbusd_epi32(i0[r], lo, alo);
                        i1[r] = _mm512_dpbusd_epi32(i1[r], hi, ahi);
                    }
                }
            } else {
                for g in 0..8 {
                    let u = _mm512_loadu_si512(wq.add(64 * g) as *const _);
                    for r in 0..R {
                        let p = a[r].qs.as_ptr().add(b * QK + 4 * g);
                        let av = _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                        if g % 2 == 0 {
                            i0[r] = _mm512_dpbusd_epi32(i0[r], u, av);
                        } else {
                            i1[r] = _mm512_dpbusd_epi32(i1[r], u, av);
                        }
                    }
                }
            }
            let dw = _mm512_loadu_ps(d.add(b * NR));
            let bw = _mm512_loadu_ps(bv.add(b * NR));
            for r in 0..R {
                let isum = _mm512_add_epi32(i0[r], i1[r]);
                let da = _mm512_set1_ps(*a[r].d.get_unchecked(b));
                let sa = _mm512_set1_ps(*a[r].s.get_unchecked(b));
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum), acc[r]);
                corr[r] = _mm512_fmadd_ps(bw, sa, corr[r]);
            }
        }
        let mut out = [_mm512_setzero_ps(); R];
        for r in 0..R {
            out[r] = _mm512_add_ps(acc[r], corr[r]);
        }
        out
    }
}
