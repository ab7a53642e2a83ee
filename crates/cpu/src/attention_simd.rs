//! SIMD kernels of the tiled attention ([`crate::attention`], also used by
//! [`crate::paged_attention`]): for a tile of [`TILE`] keys, the scores of
//! several queries against the key tile (stored transposed, so a score is a
//! lane and the head dimension is the loop), the online-softmax update of each
//! query, and the probability-weighted sum of the value tile added to each
//! query's running output. One generic body per step over a small vector
//! trait ([`Lanes`]), instantiated for AVX-512, AVX2+FMA, NEON and portable
//! code; the level is the one [`crate::vec_dot::kernels`] picked
//! (`METALLIC_CPU_SIMD` forces a lower one, as for the matmuls).
//!
//! Why hand SIMD and not the `gemm` crate for the two tile products: the tiles
//! are small (a few queries by 64 keys by the head dimension) and the softmax
//! sits between the two products; fusing all three per group of queries keeps
//! the scores in a 1 KiB stack buffer and the running outputs in registers,
//! while a gemm call per tile pays packing and dispatch on every tile.
//!
//! Each query's arithmetic (the order of its multiply-adds, its lanes) does
//! not depend on which other queries share a kernel call or how many there
//! are: so serial and parallel runs, and a row alone or batched with other
//! rows, give the same bits. Keys past a query's position get weight exactly
//! 0, and `fma(0, v, acc) == acc`, so sharing a value tile with a query that
//! sees more keys changes nothing.

use crate::vec_dot::SimdLevel;

/// Keys per tile.
pub const TILE: usize = 64;
/// Queries, outputs and value rows are stored `hd` rounded up to this many
/// floats, zero-padded, so that every level works in whole vectors.
pub const PAD: usize = 16;

/// One key tile's work: the key tile transposed (`kt[d * TILE + j]`, keys past
/// `nk` zero), the value tile (`v[j * hdp ..]`, rows `0..nk`, zero-padded
/// columns), and per query `qi`: its scaled query `q[qi * hdp ..]`, running
/// output `o[qi * hdp ..]`, running max and sum `ml[qi]`, and the number of
/// keys it may see from the first key of this tile, `seen[qi]` (>= 1).
pub struct Tile<'a> {
    pub kt: &'a [f32],
    pub v: &'a [f32],
    pub hd: usize,
    pub hdp: usize,
    pub nk: usize,
    pub q: &'a [f32],
    pub o: &'a mut [f32],
    pub ml: &'a mut [[f32; 2]],
    pub seen: &'a [u32],
}

type TileFn = unsafe fn(&mut Tile<'_>, &[u32]);
type PackFn = unsafe fn(&[f32], &[usize], usize, &mut [f32]);

/// The attention kernels of one SIMD level. Built only through
/// [`AttnKernels::for_level`], which checks the CPU has the instructions.
#[derive(Clone, Copy)]
pub struct AttnKernels {
    tile: TileFn,
    pack: PackFn,
}

impl AttnKernels {
    /// The kernels written for `level` (the NEON ones for both NEON levels),
    /// if this CPU can run it.
    pub fn for_level(level: SimdLevel) -> Option<AttnKernels> {
        if !level.available() {
            return None;
        }
        let (tile, pack): (TileFn, PackFn) = match level {
            SimdLevel::Scalar => (tile_scalar, pack_scalar),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => (x86::tile_avx2, x86::pack_avx2),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => (x86::tile_avx512, x86::pack_avx512),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon | SimdLevel::NeonDot => (arm::tile_neon, pack_scalar),
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        Some(AttnKernels { tile, pack })
    }

    /// The key tile transposed: `kt[d * TILE + j] = src[offs[j] + d]` for the
    /// `offs.len()` keys and `d < hd` (other lanes untouched). A decode step
    /// packs a tile for a few queries only, so this is done in registers
    /// where the level can.
    pub fn pack_keys(&self, src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32]) {
        assert!(offs.len() <= TILE && kt.len() >= hd * TILE);
        for &o in offs {
            assert!(o + hd <= src.len());
        }
        // SAFETY: `for_level` checked the CPU features; indices checked above.
        unsafe { (self.pack)(src, offs, hd, kt) }
    }

    /// Runs the tile for the queries `active` (indices into the tile's
    /// per-query arrays), in any order: each query's result is its own.
    pub fn tile(&self, t: &mut Tile<'_>, active: &[u32]) {
        assert!(t.hd <= t.hdp && t.hdp.is_multiple_of(PAD) && t.nk >= 1 && t.nk <= TILE);
        assert!(t.kt.len() >= t.hd * TILE && t.v.len() >= t.nk * t.hdp);
        let n = t.ml.len();
        assert!(t.q.len() >= n * t.hdp && t.o.len() >= n * t.hdp && t.seen.len() >= n);
        for &qi in active {
            assert!((qi as usize) < n && t.seen[qi as usize] >= 1);
        }
        // SAFETY: `for_level` checked the CPU features; every index the
        // kernels use is bounded by the lengths checked above.
        unsafe { (self.tile)(t, active) }
    }
}

/// The level [`crate::vec_dot::kernels`] runs at (the widest this CPU has,
/// or the one `METALLIC_CPU_SIMD` forces).
pub fn kernels() -> &'static AttnKernels {
    static K: std::sync::OnceLock<AttnKernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        AttnKernels::for_level(crate::vec_dot::kernels().level())
            .or_else(|| AttnKernels::for_level(SimdLevel::Scalar))
            .expect("the scalar level is always available")
    })
}

/// The vector operations the kernels need. `exp` takes arguments <= 0 (a
/// score minus the running max) and gives exactly 0 below -87 (and for -inf).
trait Lanes {
    type V: Copy;
    const W: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c` (fused where the level has FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn exp(x: Self::V) -> Self::V;
    unsafe fn hmax(v: Self::V) -> f32;
    unsafe fn hsum(v: Self::V) -> f32;
}

/// Cephes' expf: `e^x = 2^n * e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`
/// (`ln 2` split in two for an exact `n * ln 2`), `e^r` by a degree-7
/// polynomial; relative error about 2e-7.
const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
const EXP_MIN: f32 = -87.0;

/// Scores of `R` queries against the key tile, `C` vectors of keys at a time:
/// `s[r][j] = q_r . k_j`, the head dimension summed in order.
// Indices address several register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn scores<L: Lanes, const R: usize, const C: usize>(
    t: &Tile<'_>,
    qs: [usize; R],
    s: &mut [[f32; TILE]; R],
) {
    let kt = t.kt.as_ptr();
    let q = t.q.as_ptr();
    let mut j0 = 0;
    while j0 < TILE {
        let mut acc = [[L::zero(); C]; R];
        for d in 0..t.hd {
            let mut k = [L::zero(); C];
            for (c, kc) in k.iter_mut().enumerate() {
                *kc = L::load(kt.add(d * TILE + j0 + c * L::W));
            }
            for r in 0..R {
                let qd = L::splat(*q.add(qs[r] * t.hdp + d));
                for c in 0..C {
                    acc[r][c] = L::fma(qd, k[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                L::store(s[r].as_mut_ptr().add(j0 + c * L::W), acc[r][c]);
            }
        }
        j0 += C * L::W;
    }
}

/// The online-softmax step of one query over its scores `s` (of which the
/// first `seen` count): `s` becomes `e^(s - max)` (0 past `seen`), the running
/// max and sum move on; returns the factor that rescales the running output.
#[inline(always)]
unsafe fn softmax<L: Lanes>(s: &mut [f32; TILE], seen: usize, ml: &mut [f32; 2]) -> f32 {
    if seen < TILE {
        s[seen..].fill(f32::NEG_INFINITY);
    }
    let p = s.as_mut_ptr();
    let mut mx = L::load(p);
    for j in (L::W..TILE).step_by(L::W) {
        mx = L::max(mx, L::load(p.add(j)));
    }
    let [m_old, l_old] = *ml;
    let m = m_old.max(L::hmax(mx));
    let neg_m = L::splat(-m);
    let mut sum = L::zero();
    for j in (0..TILE).step_by(L::W) {
        let e = L::exp(L::add(L::load(p.add(j)), neg_m));
        L::store(p.add(j), e);
        sum = L::add(sum, e);
    }
    // m_old is -inf on a query's first tile: the factor is then 0.
    let c = (m_old - m).exp();
    *ml = [m, l_old * c + L::hsum(sum)];
    c
}

/// Running outputs of `R` queries, `C` vectors of the (padded) head dimension
/// from `d0`: `o_r = o_r * c_r + sum_j p_r[j] v_j` over the first `nk` keys.
// Indices address several register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn weighted_sum<L: Lanes, const R: usize, const C: usize>(
    t: &mut Tile<'_>,
    qs: [usize; R],
    p: &[[f32; TILE]; R],
    c: [f32; R],
    nk: usize,
    d0: usize,
) {
    let (o, v) = (t.o.as_mut_ptr(), t.v.as_ptr());
    let mut acc = [[L::zero(); C]; R];
    for r in 0..R {
        let cr = L::splat(c[r]);
        for (i, a) in acc[r].iter_mut().enumerate() {
            *a = L::mul(L::load(o.add(qs[r] * t.hdp + d0 + i * L::W)), cr);
        }
    }
    for j in 0..nk {
        let mut vj = [L::zero(); C];
        for (i, x) in vj.iter_mut().enumerate() {
            *x = L::load(v.add(j * t.hdp + d0 + i * L::W));
        }
        for r in 0..R {
            let pj = L::splat(p[r][j]);
            for i in 0..C {
                acc[r][i] = L::fma(pj, vj[i], acc[r][i]);
            }
        }
    }
    for r in 0..R {
        for (i, a) in acc[r].iter().enumerate() {
            L::store(o.add(qs[r] * t.hdp + d0 + i * L::W), *a);
        }
    }
}

/// The whole tile for the `R` queries `qs`.
#[inline(always)]
unsafe fn group<L: Lanes, const R: usize, const C: usize>(t: &mut Tile<'_>, qs: [usize; R]) {
    let mut s = [[0.0f32; TILE]; R];
    scores::<L, R, C>(t, qs, &mut s);
    let mut c = [0.0f32; R];
    let mut nk = 0;
    for r in 0..R {
        let seen = (t.seen[qs[r]] as usize).min(t.nk);
        c[r] = softmax::<L>(&mut s[r], seen, &mut t.ml[qs[r]]);
        nk = nk.max(seen);
    }
    // The head dimension in blocks of C vectors, then single vectors: the
    // same per-lane arithmetic either way.
    let mut d0 = 0;
    while d0 + C * L::W <= t.hdp {
        weighted_sum::<L, R, C>(t, qs, &s, c, nk, d0);
        d0 += C * L::W;
    }
    while d0 < t.hdp {
        weighted_sum::<L, R, 1>(t, qs, &s, c, nk, d0);
        d0 += L::W;
    }
}

/// Every active query, `R` at a time, the rest one by one.
#[inline(always)]
unsafe fn tile_generic<L: Lanes, const R: usize, const C: usize>(t: &mut Tile<'_>, active: &[u32]) {
    let mut groups = active.chunks_exact(R);
    for g in &mut groups {
        group::<L, R, C>(t, std::array::from_fn(|r| g[r] as usize));
    }
    for &qi in groups.remainder() {
        group::<L, 1, C>(t, [qi as usize]);
    }
}

/// Portable lanes: eight floats, unfused multiply-add (the compiler
/// vectorises these where it can).
struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const W: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        std::ptr::read_unaligned(p as *const [f32; 8])
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        std::ptr::write_unaligned(p as *mut [f32; 8], v)
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn max(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    unsafe fn exp(x: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| if x[i] < EXP_MIN { 0.0 } else { x[i].exp() })
    }
    #[inline(always)]
    unsafe fn hmax(v: [f32; 8]) -> f32 {
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn hsum(v: [f32; 8]) -> f32 {
        v.iter().sum()
    }
}

unsafe fn tile_scalar(t: &mut Tile<'_>, active: &[u32]) {
    tile_generic::<Portable, 2, 2>(t, active)
}

/// Keys `j0..` and dimensions `d0..hd` of [`AttnKernels::pack_keys`] one by one:
/// the whole of it at the portable level, the ragged edges elsewhere.
unsafe fn pack_rest(src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32], j0: usize, d0: usize) {
    for (j, &o) in offs.iter().enumerate() {
        let from = if j < j0 { d0 } else { 0 };
        for d in from..hd {
            *kt.get_unchecked_mut(d * TILE + j) = *src.get_unchecked(o + d);
        }
    }
}

unsafe fn pack_scalar(src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32]) {
    pack_rest(src, offs, hd, kt, 0, 0)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    pub struct Avx512;

    impl Lanes for Avx512 {
        type V = __m512;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn exp(x: __m512) -> __m512 {
            // max(bound, x) keeps a NaN x (the second operand wins).
            let xc = _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(xc, _mm512_set1_ps(EXP_LOG2E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C1), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C2), r);
            let mut y = _mm512_set1_ps(EXP_P[0]);
            for &p in &EXP_P[1..] {
                y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p));
            }
            let y = _mm512_fmadd_ps(
                y,
                _mm512_mul_ps(r, r),
                _mm512_add_ps(r, _mm512_set1_ps(1.0)),
            );
            let e = _mm512_scalef_ps(y, n);
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN));
            _mm512_maskz_mov_ps(!under, e)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
    }

    pub struct Avx2;

    impl Lanes for Avx2 {
        type V = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn exp(x: __m256) -> __m256 {
            let xc = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x);
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(xc, _mm256_set1_ps(EXP_LOG2E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C1), xc);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C2), r);
            let mut y = _mm256_set1_ps(EXP_P[0]);
            for &p in &EXP_P[1..] {
                y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p));
            }
            let y = _mm256_fmadd_ps(
                y,
                _mm256_mul_ps(r, r),
                _mm256_add_ps(r, _mm256_set1_ps(1.0)),
            );
            // 2^n through the exponent bits: n >= -126 after the clamp.
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            )));
            // Lanes not below the bound (NaN included) keep their value.
            let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(EXP_MIN));
            _mm256_and_ps(_mm256_mul_ps(y, pow2), keep)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// Levels that transpose a square block of `W` vectors of `W` lanes
    /// (the first `W` entries of the array) in registers.
    trait Block: Lanes {
        unsafe fn transpose(r: &mut [Self::V; 16]);
    }

    /// Blocks of `W` keys by `W` dimensions transposed in registers, the
    /// ragged edges one by one.
    #[inline(always)]
    unsafe fn pack_blocks<L: Block>(src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32]) {
        let w = L::W;
        let (jn, dn) = (offs.len() / w * w, hd / w * w);
        let (sp, kp) = (src.as_ptr(), kt.as_mut_ptr());
        let mut r = [L::zero(); 16];
        for j0 in (0..jn).step_by(w) {
            for d0 in (0..dn).step_by(w) {
                for (i, x) in r[..w].iter_mut().enumerate() {
                    *x = L::load(sp.add(offs[j0 + i] + d0));
                }
                L::transpose(&mut r);
                for (i, &x) in r[..w].iter().enumerate() {
                    L::store(kp.add((d0 + i) * TILE + j0), x);
                }
            }
        }
        pack_rest(src, offs, hd, kt, jn, dn);
    }

    impl Block for Avx512 {
        #[inline(always)]
        unsafe fn transpose(r: &mut [__m512; 16]) {
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            for i in 0..4 {
                let (a, b) = (4 * i, 4 * i + 2);
                r[4 * i] = _mm512_shuffle_ps::<0x44>(t[a], t[b]);
                r[4 * i + 1] = _mm512_shuffle_ps::<0xee>(t[a], t[b]);
                r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[a + 1], t[b + 1]);
                r[4 * i + 3] = _mm512_shuffle_ps::<0xee>(t[a + 1], t[b + 1]);
            }
            for h in 0..2 {
                for i in 0..4 {
                    let (a, b) = (8 * h + i, 8 * h + i + 4);
                    t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(r[a], r[b]);
                    t[8 * h + i + 4] = _mm512_shuffle_f32x4::<0xdd>(r[a], r[b]);
                }
            }
            for i in 0..8 {
                r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
                r[i + 8] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[i + 8]);
            }
        }
    }

    impl Block for Avx2 {
        #[inline(always)]
        unsafe fn transpose(r: &mut [__m256; 16]) {
            let mut t = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for i in 0..2 {
                let (a, b) = (4 * i, 4 * i + 2);
                u[4 * i] = _mm256_shuffle_ps::<0x44>(t[a], t[b]);
                u[4 * i + 1] = _mm256_shuffle_ps::<0xee>(t[a], t[b]);
                u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(t[a + 1], t[b + 1]);
                u[4 * i + 3] = _mm256_shuffle_ps::<0xee>(t[a + 1], t[b + 1]);
            }
            for i in 0..4 {
                r[i] = _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]);
                r[i + 4] = _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_avx512(src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32]) {
        pack_blocks::<Avx512>(src, offs, hd, kt)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pack_avx2(src: &[f32], offs: &[usize], hd: usize, kt: &mut [f32]) {
        pack_blocks::<Avx2>(src, offs, hd, kt)
    }

    /// Four queries by the whole 64-key tile (16 accumulators of 32).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512(t: &mut Tile<'_>, active: &[u32]) {
        tile_generic::<Avx512, 4, 4>(t, active)
    }

    /// Four queries by 16 keys (8 accumulators of 16 registers).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2(t: &mut Tile<'_>, active: &[u32]) {
        tile_generic::<Avx2, 4, 2>(t, active)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    pub struct Neon;

    impl Lanes for Neon {
        type V = float32x4_t;
        const W: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn exp(x: float32x4_t) -> float32x4_t {
            // vmaxq propagates NaN.
            let xc = vmaxq_f32(x, vdupq_n_f32(EXP_MIN));
            let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(EXP_LOG2E)));
            let r = vfmsq_f32(xc, n, vdupq_n_f32(EXP_C1));
            let r = vfmsq_f32(r, n, vdupq_n_f32(EXP_C2));
            let mut y = vdupq_n_f32(EXP_P[0]);
            for &p in &EXP_P[1..] {
                y = vfmaq_f32(vdupq_n_f32(p), y, r);
            }
            let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
            let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
                vcvtq_s32_f32(n),
                vdupq_n_s32(127),
            )));
            let e = vmulq_f32(y, pow2);
            let under = vcltq_f32(x, vdupq_n_f32(EXP_MIN));
            vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(e), under))
        }
        #[inline(always)]
        unsafe fn hmax(v: float32x4_t) -> f32 {
            vmaxvq_f32(v)
        }
        #[inline(always)]
        unsafe fn hsum(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
    }

    /// Four queries by 16 keys (16 accumulators of 32 registers).
    #[target_feature(enable = "neon")]
    pub unsafe fn tile_neon(t: &mut Tile<'_>, active: &[u32]) {
        tile_generic::<Neon, 4, 4>(t, active)
    }
}
