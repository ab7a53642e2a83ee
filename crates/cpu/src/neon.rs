//! aarch64 kernels: NEON (part of every aarch64 CPU), with the Armv8.2
//! dot-product extension (`sdot`) where the CPU has it, detected at run time.
//!
//! Two families, as on x86:
//! - `vecdot` kernels ([`crate::vec_dot`]): quantised weights times Q8
//!   activations in integer arithmetic, one float multiply-add per block. Each
//!   comes twice, `*_dot` with `sdot` (16 byte products summed into four i32
//!   lanes per instruction) and `*_plain` with widening multiplies
//!   (`smull` + pairwise add-accumulate) for CPUs without the extension
//!   (Cortex-A53/A72, the Raspberry Pi 4, Graviton 1).
//! - `fdot` kernels ([`crate::matmul_fdot`]): weight blocks expanded to f32 in
//!   registers and multiplied with f32 activations, so results differ from the
//!   reference only in summation order.
//!
//! `sdot` is written as inline assembly: its intrinsic (`vdotq_s32`) is not
//! stable Rust yet. The assembly is only reached from functions compiled with
//! the `dotprod` target feature, which the callers enable only after
//! `is_aarch64_feature_detected!("dotprod")`.
//!
//! Safety contract of every `unsafe fn` here: the CPU has the features in its
//! `target_feature` attribute; `w` holds at least the blocks the activation
//! row covers (`a.d.len()` blocks, or `x.len()` values), checked by the callers.

use std::arch::aarch64::*;

use crate::q8_act::{Q8Row, QK};

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

/// The f16 at `p` (unaligned), to f32 through the FP16 conversion unit.
#[inline(always)]
unsafe fn f16_load(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    vgetq_lane_f32::<0>(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))))
}

/// The two f16 values at `p` (a block's d and m), to f32.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
    let bits = std::ptr::read_unaligned(p as *const u32);
    let v = vcvt_f32_f16(vreinterpret_f16_u32(vdup_n_u32(bits)));
    (vgetq_lane_f32::<0>(v), vgetq_lane_f32::<1>(v))
}

/// `acc + sum of w[i] * a[i]` in groups of four (i32 lanes), through `sdot`.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    std::arch::asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The same sums without the extension: widening multiplies to i16 (each
/// product fits: |w| <= 128, |a| <= 127), pairwise added into i32 lanes.
#[inline(always)]
unsafe fn smull_dot(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    let hi = vmull_high_s8(w, a);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Dot of 32 weight bytes (`w0`, `w1`) with 32 activation bytes at `a`.
#[inline(always)]
unsafe fn dot32<const DOT: bool>(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> int32x4_t {
    let (a0, a1) = (vld1q_s8(a), vld1q_s8(a.add(16)));
    let z = vdupq_n_s32(0);
    if DOT {
        sdot(sdot(z, w0, a0), w1, a1)
    } else {
        smull_dot(smull_dot(z, w0, a0), w1, a1)
    }
}

/// Q4 rows against Q8 activations. Q4_0 (`q4_1 = false`): `x = d (q - 8)`,
/// whose `-8` folds into the activations' block sums; Q4_1: `x = d q + m`.
#[inline(always)]
unsafe fn q4<const DOT: bool>(
    w: &[u8],
    a: Q8Row<'_>,
    bytes: usize,
    qs_at: usize,
    q4_1: bool,
) -> f32 {
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut extra = 0.0f32;
    let (wp, ap) = (w.as_ptr(), a.qs.as_ptr());
    let mask = vdupq_n_u8(0x0f);
    for b in 0..a.d.len() {
        let blk = wp.add(b * bytes);
        let raw = vld1q_u8(blk.add(qs_at));
        let lo = vreinterpretq_s8_u8(vandq_u8(raw, mask));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw));
        let p = vcvtq_f32_s32(dot32::<DOT>(lo, hi, ap.add(b * QK)));
        let (d, m) = f16_pair(blk);
        let (ad, s) = (*a.d.get_unchecked(b), *a.s.get_unchecked(b));
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, p, d * ad);
        } else {
            acc1 = vfmaq_n_f32(acc1, p, d * ad);
        }
        extra += if q4_1 { m * s } else { -8.0 * d * s };
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + extra
}

#[inline(always)]
unsafe fn q8_0<const DOT: bool>(w: &[u8], a: Q8Row<'_>) -> f32 {
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let (wp, ap) = (w.as_ptr(), a.qs.as_ptr());
    for b in 0..a.d.len() {
        let blk = wp.add(b * 34);
        let (w0, w1) = (
            vld1q_s8(blk.add(2) as *const i8),
            vld1q_s8(blk.add(18) as *const i8),
        );
        let p = vcvtq_f32_s32(dot32::<DOT>(w0, w1, ap.add(b * QK)));
        let scale = f16_load(blk) * *a.d.get_unchecked(b);
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, p, scale);
        } else {
            acc1 = vfmaq_n_f32(acc1, p, scale);
        }
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}

#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4_0_dot(w: &[u8], a: Q8Row<'_>) -> f32 {
    q4::<true>(w, a, 18, 2, false)
}

#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4_1_dot(w: &[u8], a: Q8Row<'_>) -> f32 {
    q4::<true>(w, a, 20, 4, true)
}

#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q8_0_dot(w: &[u8], a: Q8Row<'_>) -> f32 {
    q8_0::<true>(w, a)
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_0_plain(w: &[u8], a: Q8Row<'_>) -> f32 {
    q4::<false>(w, a, 18, 2, false)
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_1_plain(w: &[u8], a: Q8Row<'_>) -> f32 {
    q4::<false>(w, a, 20, 4, true)
}

#[target_feature(enable = "neon")]
pub unsafe fn q8_0_plain(w: &[u8], a: Q8Row<'_>) -> f32 {
    q8_0::<false>(w, a)
}

/// F32 weights (bytes, any alignment) times `x`.
#[target_feature(enable = "neon")]
pub unsafe fn f32_row(w: &[u8], x: &[f32]) -> f32 {
    let (wp, xp) = (w.as_ptr() as *const f32, x.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let n = x.len();
    let mut i = 0;
    while i + 16 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            // ld1 takes unaligned addresses: the GGUF map guarantees none.
            let wv = vld1q_f32(wp.add(i + 4 * j));
            *a = vfmaq_f32(*a, wv, vld1q_f32(xp.add(i + 4 * j)));
        }
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += std::ptr::read_unaligned(wp.add(i)) * *xp.add(i);
        i += 1;
    }
    s
}

/// Four f16 at `p`, to f32.
#[inline(always)]
unsafe fn f16x4(p: *const u16) -> float32x4_t {
    vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))
}

/// F16 weights times `x`.
#[target_feature(enable = "neon")]
pub unsafe fn f16_row(w: &[u8], x: &[f32]) -> f32 {
    let (wp, xp) = (w.as_ptr() as *const u16, x.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let n = x.len();
    let mut i = 0;
    while i + 16 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = vfmaq_f32(*a, f16x4(wp.add(i + 4 * j)), vld1q_f32(xp.add(i + 4 * j)));
        }
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += f16_load(w.as_ptr().add(2 * i)) * *xp.add(i);
        i += 1;
    }
    s
}

/// Quantise one block of 32 activations to i8 with `d = amax / 127`, rounding
/// half away from zero (`vcvtaq`) as the portable quantiser's `f32::round`
/// does, so both give the same bytes. Returns `(d, d * sum(q))`.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    debug_assert!(x.len() >= QK && q.len() >= QK);
    let xp = x.as_ptr();
    let v: [float32x4_t; 8] = std::array::from_fn(|j| vld1q_f32(xp.add(4 * j)));
    // maxNum (vmaxnm): a NaN value is passed over as `f32::max` does in the
    // portable quantiser, so a NaN in the block quantises to 0 in both.
    let mut amax = vabsq_f32(v[0]);
    for vj in &v[1..] {
        amax = vmaxnmq_f32(amax, vabsq_f32(*vj));
    }
    let amax = vmaxnmvq_f32(amax);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = vdupq_n_s32(0);
    let qp = q.as_mut_ptr();
    for h in 0..2 {
        let i: [int32x4_t; 4] =
            std::array::from_fn(|j| vcvtaq_s32_f32(vmulq_n_f32(v[4 * h + j], id)));
        sum = vaddq_s32(vaddq_s32(sum, vaddq_s32(i[0], i[1])), vaddq_s32(i[2], i[3]));
        let s16a = vcombine_s16(vmovn_s32(i[0]), vmovn_s32(i[1]));
        let s16b = vcombine_s16(vmovn_s32(i[2]), vmovn_s32(i[3]));
        vst1q_s8(
            qp.add(16 * h),
            vcombine_s8(vmovn_s16(s16a), vmovn_s16(s16b)),
        );
    }
    (d, d * vaddvq_s32(sum) as f32)
}

// ---- fdot: f32 activations ----

/// Sixteen unsigned bytes as four f32 vectors.
#[inline(always)]
unsafe fn u8x16_f32(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_high_u8(v);
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_high_u16(lo)),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_high_u16(hi)),
    ]
}

/// Sixteen signed bytes as four f32 vectors.
#[inline(always)]
unsafe fn i8x16_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_high_s8(v);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// Sum over 16 values of `w * x`, as one vector of four partial sums.
#[inline(always)]
unsafe fn mul16(w: [float32x4_t; 4], x: *const f32) -> float32x4_t {
    let s01 = vfmaq_f32(vmulq_f32(w[0], vld1q_f32(x)), w[1], vld1q_f32(x.add(4)));
    let s23 = vfmaq_f32(
        vmulq_f32(w[2], vld1q_f32(x.add(8))),
        w[3],
        vld1q_f32(x.add(12)),
    );
    vaddq_f32(s01, s23)
}

/// Q8_0 row times f32 activations.
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q8_0(w: &[u8], x: &[f32]) -> f32 {
    let xp = x.as_ptr();
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let p = blk.as_ptr();
        let xb = xp.add(b * 32);
        let s0 = mul16(i8x16_f32(vld1q_s8(p.add(2) as *const i8)), xb);
        let s1 = mul16(i8x16_f32(vld1q_s8(p.add(18) as *const i8)), xb.add(16));
        let d = f16_load(p);
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, vaddq_f32(s0, s1), d);
        } else {
            acc1 = vfmaq_n_f32(acc1, vaddq_f32(s0, s1), d);
        }
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}

/// Q4_0 / Q4_1 row times f32 activations; `xsum` holds the activations' sums
/// per 32-element block for the offset term (Q4_0 `-8 d`, Q4_1 `m`).
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q4(w: &[u8], x: &[f32], xsum: &[f32], q4_1: bool) -> f32 {
    let (size, qs) = if q4_1 { (20, 4) } else { (18, 2) };
    let xp = x.as_ptr();
    let mask = vdupq_n_u8(0x0f);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut offsets = 0.0f32;
    for (b, blk) in w.chunks_exact(size).enumerate() {
        let p = blk.as_ptr();
        let raw = vld1q_u8(p.add(qs));
        let xb = xp.add(b * 32);
        let s0 = mul16(u8x16_f32(vandq_u8(raw, mask)), xb);
        let s1 = mul16(u8x16_f32(vshrq_n_u8::<4>(raw)), xb.add(16));
        let (d, m) = f16_pair(p);
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, vaddq_f32(s0, s1), d);
        } else {
            acc1 = vfmaq_n_f32(acc1, vaddq_f32(s0, s1), d);
        }
        let off = if q4_1 { m } else { -8.0 * d };
        offsets += off * *xsum.get_unchecked(b);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets
}

/// Q5_0 row (`x = d (q - 16)`, the fifth bit of element j in bit j of `qh`).
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q5_0(w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    // Bit j of a byte lane selects it: (qh_byte & bit) != 0 -> 0x10.
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = vld1q_u8(BITS.as_ptr());
    let xp = x.as_ptr();
    let mask = vdupq_n_u8(0x0f);
    let fifth = vdupq_n_u8(0x10);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut offsets = 0.0f32;
    for (b, blk) in w.chunks_exact(22).enumerate() {
        let p = blk.as_ptr();
        let qh = std::ptr::read_unaligned(p.add(2) as *const u32);
        // Bytes 0,1 of qh spread over lanes 0..8, 8..16 (elements 0..16),
        // bytes 2,3 likewise for elements 16..32.
        let spread = |lo: u8, hi: u8| {
            let v = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
            vandq_u8(vtstq_u8(v, bits), fifth)
        };
        let h0 = spread(qh as u8, (qh >> 8) as u8);
        let h1 = spread((qh >> 16) as u8, (qh >> 24) as u8);
        let raw = vld1q_u8(p.add(6));
        let lo = vorrq_u8(vandq_u8(raw, mask), h0);
        let hi = vorrq_u8(vshrq_n_u8::<4>(raw), h1);
        let xb = xp.add(b * 32);
        let s = vaddq_f32(mul16(u8x16_f32(lo), xb), mul16(u8x16_f32(hi), xb.add(16)));
        let d = f16_load(p);
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, s, d);
        } else {
            acc1 = vfmaq_n_f32(acc1, s, d);
        }
        offsets -= 16.0 * d * *xsum.get_unchecked(b);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets
}

/// Q5_1 row: Q5_0's layout after a second f16 (`m`), `x = d q + m`: the
/// offset term is `m * sum(x)` per block.
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q5_1(w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = vld1q_u8(BITS.as_ptr());
    let xp = x.as_ptr();
    let mask = vdupq_n_u8(0x0f);
    let fifth = vdupq_n_u8(0x10);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut offsets = 0.0f32;
    for (b, blk) in w.chunks_exact(24).enumerate() {
        let p = blk.as_ptr();
        let qh = std::ptr::read_unaligned(p.add(4) as *const u32);
        let spread = |lo: u8, hi: u8| {
            let v = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
            vandq_u8(vtstq_u8(v, bits), fifth)
        };
        let h0 = spread(qh as u8, (qh >> 8) as u8);
        let h1 = spread((qh >> 16) as u8, (qh >> 24) as u8);
        let raw = vld1q_u8(p.add(8));
        let lo = vorrq_u8(vandq_u8(raw, mask), h0);
        let hi = vorrq_u8(vshrq_n_u8::<4>(raw), h1);
        let xb = xp.add(b * 32);
        let s = vaddq_f32(mul16(u8x16_f32(lo), xb), mul16(u8x16_f32(hi), xb.add(16)));
        let d = f16_load(p);
        if b & 1 == 0 {
            acc0 = vfmaq_n_f32(acc0, s, d);
        } else {
            acc1 = vfmaq_n_f32(acc1, s, d);
        }
        offsets += f16_load(p.add(2)) * *xsum.get_unchecked(b);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets
}

/// Q5_K row: [`fdot_q4_k`] with the fifth bits, bit 2c (low nibbles) and
/// 2c + 1 (high nibbles) of `qh[l]` for element l of chunk c.
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q5_k(w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let xp = x.as_ptr();
    let mask = vdupq_n_u8(0x0f);
    let fifth = vdupq_n_u8(0x10);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut offsets = 0.0f32;
    for (sb, blk) in w.chunks_exact(176).enumerate() {
        let xs = &xsum[sb * 8..(sb + 1) * 8];
        let (qh0, qh1) = (
            vld1q_u8(blk.as_ptr().add(16)),
            vld1q_u8(blk.as_ptr().add(32)),
        );
        for c in 0..4 {
            let (d1, d2, offset) = crate::matmul_fdot::q4_k_chunk(blk, c, xs);
            offsets += offset;
            let q = blk.as_ptr().add(48 + 32 * c);
            let (b0, b1) = (vld1q_u8(q), vld1q_u8(q.add(16)));
            let (bl, bh) = (vdupq_n_u8(1 << (2 * c)), vdupq_n_u8(2 << (2 * c)));
            let five = |nib: uint8x16_t, qh: uint8x16_t, bit: uint8x16_t| {
                vorrq_u8(nib, vandq_u8(vtstq_u8(qh, bit), fifth))
            };
            let xb = xp.add(sb * QK_K + 64 * c);
            let s1 = vaddq_f32(
                mul16(u8x16_f32(five(vandq_u8(b0, mask), qh0, bl)), xb),
                mul16(u8x16_f32(five(vandq_u8(b1, mask), qh1, bl)), xb.add(16)),
            );
            let s2 = vaddq_f32(
                mul16(u8x16_f32(five(vshrq_n_u8::<4>(b0), qh0, bh)), xb.add(32)),
                mul16(u8x16_f32(five(vshrq_n_u8::<4>(b1), qh1, bh)), xb.add(48)),
            );
            acc0 = vfmaq_n_f32(acc0, s1, d1);
            acc1 = vfmaq_n_f32(acc1, s2, d2);
        }
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets
}

/// Q4_K row: per 64-element chunk two sub-blocks (low, then high nibbles of
/// the same 32 bytes) with scales `d1`, `d2` and an offset term, all from
/// [`crate::matmul_fdot`]'s `q4_k_chunk`.
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q4_k(w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let xp = x.as_ptr();
    let mask = vdupq_n_u8(0x0f);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut offsets = 0.0f32;
    for (sb, blk) in w.chunks_exact(144).enumerate() {
        let xs = &xsum[sb * 8..(sb + 1) * 8];
        for c in 0..4 {
            let (d1, d2, offset) = crate::matmul_fdot::q4_k_chunk(blk, c, xs);
            offsets += offset;
            let q = blk.as_ptr().add(16 + 32 * c);
            let (b0, b1) = (vld1q_u8(q), vld1q_u8(q.add(16)));
            let xb = xp.add(sb * QK_K + 64 * c);
            let s1 = vaddq_f32(
                mul16(u8x16_f32(vandq_u8(b0, mask)), xb),
                mul16(u8x16_f32(vandq_u8(b1, mask)), xb.add(16)),
            );
            let s2 = vaddq_f32(
                mul16(u8x16_f32(vshrq_n_u8::<4>(b0)), xb.add(32)),
                mul16(u8x16_f32(vshrq_n_u8::<4>(b1)), xb.add(48)),
            );
            acc0 = vfmaq_n_f32(acc0, s1, d1);
            acc1 = vfmaq_n_f32(acc1, s2, d2);
        }
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets
}

/// Q6_K row: `ql[128]`, `qh[64]`, `scales[16]` (i8, one per 16 elements),
/// `d` (f16); quants `q - 32` from four low bits and two high bits.
#[target_feature(enable = "neon")]
pub unsafe fn fdot_q6_k(w: &[u8], x: &[f32]) -> f32 {
    let xp = x.as_ptr();
    let m4 = vdupq_n_u8(0x0f);
    let m2 = vdupq_n_u8(0x03);
    let bias = vdupq_n_s8(32);
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    for (sb, blk) in w.chunks_exact(210).enumerate() {
        let p = blk.as_ptr();
        let d = f16_load(p.add(208));
        for half in 0..2 {
            let xh = xp.add(sb * QK_K + 128 * half);
            for part in 0..2 {
                let l = 16 * part;
                let ql0 = vld1q_u8(p.add(64 * half + l));
                let ql1 = vld1q_u8(p.add(64 * half + 32 + l));
                let qh = vld1q_u8(p.add(128 + 32 * half + l));
                let q = [
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                    vorrq_u8(
                        vandq_u8(ql1, m4),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m2)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m2)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                ];
                for (g, qg) in q.iter().enumerate() {
                    let signed = vsubq_s8(vreinterpretq_s8_u8(*qg), bias);
                    let s = mul16(i8x16_f32(signed), xh.add(32 * g + l));
                    let sc = *p.add(192 + 8 * half + part + 2 * g) as i8;
                    if g % 2 == 0 {
                        acc0 = vfmaq_n_f32(acc0, s, d * sc as f32);
                    } else {
                        acc1 = vfmaq_n_f32(acc1, s, d * sc as f32);
                    }
                }
            }
        }
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}
