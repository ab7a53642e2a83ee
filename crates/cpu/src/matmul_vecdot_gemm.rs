//! `vecdot_gemm`: the prefill kernel for quantised weights (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) with 8-bit activations, `vecdot`'s
//! arithmetic (per-32 Q8 activation blocks of `q8_act.rs`, exact integer
//! block dots, one float scale per block, or per 16 values for Q6_K) laid
//! out as a register-tiled GEMM with AVX-512 VNNI (`vpdpbusd`).
//!
//! Each task takes [`NR`] = 16 weight rows and repacks them into a per-thread
//! tile where one 64-byte load holds four consecutive levels of every one of
//! the 16 rows (as llama.cpp's repacked Q4_0 layout does): one `vpdpbusd`
//! against four activation bytes broadcast to every lane then advances 16
//! output columns at once, and a block's 32 levels take 8 of them. Levels
//! are stored unsigned: 4-bit ones as nibble pairs (Q4_0, Q4_1, and Q4_K
//! rearranged to that order), the others one a byte (Q5's fifth bit and
//! Q6_K's two high bits joined to their nibbles, Q8_0 as `q + 128`). A
//! micro-tile is [`MR`] = 6 activation rows by the 16 rows; per block and row
//! the integer sum is scaled once (`d_w * d_a`, with `d_w` the block's
//! `d * sc` for K-quants) and the weights' offset (Q4_0's `-8`, Q5_0's
//! `-16`, the minimums of Q4_1/Q5_1/Q4_K/Q5_K, Q6_K's `-32`, the `+128` of
//! unsigned Q8_0 levels) enters through the activations' block sums `s`, as
//! in `vecdot`; Q6_K's scale per 16 values takes the integer dot and the
//! activation sum of each half apart. The repack is paid once per 16 rows
//! for all `m` activation rows, so it stays a few percent of a prefill
//! product and no second copy of the weights is kept.
//!
//! Without AVX-512 VNNI the product runs through `vecdot`'s kernels: the same
//! arithmetic, and the default rule keeps such machines on `gemm`.

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
    static HALVES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
}

/// Weight types with a tile kernel: every type `vecdot` takes 8-bit
/// activations for.
pub fn supported(ty: GgmlType) -> bool {
    crate::vec_dot::needs_q8(ty)
}

/// Types whose levels fit a nibble: their tiles keep ggml's nibble pairs.
fn nibbles(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K)
}

/// Whether every part of `w` has a tile kernel (any mix: each tile of 16
/// rows takes the layout its rows need).
fn tiles_fit(w: &CpuLinear) -> bool {
    w.parts.iter().all(|p| supported(p.ty)) && w.info.k.is_multiple_of(QK)
}

/// How a tile stores its rows' levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Layout {
    /// 4-bit levels (Q4_0, Q4_1, Q4_K): ggml's nibble pairs, byte `i` of a
    /// block holding levels `i` and `i + 16`; one scale and offset per block.
    #[default]
    Nibbles,
    /// One byte per level (Q8_0 as `q + 128`, the 5-bit types; 4-bit rows
    /// sharing a tile with them); one scale and offset per block.
    Bytes,
    /// One byte per level and a scale and offset per 16 levels: Q6_K (and
    /// whatever shares a tile with it, its pair of halves equal).
    Halves,
}

/// [`NR`] weight rows repacked for the kernel; block `b` holds, for each
/// group `g` of four level bytes, those of row 0, then of row 1, ... of row
/// 15 (4 groups a block for [`Layout::Nibbles`], else 8). Rows past the
/// product's end are zero (they add nothing and are never stored).
#[derive(Default)]
pub struct Tile {
    q: Vec<u8>,
    /// Per block (per half for [`Layout::Halves`]) and row: what multiplies
    /// `d_a` times the integer dot: the weight scale, `d * sc` for K-quants.
    d: Vec<f32>,
    /// Per block (or half) and row: what multiplies the activations' block
    /// (half) sum `s`: `-8 d` (Q4_0), `-16 d` (Q5_0), the minimum `m` (Q4_1,
    /// Q5_1), `-dmin * m` (Q4_K, Q5_K), `-32 d sc` (Q6_K), `-128 d` (Q8_0).
    b: Vec<f32>,
    nb: usize,
    layout: Layout,
}

/// One block of 32 weights of a row as the tile stores them: unsigned
/// levels `q` (level `l` in byte `l % 8` of word `l / 8`) and `(d, b)` per
/// half, so that the block's dot with an activation block is
/// `sum_h d_h * d_a * (q_h . a_h) + b_h * s_h`.
struct Block {
    q: [u64; 4],
    db: [(f32, f32); 2],
}

/// Low nibble of every byte.
const NIB: u64 = 0x0f0f_0f0f_0f0f_0f0f;
/// Lowest bit of every byte.
const BIT: u64 = 0x0101_0101_0101_0101;

/// `SPREAD[b]`: bit `i` of `b` as byte `i` (0 or 1): eight fifth bits of a
/// Q5_0/Q5_1 block in one word.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

/// Eight bytes of `s` at `at`, little-endian.
#[inline(always)]
fn word(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

/// The levels of a block stored as ggml's nibble pairs (Q4_0, Q4_1, Q5_*'s
/// low bits): byte `i` of `qs` holds levels `i` and `i + 16`.
#[inline(always)]
fn nibble_pairs(qs: &[u8]) -> [u64; 4] {
    let (a, b) = (word(qs, 0), word(qs, 8));
    [a & NIB, b & NIB, (a >> 4) & NIB, (b >> 4) & NIB]
}

/// Block `blk` (of 32 values) of a row of type `ty`: `vecdot`'s decoding
/// of the same bytes (vec_dot.rs's scalar kernels), eight levels a word.
fn block(ty: GgmlType, row: &[u8], blk: usize) -> Block {
    let one = |d: f32, b: f32| [(d, b), (d, b)];
    // Q5_0/Q5_1: the fifth bits (bit l of `qh` for level l) onto the nibbles.
    let fifth = |q: &mut [u64; 4], qh: &[u8]| {
        for (w, &h) in q.iter_mut().zip(qh) {
            *w |= SPREAD[h as usize] << 4;
        }
    };
    match ty {
        GgmlType::Q4_0 => {
            let src = &row[blk * 18..(blk + 1) * 18];
            let d = f16_at(src, 0);
            Block {
                q: nibble_pairs(&src[2..18]),
                db: one(d, -8.0 * d),
            }
        }
        GgmlType::Q4_1 => {
            let src = &row[blk * 20..(blk + 1) * 20];
            Block {
                q: nibble_pairs(&src[4..20]),
                db: one(f16_at(src, 0), f16_at(src, 2)),
            }
        }
        GgmlType::Q5_0 => {
            let src = &row[blk * 22..(blk + 1) * 22];
            let mut q = nibble_pairs(&src[6..22]);
            fifth(&mut q, &src[2..6]);
            let d = f16_at(src, 0);
            Block {
                q,
                db: one(d, -16.0 * d),
            }
        }
        GgmlType::Q5_1 => {
            let src = &row[blk * 24..(blk + 1) * 24];
            let mut q = nibble_pairs(&src[8..24]);
            fifth(&mut q, &src[4..8]);
            Block {
                q,
                db: one(f16_at(src, 0), f16_at(src, 2)),
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            let (size, qs_at) = if five { (176, 48) } else { (144, 16) };
            let (sb, j) = (blk / 8, blk % 8);
            let src = &row[sb * size..(sb + 1) * size];
            let scales: &[u8; 12] = src[4..16].try_into().expect("12 bytes");
            let (sc, mn) = metallic_gguf::quant::get_scale_min_k4(j, scales);
            // Sub-block j: the low (even j) or high (odd j) nibbles of 32
            // bytes; Q5_K's fifth bit of level l is bit j of qh[l].
            let qs = qs_at + 32 * (j / 2);
            let shift = 4 * (j % 2) as u32;
            let q = std::array::from_fn(|w| {
                let mut v = (word(src, qs + 8 * w) >> shift) & NIB;
                if five {
                    v |= ((word(src, 16 + 8 * w) >> j) & BIT) << 4;
                }
                v
            });
            let (d, dmin) = (f16_at(src, 0), f16_at(src, 2));
            Block {
                q,
                db: one(d * f32::from(sc), -(dmin * f32::from(mn))),
            }
        }
        GgmlType::Q6_K => {
            let (sb, g) = (blk / 8, blk % 8);
            let src = &row[sb * 210..(sb + 1) * 210];
            let (n, i) = (g / 4, g % 4);
            let (ql, qh) = (64 * n + (i & 1) * 32, 128 + 32 * n);
            let (lshift, hshift) = (4 * (i >> 1) as u32, 2 * i as u32);
            let q = std::array::from_fn(|w| {
                let lo = (word(src, ql + 8 * w) >> lshift) & NIB;
                let hi = (word(src, qh + 8 * w) >> hshift) & (3 * BIT);
                lo | (hi << 4)
            });
            let d = f16_at(src, 208);
            let half = |part: usize| {
                let ds = d * f32::from(src[192 + 8 * n + part + 2 * i] as i8);
                (ds, -32.0 * ds)
            };
            Block {
                q,
                db: [half(0), half(1)],
            }
        }
        _ => {
            // Q8_0 (`supported` admits nothing else): i8 level to u8 level
            // + 128 (flip the sign bit), the + 128 undone through `s`.
            let src = &row[blk * 34..(blk + 1) * 34];
            let d = f16_at(src, 0);
            Block {
                q: std::array::from_fn(|w| word(src, 2 + 8 * w) ^ 0x8080_8080_8080_8080),
                db: one(d, -128.0 * d),
            }
        }
    }
}

impl Tile {
    /// Bytes of levels per block of [`NR`] rows.
    fn block_bytes(&self) -> usize {
        if self.layout == Layout::Nibbles {
            NR * QK / 2
        } else {
            NR * QK
        }
    }

    /// Scales (and offsets) per block and row.
    fn scales(&self) -> usize {
        if self.layout == Layout::Halves {
            2 * NR
        } else {
            NR
        }
    }

    /// Repack rows `r0..r0 + rows` of `w` (`rows <= NR`; `tiles_fit(w)`).
    fn repack(&mut self, w: &CpuLinear, r0: usize, rows: usize) {
        let nb = w.info.k / QK;
        let mut types = (0..rows).map(|j| w.locate(r0 + j).expect("row within n").0.ty);
        self.layout = if types.clone().all(nibbles) {
            Layout::Nibbles
        } else if types.any(|t| t == GgmlType::Q6_K) {
            Layout::Halves
        } else {
            Layout::Bytes
        };
        self.nb = nb;
        let (bb, sc) = (self.block_bytes(), self.scales());
        if rows < NR {
            // The missing rows' slots must be zero; a whole tile overwrites
            // every byte below, so it skips the memset (~1.5% of a prefill).
            self.q.clear();
            self.d.clear();
            self.b.clear();
        }
        self.q.resize(nb * bb, 0);
        self.q.truncate(nb * bb);
        self.d.resize(nb * sc, 0.0);
        self.d.truncate(nb * sc);
        self.b.resize(nb * sc, 0.0);
        self.b.truncate(nb * sc);
        #[cfg(target_arch = "x86_64")]
        if self.layout == Layout::Nibbles && rows == NR {
            let (part, pr) = w.locate(r0).expect("row within n");
            if pr + NR <= part.rows
                && matches!(part.ty, GgmlType::Q4_0 | GgmlType::Q4_1)
                && SimdLevel::Avx512.available()
            {
                let bytes = &part.w.bytes()[pr * part.row_bytes..(pr + NR) * part.row_bytes];
                // SAFETY: the CPU has the AVX-512 level; `bytes` holds NR
                // rows of `row_bytes` = nb blocks each, and the tile's
                // buffers were sized for nb blocks above.
                unsafe { x86::put_q4_x16(self, part.ty, bytes, part.row_bytes) };
                return;
            }
        }
        for j in 0..rows {
            let (part, pr) = w.locate(r0 + j).expect("row within n");
            let row = part.row(pr);
            if self.layout == Layout::Nibbles && matches!(part.ty, GgmlType::Q4_0 | GgmlType::Q4_1)
            {
                self.put_q4(part.ty, row, j);
            } else {
                self.put_row(part.ty, row, j);
            }
        }
    }

    /// Row `j` of the tile (sized and laid out by [`Tile::repack`]) from
    /// `row`, of type `ty`, block by block through [`block`].
    fn put_row(&mut self, ty: GgmlType, row: &[u8], j: usize) {
        let (nb, bb, sc) = (self.nb, self.block_bytes(), self.scales());
        for blk in 0..nb {
            let dst = &mut self.q[blk * bb..(blk + 1) * bb];
            let b = block(ty, row, blk);
            // Group g of four levels (bytes, or nibble pairs) of row j.
            let mut put = |g: usize, v: u32| {
                let o = g * NR * 4 + j * 4;
                dst[o..o + 4].copy_from_slice(&v.to_le_bytes());
            };
            if self.layout == Layout::Nibbles {
                // Byte i: level i in the low nibble, level i + 16 high.
                let pairs = [b.q[0] | (b.q[2] << 4), b.q[1] | (b.q[3] << 4)];
                for g in 0..4 {
                    put(g, (pairs[g / 2] >> (32 * (g % 2))) as u32);
                }
            } else {
                for g in 0..8 {
                    put(g, (b.q[g / 2] >> (32 * (g % 2))) as u32);
                }
            }
            for h in 0..sc / NR {
                self.d[blk * sc + h * NR + j] = b.db[h].0;
                self.b[blk * sc + h * NR + j] = b.db[h].1;
            }
        }
    }
}

impl Tile {
    /// Row `j` of a [`Layout::Nibbles`] tile from a Q4_0 or Q4_1 row: what
    /// [`Tile::repack`]'s general loop stores (its nibble pairs rebuilt are
    /// the block's own level bytes, group `g` its bytes `4g..4g + 4`), by
    /// copying those bytes: the general loop was ~15% of a Qwen2.5-0.5B
    /// Q4_0 prefill of 128 rows on the development machine.
    fn put_q4(&mut self, ty: GgmlType, row: &[u8], j: usize) {
        let (size, qs) = if ty == GgmlType::Q4_0 {
            (18, 2)
        } else {
            (20, 4)
        };
        let bb = NR * QK / 2;
        for (blk, (src, dst)) in row
            .chunks_exact(size)
            .zip(self.q.chunks_exact_mut(bb))
            .enumerate()
        {
            for g in 0..4 {
                let o = g * NR * 4 + j * 4;
                dst[o..o + 4].copy_from_slice(&src[qs + 4 * g..qs + 4 * g + 4]);
            }
            let d = f16_at(src, 0);
            let b = if ty == GgmlType::Q4_0 {
                -8.0 * d
            } else {
                f16_at(src, 2)
            };
            self.d[blk * NR + j] = d;
            self.b[blk * NR + j] = b;
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
    let q6 = w.parts.iter().any(|p| p.ty == GgmlType::Q6_K);
    ACTS.with_borrow_mut(|acts| {
        acts.quantize_parallel(x, m, k);
        HALVES.with_borrow_mut(|halves| {
            if q6 {
                half_sums(acts, m, halves);
            }
            tiles(acts, if q6 { halves } else { &[] }, w, m, out)
        })
    })
}

/// Per activation row and block, `d * sum(q)` of each 16-value half (the
/// block's `s` split in two) for tiles with a scale per half (Q6_K).
fn half_sums(acts: &Q8Acts, m: usize, out: &mut Vec<f32>) {
    let blocks = m * acts.k / QK;
    out.clear();
    out.resize(2 * blocks, 0.0);
    // Blocks per task: ~32 KiB of activations, as the quantiser.
    const TASK: usize = 1024;
    out.par_chunks_mut(2 * TASK).enumerate().for_each(|(t, o)| {
        for (i, h) in o.chunks_exact_mut(2).enumerate() {
            let blk = t * TASK + i;
            let q = &acts.qs[blk * QK..(blk + 1) * QK];
            let sum = |q: &[i8]| q.iter().map(|&v| v as i32).sum::<i32>() as f32;
            h[0] = acts.d[blk] * sum(&q[..16]);
            h[1] = acts.d[blk] * sum(&q[16..]);
        }
    });
}

/// One activation row as the tile kernel reads it: its Q8 blocks and, for
/// [`Layout::Halves`] tiles, its half sums (empty otherwise).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct ARow<'a> {
    q: Q8Row<'a>,
    h: &'a [f32],
}

fn tiles(acts: &Q8Acts, halves: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let n = w.info.n;
    let nb = acts.k / QK;
    let arows: Vec<ARow<'_>> = (0..m)
        .map(|i| ARow {
            q: acts.row(i),
            h: halves.get(2 * nb * i..2 * nb * (i + 1)).unwrap_or(&[]),
        })
        .collect();
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
            debug_assert!(
                tile.layout != Layout::Halves || arows.iter().all(|a| a.h.len() == 2 * nb)
            );
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the CPU has the AVX-512 VNNI
            // level (`has_tile_kernel`); every activation row has the tile's
            // `nb` blocks (and `2 nb` half sums where the tile has halves:
            // `half_sums` ran when any part is Q6_K); the kernel writes
            // columns r0..r0 + cols (masked) of rows 0..m of `out`, which
            // holds m * n values, and no other task writes those columns.
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

    use super::{ARow, Layout, Tile, MR, NR};
    use crate::q8_act::QK;
    use metallic_gguf::GgmlType;

    /// Sixteen consecutive Q4_0 or Q4_1 rows (`rb` bytes apart in `w`) into
    /// the [`Layout::Nibbles`] tile `t` (sized for them): per block, the
    /// rows' 16 level bytes as a 16 x 4 transpose of 32-bit groups (four
    /// rows a register, two permutes), the scales converted 16 at a time.
    /// Exactly what [`Tile::put_q4`] stores row by row (for finite scales:
    /// the hardware conversion quiets a signalling NaN), in a fraction of
    /// its stores.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")]
    pub unsafe fn put_q4_x16(t: &mut Tile, ty: GgmlType, w: &[u8], rb: usize) {
        let (size, qs) = if ty == GgmlType::Q4_0 {
            (18, 2)
        } else {
            (20, 4)
        };
        let nb = t.nb;
        assert!(w.len() >= NR * rb && rb >= nb * size);
        assert!(t.q.len() >= nb * NR * QK / 2 && t.d.len() >= nb * NR && t.b.len() >= nb * NR);
        // Stage 1: rows 4a..4a + 4 of `x` (a = 0, 1) and `y`: groups 0 and 1
        // (`lo`) or 2 and 3 (`hi`) of rows 0..8 of the pair.
        let idx = |g0: i32| {
            let v: [i32; 16] = std::array::from_fn(|k| {
                let (g, r) = (g0 + (k / 8) as i32, (k % 8) as i32);
                (r / 4) * 16 + 4 * (r % 4) + g
            });
            _mm512_loadu_si512(v.as_ptr() as *const _)
        };
        let (lo, hi) = (idx(0), idx(2));
        let wp = w.as_ptr();
        let mut d16 = [0u16; NR];
        let mut m16 = [0u16; NR];
        for blk in 0..nb {
            let src = |j: usize| wp.add(j * rb + blk * size);
            let four = |a: usize| {
                let mut z = _mm512_castsi128_si512(_mm_loadu_si128(src(4 * a).add(qs) as *const _));
                z = _mm512_inserti32x4(z, _mm_loadu_si128(src(4 * a + 1).add(qs) as *const _), 1);
                z = _mm512_inserti32x4(z, _mm_loadu_si128(src(4 * a + 2).add(qs) as *const _), 2);
                _mm512_inserti32x4(z, _mm_loadu_si128(src(4 * a + 3).add(qs) as *const _), 3)
            };
            let (z0, z1, z2, z3) = (four(0), four(1), four(2), four(3));
            let a = _mm512_permutex2var_epi32(z0, lo, z1);
            let b = _mm512_permutex2var_epi32(z0, hi, z1);
            let c = _mm512_permutex2var_epi32(z2, lo, z3);
            let d = _mm512_permutex2var_epi32(z2, hi, z3);
            let dst = t.q.as_mut_ptr().add(blk * NR * QK / 2);
            _mm512_storeu_si512(dst as *mut _, _mm512_shuffle_i64x2(a, c, 0x44));
            _mm512_storeu_si512(dst.add(64) as *mut _, _mm512_shuffle_i64x2(a, c, 0xEE));
            _mm512_storeu_si512(dst.add(128) as *mut _, _mm512_shuffle_i64x2(b, d, 0x44));
            _mm512_storeu_si512(dst.add(192) as *mut _, _mm512_shuffle_i64x2(b, d, 0xEE));
            for j in 0..NR {
                d16[j] = std::ptr::read_unaligned(src(j) as *const u16);
                m16[j] = std::ptr::read_unaligned(src(j).add(2) as *const u16);
            }
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(d16.as_ptr() as *const _));
            let bv = if ty == GgmlType::Q4_0 {
                _mm512_mul_ps(_mm512_set1_ps(-8.0), dv)
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(m16.as_ptr() as *const _))
            };
            _mm512_storeu_ps(t.d.as_mut_ptr().add(blk * NR), dv);
            _mm512_storeu_ps(t.b.as_mut_ptr().add(blk * NR), bv);
        }
    }

    /// Every activation row of `a` times the tile, plus `bias`, stored to
    /// columns `c0..c0 + cols` of the rows of `out` (row stride `n`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    pub unsafe fn tile_rows(
        t: &Tile,
        a: &[ARow<'_>],
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
        macro_rules! rows {
            ($r:expr, $rows:expr) => {{
                let rows: &[ARow<'_>; $r] = $rows.try_into().unwrap();
                match t.layout {
                    Layout::Nibbles => micro::<$r, 0>(t, rows),
                    Layout::Bytes => micro::<$r, 1>(t, rows),
                    Layout::Halves => micro::<$r, 2>(t, rows),
                }
            }};
        }
        let mut i = 0;
        while i + MR <= a.len() {
            let v = rows!(MR, &a[i..i + MR]);
            store.rows(i, &v);
            i += MR;
        }
        let rest = &a[i..];
        match rest.len() {
            5 => store.rows(i, &rows!(5, rest)),
            4 => store.rows(i, &rows!(4, rest)),
            3 => store.rows(i, &rows!(3, rest)),
            2 => store.rows(i, &rows!(2, rest)),
            1 => store.rows(i, &rows!(1, rest)),
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
    /// two chains so that `vpdpbusd`'s latency overlaps; then one convert,
    /// one scale multiply-add and one multiply-add of the offset term per row
    /// (per half and row for `L` = 2). `L`: 0 nibble pairs, 1 bytes with a
    /// scale per block (chains: even and odd level groups), 2 bytes with a
    /// scale per half (chains: the halves).
    #[inline(always)]
    unsafe fn micro<const R: usize, const L: u8>(t: &Tile, a: &[ARow<'_>; R]) -> [__m512; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut corr = [_mm512_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0f);
        let bb = t.block_bytes();
        let sc = t.scales();
        let (q, d, bv) = (t.q.as_ptr(), t.d.as_ptr(), t.b.as_ptr());
        for b in 0..t.nb {
            let mut i0 = [_mm512_setzero_si512(); R];
            let mut i1 = [_mm512_setzero_si512(); R];
            let wq = q.add(b * bb);
            if L == 0 {
                for g in 0..4 {
                    let raw = _mm512_loadu_si512(wq.add(64 * g) as *const _);
                    let lo = _mm512_and_si512(raw, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
                    for r in 0..R {
                        let p = a[r].q.qs.as_ptr().add(b * QK + 4 * g);
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
                        let p = a[r].q.qs.as_ptr().add(b * QK + 4 * g);
                        let av = _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                        let second = if L == 1 { g % 2 == 1 } else { g >= 4 };
                        if second {
                            i1[r] = _mm512_dpbusd_epi32(i1[r], u, av);
                        } else {
                            i0[r] = _mm512_dpbusd_epi32(i0[r], u, av);
                        }
                    }
                }
            }
            let dw = _mm512_loadu_ps(d.add(b * sc));
            let bw = _mm512_loadu_ps(bv.add(b * sc));
            if L == 2 {
                let dw1 = _mm512_loadu_ps(d.add(b * sc + NR));
                let bw1 = _mm512_loadu_ps(bv.add(b * sc + NR));
                for r in 0..R {
                    let da = _mm512_set1_ps(*a[r].q.d.get_unchecked(b));
                    let s0 = _mm512_set1_ps(*a[r].h.get_unchecked(2 * b));
                    let s1 = _mm512_set1_ps(*a[r].h.get_unchecked(2 * b + 1));
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(i0[r]), acc[r]);
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_mul_ps(dw1, da), _mm512_cvtepi32_ps(i1[r]), acc[r]);
                    corr[r] = _mm512_fmadd_ps(bw, s0, corr[r]);
                    corr[r] = _mm512_fmadd_ps(bw1, s1, corr[r]);
                }
            } else {
                for r in 0..R {
                    let isum = _mm512_add_epi32(i0[r], i1[r]);
                    let da = _mm512_set1_ps(*a[r].q.d.get_unchecked(b));
                    let sa = _mm512_set1_ps(*a[r].q.s.get_unchecked(b));
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum), acc[r]);
                    corr[r] = _mm512_fmadd_ps(bw, sa, corr[r]);
                }
            }
        }
        let mut out = [_mm512_setzero_ps(); R];
        for r in 0..R {
            out[r] = _mm512_add_ps(acc[r], corr[r]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic_gguf::quant;

    /// The Q4_0/Q4_1 fast path of the repack stores exactly what the
    /// general per-block loop stores: the same level bytes, scales and
    /// offsets for every row slot of a tile.
    #[test]
    fn q4_rows_copied_into_a_tile_match_the_general_repack() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
            for nb in [1usize, 3, 28] {
                let k = nb * QK;
                let fresh = || {
                    let mut t = Tile {
                        nb,
                        layout: Layout::Nibbles,
                        ..Tile::default()
                    };
                    t.q.resize(nb * t.block_bytes(), 0);
                    t.d.resize(nb * t.scales(), 0.0);
                    t.b.resize(nb * t.scales(), 0.0);
                    t
                };
                let (mut fast, mut general) = (fresh(), fresh());
                for j in [0, 5, NR - 1] {
                    let x = metallic_test_support::spiky_values((nb * 31 + j) as u64, k, 37, 5.0);
                    let row = quant::quantize(ty, &x).unwrap();
                    fast.put_q4(ty, &row, j);
                    general.put_row(ty, &row, j);
                }
                #[cfg(target_arch = "x86_64")]
                if SimdLevel::Avx512.available() {
                    let rows: Vec<u8> = (0..NR)
                        .flat_map(|j| {
                            let x = metallic_test_support::spiky_values(
                                (nb * 7 + j) as u64,
                                k,
                                37,
                                5.0,
                            );
                            quant::quantize(ty, &x).unwrap()
                        })
                        .collect();
                    let (mut wide, mut one) = (fresh(), fresh());
                    let rb = rows.len() / NR;
                    // SAFETY: the CPU has the AVX-512 level; 16 rows of nb blocks.
                    unsafe { x86::put_q4_x16(&mut wide, ty, &rows, rb) };
                    for j in 0..NR {
                        one.put_q4(ty, &rows[j * rb..(j + 1) * rb], j);
                    }
                    let what = format!("16 rows {} nb={nb}", ty.name());
                    assert_eq!(wide.q, one.q, "{what}");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&wide.d), bits(&one.d), "{what}");
                    assert_eq!(bits(&wide.b), bits(&one.b), "{what}");
                }
                let what = format!("{} nb={nb}", ty.name());
                assert_eq!(fast.q, general.q, "{what}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast.d), bits(&general.d), "{what}");
                assert_eq!(bits(&fast.b), bits(&general.b), "{what}");
            }
        }
    }
}
