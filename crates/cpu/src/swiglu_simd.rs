//! `out = silu(gate) * up` over a row, per SIMD level (AVX-512, AVX2, NEON,
//! portable), with a vectorised exponential.
//!
//! Every level runs the same arithmetic in the same order, fused multiply-adds
//! where the portable code calls `mul_add`, IEEE division, exact integer
//! exponent arithmetic, so every level gives the portable level's bits (NaN
//! payloads aside): results do not depend on the CPU, nor on where a row
//! starts relative to the vector width.
//!
//! The arithmetic, for `g` the gate and `u` the up value: `out = s * u` with
//! `s = silu(g) = g / (1 + e^-g)` to a few ulp (as llama.cpp, silu is rounded
//! before the product):
//! - `g` is raised to -110 at least (below that `silu(g)` rounds to -0 in f32;
//!   this also keeps `g = -inf` from giving `inf / inf`);
//! - `e = 2^n * y = exp(-|g|)`, `|g|` capped at 110: `n = round(-|g| log2 e)`,
//!   `r = -|g| - n ln 2` (Cody-Waite: `ln 2` in two parts, the first exact in
//!   few bits), `y ~ e^r` by Cephes' degree-7 polynomial (relative error about
//!   1e-7 on `|r| <= ln 2 / 2`). `2^n` is applied as `2^n1 * 2^n2` with
//!   `n1 = n >> 1` (both halves normal floats): `h = y 2^n1` is exact, and the
//!   factor `2^n2` is applied last, so an `s` in the subnormal range is
//!   rounded once;
//! - `g >= 0`: `s = g / (1 + e)`;
//! - `g < 0`: `s = g e^g / (1 + e^g) = (g h / (1 + e)) 2^n2`.
//!
//! So: gates below about -108.6 give `±0 * u`, gates from 17 up give exactly
//! `g * u`, NaN propagates, and `s` is within a few ulp of the exact value
//! over the whole f32 range (tested against f64: see the tests).

use crate::vec_dot::SimdLevel;

/// Gates are raised to this at least; `exp` arguments are capped at its size.
const G_MIN: f32 = -110.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for `|n| < 2^9`.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Cephes' `expf` polynomial: `e^r ~ 1 + r + r^2 (P0 r^5 + ... + P5)`.
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// The vector operations of [`silu_mul`]. Each level implements them with
/// the same IEEE results as the portable one (one `f32` lane).
trait Lanes {
    type V: Copy;
    const W: usize;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `if a > b { a } else { b }` (so `b` when either is NaN).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `-|a|` (the sign bit set).
    unsafe fn neg_abs(a: Self::V) -> Self::V;
    /// Rounded to the nearest integer, ties to even.
    unsafe fn round(a: Self::V) -> Self::V;
    /// `(2^(n >> 1), 2^(n - (n >> 1)))` for integral `n` in [-160, 0].
    unsafe fn pow2_halves(n: Self::V) -> (Self::V, Self::V);
    /// `if g < 0 { a } else { b }` (so `b` for -0 and NaN).
    unsafe fn if_neg(g: Self::V, a: Self::V, b: Self::V) -> Self::V;
}

/// `silu(g) * u`, the arithmetic of the module comment.
#[inline(always)]
unsafe fn silu_mul<L: Lanes>(g: L::V, u: L::V) -> L::V {
    let g = L::max(L::splat(G_MIN), g);
    let x = L::max(L::neg_abs(g), L::splat(G_MIN));
    let n = L::round(L::mul(x, L::splat(LOG2E)));
    let r = L::fma(n, L::splat(-LN2_HI), x);
    let r = L::fma(n, L::splat(-LN2_LO), r);
    let mut p = L::splat(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = L::fma(p, r, L::splat(c));
    }
    let y = L::add(L::fma(p, L::mul(r, r), r), L::splat(1.0));
    let (s1, s2) = L::pow2_halves(n);
    let h = L::mul(y, s1);
    let d = L::add(L::splat(1.0), L::mul(h, s2));
    let one = L::splat(1.0);
    let t = L::if_neg(g, h, one);
    let f = L::if_neg(g, s2, one);
    L::mul(L::mul(L::div(L::mul(g, t), d), f), u)
}

/// Widest level's lanes (AVX-512).
const MAX_W: usize = 16;

/// The row in vectors of `L::W`; the last part vector through a zero-padded
/// copy (the same lane arithmetic, so the same bits).
#[inline(always)]
unsafe fn row<L: Lanes>(out: &mut [f32], g: &[f32], u: &[f32]) {
    debug_assert!(L::W <= MAX_W);
    let n = out.len();
    let (o, gp, up) = (out.as_mut_ptr(), g.as_ptr(), u.as_ptr());
    let mut i = 0;
    while i + L::W <= n {
        L::store(
            o.add(i),
            silu_mul::<L>(L::load(gp.add(i)), L::load(up.add(i))),
        );
        i += L::W;
    }
    if i < n {
        let k = n - i;
        let (mut gb, mut ub, mut ob) = ([0.0f32; MAX_W], [0.0f32; MAX_W], [0.0f32; MAX_W]);
        gb[..k].copy_from_slice(&g[i..]);
        ub[..k].copy_from_slice(&u[i..]);
        L::store(
            ob.as_mut_ptr(),
            silu_mul::<L>(L::load(gb.as_ptr()), L::load(ub.as_ptr())),
        );
        out[i..].copy_from_slice(&ob[..k]);
    }
}

/// One `f32` lane: the reference every level reproduces.
struct Portable;

impl Lanes for Portable {
    type V = f32;
    const W: usize = 1;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        *p = v
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn neg_abs(a: f32) -> f32 {
        f32::from_bits(a.to_bits() | 0x8000_0000)
    }
    #[inline(always)]
    unsafe fn round(a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2_halves(n: f32) -> (f32, f32) {
        // `as` saturates and maps NaN to 0: defined for any lane.
        let n = n as i32;
        let n1 = n >> 1;
        let bits = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
        (bits(n1), bits(n - n1))
    }
    #[inline(always)]
    unsafe fn if_neg(g: f32, a: f32, b: f32) -> f32 {
        if g < 0.0 {
            a
        } else {
            b
        }
    }
}

type RowFn = unsafe fn(&mut [f32], &[f32], &[f32]);

/// The SwiGLU row kernel of one SIMD level. Built only through
/// [`SwigluKernel::for_level`], which checks the CPU has the instructions.
#[derive(Clone, Copy)]
pub struct SwigluKernel {
    f: RowFn,
}

impl SwigluKernel {
    /// The kernel written for `level` (the NEON one for both NEON levels), if
    /// this CPU can run it.
    pub fn for_level(level: SimdLevel) -> Option<SwigluKernel> {
        if !level.available() {
            return None;
        }
        let f: RowFn = match level {
            SimdLevel::Scalar => row::<Portable>,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => x86::row_avx2,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => x86::row_avx512,
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon | SimdLevel::NeonDot => arm::row_neon,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        Some(SwigluKernel { f })
    }

    /// `out[i] = silu(gate[i]) * up[i]`; the three of one length.
    pub fn row(&self, out: &mut [f32], gate: &[f32], up: &[f32]) {
        assert!(
            gate.len() == out.len() && up.len() == out.len(),
            "swiglu row: gate ({}), up ({}) and out ({}) differ in length",
            gate.len(),
            up.len(),
            out.len()
        );
        // SAFETY: `for_level` checked the CPU features; the kernels index
        // below `out.len()`, the length of all three (checked above).
        unsafe { (self.f)(out, gate, up) }
    }
}

/// The kernel at the level [`crate::vec_dot::kernels`] runs at (the widest
/// this CPU has, or the one `METALLIC_CPU_SIMD` forces).
pub fn kernel() -> &'static SwigluKernel {
    static K: std::sync::OnceLock<SwigluKernel> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        SwigluKernel::for_level(crate::vec_dot::kernels().level())
            .or_else(|| SwigluKernel::for_level(SimdLevel::Scalar))
            .expect("the scalar level is always available")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    pub struct Avx512;

    impl Lanes for Avx512 {
        type V = __m512;
        const W: usize = 16;
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
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            // vmaxps returns its second operand when either is NaN.
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn neg_abs(a: __m512) -> __m512 {
            _mm512_or_ps(a, _mm512_set1_ps(-0.0))
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            _mm512_roundscale_ps::<NEAREST>(a)
        }
        #[inline(always)]
        unsafe fn pow2_halves(n: __m512) -> (__m512, __m512) {
            let n = _mm512_cvtps_epi32(n);
            let n1 = _mm512_srai_epi32::<1>(n);
            let n2 = _mm512_sub_epi32(n, n1);
            let bias = _mm512_set1_epi32(127);
            (
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias))),
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias))),
            )
        }
        #[inline(always)]
        unsafe fn if_neg(g: __m512, a: __m512, b: __m512) -> __m512 {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(g, _mm512_setzero_ps());
            _mm512_mask_blend_ps(neg, b, a)
        }
    }

    pub struct Avx2;

    impl Lanes for Avx2 {
        type V = __m256;
        const W: usize = 8;
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
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            // vmaxps returns its second operand when either is NaN.
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn neg_abs(a: __m256) -> __m256 {
            _mm256_or_ps(a, _mm256_set1_ps(-0.0))
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            _mm256_round_ps::<NEAREST>(a)
        }
        #[inline(always)]
        unsafe fn pow2_halves(n: __m256) -> (__m256, __m256) {
            let n = _mm256_cvtps_epi32(n);
            let n1 = _mm256_srai_epi32::<1>(n);
            let n2 = _mm256_sub_epi32(n, n1);
            let bias = _mm256_set1_epi32(127);
            (
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias))),
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias))),
            )
        }
        #[inline(always)]
        unsafe fn if_neg(g: __m256, a: __m256, b: __m256) -> __m256 {
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(g, _mm256_setzero_ps());
            _mm256_blendv_ps(b, a, neg)
        }
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn row_avx512(out: &mut [f32], g: &[f32], u: &[f32]) {
        row::<Avx512>(out, g, u)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_avx2(out: &mut [f32], g: &[f32], u: &[f32]) {
        row::<Avx2>(out, g, u)
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
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vdivq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // A select, not fmax: NaN must give `b`, as on x86.
            vbslq_f32(vcgtq_f32(a, b), a, b)
        }
        #[inline(always)]
        unsafe fn neg_abs(a: float32x4_t) -> float32x4_t {
            vnegq_f32(vabsq_f32(a))
        }
        #[inline(always)]
        unsafe fn round(a: float32x4_t) -> float32x4_t {
            vrndnq_f32(a)
        }
        #[inline(always)]
        unsafe fn pow2_halves(n: float32x4_t) -> (float32x4_t, float32x4_t) {
            let n = vcvtq_s32_f32(n);
            let n1 = vshrq_n_s32::<1>(n);
            let n2 = vsubq_s32(n, n1);
            let bias = vdupq_n_s32(127);
            (
                vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias))),
                vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias))),
            )
        }
        #[inline(always)]
        unsafe fn if_neg(g: float32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vbslq_f32(vcltq_f32(g, vdupq_n_f32(0.0)), a, b)
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn row_neon(out: &mut [f32], g: &[f32], u: &[f32]) {
        row::<Neon>(out, g, u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic::rng::Xoshiro256;

    /// Most ulp `silu(g)` may be from the exact value.
    const MAX_ULP: f64 = 3.0;

    const EDGES: [f32; 24] = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        -110.0,
        -109.99,
        -103.97,
        -88.73,
        -87.34,
        88.73,
        16.6,
        17.0,
        -0.346_573_6,
        0.346_573_6,
        1.0,
        -1.0,
        1e-20,
    ];

    /// Gates or ups: the activations' usual range, the range where exp
    /// over- and underflows, any bit pattern (NaN, inf and subnormals
    /// included) and the edge values above, mixed.
    fn inputs(seed: u64, len: usize) -> Vec<f32> {
        let mut r = Xoshiro256::new(seed);
        (0..len)
            .map(|_| match r.next_u64() % 4 {
                0 => (r.next_f64() * 24.0 - 12.0) as f32,
                1 => (r.next_f64() * 240.0 - 120.0) as f32,
                2 => f32::from_bits(r.next_u64() as u32),
                _ => EDGES[(r.next_u64() % EDGES.len() as u64) as usize],
            })
            .collect()
    }

    /// The kernel of every level this CPU has, with the level's name.
    fn kernels() -> Vec<(&'static str, SwigluKernel)> {
        SimdLevel::ALL
            .into_iter()
            .filter_map(|l| Some((l.name(), SwigluKernel::for_level(l)?)))
            .collect()
    }

    fn portable() -> SwigluKernel {
        SwigluKernel::for_level(SimdLevel::Scalar).unwrap()
    }

    fn run(k: &SwigluKernel, g: &[f32], u: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; g.len()];
        k.row(&mut out, g, u);
        out
    }

    /// `silu(g)` in f64.
    fn silu64(g: f32) -> f64 {
        let g = g as f64;
        g / (1.0 + (-g).exp())
    }

    /// How many f32 spacings at `want` (subnormal spacing below the normal
    /// range) `got` is from it.
    fn ulps(got: f32, want: f64) -> f64 {
        let e = want.abs().log2().floor().max(-126.0);
        (got as f64 - want).abs() / (e - 23.0).exp2()
    }

    /// Each level against the portable code bit for bit (any NaN for a NaN),
    /// on every row length up to 67 and the width of Qwen2.5-0.5B's FFN, so
    /// every split between vectors and the portable tail is covered.
    #[test]
    fn every_level_gives_the_portable_bits_on_ragged_rows() {
        let levels = kernels();
        assert!(
            levels.len() >= 2 || cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64")))
        );
        for len in (1..=67).chain([4864]) {
            let (g, u) = (inputs(len as u64, len), inputs(1000 + len as u64, len));
            let want = run(&portable(), &g, &u);
            for (name, k) in &levels {
                let got = run(k, &g, &u);
                for i in 0..len {
                    let same = got[i].to_bits() == want[i].to_bits()
                        || (got[i].is_nan() && want[i].is_nan());
                    assert!(
                        same,
                        "{} len {len} [{i}]: silu({:e}) * {:e} = {:e}, portable {:e}",
                        name, g[i], u[i], got[i], want[i]
                    );
                }
            }
        }
    }

    /// `silu(g)` (u = 1) within MAX_ULP of f64 on a dense sweep of the range
    /// where it is neither g nor 0, and on random finite gates of any size,
    /// subnormal ones included.
    #[test]
    fn silu_is_within_a_few_ulp_of_f64_over_the_whole_range() {
        let mut r = Xoshiro256::new(5);
        let mut g: Vec<f32> = (0..=240_000).map(|i| -120.0 + i as f32 * 1e-3).collect();
        while g.len() < 400_000 {
            let v = f32::from_bits(r.next_u64() as u32);
            if v.is_finite() {
                g.push(v);
            }
        }
        let ones = vec![1.0f32; g.len()];
        for (name, k) in kernels() {
            let got = run(&k, &g, &ones);
            let mut worst = (0.0f64, 0.0f32);
            for (&s, &g) in got.iter().zip(&g) {
                let e = ulps(s, silu64(g));
                if e > worst.0 {
                    worst = (e, g);
                }
            }
            eprintln!("{}: worst {:.2} ulp at g = {:e}", name, worst.0, worst.1);
            assert!(
                worst.0 <= MAX_ULP,
                "{}: silu({:e}) is {:.2} ulp off",
                name,
                worst.1,
                worst.0
            );
        }
    }

    /// `silu(g) * u` within MAX_ULP + 1/2 (the product's rounding) of f64
    /// wherever silu(g) is a normal float, for random gates and ups; products
    /// past f32::MAX give the infinity of their sign.
    #[test]
    fn product_with_up_is_within_a_few_ulp_of_f64() {
        let (mut g, mut u) = (inputs(11, 100_000), inputs(12, 100_000));
        for (g, u) in g.iter_mut().zip(&mut u) {
            if !g.is_finite() || silu64(*g).abs() < f32::MIN_POSITIVE as f64 {
                *g = 1.5;
            }
            if !u.is_finite() {
                *u = -2.5;
            }
        }
        for (name, k) in kernels() {
            let got = run(&k, &g, &u);
            for i in 0..g.len() {
                let want = silu64(g[i]) * u[i] as f64;
                if (want as f32).is_infinite() {
                    assert_eq!(got[i], want as f32, "silu({:e}) * {:e}", g[i], u[i]);
                } else {
                    let e = ulps(got[i], want);
                    assert!(
                        e <= MAX_ULP + 0.5,
                        "{}: silu({:e}) * {:e} = {:e} is {e:.2} ulp from {want:e}",
                        name,
                        g[i],
                        u[i],
                        got[i]
                    );
                }
            }
        }
    }

    #[test]
    fn large_gates_saturate_and_nan_propagates() {
        for (name, k) in kernels() {
            // Far below: silu rounds to -0, so the product is a zero, never NaN.
            let g = [f32::NEG_INFINITY, -1e30, -200.0, -110.0, -109.0, f32::MIN];
            let u = [3.0, -3.0, f32::MAX, 7.0, 1.0, 0.5];
            for (i, v) in run(&k, &g, &u).into_iter().enumerate() {
                assert_eq!(v, 0.0, "{name}: silu({:e}) * {:e}", g[i], u[i]);
            }
            // From 17 up, e^-g is below half an ulp of 1: exactly g * u.
            let g = [17.0, 20.0, 100.0, 1e30, f32::MAX, f32::INFINITY, 1e20];
            let u = [3.0, -0.7, 1e-3, 2.0, 0.5, -2.0, 1e30];
            for (i, v) in run(&k, &g, &u).into_iter().enumerate() {
                assert_eq!(v, g[i] * u[i], "{name}: silu({:e}) * {:e}", g[i], u[i]);
            }
            let g = [f32::NAN, 1.0, -f32::NAN, f32::NAN, 0.0, f32::INFINITY];
            let u = [1.0, f32::NAN, 2.0, 0.0, f32::INFINITY, 0.0];
            assert!(
                run(&k, &g, &u).iter().all(|v| v.is_nan()),
                "{name}: NaN lost"
            );
            // Signed zeros: silu(-0) = -0.
            let out = run(&k, &[-0.0, 0.0, -0.0], &[1.0, 1.0, -1.0]);
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, [(-0.0f32).to_bits(), 0, 0], "{name}: signed zeros");
        }
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn rows_of_different_lengths_are_refused() {
        let mut out = [0.0f32; 3];
        portable().row(&mut out, &[1.0; 3], &[1.0; 2]);
    }
}
