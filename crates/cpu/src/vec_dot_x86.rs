//! x86-64 kernels of [`crate::vec_dot`]: AVX2 (as llama.cpp's `ggml_vec_dot_*`
//! for AVX2) and AVX-512 with VNNI, two blocks per 512-bit register.
//!
//! Safety contract of every function here: the CPU has the features named in
//! its `target_feature` attribute (checked by `Kernels::for_level`), `w` holds
//! at least `a.d.len()` blocks (or `x.len()` floats) and the Q8 row is
//! consistent; `Kernels` asserts the lengths before calling.

use std::arch::x86_64::*;

use crate::q8_act::{Q8Row, QK};
use crate::vec_dot::{Prefetch, TILE_ACTS, TILE_ROWS};

#[inline(always)]
unsafe fn f16_load(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The two f16 values at `p` (a block's d and, for Q4_1, m) as lanes 0 and 1.
/// A 32-bit load into a zeroed register: a 16-bit insert would merge into
/// whatever register the compiler picks, often a loop accumulator, and chain
/// every block behind the previous one.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    let bits = std::ptr::read_unaligned(p as *const i32);
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Nibbles of 16 packed bytes as 32 unsigned values: low nibbles are values
/// 0..16 of the block, high nibbles 16..32 (ggml's Q4 layout).
#[inline(always)]
unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// Sum of `u8 x i8` products as eight i32 lanes (each product pair fits i16:
/// 15 * 127 * 2 for nibbles, 128 * 127 * 2 for the sign trick).
#[inline(always)]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Q4 rows (Q4_0 when `!q4_1`: levels offset by 8; Q4_1: plus a minimum)
/// against `R` activation rows, each block's nibbles unpacked once for all
/// of them; per row the operations and their order do not depend on `R` (see
/// [`quant_avx512`] for why that makes batches invariant).
#[inline(always)]
unsafe fn q4_avx2<const R: usize>(
    w: &[u8],
    a: &[Q8Row<'_>; R],
    bytes: usize,
    qs_at: usize,
    q4_1: bool,
) -> [f32; R] {
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    // Lane 0: sum of d * s (Q4_0's offset term); lane 1: sum of m * s (Q4_1's).
    let mut extra = [_mm_setzero_ps(); R];
    let nb = a[0].d.len();
    let wp = w.as_ptr();
    let mut b = 0;
    while b < nb {
        let blk = wp.add(b * bytes);
        let dm = f16_pair(blk);
        let wq = unpack_nibbles(blk.add(qs_at));
        for r in 0..R {
            let row = &a[r];
            let aq = _mm256_loadu_si256(row.qs.as_ptr().add(b * QK) as *const __m256i);
            let p = dot_u8_i8(wq, aq);
            let ad = _mm_set1_ps(*row.d.get_unchecked(b));
            let scale = _mm256_broadcastss_ps(_mm_mul_ss(dm, ad));
            if b & 1 == 0 {
                acc0[r] = _mm256_fmadd_ps(scale, p, acc0[r]);
            } else {
                acc1[r] = _mm256_fmadd_ps(scale, p, acc1[r]);
            }
            extra[r] = _mm_fmadd_ps(dm, _mm_set1_ps(*row.s.get_unchecked(b)), extra[r]);
        }
        b += 1;
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let e = if q4_1 {
            _mm_cvtss_f32(_mm_movehdup_ps(extra[r]))
        } else {
            -8.0 * _mm_cvtss_f32(extra[r])
        };
        out[r] = hsum256(_mm256_add_ps(acc0[r], acc1[r])) + e;
    }
    out
}

/// Q8_0 rows against `R` activation rows (as [`q4_avx2`]).
#[inline(always)]
unsafe fn q8_0_avx2_n<const R: usize>(w: &[u8], a: &[Q8Row<'_>; R]) -> [f32; R] {
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let wp = w.as_ptr();
    for b in 0..a[0].d.len() {
        let blk = wp.add(b * 34);
        let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let wabs = _mm256_sign_epi8(wq, wq);
        let d = f16_pair(blk);
        for r in 0..R {
            let row = &a[r];
            let aq = _mm256_loadu_si256(row.qs.as_ptr().add(b * QK) as *const __m256i);
            // Signed x signed through maddubs: |w| times a with w's sign.
            let p = dot_u8_i8(wabs, _mm256_sign_epi8(aq, wq));
            let ad = _mm_set1_ps(*row.d.get_unchecked(b));
            let scale = _mm256_broadcastss_ps(_mm_mul_ss(d, ad));
            if b & 1 == 0 {
                acc0[r] = _mm256_fmadd_ps(scale, p, acc0[r]);
            } else {
                acc1[r] = _mm256_fmadd_ps(scale, p, acc1[r]);
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum256(_mm256_add_ps(acc0[r], acc1[r]));
    }
    out
}

#[derive(Clone, Copy)]
enum Avx2Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

#[inline(always)]
unsafe fn avx2_n<const R: usize>(w: &[u8], a: &[Q8Row<'_>; R], kind: Avx2Kind) -> [f32; R] {
    match kind {
        Avx2Kind::Q4_0 => q4_avx2(w, a, 18, 2, false),
        Avx2Kind::Q4_1 => q4_avx2(w, a, 20, 4, true),
        Avx2Kind::Q8_0 => q8_0_avx2_n(w, a),
    }
}

/// Groups of up to [`ROWS`] activation rows (`a` and `out` of one length).
#[inline(always)]
unsafe fn rows_avx2(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32], kind: Avx2Kind) {
    let (mut a, mut out) = (a, out);
    while a.len() >= ROWS {
        let (head, rest) = a.split_at(ROWS);
        let (o, orest) = out.split_at_mut(ROWS);
        o.copy_from_slice(&avx2_n::<ROWS>(w, head.try_into().unwrap(), kind));
        (a, out) = (rest, orest);
    }
    match a.len() {
        3 => out.copy_from_slice(&avx2_n::<3>(w, a.try_into().unwrap(), kind)),
        2 => out.copy_from_slice(&avx2_n::<2>(w, a.try_into().unwrap(), kind)),
        1 => out[0] = avx2_n::<1>(w, &[a[0]], kind)[0],
        _ => {}
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0_avx2(w: &[u8], a: Q8Row<'_>) -> f32 {
    avx2_n::<1>(w, &[a], Avx2Kind::Q4_0)[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1_avx2(w: &[u8], a: Q8Row<'_>) -> f32 {
    avx2_n::<1>(w, &[a], Avx2Kind::Q4_1)[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_avx2(w: &[u8], a: Q8Row<'_>) -> f32 {
    avx2_n::<1>(w, &[a], Avx2Kind::Q8_0)[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0_avx2_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    rows_avx2(w, a, out, Avx2Kind::Q4_0)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1_avx2_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    rows_avx2(w, a, out, Avx2Kind::Q4_1)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_avx2_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    rows_avx2(w, a, out, Avx2Kind::Q8_0)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_avx2(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wp = w.as_ptr() as *const f32;
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_ps(wp.add(i + 8 * j));
            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(wp.add(i)),
            _mm256_loadu_ps(xp.add(i)),
            acc[0],
        );
        i += 8;
    }
    let mut s = hsum256(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += std::ptr::read_unaligned(wp.add(i)) * *xp.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_avx2(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let h = _mm_loadu_si128(wp.add(2 * (i + 8 * j)) as *const __m128i);
            *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        let h = _mm_loadu_si128(wp.add(2 * i) as *const __m128i);
        acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), acc[0]);
        i += 8;
    }
    let mut s = hsum256(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += f16_load(wp.add(2 * i)) * *xp.add(i);
        i += 1;
    }
    s
}

/// Two Q4 blocks' 32 packed bytes as 64 unsigned levels: each block's 16
/// bytes broadcast to both halves of a 256-bit lane pair, the upper copy
/// shifted down a nibble (one masked shift instead of two shifts and two
/// inserts).
#[inline(always)]
unsafe fn unpack_nibbles2_bcast(p0: *const u8, p1: *const u8) -> __m512i {
    let v0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p0 as *const __m128i));
    let v1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p1 as *const __m128i));
    let v = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1);
    // 16-bit lanes 8..16 and 24..32: the second 16 bytes of each block.
    let v = _mm512_mask_srli_epi16(v, 0xFF00_FF00, v, 4);
    _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
}

/// Q5_0 and Q5_1 share one loop (Q4_0, Q4_1 and Q8_0 have tile kernels:
/// [`q4_tile`], [`q8_0_tile`]): `vpdpbusd` needs unsigned weights,
/// so each block's weight levels are read as `u = q + off` (Q5_0's levels
/// are `q + 16`) and the offset is taken
/// out in the integers: each 32-bit lane's dot starts from `-off` times the
/// sum of its four activation bytes (itself a `vpdpbusd`), so the lane holds
/// the exact integer dot of the levels. Per pair of blocks and lane the
/// float work is then one `d_w * d_a` scale and one multiply-add; Q5_1's
/// minimum adds `m * s` per block in a separate accumulator.
///
/// `W` weight rows (at `w[i]`) share each activation block's loads and
/// offset sums, `R` activation rows share each weight block's decode. Batch
/// invariance by construction: every (weight row, activation row) pair has
/// its own accumulators, fed the same operations in the same order whatever
/// `W` and `R` are; pairs never meet, so a row's result does not depend on
/// which, or how many, rows run with it.
#[inline(always)]
unsafe fn quant_avx512<const W: usize, const R: usize>(
    w: [*const u8; W],
    a: &[Q8Row<'_>; R],
    kind: QuantKind,
) -> [[f32; R]; W] {
    let (bytes, qs_at, qh_at) = kind.layout();
    let offs = match kind {
        QuantKind::Q5_0 => _mm512_set1_epi8(16),
        QuantKind::Q5_1 => _mm512_setzero_si512(),
    };
    let sixteen = _mm512_set1_epi8(16);
    let nb = a[0].d.len();
    let mut acc = [[_mm512_setzero_ps(); R]; W];
    // Q4_1: lanes (1, 3) sum m * s per block parity (lanes 0, 2 are unused).
    let mut extra = [[_mm_setzero_ps(); R]; W];
    // Lane 0 of a vector to the low eight lanes, lane 2 (or 1) to the high eight.
    let spread_w = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let spread_a = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut b = 0;
    while b + 2 <= nb {
        let mut av = [_mm512_setzero_si512(); R];
        let mut corr = [_mm512_setzero_si512(); R];
        let mut dav = [_mm512_setzero_ps(); R];
        let mut sv = [_mm_setzero_ps(); R];
        for r in 0..R {
            let row = &a[r];
            av[r] = _mm512_loadu_si512(row.qs.as_ptr().add(b * QK) as *const _);
            if !kind.has_min() {
                let zero = _mm512_setzero_si512();
                corr[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offs, av[r]));
            }
            // [ad0, ad1] -> ad0 in the low eight lanes, ad1 in the high eight.
            let ad = _mm_castpd_ps(_mm_load_sd(row.d.as_ptr().add(b) as *const f64));
            dav[r] = _mm512_permutexvar_ps(spread_a, _mm512_castps128_ps512(ad));
            if kind.has_min() {
                let s = _mm_castpd_ps(_mm_load_sd(row.s.as_ptr().add(b) as *const f64));
                sv[r] = _mm_permute_ps(s, 0b01_01_00_00); // [s0, s0, s1, s1]
            }
        }
        for i in 0..W {
            let (b0, b1) = (w[i].add(b * bytes), w[i].add((b + 1) * bytes));
            // Bit j of a block's qh is its level j's fifth bit: one mask
            // bit per byte lane of the unpacked pair.
            let u = unpack_nibbles2_bcast(b0.add(qs_at), b1.add(qs_at));
            let h0 = std::ptr::read_unaligned(b0.add(qh_at) as *const u32) as u64;
            let h1 = std::ptr::read_unaligned(b1.add(qh_at) as *const u32) as u64;
            let u = _mm512_mask_add_epi8(u, h0 | (h1 << 32), u, sixteen);
            // [d0, m0, d1, m1] (m only meaningful for Q5_1).
            let pair = _mm_insert_epi32(
                _mm_cvtsi32_si128(std::ptr::read_unaligned(b0 as *const i32)),
                std::ptr::read_unaligned(b1 as *const i32),
                1,
            );
            let dm = _mm_cvtph_ps(pair);
            let dwv = _mm512_permutexvar_ps(spread_w, _mm512_castps128_ps512(dm));
            for r in 0..R {
                let dot = _mm512_dpbusd_epi32(corr[r], u, av[r]);
                let scale = _mm512_mul_ps(dwv, dav[r]);
                acc[i][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[i][r]);
                if kind.has_min() {
                    extra[i][r] = _mm_fmadd_ps(dm, sv[r], extra[i][r]);
                }
            }
        }
        b += 2;
    }
    let mut out = [[0.0f32; R]; W];
    for i in 0..W {
        for r in 0..R {
            let mut s = _mm512_reduce_add_ps(acc[i][r]);
            if kind.has_min() {
                let e = extra[i][r];
                s += _mm_cvtss_f32(_mm_movehdup_ps(e))
                    + _mm_cvtss_f32(_mm_movehdup_ps(_mm_movehl_ps(e, e)));
            }
            out[i][r] = s;
        }
    }
    if b < nb {
        // An odd last block: the same arithmetic in 256 bits.
        let offs = _mm512_castsi512_si256(offs);
        for r in 0..R {
            let row = &a[r];
            let av = _mm256_loadu_si256(row.qs.as_ptr().add(b * QK) as *const __m256i);
            let zero = _mm256_setzero_si256();
            let corr = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offs, av));
            let ad = *row.d.as_ptr().add(b);
            for i in 0..W {
                let blk = w[i].add(b * bytes);
                let u = unpack_nibbles(blk.add(qs_at));
                let h = std::ptr::read_unaligned(blk.add(qh_at) as *const u32);
                let u = _mm256_mask_add_epi8(u, h, u, _mm256_set1_epi8(16));
                let dot = _mm256_dpbusd_epi32(corr, u, av);
                let dot = hsum256(_mm256_cvtepi32_ps(dot));
                out[i][r] += f16_load(blk) * ad * dot;
                if kind.has_min() {
                    out[i][r] += f16_load(blk.add(2)) * *row.s.as_ptr().add(b);
                }
            }
        }
    }
    out
}

/// Activation rows as one weight row's pass: `R` of them against `w`.
#[inline(always)]
unsafe fn quant_avx512_rows<const R: usize>(
    w: &[u8],
    a: &[Q8Row<'_>; R],
    kind: QuantKind,
) -> [f32; R] {
    quant_avx512::<1, R>([w.as_ptr()], a, kind)[0]
}

/// Up to [`ROWS`] activation rows per pass over the weight row; `a` and
/// `out` have the same length.
#[inline(always)]
unsafe fn rows_avx512(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32], kind: QuantKind) {
    let mut a = a;
    let mut out = out;
    while a.len() >= ROWS {
        let (head, rest) = a.split_at(ROWS);
        let (o, orest) = out.split_at_mut(ROWS);
        o.copy_from_slice(&quant_avx512_rows::<ROWS>(
            w,
            head.try_into().unwrap(),
            kind,
        ));
        (a, out) = (rest, orest);
    }
    match a.len() {
        3 => out.copy_from_slice(&quant_avx512_rows::<3>(w, a.try_into().unwrap(), kind)),
        2 => out.copy_from_slice(&quant_avx512_rows::<2>(w, a.try_into().unwrap(), kind)),
        1 => out[0] = quant_avx512_rows::<1>(w, &[a[0]], kind)[0],
        _ => {}
    }
}

/// Activation rows that share one decode of each weight block: four keep
/// every row's accumulators in registers (AVX-512 has 32).
const ROWS: usize = 4;

#[derive(Clone, Copy)]
enum QuantKind {
    Q5_0,
    Q5_1,
}

impl QuantKind {
    /// Block bytes, offset of the levels, offset of Q5's fifth bits.
    #[inline(always)]
    fn layout(self) -> (usize, usize, usize) {
        match self {
            QuantKind::Q5_0 => (22, 6, 2),
            QuantKind::Q5_1 => (24, 8, 4),
        }
    }

    /// Whether the block has a minimum `m` (`x = d q + m`).
    #[inline(always)]
    fn has_min(self) -> bool {
        matches!(self, QuantKind::Q5_1)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_0_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    // The tile kernel's arithmetic (every lane the same row): the decode
    // drivers run Q4_0 in tiles, and a row must get the same bits either way.
    q4_tile::<1, false>(w.as_ptr(), 0, &[a], &[], Prefetch::Off)[0][0]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_0_avx512_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    // As `q4_0_avx512`: the tile kernel, one weight row in every lane.
    tile_rows_avx512(TileKind::Q4_0, w, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_1_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    // As `q4_0_avx512`: Q4_1's tile kernel, every lane the same row.
    q4_tile::<1, true>(w.as_ptr(), 0, &[a], &[], Prefetch::Off)[0][0]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_1_avx512_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    tile_rows_avx512(TileKind::Q4_1, w, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q8_0_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    // As `q4_0_avx512`: Q8_0's tile kernel, every lane the same row.
    q8_0_tile::<1>(w.as_ptr(), 0, &[a], &[], Prefetch::Off)[0][0]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q8_0_avx512_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    tile_rows_avx512(TileKind::Q8_0, w, a, out)
}

/// `rows` (1..=4) consecutive weight rows, `stride` bytes apart from `w`'s
/// start, against one activation row: `out[i]` for row `i`, bit for bit what
/// the one-row kernel gives for that row.
#[inline(always)]
unsafe fn group_avx512(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
    kind: QuantKind,
) {
    let p = w.as_ptr();
    match rows {
        4 => {
            let o = quant_avx512::<4, 1>(
                [p, p.add(stride), p.add(2 * stride), p.add(3 * stride)],
                &[a],
                kind,
            );
            for (dst, src) in out.iter_mut().zip(o) {
                *dst = src[0];
            }
        }
        3 => {
            let o = quant_avx512::<3, 1>([p, p.add(stride), p.add(2 * stride)], &[a], kind);
            for (dst, src) in out.iter_mut().zip(o) {
                *dst = src[0];
            }
        }
        2 => {
            let o = quant_avx512::<2, 1>([p, p.add(stride)], &[a], kind);
            for (dst, src) in out.iter_mut().zip(o) {
                *dst = src[0];
            }
        }
        1 => out[0] = quant_avx512::<1, 1>([p], &[a], kind)[0][0],
        _ => {}
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_0_avx512_group(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    // As `q4_0_avx512`: the tile kernel, `rows` of its lanes.
    tile_group_avx512(TileKind::Q4_0, w, stride, rows, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_1_avx512_group(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    tile_group_avx512(TileKind::Q4_1, w, stride, rows, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q8_0_avx512_group(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    tile_group_avx512(TileKind::Q8_0, w, stride, rows, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_0_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    quant_avx512_rows::<1>(w, &[a], QuantKind::Q5_0)[0]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_0_avx512_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    rows_avx512(w, a, out, QuantKind::Q5_0)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_0_avx512_group(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    group_avx512(w, stride, rows, a, out, QuantKind::Q5_0)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_1_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    quant_avx512_rows::<1>(w, &[a], QuantKind::Q5_1)[0]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_1_avx512_rows(w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    rows_avx512(w, a, out, QuantKind::Q5_1)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_1_avx512_group(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    group_avx512(w, stride, rows, a, out, QuantKind::Q5_1)
}

/// Q4_K rows: per super-block (256 levels) the eight 6-bit scales and mins
/// unpacked at once (ggml's `get_scale_min_k4` as 32-bit masks, as
/// llama.cpp does), then per 64-level chunk one `vpdpbusd` of its 32 bytes
/// of nibbles (low nibbles: group 2c, high: 2c + 1) against the two Q8
/// activation blocks, scaled per group by `d sc d_a`; the mins enter as
/// `dmin m s` per group, eight lanes at a time. The scalar kernel's
/// arithmetic in another summation order.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_k_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    q45_k_avx512::<false>(w, a)
}

/// Q5_K rows: [`q4_k_avx512`]'s loop over Q5_K's layout (the same 16-byte
/// header, then qh[32], then the nibbles), each level's fifth bit (bit 2c of
/// qh[l] for level 64c + l, bit 2c + 1 for 64c + 32 + l) added as 16.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q5_k_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    q45_k_avx512::<true>(w, a)
}

#[inline(always)]
unsafe fn q45_k_avx512<const FIVE: bool>(w: &[u8], a: Q8Row<'_>) -> f32 {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let nsb = a.d.len() / 8;
    let wp = w.as_ptr();
    let mut acc = _mm512_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    let nib = _mm512_set1_epi8(0x0f);
    let (size, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let one = _mm512_set1_epi8(1);
    for sb in 0..nsb {
        let blk = wp.add(sb * size);
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
            blk as *const i32,
        )));
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        let q = blk.add(4) as *const u32;
        let (u0, u1, u2) = (
            std::ptr::read_unaligned(q),
            std::ptr::read_unaligned(q.add(1)),
            std::ptr::read_unaligned(q.add(2)),
        );
        // Bytes 0..8: the eight scales; 8..16: the eight mins.
        let sc =
            (u0 & KMASK1) as u64 | ((((u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)) as u64) << 32);
        let m = (u1 & KMASK1) as u64
            | (((((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4)) as u64) << 32);
        let scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)));
        let mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m as i64)));
        let ad = _mm256_loadu_ps(a.d.as_ptr().add(sb * 8));
        let asum = _mm256_loadu_ps(a.s.as_ptr().add(sb * 8));
        mins = _mm256_fmadd_ps(_mm256_mul_ps(dmin, mf), asum, mins);
        // d sc_j d_a(j) for the eight groups, in both halves of a 512-bit vector.
        let scale8 = _mm256_mul_ps(_mm256_mul_ps(d, scf), ad);
        let scale16 = _mm512_castps256_ps512(scale8);
        let qs = blk.add(qs_at);
        let aq = a.qs.as_ptr().add(sb * 8 * QK);
        let qh = if FIVE {
            _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(16) as *const __m256i))
        } else {
            _mm512_setzero_si512()
        };
        for c in 0..4 {
            let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(32 * c) as *const __m256i));
            // Upper 256 bits: the high nibbles (16-bit lanes 16..32).
            let v = _mm512_mask_srli_epi16(v, 0xFFFF_0000, v, 4);
            let mut u = _mm512_and_si512(v, nib);
            if FIVE {
                // Bit 2c of qh[l] (lower half), 2c + 1 (upper half), as 16.
                let cnt = _mm512_set_epi64(
                    2 * c as i64 + 1,
                    2 * c as i64 + 1,
                    2 * c as i64 + 1,
                    2 * c as i64 + 1,
                    2 * c as i64,
                    2 * c as i64,
                    2 * c as i64,
                    2 * c as i64,
                );
                let bit = _mm512_and_si512(_mm512_srlv_epi16(qh, shift01_16(cnt)), one);
                u = _mm512_or_si512(u, _mm512_slli_epi16(bit, 4));
            }
            let av = _mm512_loadu_si512(aq.add(64 * c) as *const _);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, av);
            let j = 2 * c as i32;
            let idx = _mm512_set_epi32(
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j,
                j,
                j,
                j,
                j,
                j,
                j,
                j,
            );
            let scale = _mm512_permutexvar_ps(idx, scale16);
            acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc);
        }
    }
    _mm512_reduce_add_ps(acc) - hsum256(mins)
}

/// Q6_K rows: per half super-block (128 levels) its 64 bytes of low
/// nibbles are one load and its 32 bytes of high bits one broadcast; two
/// 64-level registers then hold groups (0, 1) and (2, 3) of the half (low
/// and high nibbles, high-bit pairs 0/2 and 4/6 by a per-lane shift). The
/// `-32` comes out in the integers as in [`quant_avx512`] (each lane's dot
/// starts from `-32` times its four activation bytes' sum); each four lanes
/// (16 levels) are scaled by their i8 scale, `d` and the block's `d_a`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q6_k_avx512(w: &[u8], a: Q8Row<'_>) -> f32 {
    let nsb = a.d.len() / 8;
    let wp = w.as_ptr();
    let mut acc = _mm512_setzero_ps();
    let nib = _mm512_set1_epi8(0x0f);
    let three = _mm512_set1_epi8(3);
    let thirty_two = _mm512_set1_epi8(32);
    let shift01 = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    let shift23 = _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4);
    // Scale j of a group pair to lanes 4j..4j + 4; the block's d_a to lanes 0..8 / 8..16.
    let sc01 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let sc23 = _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4);
    let spread_a = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let zero = _mm512_setzero_si512();
    for sb in 0..nsb {
        let blk = wp.add(sb * 210);
        let d = _mm512_set1_ps(f16_load(blk.add(208)));
        for n in 0..2 {
            let v = _mm512_loadu_si512(blk.add(64 * n) as *const _);
            let h =
                _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i));
            let hi01 = _mm512_and_si512(_mm512_srlv_epi16(h, shift01_16(shift01)), three);
            let hi23 = _mm512_and_si512(_mm512_srlv_epi16(h, shift01_16(shift23)), three);
            let u01 = _mm512_or_si512(_mm512_and_si512(v, nib), _mm512_slli_epi16(hi01, 4));
            let u23 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(v, 4), nib),
                _mm512_slli_epi16(hi23, 4),
            );
            let sc8 = _mm_loadl_epi64(blk.add(192 + 8 * n) as *const __m128i);
            let scf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8));
            let scf = _mm512_mul_ps(scf, d);
            let b = sb * 8 + 4 * n;
            for (pair, u, idx) in [(0, u01, sc01), (1, u23, sc23)] {
                let blk_a = b + 2 * pair;
                let av = _mm512_loadu_si512(a.qs.as_ptr().add(blk_a * QK) as *const _);
                let corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, thirty_two, av));
                let dot = _mm512_dpbusd_epi32(corr, u, av);
                let ad = _mm_castpd_ps(_mm_load_sd(a.d.as_ptr().add(blk_a) as *const f64));
                let dav = _mm512_permutexvar_ps(spread_a, _mm512_castps128_ps512(ad));
                let scale = _mm512_mul_ps(_mm512_permutexvar_ps(idx, scf), dav);
                acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc);
            }
        }
    }
    _mm512_reduce_add_ps(acc)
}

/// Per-64-bit-lane shift counts as per-16-bit-lane counts (for `vpsrlvw`).
#[inline(always)]
unsafe fn shift01_16(v: __m512i) -> __m512i {
    // Each 64-bit count c (< 8) becomes four 16-bit lanes of c.
    _mm512_or_si512(
        _mm512_or_si512(v, _mm512_slli_epi64(v, 16)),
        _mm512_or_si512(_mm512_slli_epi64(v, 32), _mm512_slli_epi64(v, 48)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn f32_avx512(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wp = w.as_ptr() as *const f32;
    let xp = x.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_loadu_ps(wp.add(i + 16 * j));
            *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(i + 16 * j)), *a);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(wp.add(i)),
            _mm512_loadu_ps(xp.add(i)),
            acc[0],
        );
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += std::ptr::read_unaligned(wp.add(i)) * *xp.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn f16_avx512(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let h = _mm256_loadu_si256(wp.add(2 * (i + 16 * j)) as *const __m256i);
            *a = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(xp.add(i + 16 * j)), *a);
        }
        i += 64;
    }
    while i + 16 <= n {
        let h = _mm256_loadu_si256(wp.add(2 * i) as *const __m256i);
        acc[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(xp.add(i)), acc[0]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += f16_load(wp.add(2 * i)) * *xp.add(i);
        i += 1;
    }
    s
}

/// Q8_0 rows at least this long (bytes) are prefetched along each row,
/// [`ROW_AHEAD`] bytes ahead, instead of a tile ahead: a tile of them (16
/// rows: 82 KB for Qwen2.5-0.5B's 4864-value down projection) is wider than
/// L1, and prefetched a whole tile ahead its lines were evicted or late
/// (that product read 59-73% of the streaming read, 78-84% along the rows;
/// `metallic probe -t 2`, 2026-11-30). The 4-bit tiles of the same
/// product (44-49 KB) measured alike either way and keep the tile-ahead
/// stream, as do short rows, where prefetching along the rows was slower.
const LONG_ROW_BYTES: usize = 4096;
/// How far along each long row the prefetch runs (of 128, 256 and 512
/// bytes, 256 measured fastest).
const ROW_AHEAD: usize = 256;

/// The line `off` bytes into each of a tile's [`TILE_ROWS`] rows (`stride`
/// apart from `w`); past the row's end, as far into the rows of `next`
/// (the next tile, empty at a task's end).
#[inline(always)]
unsafe fn prefetch_rows(hint: Prefetch, w: *const u8, stride: usize, off: usize, next: &[u8]) {
    if off < stride {
        for i in 0..TILE_ROWS {
            crate::vec_dot::prefetch_line(hint, w.add(i * stride + off));
        }
    } else {
        let off = off - stride;
        for i in 0..TILE_ROWS {
            let at = i * stride + off;
            if at < next.len() {
                crate::vec_dot::prefetch_line(hint, next.as_ptr().add(at));
            }
        }
    }
}

/// `N` cache lines of `next` from byte `at` on (fewer at its end), with
/// `hint`: a tile kernel's look-ahead, one block's share of the next tile.
#[inline(always)]
unsafe fn prefetch_next<const N: usize>(hint: Prefetch, next: &[u8], at: usize) {
    let pf = next.as_ptr();
    if at + 64 * N <= next.len() {
        // One test of the hint a block, the lines unrolled.
        match hint {
            Prefetch::Nta => {
                for l in 0..N {
                    _mm_prefetch::<_MM_HINT_NTA>(pf.add(at + 64 * l) as *const i8);
                }
            }
            Prefetch::T0 => {
                for l in 0..N {
                    _mm_prefetch::<_MM_HINT_T0>(pf.add(at + 64 * l) as *const i8);
                }
            }
            Prefetch::Off => {}
        }
    } else {
        let mut l = at;
        while l < next.len() {
            crate::vec_dot::prefetch_line(hint, pf.add(l));
            l += 64;
        }
    }
}

/// [`TILE_ROWS`] Q4_0 weight rows (Q4_1 with `MIN`; from `w` on, `stride`
/// bytes apart; 0 repeats one row in every lane) against `R` activation
/// rows, in the rows' GGUF layout: the decode kernel of Q4_0 and Q4_1
/// (issue 10: for Q4_0 the pair-of-blocks
/// kernel spent ~7 instructions a block and row, ~0.46 ns on the
/// development machine with the rows in L2; this one ~6, ~0.31 ns, its
/// block scales a quarter of that: `vecdot_kernel_bench`).
///
/// Per block, the 16 rows' 16 nibble bytes load as four registers of four
/// rows each (`Y_j`: 128-bit lane `i` holds row `4j + i`); against the
/// activation block's low and high 16 bytes broadcast to every lane, two
/// `vpdpbusd` give each 32-bit lane a partial dot of one row, and a
/// transposing add of the four `Y_j`'s results leaves row `4j + i`'s whole
/// block dot in lane `4i + j`. The nibbles are `q + 8`: each lane's dot starts
/// from `-8` times the sum of its eight activation bytes, so the block dot
/// is exact in the integers. The rows' block scales are read one by one
/// into general registers (lane `4i + j`'s from row `4j + i`); then per
/// block and row
///
/// `acc = fma(d_w * d_a, float(dot), acc)`, blocks in order,
///
/// which every lane does alone: a row's result does not depend on which
/// rows or how many activation rows share the tile (batch invariance), and
/// the one-row entry points below run this same kernel so that they give
/// the same bits.
///
/// Q4_1 (`x = d q + m`): the nibbles are the levels (no offset), and each
/// block's minimum term goes to a second accumulator, per block and row
/// `acc_m = fma(m_w, s_a, acc_m)` (`s_a` the activation block's sum), the
/// row's result `acc + acc_m`: every lane alone as well.
///
/// `next` is prefetched (as `prefetch_hint` says) over the tile's blocks, five lines a
/// block: the driver passes the next tile's bytes.
#[inline(always)]
unsafe fn q4_tile<const R: usize, const MIN: bool>(
    w: *const u8,
    stride: usize,
    a: &[Q8Row<'_>; R],
    next: &[u8],
    hint: Prefetch,
) -> [[f32; TILE_ROWS]; R] {
    // Block bytes; offset of the nibbles (after d, and m for Q4_1).
    let (bytes, qs_at) = if MIN { (20, 4) } else { (18, 2) };
    // Rows 4j, 4j + 1, 4j + 2, 4j + 3 at p[j], + stride, + 2 stride, + s3.
    let s3 = 3 * stride;
    let mut p: [*const u8; 4] = std::array::from_fn(|j| w.add(4 * j * stride + qs_at));
    let nib = _mm512_set1_epi8(0x0f);
    let eight = _mm512_set1_epi8(8);
    let nb = a[0].d.len();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_m = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        // The next tile, five lines a block (a tile's block is 4.5 lines,
        // Q4_1's 5):
        // one contiguous stream a tile ahead. Prefetching each row 28
        // blocks ahead instead (the same ~8 KiB in flight) made the short
        // rows' products ~30% slower (`metallic probe -t 2`).
        prefetch_next::<5>(hint, next, 320 * b);
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        // The 16 rows' block scales in lane order (lane 4i + j's from row
        // 4j + i): four rows' to a 64-bit word in general registers, four
        // words to a vector (a gather of them took as long as the rest of
        // the block, 16-bit inserts a third of it).
        // Q4_1's minimums the same way, from 2 bytes before the nibbles.
        let word = |at: usize, back: usize| {
            let h =
                |j: usize| std::ptr::read_unaligned(p[j].add(at).sub(back) as *const u16) as u64;
            (h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48) as i64
        };
        let words = |back: usize| {
            _mm256_set_m128i(
                _mm_set_epi64x(word(s3, back), word(2 * stride, back)),
                _mm_set_epi64x(word(stride, back), word(0, back)),
            )
        };
        let (dbits, mbits) = if MIN {
            // Q4_1: each row's (d, m) as one 32-bit load, two rows (lanes
            // 2t, 2t + 1) to a 64-bit word, then d and m split by a
            // narrowing move each.
            let dm = |at: usize, j: usize| {
                std::ptr::read_unaligned(p[j].add(at).sub(4) as *const u32) as u64
            };
            let pair = |t: usize| {
                let (at, j) = ((t / 2) * stride, 2 * (t % 2));
                (dm(at, j) | dm(at, j + 1) << 32) as i64
            };
            let v = _mm512_set_epi64(
                pair(7),
                pair(6),
                pair(5),
                pair(4),
                pair(3),
                pair(2),
                pair(1),
                pair(0),
            );
            (
                _mm512_cvtepi32_epi16(v),
                _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)),
            )
        } else {
            (words(qs_at), _mm256_setzero_si256())
        };
        for j in 0..4 {
            let q = p[j];
            let y = _mm512_castsi128_si512(_mm_loadu_si128(q as *const __m128i));
            let y = _mm512_inserti32x4(y, _mm_loadu_si128(q.add(stride) as *const _), 1);
            let y = _mm512_inserti32x4(y, _mm_loadu_si128(q.add(2 * stride) as *const _), 2);
            let y = _mm512_inserti32x4(y, _mm_loadu_si128(q.add(s3) as *const _), 3);
            p[j] = q.add(bytes);
            lo[j] = _mm512_and_si512(y, nib);
            hi[j] = _mm512_and_si512(_mm512_srli_epi16(y, 4), nib);
        }
        let dw = _mm512_cvtph_ps(dbits);
        let mw = if MIN {
            _mm512_cvtph_ps(mbits)
        } else {
            _mm512_setzero_ps()
        };
        for r in 0..R {
            let q = a[r].qs.as_ptr().add(b * QK);
            let alo = _mm512_broadcast_i32x4(_mm_loadu_si128(q as *const __m128i));
            let ahi = _mm512_broadcast_i32x4(_mm_loadu_si128(q.add(16) as *const __m128i));
            let zero = _mm512_setzero_si512();
            let c = if MIN {
                zero
            } else {
                let c = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, eight, alo), eight, ahi);
                _mm512_sub_epi32(zero, c)
            };
            let mut part = [zero; 4];
            for j in 0..4 {
                part[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, lo[j], alo), hi[j], ahi);
            }
            let t0 = _mm512_add_epi32(
                _mm512_unpacklo_epi32(part[0], part[1]),
                _mm512_unpackhi_epi32(part[0], part[1]),
            );
            let t1 = _mm512_add_epi32(
                _mm512_unpacklo_epi32(part[2], part[3]),
                _mm512_unpackhi_epi32(part[2], part[3]),
            );
            let dot =
                _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a[r].d.as_ptr().add(b)));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r]);
            if MIN {
                let sa = _mm512_set1_ps(*a[r].s.as_ptr().add(b));
                acc_m[r] = _mm512_fmadd_ps(mw, sa, acc_m[r]);
            }
        }
    }
    let mut out = [[0.0f32; TILE_ROWS]; R];
    for r in 0..R {
        let mut lanes = [0.0f32; TILE_ROWS];
        let v = if MIN {
            _mm512_add_ps(acc[r], acc_m[r])
        } else {
            acc[r]
        };
        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        for (lane, v) in lanes.iter().enumerate() {
            out[r][4 * (lane % 4) + lane / 4] = *v;
        }
    }
    out
}

/// [`TILE_ROWS`] Q8_0 weight rows (from `w` on, `stride` bytes apart; 0
/// repeats one row in every lane) against `R` activation rows, in the rows'
/// GGUF layout (34-byte blocks, no repack): the decode kernel of Q8_0
/// (issue 10: the pair-of-blocks kernel it replaces read ~5 GB/s a core on
/// a 16-core Xeon against llama.cpp's ~6.9).
///
/// Per block, each of eight registers holds two rows' 32 levels (row `i`
/// in its low 256 bits, row `i + 4` in its high; rows 0..8 in the first
/// four registers, 8..16 in the last four), XORed with `0x80` to `q + 128`
/// for `vpdpbusd`'s unsigned operand; the activation block, broadcast to
/// both halves, is the signed one. One `vpdpbusd` a register leaves eight
/// partial dots a row; each lane starts from `-128` times the sum of its
/// four activation bytes (itself a `vpdpbusd`), so a row's partials add up
/// to its exact integer block dot. A transposing add (32-, 64-, then
/// 128-bit: seven adds for eight registers) leaves row `i`'s block dot in
/// lane `i`. The rows' block scales are read one by one into general
/// registers, four to a 64-bit word; then per block and row
///
/// `acc = fma(d_w * d_a, float(dot), acc)`, blocks in order,
///
/// as [`q4_tile`]: every lane alone, so a row's result does not depend on
/// which rows or how many activation rows share the tile (the one-row
/// entry points below run this kernel too, for the same bits). The block
/// dot is exact in the integers (|dot| <= 32 * 127 * 128 < 2^24, so its
/// float conversion is exact too).
///
/// `next` is prefetched (as `prefetch_hint` says) over the tile's blocks, nine lines a
/// block (a tile's block is 8.5 lines): the driver passes the next tile's
/// bytes. Rows of [`LONG_ROW_BYTES`] or more are prefetched along each row
/// instead, [`ROW_AHEAD`] bytes ahead, running into `next` at their end.
#[inline(always)]
unsafe fn q8_0_tile<const R: usize>(
    w: *const u8,
    stride: usize,
    a: &[Q8Row<'_>; R],
    next: &[u8],
    hint: Prefetch,
) -> [[f32; TILE_ROWS]; R] {
    // Rows 0..8 from q[0], rows 8..16 from q[1] (each at + i * stride).
    let mut q: [*const u8; 2] = [w, w.add(8 * stride)];
    let flip = _mm512_set1_epi8(-128);
    let nb = a[0].d.len();
    let mut acc = [_mm512_setzero_ps(); R];
    let long = stride >= LONG_ROW_BYTES;
    // Along the rows the tile's own lines are prefetched, also in a task's
    // last tile (where `hint` is off: there is no next tile).
    let row_hint = crate::vec_dot::prefetch_hint();
    for b in 0..nb {
        if long {
            // Each row's line ROW_AHEAD bytes past this block: 16 streams.
            prefetch_rows(row_hint, w, stride, 34 * b + ROW_AHEAD, next);
        } else {
            // The next tile, nine lines a block: one stream a tile ahead.
            prefetch_next::<9>(hint, next, 576 * b);
        }
        // The 16 rows' block scales in row order, four rows' to a 64-bit
        // word in general registers (as in `q4_tile`).
        let word = |h: usize, i: usize| {
            let d = |j: usize| std::ptr::read_unaligned(q[h].add((i + j) * stride) as *const u16);
            (d(0) as u64 | (d(1) as u64) << 16 | (d(2) as u64) << 32 | (d(3) as u64) << 48) as i64
        };
        let dbits = _mm256_set_m128i(
            _mm_set_epi64x(word(1, 4), word(1, 0)),
            _mm_set_epi64x(word(0, 4), word(0, 0)),
        );
        // Register k: rows (k, k + 4) for k < 4, (k + 4, k + 8) after.
        let mut y = [_mm512_setzero_si512(); 8];
        for (k, y) in y.iter_mut().enumerate() {
            let base = q[k / 4].add(2 + (k % 4) * stride);
            let lo = _mm256_loadu_si256(base as *const __m256i);
            let hi = _mm256_loadu_si256(base.add(4 * stride) as *const __m256i);
            let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            *y = _mm512_xor_si512(v, flip);
        }
        q = [q[0].add(34), q[1].add(34)];
        let dw = _mm512_cvtph_ps(dbits);
        for r in 0..R {
            let aq = a[r].qs.as_ptr().add(b * QK);
            let av = _mm512_broadcast_i64x4(_mm256_loadu_si256(aq as *const __m256i));
            let zero = _mm512_setzero_si512();
            let c = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, flip, av));
            let mut part = [zero; 8];
            for k in 0..8 {
                part[k] = _mm512_dpbusd_epi32(c, y[k], av);
            }
            // Within each 128-bit lane: [x0 + x2, y0 + y2, x1 + x3, y1 + y3].
            let t =
                |x, y| _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
            let (t0, t1) = (t(part[0], part[1]), t(part[2], part[3]));
            let (t2, t3) = (t(part[4], part[5]), t(part[6], part[7]));
            // Within each 128-bit lane: the four registers' sums over it.
            let u =
                |x, y| _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
            let (u0, u1) = (u(t0, t1), u(t2, t3));
            // A row's two 128-bit lanes added: lanes 0..4 rows 0..4 (u0's
            // low rows), 4..8 rows 4..8 (u0's high), then u1's: row order.
            let dot = _mm512_add_epi32(
                _mm512_shuffle_i64x2::<0b10_00_10_00>(u0, u1),
                _mm512_shuffle_i64x2::<0b11_01_11_01>(u0, u1),
            );
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a[r].d.as_ptr().add(b)));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r]);
        }
    }
    let mut out = [[0.0f32; TILE_ROWS]; R];
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
    out
}

/// The tile kernels at this level (one home for the drivers' entry points).
#[derive(Clone, Copy)]
enum TileKind {
    Q4_0,
    Q4_1,
    Q8_0,
}

/// A whole tile ([`TILE_ROWS`] rows from `w`, `stride` apart) against the
/// 1..=4 activation rows `a`: `out[r * TILE_ROWS + i]` for row `i`, `a[r]`.
#[inline(always)]
unsafe fn full_tile(
    kind: TileKind,
    w: *const u8,
    stride: usize,
    a: &[Q8Row<'_>],
    out: &mut [f32],
    next: &[u8],
) {
    #[inline(always)]
    unsafe fn one<const R: usize>(
        kind: TileKind,
        w: *const u8,
        stride: usize,
        a: &[Q8Row<'_>; R],
        next: &[u8],
    ) -> [[f32; TILE_ROWS]; R] {
        let hint = if next.is_empty() {
            Prefetch::Off
        } else {
            crate::vec_dot::prefetch_hint()
        };
        match kind {
            TileKind::Q4_0 => q4_tile::<R, false>(w, stride, a, next, hint),
            TileKind::Q4_1 => q4_tile::<R, true>(w, stride, a, next, hint),
            TileKind::Q8_0 => q8_0_tile::<R>(w, stride, a, next, hint),
        }
    }
    let mut put = |r: usize, v: &[f32; TILE_ROWS]| {
        out[r * TILE_ROWS..(r + 1) * TILE_ROWS].copy_from_slice(v);
    };
    match a.len() {
        4 => {
            let o = one::<4>(kind, w, stride, a.try_into().unwrap(), next);
            o.iter().enumerate().for_each(|(r, v)| put(r, v));
        }
        3 => {
            let o = one::<3>(kind, w, stride, a.try_into().unwrap(), next);
            o.iter().enumerate().for_each(|(r, v)| put(r, v));
        }
        2 => {
            let o = one::<2>(kind, w, stride, a.try_into().unwrap(), next);
            o.iter().enumerate().for_each(|(r, v)| put(r, v));
        }
        1 => put(0, &one::<1>(kind, w, stride, &[a[0]], next)[0]),
        _ => {}
    }
}

/// A tile kernel for 1..=4 activation rows: `out[r * TILE_ROWS + i]` is
/// row `i`'s dot with `a[r]` for `i < rows` (the rest of `out` is left
/// alone). Fewer than [`TILE_ROWS`] rows (a part's or a task's last tile)
/// run one at a time in every lane, as the one-row entry points do.
#[inline(always)]
unsafe fn tile_avx512(
    kind: TileKind,
    w: &[u8],
    stride: usize,
    rows: usize,
    a: &[Q8Row<'_>],
    out: &mut [f32],
    next: &[u8],
) {
    if rows < TILE_ROWS {
        for i in 0..rows {
            let mut one = [0.0f32; TILE_ACTS * TILE_ROWS];
            full_tile(kind, w[i * stride..].as_ptr(), 0, a, &mut one, &[]);
            for r in 0..a.len() {
                out[r * TILE_ROWS + i] = one[r * TILE_ROWS];
            }
        }
        return;
    }
    full_tile(kind, w.as_ptr(), stride, a, out, next)
}

/// One weight row against several activation rows through a tile kernel
/// (the row in every lane): the bits the decode drivers' tiles give it.
#[inline(always)]
unsafe fn tile_rows_avx512(kind: TileKind, w: &[u8], a: &[Q8Row<'_>], out: &mut [f32]) {
    let mut v = [0.0f32; TILE_ACTS * TILE_ROWS];
    for (a, out) in a.chunks(TILE_ACTS).zip(out.chunks_mut(TILE_ACTS)) {
        full_tile(kind, w.as_ptr(), 0, a, &mut v, &[]);
        for (r, o) in out.iter_mut().enumerate() {
            *o = v[r * TILE_ROWS];
        }
    }
}

/// `rows` (0..=[`TILE_ROWS`]) weight rows against one activation row
/// through a tile kernel: `rows` of its lanes.
#[inline(always)]
unsafe fn tile_group_avx512(
    kind: TileKind,
    w: &[u8],
    stride: usize,
    rows: usize,
    a: Q8Row<'_>,
    out: &mut [f32],
) {
    let mut v = [0.0f32; TILE_ROWS];
    if rows > 0 {
        tile_avx512(kind, w, stride, rows, &[a], &mut v, &[]);
    }
    out[..rows].copy_from_slice(&v[..rows]);
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_0_avx512_tile(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: &[Q8Row<'_>],
    out: &mut [f32],
    next: &[u8],
) {
    tile_avx512(TileKind::Q4_0, w, stride, rows, a, out, next)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q4_1_avx512_tile(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: &[Q8Row<'_>],
    out: &mut [f32],
    next: &[u8],
) {
    tile_avx512(TileKind::Q4_1, w, stride, rows, a, out, next)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub unsafe fn q8_0_avx512_tile(
    w: &[u8],
    stride: usize,
    rows: usize,
    a: &[Q8Row<'_>],
    out: &mut [f32],
    next: &[u8],
) {
    tile_avx512(TileKind::Q8_0, w, stride, rows, a, out, next)
}
