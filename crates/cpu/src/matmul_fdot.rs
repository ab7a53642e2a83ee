//! `fdot`: quantised rows times f32 activations, dequantised in registers.
//!
//! The decode-time default. Each weight block is expanded to f32 inside SIMD
//! registers and multiplied with the activations as they are, so the result
//! differs from the reference (`gemv`: dequantise a row to memory, then dot)
//! only in float32 summation order. `vecdot` is faster per byte because it
//! quantises the activations to 8 bits (as llama.cpp does), but that rounding
//! moves logits by ~1e-2 and changes greedy continuations of real models;
//! `fdot` keeps token-for-token agreement with transformers at close to the
//! same memory traffic (weights are read once, in their block format).
//!
//! Offsets within a block follow ggml: Q4_0 `{d: f16, qs[16]}` with
//! `x = d * (q - 8)`; Q4_1 `{d: f16, m: f16, qs[16]}` with `x = d * q + m`;
//! Q8_0 `{d: f16, qs: [i8; 32]}` with `x = d * q`. Low nibbles hold elements
//! 0..16 of a block, high nibbles 16..32. Q4_K super-blocks (256 elements)
//! have 6-bit scales and mins per 32-element sub-block, `x = d*sc*q - dmin*m`,
//! each 32 bytes of nibbles holding two sub-blocks (low, then high nibbles).
//! Q5_0 adds a fifth bit per element from a 32-bit field (`x = d * (q - 16)`);
//! Q6_K has 6-bit signed quants (`q - 32`) with one i8 scale per 16 elements,
//! so its kernel needs no offset term. Q5_1 and Q5_K (Q5_K_M files) are Q4_1 and
//! Q4_K with the fifth bit. Q2_K and Q3_K (Q2_K/Q3_K_M files) decode per 16
//! values (`d sc q - dmin m`; `d (sc - 32) q` with a third bit from hmask).
//! AVX-512 has kernels for every block type here, AVX2 and NEON for all but
//! Q2_K/Q3_K; the rest
//! take the scalar kernel (exact too). These are the types of the common
//! Q4_K_M / Q5_0 mixes of real Qwen2.5 and Llama files. For the offset terms the per-block
//! sums of the activations are computed once per call.

use std::cell::RefCell;

use half::f16;
use metallic::error::{Error, Result};
use metallic_gguf::GgmlType;

use crate::linear::CpuLinear;
use crate::shared_out::SharedOut;

/// Elements per block of the nibble and 8-bit formats.
const QK: usize = 32;

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;
/// Bytes of a Q4_K super-block: d, dmin (f16), 12 bytes of packed 6-bit
/// scales and mins for its eight 32-element sub-blocks, 128 bytes of nibbles.
const Q4_K_BYTES: usize = 144;

/// Scale and min of sub-block `j` of a Q4_K super-block (ggml's `get_scale_min_k4`).
#[inline]
fn q4_k_scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// Per 64-element chunk `c` of a Q4_K super-block: the scales of its two
/// sub-blocks (low nibbles, then high nibbles) and the offset term
/// `-(dmin * m1 * sum(x1) + dmin * m2 * sum(x2))`.
#[inline]
pub(crate) fn q4_k_chunk(blk: &[u8], c: usize, xsum: &[f32]) -> (f32, f32, f32) {
    let d = f16_at(blk, 0);
    let dmin = f16_at(blk, 2);
    let (sc1, m1) = q4_k_scale_min(2 * c, &blk[4..16]);
    let (sc2, m2) = q4_k_scale_min(2 * c + 1, &blk[4..16]);
    let offset = -(dmin * m1 * xsum[2 * c] + dmin * m2 * xsum[2 * c + 1]);
    (d * sc1, d * sc2, offset)
}

/// Bytes of a Q6_K super-block: ql[128] (low nibbles), qh[64] (two high bits
/// each), scales[16] (i8, one per 16 elements), d (f16).
const Q6_K_BYTES: usize = 210;
/// Bytes of a Q5_0 block: d (f16), qh (32 fifth bits), qs[16] (nibbles).
const Q5_0_BYTES: usize = 22;
/// Bytes of a Q5_1 block: d, m (f16), qh (32 fifth bits), qs[16] (nibbles).
const Q5_1_BYTES: usize = 24;
/// Bytes of a Q5_K super-block: Q4_K's 16-byte header (d, dmin, 6-bit scales
/// and mins), qh[32] (fifth bits: bit 2c of byte l for element 64c + l, bit
/// 2c + 1 for 64c + 32 + l), then Q4_K's 128 bytes of nibbles.
const Q5_K_BYTES: usize = 176;

/// Bytes of a Q2_K super-block: scales[16] (4-bit scale, 4-bit min per 16
/// values), qs[64] (2-bit quants), d, dmin (f16).
const Q2_K_BYTES: usize = 84;
/// Bytes of a Q3_K super-block: hmask[32] (third bits), qs[64] (low 2 bits),
/// scales[12] (sixteen packed 6-bit scales), d (f16).
const Q3_K_BYTES: usize = 110;

/// Bytes ahead of the current block that the kernels prefetch.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;

/// Bytes ahead that the F16 and F32 row kernels prefetch. Further than the
/// block kernels' [`PREFETCH`]: a float row streams 2-4 bytes a value, and
/// on the development machine (Qwen2.5-0.5B F16 decode, `metallic bench -p
/// 0 -n 128 -t 2`, weights in huge pages, alternating) 4-8 KiB ran 5-8%
/// faster than 1 KiB, 16 KiB no faster than 8; the block kernels (Q4_K,
/// Q4_K_M files' output projections) ran ~2% slower at 8 KiB than at 1.
#[cfg(target_arch = "x86_64")]
const FLOAT_PREFETCH: usize = 8192;

/// Weight types with an `fdot` kernel.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q8_0
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::F16
            | GgmlType::F32
    )
}

/// Whether `k` columns can run: block formats need whole blocks.
pub fn supports_k(ty: GgmlType, k: usize) -> bool {
    match ty {
        GgmlType::F16 | GgmlType::F32 => true,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q2_K | GgmlType::Q3_K => {
            k.is_multiple_of(QK_K)
        }
        _ => k.is_multiple_of(QK),
    }
}

thread_local! {
    /// Per-thread scratch for the activations' block sums, reused across calls.
    static XSUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[m, n] = x[m, k] * w^T + bias`.
pub fn fdot(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let (n, k) = crate::matmul::check_buffers(x, w, m, out)?;
    // A fused projection of llama.cpp's mixes can hold parts of several types
    // (Q3_K_M's Q4_0 query next to a Q5_1 value part): parts without a kernel
    // take the reference row dot, so one part never fails the whole product.
    for p in &w.parts {
        if !(supported(p.ty) && supports_k(p.ty, k) || metallic_gguf::quant::can_dequantize(p.ty)) {
            return Err(Error::InvalidArgument(format!(
                "fdot cannot read {} rows with k={k}",
                p.ty.name()
            )));
        }
    }
    // CPU features do not change while the process runs: detect them once.
    static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    let kernels = *KERNELS.get_or_init(Kernels::detect);
    let nb = k / QK;
    XSUM.with(|cell| -> Result<()> {
        let mut xsum = cell.borrow_mut();
        xsum.clear();
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            xsum.extend((0..nb).map(|b| row[b * QK..(b + 1) * QK].iter().sum::<f32>()));
        }
        let xsum: &[f32] = &xsum;
        let optr = SharedOut::new(out);
        let split = crate::matmul::split(w, m, crate::matmul::threads());
        crate::matmul::try_for_each_task(split, n, |rows| {
            for r in rows {
                let (part, pr) = w.locate(r).expect("row within n");
                let bytes = part.row(pr);
                let b = w.bias.as_ref().map_or(0.0, |b| b[r]);
                let kernel = supported(part.ty) && supports_k(part.ty, k);
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    let si = &xsum[i * nb..(i + 1) * nb];
                    let v = if kernel {
                        kernels.dot(part.ty, bytes, xi, si)
                    } else {
                        reference_dot(part.ty, bytes, xi)
                    } + b;
                    // SAFETY: row r is in this task's range only; i * n + r < m * n <= out.len().
                    unsafe { *optr.ptr().add(i * n + r) = v };
                }
            }
            Ok(())
        })
    })
}

thread_local! {
    /// Per-thread scratch for a row dequantised by [`reference_dot`].
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The dot of a row without an `fdot` kernel: dequantised to f32 by the
/// reference, then multiplied (the `gemv` arithmetic).
fn reference_dot(ty: GgmlType, bytes: &[u8], x: &[f32]) -> f32 {
    ROW.with(|cell| {
        let mut row = cell.borrow_mut();
        row.clear();
        row.resize(x.len(), 0.0);
        // fdot() checked that the type dequantises and the row holds whole blocks.
        if metallic_gguf::quant::dequantize(ty, bytes, &mut row).is_err() {
            return f32::NAN;
        }
        row.iter().zip(x).map(|(a, b)| a * b).sum()
    })
}

#[derive(Clone, Copy)]
struct Kernels {
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
    #[cfg(target_arch = "x86_64")]
    avx512: bool,
    #[cfg(target_arch = "aarch64")]
    neon: bool,
}

impl Kernels {
    /// What this CPU runs, capped by `METALLIC_CPU_SIMD` where it is set (as
    /// `vecdot`'s kernels are: to test or measure a lower level).
    fn detect() -> Kernels {
        #[allow(unused_mut)]
        let mut k = Kernels::detect_cpu();
        if std::env::var_os("METALLIC_CPU_SIMD").is_some() {
            #[allow(unused_variables)]
            let level = crate::vec_dot::kernels().level();
            #[cfg(target_arch = "x86_64")]
            {
                k.avx512 &= level >= crate::vec_dot::SimdLevel::Avx512;
                k.avx2 &= level >= crate::vec_dot::SimdLevel::Avx2;
            }
            #[cfg(target_arch = "aarch64")]
            {
                k.neon &= level >= crate::vec_dot::SimdLevel::Neon;
            }
        }
        k
    }

    fn detect_cpu() -> Kernels {
        Kernels {
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            avx512: std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "aarch64")]
            neon: std::arch::is_aarch64_feature_detected!("neon"),
        }
    }

    /// AVX2 even where AVX-512 exists, for testing one against the other.
    #[cfg(test)]
    fn avx2_only() -> Kernels {
        Kernels {
            #[cfg(target_arch = "x86_64")]
            avx512: false,
            ..Kernels::detect()
        }
    }

    /// Scalar kernels only, for testing them against the SIMD ones.
    #[cfg(test)]
    fn scalar() -> Kernels {
        Kernels {
            #[cfg(target_arch = "x86_64")]
            avx2: false,
            #[cfg(target_arch = "x86_64")]
            avx512: false,
            #[cfg(target_arch = "aarch64")]
            neon: false,
        }
    }

    #[inline]
    fn dot(self, ty: GgmlType, w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: the CPU has AVX-512F and F16C (checked in `detect`); the row
            // holds k / 32 blocks of `ty` (checked by the caller).
            return unsafe { avx512::dot(ty, w, x, xsum) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked in `detect`), and the
            // row holds k / block elements of `ty` (checked by the caller).
            return unsafe { avx2::dot(ty, w, x, xsum) };
        }
        #[cfg(target_arch = "aarch64")]
        if self.neon {
            // SAFETY: the CPU has NEON (checked in `detect`); the row holds
            // k / block elements of `ty` and `xsum` one sum per 32 (caller).
            return unsafe {
                match ty {
                    GgmlType::F32 => crate::neon::f32_row(w, x),
                    GgmlType::F16 => crate::neon::f16_row(w, x),
                    GgmlType::Q8_0 => crate::neon::fdot_q8_0(w, x),
                    GgmlType::Q4_0 => crate::neon::fdot_q4(w, x, xsum, false),
                    GgmlType::Q4_1 => crate::neon::fdot_q4(w, x, xsum, true),
                    GgmlType::Q5_0 => crate::neon::fdot_q5_0(w, x, xsum),
                    GgmlType::Q5_1 => crate::neon::fdot_q5_1(w, x, xsum),
                    GgmlType::Q5_K => crate::neon::fdot_q5_k(w, x, xsum),
                    GgmlType::Q4_K => crate::neon::fdot_q4_k(w, x, xsum),
                    GgmlType::Q6_K => crate::neon::fdot_q6_k(w, x),
                    _ => scalar::dot(ty, w, x, xsum),
                }
            };
        }
        scalar::dot(ty, w, x, xsum)
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

mod scalar {
    use super::*;

    pub fn dot(ty: GgmlType, w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        match ty {
            GgmlType::F32 => w
                .chunks_exact(4)
                .zip(x)
                .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
                .sum(),
            GgmlType::F16 => w
                .chunks_exact(2)
                .zip(x)
                .map(|(b, &v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v)
                .sum(),
            GgmlType::Q8_0 => {
                let mut acc = 0.0f32;
                for (b, blk) in w.chunks_exact(34).enumerate() {
                    let xb = &x[b * QK..(b + 1) * QK];
                    let s: f32 = blk[2..]
                        .iter()
                        .zip(xb)
                        .map(|(&q, &v)| q as i8 as f32 * v)
                        .sum();
                    acc += f16_at(blk, 0) * s;
                }
                acc
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let (size, qs) = if ty == GgmlType::Q4_0 {
                    (18, 2)
                } else {
                    (20, 4)
                };
                let mut acc = 0.0f32;
                for (b, blk) in w.chunks_exact(size).enumerate() {
                    let xb = &x[b * QK..(b + 1) * QK];
                    let mut s = 0.0f32;
                    for j in 0..16 {
                        let q = blk[qs + j];
                        s += (q & 0x0F) as f32 * xb[j] + (q >> 4) as f32 * xb[j + 16];
                    }
                    let d = f16_at(blk, 0);
                    let offset = if ty == GgmlType::Q4_0 {
                        -8.0 * d
                    } else {
                        f16_at(blk, 2)
                    };
                    acc += d * s + offset * xsum[b];
                }
                acc
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // Q5_0: d, 4 bytes of high bits, nibbles, offset -16 d;
                // Q5_1: d, m, 4 bytes of high bits, nibbles, offset m.
                let (block, head) = if ty == GgmlType::Q5_0 {
                    (Q5_0_BYTES, 2)
                } else {
                    (Q5_1_BYTES, 4)
                };
                let mut acc = 0.0f32;
                for (b, blk) in w.chunks_exact(block).enumerate() {
                    let xb = &x[b * QK..(b + 1) * QK];
                    let qh = u32::from_le_bytes([
                        blk[head],
                        blk[head + 1],
                        blk[head + 2],
                        blk[head + 3],
                    ]);
                    let mut s = 0.0f32;
                    for j in 0..16 {
                        let q = blk[head + 4 + j];
                        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
                        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                        s += lo as f32 * xb[j] + hi as f32 * xb[j + 16];
                    }
                    let d = f16_at(blk, 0);
                    let offset = if ty == GgmlType::Q5_0 {
                        -16.0 * d
                    } else {
                        f16_at(blk, 2)
                    };
                    acc += d * s + offset * xsum[b];
                }
                acc
            }
            GgmlType::Q5_K => {
                let mut acc = 0.0f32;
                for (sb, blk) in w.chunks_exact(Q5_K_BYTES).enumerate() {
                    let xs = &xsum[sb * 8..(sb + 1) * 8];
                    let qh = &blk[16..48];
                    for c in 0..4 {
                        // The header is laid out as Q4_K's.
                        let (d1, d2, offset) = q4_k_chunk(blk, c, xs);
                        let q = &blk[48 + 32 * c..48 + 32 * (c + 1)];
                        let xb = &x[sb * QK_K + 64 * c..sb * QK_K + 64 * (c + 1)];
                        let (mut s1, mut s2) = (0.0f32, 0.0f32);
                        for l in 0..32 {
                            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
                            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
                            s1 += ((q[l] & 0x0F) | h1) as f32 * xb[l];
                            s2 += ((q[l] >> 4) | h2) as f32 * xb[32 + l];
                        }
                        acc += d1 * s1 + d2 * s2 + offset;
                    }
                }
                acc
            }
            GgmlType::Q6_K => {
                let mut acc = 0.0f32;
                for (sb, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
                    let d = f16_at(blk, 208);
                    for half in 0..2 {
                        let ql = &blk[64 * half..64 * half + 64];
                        let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                        let sc = &blk[192 + 8 * half..192 + 8 * half + 8];
                        let xh = &x[sb * QK_K + 128 * half..sb * QK_K + 128 * (half + 1)];
                        let mut sums = [0.0f32; 8];
                        for l in 0..32 {
                            let is = l / 16;
                            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                            sums[is] += q1 as f32 * xh[l];
                            sums[is + 2] += q2 as f32 * xh[l + 32];
                            sums[is + 4] += q3 as f32 * xh[l + 64];
                            sums[is + 6] += q4 as f32 * xh[l + 96];
                        }
                        for (i, s) in sums.iter().enumerate() {
                            acc += d * (sc[i] as i8) as f32 * s;
                        }
                    }
                }
                acc
            }
            GgmlType::Q4_K => {
                let mut acc = 0.0f32;
                for (sb, blk) in w.chunks_exact(Q4_K_BYTES).enumerate() {
                    let xs = &xsum[sb * 8..(sb + 1) * 8];
                    for c in 0..4 {
                        let (d1, d2, offset) = q4_k_chunk(blk, c, xs);
                        let q = &blk[16 + 32 * c..16 + 32 * (c + 1)];
                        let xb = &x[sb * QK_K + 64 * c..sb * QK_K + 64 * (c + 1)];
                        let (mut s1, mut s2) = (0.0f32, 0.0f32);
                        for l in 0..32 {
                            s1 += (q[l] & 0x0F) as f32 * xb[l];
                            s2 += (q[l] >> 4) as f32 * xb[32 + l];
                        }
                        acc += d1 * s1 + d2 * s2 + offset;
                    }
                }
                acc
            }
            GgmlType::Q2_K | GgmlType::Q3_K => {
                // Each super-block dequantised by the reference, then dotted:
                // the `gemv` values, without a row-sized buffer.
                let mut deq = [0.0f32; QK_K];
                let size = if ty == GgmlType::Q2_K {
                    Q2_K_BYTES
                } else {
                    Q3_K_BYTES
                };
                let mut acc = 0.0f32;
                for (sb, blk) in w.chunks_exact(size).enumerate() {
                    if metallic_gguf::quant::dequantize(ty, blk, &mut deq).is_err() {
                        return f32::NAN;
                    }
                    let xb = &x[sb * QK_K..(sb + 1) * QK_K];
                    acc += deq.iter().zip(xb).map(|(a, b)| a * b).sum::<f32>();
                }
                acc
            }
            _ => unreachable!("fdot checks types before running"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Multipliers of `[d, m, _, _]` giving a nibble block's offset term:
    /// Q4_0 `-8 d * sum(x)`, Q4_1 `m * sum(x)`. Kept in a vector so the scales
    /// are loaded as one 32-bit value (see [`h2`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn offset_coefs(q4_0: bool, xsum: f32) -> __m128 {
        // Q4_0's lane 1 holds quants, not a scale: it must meet an exact zero
        // (0 * inf would be NaN), hence the `keep` mask in the callers.
        if q4_0 {
            _mm_setr_ps(-8.0 * xsum, 0.0, 0.0, 0.0)
        } else {
            _mm_setr_ps(0.0, xsum, 0.0, 0.0)
        }
    }

    /// Mask of the lanes of `[d, m, _, _]` that hold scales: Q4_0 has no m.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_lanes(q4_0: bool) -> __m128 {
        _mm_castsi128_ps(if q4_0 {
            _mm_setr_epi32(-1, 0, 0, 0)
        } else {
            _mm_setr_epi32(-1, -1, 0, 0)
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn lanes01(v: __m128) -> f32 {
        _mm_cvtss_f32(v) + _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1))
    }

    /// Eight bytes as unsigned integers, to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// Eight bytes as signed integers, to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn i8x8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// `s + v[0..16] * x[0..16]`, the bytes of `v` taken as unsigned integers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot16(v: __m128i, x: *const f32, s: __m256) -> __m256 {
        let s = _mm256_fmadd_ps(u8x8(v), _mm256_loadu_ps(x), s);
        _mm256_fmadd_ps(u8x8(_mm_srli_si128(v, 8)), _mm256_loadu_ps(x.add(8)), s)
    }

    /// 0x10 in byte j where bit j of `bits` is set: Q5_0/Q5_1's fifth bits
    /// for 16 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fifth_bits(bits: u16) -> __m128i {
        // Byte j takes byte j / 8 of `bits`, then tests bit j % 8 of it.
        let spread = _mm_shuffle_epi8(
            _mm_cvtsi32_si128(bits as i32),
            _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        );
        let sel = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
        let set = _mm_cmpeq_epi8(_mm_and_si128(spread, sel), sel);
        _mm_and_si128(set, _mm_set1_epi8(0x10))
    }

    /// The f16 at byte `at`, converted by the F16C instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn h(b: &[u8], at: usize) -> f32 {
        _mm_cvtss_f32(h2(b, at))
    }

    /// The two f16 at bytes `at..at + 4` (d and m of a Q4_1 block; d and the first
    /// quants of the other formats). A 32-bit load goes into a fresh register: a
    /// 16-bit insert would merge into, and so wait for, whatever held it before.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn h2(b: &[u8], at: usize) -> __m128 {
        let v = i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        _mm_cvtph_ps(_mm_cvtsi32_si128(v))
    }

    /// Q5_0 / Q5_1 rows, one kernel per type (the constant takes the
    /// per-block choices out of the loop).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_blocks<const Q5_0: bool>(w: &[u8], xp: *const f32, xsum: &[f32]) -> f32 {
        // Q5_0: d, qh, nibbles, offset -16 d; Q5_1: d, m, qh, nibbles, offset m.
        let (size, head) = if Q5_0 {
            (Q5_0_BYTES, 2)
        } else {
            (Q5_1_BYTES, 4)
        };
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0.0f32;
        for (b, blk) in w.chunks_exact(size).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
            let qh = u32::from_le_bytes([blk[head], blk[head + 1], blk[head + 2], blk[head + 3]]);
            let raw = _mm_loadu_si128(blk.as_ptr().add(head + 4) as *const __m128i);
            let lo = _mm_or_si128(_mm_and_si128(raw, mask), fifth_bits(qh as u16));
            let hi = _mm_or_si128(
                _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
                fifth_bits((qh >> 16) as u16),
            );
            let xb = xp.add(b * QK);
            let s = dot16(hi, xb.add(16), dot16(lo, xb, _mm256_setzero_ps()));
            // The `half` conversion, as in the AVX-512 twin (F16C's was slower there).
            let d = f16_at(blk, 0);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
            offsets += if Q5_0 { -16.0 * d } else { f16_at(blk, 2) } * xsum[b];
        }
        hsum(acc) + offsets
    }

    /// Q4_K (`FIVE` false) and Q5_K rows: per 64-value chunk two sub-blocks
    /// (low, then high nibbles) with the scales and offset of `q4_k_chunk`;
    /// Q5_K adds bit 2c / 2c + 1 of qh[l] as the fifth bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn k45_blocks<const FIVE: bool>(w: &[u8], xp: *const f32, xsum: &[f32]) -> f32 {
        let (size, qs_at) = if FIVE {
            (Q5_K_BYTES, 48)
        } else {
            (Q4_K_BYTES, 16)
        };
        let mask = _mm_set1_epi8(0x0F);
        let fifth = _mm_set1_epi8(0x10);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut offsets = 0.0f32;
        for (sb, blk) in w.chunks_exact(size).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8);
            if FIVE {
                _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH + 128) as *const i8);
            }
            let xs = &xsum[sb * 8..(sb + 1) * 8];
            // Q4_K has no qh: its first quants stand in, unused.
            let qh0 = _mm_loadu_si128(blk.as_ptr().add(16) as *const __m128i);
            let qh1 = _mm_loadu_si128(blk.as_ptr().add(32) as *const __m128i);
            for c in 0..4 {
                let (d1, d2, offset) = q4_k_chunk(blk, c, xs);
                offsets += offset;
                let q = blk.as_ptr().add(qs_at + 32 * c);
                let b0 = _mm_loadu_si128(q as *const __m128i);
                let b1 = _mm_loadu_si128(q.add(16) as *const __m128i);
                let bl = _mm_set1_epi8((1u8 << (2 * c)) as i8);
                let bh = _mm_set1_epi8((2u8 << (2 * c)) as i8);
                // 0x10 where the byte of qh has the bit.
                let five = |nib: __m128i, qh: __m128i, bit: __m128i| {
                    if !FIVE {
                        return nib;
                    }
                    let set = _mm_cmpeq_epi8(_mm_and_si128(qh, bit), bit);
                    _mm_or_si128(nib, _mm_and_si128(set, fifth))
                };
                let lo0 = five(_mm_and_si128(b0, mask), qh0, bl);
                let lo1 = five(_mm_and_si128(b1, mask), qh1, bl);
                let hi0 = five(_mm_and_si128(_mm_srli_epi16(b0, 4), mask), qh0, bh);
                let hi1 = five(_mm_and_si128(_mm_srli_epi16(b1, 4), mask), qh1, bh);
                let xb = xp.add(sb * QK_K + 64 * c);
                let s1 = dot16(lo1, xb.add(16), dot16(lo0, xb, _mm256_setzero_ps()));
                let s2 = dot16(hi1, xb.add(48), dot16(hi0, xb.add(32), _mm256_setzero_ps()));
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(d1), s1, a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(d2), s2, a1);
            }
        }
        hsum(_mm256_add_ps(a0, a1)) + offsets
    }

    /// Q6_K rows: as the AVX-512 kernel, eight lanes wide.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_blocks(w: &[u8], xp: *const f32) -> f32 {
        let m4 = _mm_set1_epi8(0x0F);
        let m2 = _mm_set1_epi8(0x03);
        let bias = _mm_set1_epi8(32);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (sb, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH + 128) as *const i8);
            let d = f16_at(blk, 208);
            let p = blk.as_ptr();
            for half in 0..2 {
                let xh = xp.add(sb * QK_K + 128 * half);
                for part in 0..2 {
                    // Elements l = 16 * part .. 16 * part + 16 of each quarter.
                    let l = 16 * part;
                    let ql0 = _mm_loadu_si128(p.add(64 * half + l) as *const __m128i);
                    let ql1 = _mm_loadu_si128(p.add(64 * half + 32 + l) as *const __m128i);
                    let qh = _mm_loadu_si128(p.add(128 + 32 * half + l) as *const __m128i);
                    let hb = |v: __m128i| _mm_slli_epi16(_mm_and_si128(v, m2), 4);
                    let q = [
                        _mm_or_si128(_mm_and_si128(ql0, m4), hb(qh)),
                        _mm_or_si128(_mm_and_si128(ql1, m4), hb(_mm_srli_epi16(qh, 2))),
                        _mm_or_si128(
                            _mm_and_si128(_mm_srli_epi16(ql0, 4), m4),
                            hb(_mm_srli_epi16(qh, 4)),
                        ),
                        _mm_or_si128(
                            _mm_and_si128(_mm_srli_epi16(ql1, 4), m4),
                            hb(_mm_srli_epi16(qh, 6)),
                        ),
                    ];
                    for (g, qg) in q.iter().enumerate() {
                        let signed = _mm_sub_epi8(*qg, bias);
                        let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(signed));
                        let w1 =
                            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(signed, 8)));
                        let xv = xh.add(32 * g + l);
                        let s = _mm256_mul_ps(w0, _mm256_loadu_ps(xv));
                        let s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xv.add(8)), s);
                        let sc = *p.add(192 + 8 * half + part + 2 * g) as i8;
                        let scale = _mm256_set1_ps(d * sc as f32);
                        if g % 2 == 0 {
                            a0 = _mm256_fmadd_ps(scale, s, a0);
                        } else {
                            a1 = _mm256_fmadd_ps(scale, s, a1);
                        }
                    }
                }
            }
        }
        hsum(_mm256_add_ps(a0, a1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(ty: GgmlType, w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        let xp = x.as_ptr();
        match ty {
            GgmlType::F32 | GgmlType::F16 => {
                let k = x.len();
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut j = 0;
                let esz = if ty == GgmlType::F32 { 4 } else { 2 };
                while j + 16 <= k {
                    // A line a step: the F32 step's one line, the F16 step's
                    // half line (every line twice: a second prefetch of a line
                    // costs next to nothing). Past the row's end it reaches
                    // the next rows, as the AVX-512 kernel's does.
                    let at = w.as_ptr().wrapping_add(j * esz + FLOAT_PREFETCH);
                    _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                    let (w0, w1) = if ty == GgmlType::F32 {
                        let p = w.as_ptr().add(j * 4) as *const f32;
                        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                    } else {
                        let p = w.as_ptr().add(j * 2) as *const __m128i;
                        (
                            _mm256_cvtph_ps(_mm_loadu_si128(p)),
                            _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                        )
                    };
                    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(j)), a0);
                    a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(j + 8)), a1);
                    j += 16;
                }
                let mut s = hsum(_mm256_add_ps(a0, a1));
                s += scalar::dot(ty, &w[j * esz..], &x[j..], &[]);
                s
            }
            GgmlType::Q8_0 => {
                let mut acc = _mm256_setzero_ps();
                for (b, blk) in w.chunks_exact(34).enumerate() {
                    let q = blk.as_ptr().add(2);
                    let xb = xp.add(b * QK);
                    let mut s = _mm256_mul_ps(i8x8(q), _mm256_loadu_ps(xb));
                    s = _mm256_fmadd_ps(i8x8(q.add(8)), _mm256_loadu_ps(xb.add(8)), s);
                    s = _mm256_fmadd_ps(i8x8(q.add(16)), _mm256_loadu_ps(xb.add(16)), s);
                    s = _mm256_fmadd_ps(i8x8(q.add(24)), _mm256_loadu_ps(xb.add(24)), s);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(h(blk, 0)), s, acc);
                }
                hsum(acc)
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let q4_0 = ty == GgmlType::Q4_0;
                let (size, qs) = if q4_0 { (18, 2) } else { (20, 4) };
                let mask = _mm_set1_epi8(0x0F);
                let mut acc = _mm256_setzero_ps();
                let mut offsets = _mm_setzero_ps();
                let keep = scale_lanes(q4_0);
                for (b, blk) in w.chunks_exact(size).enumerate() {
                    let raw = _mm_loadu_si128(blk.as_ptr().add(qs) as *const __m128i);
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let xb = xp.add(b * QK);
                    let mut s = _mm256_mul_ps(u8x8(lo), _mm256_loadu_ps(xb));
                    s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xb.add(8)), s);
                    s = _mm256_fmadd_ps(u8x8(hi), _mm256_loadu_ps(xb.add(16)), s);
                    s = _mm256_fmadd_ps(
                        u8x8(_mm_srli_si128(hi, 8)),
                        _mm256_loadu_ps(xb.add(24)),
                        s,
                    );
                    let dm = _mm_and_ps(h2(blk, 0), keep);
                    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), s, acc);
                    offsets = _mm_fmadd_ps(dm, offset_coefs(q4_0, xsum[b]), offsets);
                }
                hsum(acc) + lanes01(offsets)
            }
            GgmlType::Q5_0 => q5_blocks::<true>(w, xp, xsum),
            GgmlType::Q5_1 => q5_blocks::<false>(w, xp, xsum),
            GgmlType::Q4_K => k45_blocks::<false>(w, xp, xsum),
            GgmlType::Q5_K => k45_blocks::<true>(w, xp, xsum),
            GgmlType::Q6_K => q6_k_blocks(w, xp),
            // No AVX2 kernel for Q2_K and Q3_K: the scalar one is exact too.
            GgmlType::Q2_K | GgmlType::Q3_K => scalar::dot(ty, w, x, xsum),
            _ => unreachable!("fdot checks types before running"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{h, h2, lanes01, offset_coefs, scale_lanes};
    use super::*;

    /// Sixteen bytes as unsigned integers, to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn u8x16(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
    }

    /// Sixteen bytes as signed integers, to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn i8x16(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// Q5_0 / Q5_1 rows, one kernel per type (the constant takes the
    /// per-block choices out of the loop).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q5_blocks<const Q5_0: bool>(w: &[u8], xp: *const f32, xsum: &[f32]) -> f32 {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        // Q5_0: d, qh, nibbles, offset -16 d; Q5_1: d, m, qh, nibbles, offset m.
        let (size, head) = if Q5_0 {
            (Q5_0_BYTES, 2)
        } else {
            (Q5_1_BYTES, 4)
        };
        let mask = _mm_set1_epi8(0x0F);
        let fifth = _mm_set1_epi8(0x10);
        let mut offsets = 0.0f32;
        for (b, blk) in w.chunks_exact(size).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
            let qh = u32::from_le_bytes([blk[head], blk[head + 1], blk[head + 2], blk[head + 3]]);
            let raw = _mm_loadu_si128(blk.as_ptr().add(head + 4) as *const __m128i);
            // Bit j of qh is the fifth bit of element j (0..32).
            let lo = _mm_or_si128(
                _mm_and_si128(raw, mask),
                _mm_maskz_mov_epi8(qh as u16, fifth),
            );
            let hi = _mm_or_si128(
                _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
                _mm_maskz_mov_epi8((qh >> 16) as u16, fifth),
            );
            let xb = xp.add(b * QK);
            let s = _mm512_mul_ps(u8x16(lo), _mm512_loadu_ps(xb));
            let s = _mm512_fmadd_ps(u8x16(hi), _mm512_loadu_ps(xb.add(16)), s);
            // The `half` conversion: F16C's (`h`) made this loop 1.5x slower
            // (metallic probe --dtype q5_0, one thread, development machine).
            let d = f16_at(blk, 0);
            if b % 2 == 0 {
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(d), s, a0);
            } else {
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(d), s, a1);
            }
            offsets += if Q5_0 { -16.0 * d } else { f16_at(blk, 2) } * xsum[b];
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + offsets
    }

    /// F16 and F32 rows: 64 values a step into four accumulators (the FMA
    /// latency of one chain would cap a core below its memory bandwidth),
    /// prefetching [`FLOAT_PREFETCH`] bytes ahead across row ends as the block
    /// kernels do; the tail of fewer than 64 values in 16s, then scalar.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn float_row(f16: bool, w: &[u8], x: &[f32]) -> f32 {
        let (k, xp, wp) = (x.len(), x.as_ptr(), w.as_ptr());
        let esz = if f16 { 2 } else { 4 };
        let load = |j: usize| -> __m512 {
            if f16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(j * 2) as *const __m256i))
            } else {
                _mm512_loadu_ps(wp.add(j * 4) as *const f32)
            }
        };
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j + 64 <= k {
            let at = wp.wrapping_add(j * esz + FLOAT_PREFETCH);
            _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64) as *const i8);
            if !f16 {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(128) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(192) as *const i8);
            }
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(load(j + 16 * i), _mm512_loadu_ps(xp.add(j + 16 * i)), *a);
            }
            j += 64;
        }
        while j + 16 <= k {
            acc[0] = _mm512_fmadd_ps(load(j), _mm512_loadu_ps(xp.add(j)), acc[0]);
            j += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let ty = if f16 { GgmlType::F16 } else { GgmlType::F32 };
        _mm512_reduce_add_ps(sum) + scalar::dot(ty, &w[j * esz..], &x[j..], &[])
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn dot(ty: GgmlType, w: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        let xp = x.as_ptr();
        // Two accumulators hide the FMA latency across blocks.
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        match ty {
            GgmlType::F16 => float_row(true, w, x),
            GgmlType::F32 => float_row(false, w, x),
            GgmlType::Q8_0 => {
                for (b, blk) in w.chunks_exact(34).enumerate() {
                    let q = blk.as_ptr().add(2);
                    let xb = xp.add(b * QK);
                    let s = _mm512_mul_ps(i8x16(q), _mm512_loadu_ps(xb));
                    let s = _mm512_fmadd_ps(i8x16(q.add(16)), _mm512_loadu_ps(xb.add(16)), s);
                    let d = _mm512_set1_ps(h(blk, 0));
                    if b % 2 == 0 {
                        a0 = _mm512_fmadd_ps(d, s, a0);
                    } else {
                        a1 = _mm512_fmadd_ps(d, s, a1);
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let q4_0 = ty == GgmlType::Q4_0;
                let (size, qs) = if q4_0 { (18, 2) } else { (20, 4) };
                let mask = _mm_set1_epi8(0x0F);
                let mut offsets = _mm_setzero_ps();
                let keep = scale_lanes(q4_0);
                for (b, blk) in w.chunks_exact(size).enumerate() {
                    // Rows are short (18 blocks at k = 576): prefetch ahead across row ends.
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    let raw = _mm_loadu_si128(blk.as_ptr().add(qs) as *const __m128i);
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let xb = xp.add(b * QK);
                    let s = _mm512_mul_ps(u8x16(lo), _mm512_loadu_ps(xb));
                    let s = _mm512_fmadd_ps(u8x16(hi), _mm512_loadu_ps(xb.add(16)), s);
                    let dm = _mm_and_ps(h2(blk, 0), keep);
                    let d = _mm512_broadcastss_ps(dm);
                    if b % 2 == 0 {
                        a0 = _mm512_fmadd_ps(d, s, a0);
                    } else {
                        a1 = _mm512_fmadd_ps(d, s, a1);
                    }
                    offsets = _mm_fmadd_ps(dm, offset_coefs(q4_0, xsum[b]), offsets);
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + lanes01(offsets)
            }
            GgmlType::Q4_K => {
                let mask = _mm_set1_epi8(0x0F);
                let mut offsets = 0.0f32;
                for (sb, blk) in w.chunks_exact(Q4_K_BYTES).enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8
                    );
                    let xs = &xsum[sb * 8..(sb + 1) * 8];
                    for c in 0..4 {
                        let (d1, d2, offset) = q4_k_chunk(blk, c, xs);
                        offsets += offset;
                        let q = blk.as_ptr().add(16 + 32 * c);
                        let b0 = _mm_loadu_si128(q as *const __m128i);
                        let b1 = _mm_loadu_si128(q.add(16) as *const __m128i);
                        let xb = xp.add(sb * QK_K + 64 * c);
                        let lo0 = u8x16(_mm_and_si128(b0, mask));
                        let lo1 = u8x16(_mm_and_si128(b1, mask));
                        let hi0 = u8x16(_mm_and_si128(_mm_srli_epi16(b0, 4), mask));
                        let hi1 = u8x16(_mm_and_si128(_mm_srli_epi16(b1, 4), mask));
                        let s1 = _mm512_mul_ps(lo0, _mm512_loadu_ps(xb));
                        let s1 = _mm512_fmadd_ps(lo1, _mm512_loadu_ps(xb.add(16)), s1);
                        let s2 = _mm512_mul_ps(hi0, _mm512_loadu_ps(xb.add(32)));
                        let s2 = _mm512_fmadd_ps(hi1, _mm512_loadu_ps(xb.add(48)), s2);
                        a0 = _mm512_fmadd_ps(_mm512_set1_ps(d1), s1, a0);
                        a1 = _mm512_fmadd_ps(_mm512_set1_ps(d2), s2, a1);
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + offsets
            }
            GgmlType::Q5_0 => q5_blocks::<true>(w, xp, xsum),
            GgmlType::Q5_1 => q5_blocks::<false>(w, xp, xsum),
            GgmlType::Q5_K => {
                // Q4_K's kernel with the fifth bits: bit 2c (low nibbles) and
                // 2c + 1 (high nibbles) of qh[l] for element l of chunk c.
                let mask = _mm_set1_epi8(0x0F);
                let fifth = _mm_set1_epi8(0x10);
                let mut offsets = 0.0f32;
                for (sb, blk) in w.chunks_exact(Q5_K_BYTES).enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8
                    );
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 128) as *const i8
                    );
                    let xs = &xsum[sb * 8..(sb + 1) * 8];
                    let qh0 = _mm_loadu_si128(blk.as_ptr().add(16) as *const __m128i);
                    let qh1 = _mm_loadu_si128(blk.as_ptr().add(32) as *const __m128i);
                    for c in 0..4 {
                        let (d1, d2, offset) = q4_k_chunk(blk, c, xs);
                        offsets += offset;
                        let q = blk.as_ptr().add(48 + 32 * c);
                        let b0 = _mm_loadu_si128(q as *const __m128i);
                        let b1 = _mm_loadu_si128(q.add(16) as *const __m128i);
                        let bl = _mm_set1_epi8((1u8 << (2 * c)) as i8);
                        let bh = _mm_set1_epi8((2u8 << (2 * c)) as i8);
                        let five = |nib: __m128i, qh: __m128i, bit: __m128i| {
                            u8x16(_mm_or_si128(
                                nib,
                                _mm_maskz_mov_epi8(_mm_test_epi8_mask(qh, bit), fifth),
                            ))
                        };
                        let lo0 = five(_mm_and_si128(b0, mask), qh0, bl);
                        let lo1 = five(_mm_and_si128(b1, mask), qh1, bl);
                        let hi0 = five(_mm_and_si128(_mm_srli_epi16(b0, 4), mask), qh0, bh);
                        let hi1 = five(_mm_and_si128(_mm_srli_epi16(b1, 4), mask), qh1, bh);
                        let xb = xp.add(sb * QK_K + 64 * c);
                        let s1 = _mm512_mul_ps(lo0, _mm512_loadu_ps(xb));
                        let s1 = _mm512_fmadd_ps(lo1, _mm512_loadu_ps(xb.add(16)), s1);
                        let s2 = _mm512_mul_ps(hi0, _mm512_loadu_ps(xb.add(32)));
                        let s2 = _mm512_fmadd_ps(hi1, _mm512_loadu_ps(xb.add(48)), s2);
                        a0 = _mm512_fmadd_ps(_mm512_set1_ps(d1), s1, a0);
                        a1 = _mm512_fmadd_ps(_mm512_set1_ps(d2), s2, a1);
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + offsets
            }
            GgmlType::Q6_K => {
                let m4 = _mm_set1_epi8(0x0F);
                let m2 = _mm_set1_epi8(0x03);
                let bias = _mm_set1_epi8(32);
                for (sb, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8
                    );
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 128) as *const i8
                    );
                    let d = f16_at(blk, 208);
                    let p = blk.as_ptr();
                    for half in 0..2 {
                        let xh = xp.add(sb * QK_K + 128 * half);
                        for part in 0..2 {
                            // Elements l = 16 * part .. 16 * part + 16 of each quarter.
                            let l = 16 * part;
                            let ql0 = _mm_loadu_si128(p.add(64 * half + l) as *const __m128i);
                            let ql1 = _mm_loadu_si128(p.add(64 * half + 32 + l) as *const __m128i);
                            let qh = _mm_loadu_si128(p.add(128 + 32 * half + l) as *const __m128i);
                            let hb = |shift: i32| -> __m128i {
                                let v = match shift {
                                    0 => qh,
                                    2 => _mm_srli_epi16(qh, 2),
                                    4 => _mm_srli_epi16(qh, 4),
                                    _ => _mm_srli_epi16(qh, 6),
                                };
                                _mm_slli_epi16(_mm_and_si128(v, m2), 4)
                            };
                            let q = [
                                _mm_or_si128(_mm_and_si128(ql0, m4), hb(0)),
                                _mm_or_si128(_mm_and_si128(ql1, m4), hb(2)),
                                _mm_or_si128(_mm_and_si128(_mm_srli_epi16(ql0, 4), m4), hb(4)),
                                _mm_or_si128(_mm_and_si128(_mm_srli_epi16(ql1, 4), m4), hb(6)),
                            ];
                            for (g, qg) in q.iter().enumerate() {
                                let signed = _mm_sub_epi8(*qg, bias);
                                let wq = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(signed));
                                let sc = *p.add(192 + 8 * half + part + 2 * g) as i8;
                                let xv = _mm512_loadu_ps(xh.add(32 * g + l));
                                let scale = _mm512_set1_ps(d * sc as f32);
                                if g % 2 == 0 {
                                    a0 = _mm512_fmadd_ps(scale, _mm512_mul_ps(wq, xv), a0);
                                } else {
                                    a1 = _mm512_fmadd_ps(scale, _mm512_mul_ps(wq, xv), a1);
                                }
                            }
                        }
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }
            GgmlType::Q2_K => {
                // Per 16 values: x = (d sc) q - dmin m, decoded in registers.
                let three = _mm_set1_epi8(3);
                for (sb, blk) in w.chunks_exact(Q2_K_BYTES).enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8
                    );
                    let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
                    let xs = xp.add(sb * QK_K);
                    for half in 0..2 {
                        for group in 0..2 {
                            let raw = _mm_loadu_si128(
                                blk.as_ptr().add(16 + 32 * half + 16 * group) as *const __m128i,
                            );
                            for s in 0..4 {
                                // 16-value group `is` holds elements 16 is..16 is + 16.
                                let is = 8 * half + 2 * s + group;
                                let q = _mm_and_si128(
                                    _mm_srl_epi16(raw, _mm_cvtsi32_si128(2 * s as i32)),
                                    three,
                                );
                                let sc = blk[is];
                                let wv = _mm512_fmadd_ps(
                                    _mm512_set1_ps(d * f32::from(sc & 15)),
                                    u8x16(q),
                                    _mm512_set1_ps(-(dmin * f32::from(sc >> 4))),
                                );
                                let xv = _mm512_loadu_ps(xs.add(16 * is));
                                if s % 2 == 0 {
                                    a0 = _mm512_fmadd_ps(wv, xv, a0);
                                } else {
                                    a1 = _mm512_fmadd_ps(wv, xv, a1);
                                }
                            }
                        }
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }
            GgmlType::Q3_K => {
                // Per 16 values: x = d (sc - 32) q, q = low 2 bits - 4 where
                // the value's hmask bit is clear.
                let three = _mm_set1_epi8(3);
                let four = _mm_set1_epi8(4);
                for (sb, blk) in w.chunks_exact(Q3_K_BYTES).enumerate() {
                    _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(
                        blk.as_ptr().wrapping_add(PREFETCH + 64) as *const i8
                    );
                    let packed: &[u8; 12] = blk[96..108].try_into().expect("12 bytes");
                    let scales = metallic_gguf::quant::q3_k::unpack_q3_k_scales(packed);
                    let d = f16_at(blk, 108);
                    let xs = xp.add(sb * QK_K);
                    for half in 0..2 {
                        for group in 0..2 {
                            let p = blk.as_ptr();
                            let raw = _mm_loadu_si128(
                                p.add(32 + 32 * half + 16 * group) as *const __m128i
                            );
                            let hm = _mm_loadu_si128(p.add(16 * group) as *const __m128i);
                            for s in 0..4 {
                                let is = 8 * half + 2 * s + group;
                                let low = _mm_and_si128(
                                    _mm_srl_epi16(raw, _mm_cvtsi32_si128(2 * s as i32)),
                                    three,
                                );
                                let bit = _mm_set1_epi8((1u8 << (4 * half + s)) as i8);
                                let clear = !_mm_test_epi8_mask(hm, bit);
                                let q = _mm_sub_epi8(low, _mm_maskz_mov_epi8(clear, four));
                                let wq = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                                let dl = d * (i32::from(scales[is]) - 32) as f32;
                                let wv = _mm512_mul_ps(_mm512_set1_ps(dl), wq);
                                let xv = _mm512_loadu_ps(xs.add(16 * is));
                                if s % 2 == 0 {
                                    a0 = _mm512_fmadd_ps(wv, xv, a0);
                                } else {
                                    a1 = _mm512_fmadd_ps(wv, xv, a1);
                                }
                            }
                        }
                    }
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }
            _ => unreachable!("the AVX-512 kernels take block formats only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic_gguf::quant;

    fn values(seed: u64, len: usize) -> Vec<f32> {
        metallic_test_support::spiky_values(seed, len, 0, 1.0)
    }

    /// Every kernel against an f64 dot over the reference dequantisation. The
    /// bound is float32 rounding of a k-term sum: k * eps * sum|w x|, with eps
    /// 2^-24 and a factor 4 for the different association orders.
    #[test]
    fn fdot_kernels_match_f64_dot_of_reference_dequantisation() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
        ] {
            let ks: &[usize] = if ty.block_size() == QK_K {
                &[256, 768, 1536, 4864]
            } else {
                &[32, 96, 896, 4864]
            };
            for &k in ks {
                let wv = values(k as u64, k);
                let bytes = quant::quantize(ty, &wv).unwrap();
                let mut deq = vec![0.0f32; k];
                quant::dequantize(ty, &bytes, &mut deq).unwrap();
                let x = values(7 + k as u64, k);
                let xsum: Vec<f32> = x.chunks(QK).map(|c| c.iter().sum()).collect();
                let exact: f64 = deq.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = deq
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let bound = 4.0 * k as f64 * mag * f32::EPSILON as f64 / 2.0 + 1e-6;
                for (name, kern) in [
                    ("detected", Kernels::detect()),
                    ("avx2", Kernels::avx2_only()),
                    ("scalar", Kernels::scalar()),
                ] {
                    let got = kern.dot(ty, &bytes, &x, &xsum) as f64;
                    assert!(
                        (got - exact).abs() <= bound,
                        "{name} {ty} k={k}: {got} vs {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    /// Each kernel level against the scalar one on ragged row lengths (odd
    /// block and super-block counts, float rows not a multiple of any unroll
    /// width), rows 1..17 of one matrix so that block loads start at every
    /// alignment the row stride gives.
    #[test]
    fn fdot_levels_match_scalar_on_ragged_rows() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
        ] {
            let ks: &[usize] = match ty {
                GgmlType::F16 | GgmlType::F32 => &[1, 3, 15, 17, 33, 97, 129],
                _ if ty.block_size() == QK_K => &[256, 768, 1280],
                _ => &[32, 96, 160, 544],
            };
            for &k in ks {
                let n = 17;
                let wv = values(k as u64 + 5, n * k);
                let bytes = quant::quantize(ty, &wv).unwrap();
                let row_bytes = bytes.len() / n;
                let x = values(11 + k as u64, k);
                let xsum: Vec<f32> = x.chunks(QK).map(|c| c.iter().sum()).collect();
                for r in 0..n {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let base = Kernels::scalar().dot(ty, row, &x, &xsum) as f64;
                    let mag: f64 = {
                        let mut deq = vec![0.0f32; k];
                        quant::dequantize(ty, row, &mut deq).unwrap();
                        deq.iter()
                            .zip(&x)
                            .map(|(&a, &b)| (a as f64 * b as f64).abs())
                            .sum()
                    };
                    let bound = 4.0 * k as f64 * mag * f32::EPSILON as f64 / 2.0 + 1e-6;
                    for (name, kern) in [
                        ("detected", Kernels::detect()),
                        ("avx2", Kernels::avx2_only()),
                    ] {
                        let got = kern.dot(ty, row, &x, &xsum) as f64;
                        assert!(
                            (got - base).abs() <= bound,
                            "{name} {ty} k={k} row {r}: {got} vs scalar {base} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_types_are_reported() {
        assert!(!supported(GgmlType::BF16));
        assert!(!supports_k(GgmlType::Q4_K, 896));
        assert!(supports_k(GgmlType::F16, 33));
        assert!(!supports_k(GgmlType::Q8_0, 33));
    }
}
