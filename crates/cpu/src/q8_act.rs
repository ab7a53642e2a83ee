//! Activations quantised to 8-bit blocks of 32, the form llama.cpp's
//! `vec_dot_q4_1_q8_1` / `vec_dot_q8_0_q8_0` multiply quantised weights with.
//!
//! Each block keeps its scale `d = amax / 127` in f32 (not f16 as ggml's
//! `block_q8_1` does: it costs nothing here and removes one rounding), and
//! `s = d * sum(q)`, which turns the weights' offsets (Q4_0's `-8`, Q4_1's
//! minimum, the `+128` bias of unsigned dot instructions) into one multiply per block.

use rayon::prelude::*;

/// Values per block.
pub const QK: usize = 32;

/// `m` rows of `k` activations, quantised. Buffers grow and are then reused,
/// so a step allocates nothing once the largest shape has been seen.
#[derive(Default)]
pub struct Q8Acts {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub k: usize,
    pub m: usize,
}

/// One quantised row.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl Q8Acts {
    /// Size the buffers for `x[m, k]` (kept between calls: no allocation
    /// once they have grown).
    fn shape_for(&mut self, x: &[f32], m: usize, k: usize) {
        debug_assert!(k.is_multiple_of(QK) && x.len() >= m * k);
        let nb = k / QK;
        self.k = k;
        self.m = m;
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        self.s.resize(m * nb, 0.0);
    }

    /// Quantise `x[m, k]` (`k` a multiple of [`QK`]).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        self.shape_for(x, m, k);
        quantize_blocks(&x[..m * k], &mut self.qs, &mut self.d, &mut self.s);
    }

    /// As [`Q8Acts::quantize`] (the same bytes), blocks spread over the
    /// current rayon pool: a prefill's activations (hundreds of rows) would
    /// otherwise be quantised on one thread while the others wait.
    pub fn quantize_parallel(&mut self, x: &[f32], m: usize, k: usize) {
        self.shape_for(x, m, k);
        // Blocks per task: ~32 KiB of activations.
        const TASK: usize = 256;
        x[..m * k]
            .par_chunks(TASK * QK)
            .zip(self.qs.par_chunks_mut(TASK * QK))
            .zip(self.d.par_chunks_mut(TASK).zip(self.s.par_chunks_mut(TASK)))
            .for_each(|((x, q), (d, s))| quantize_blocks(x, q, d, s));
    }

    pub fn row(&self, i: usize) -> Q8Row<'_> {
        let nb = self.k / QK;
        Q8Row {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
        }
    }
}

/// Whole blocks: `x` and `q` of `d.len() * QK` values.
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::vec_dot::SimdLevel::Avx2.available() {
        // SAFETY: the CPU has the features `quantize_blocks_avx2` enables.
        unsafe { quantize_blocks_avx2(x, q, d, s) };
        return;
    }
    for ((xb, qb), (d, s)) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut().zip(s.iter_mut()))
    {
        quantize_block(xb, qb, d, s);
    }
}

/// The portable quantiser compiled for AVX2: the same operations, so the
/// same bytes, but `round` becomes an inline instruction sequence instead of
/// a call into libm (the x86-64 baseline lacks SSE4.1's `roundps`), and the
/// loops are vectorised.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_blocks_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for ((xb, qb), (d, s)) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut().zip(s.iter_mut()))
    {
        quantize_block_portable(xb, qb, d, s);
    }
}

#[inline]
fn quantize_block(x: &[f32], q: &mut [i8], d_out: &mut f32, s_out: &mut f32) {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline; both slices hold a
        // whole block (`chunks_exact(QK)` in the caller).
        (*d_out, *s_out) = unsafe { crate::neon::quantize_block(x, q) };
    }
    #[cfg(not(target_arch = "aarch64"))]
    quantize_block_scalar(x, q, d_out, s_out);
}

/// The portable quantiser (and the NEON one's cross-check).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
fn quantize_block_scalar(x: &[f32], q: &mut [i8], d_out: &mut f32, s_out: &mut f32) {
    quantize_block_portable(x, q, d_out, s_out)
}

/// The portable quantiser's body, inlined into [`quantize_blocks_avx2`].
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn quantize_block_portable(x: &[f32], q: &mut [i8], d_out: &mut f32, s_out: &mut f32) {
    // The largest magnitude in eight independent lanes: one running `max`
    // (a dependent chain with its NaN checks) did not vectorise and was
    // ~13% of a Qwen2.5-0.5B prefill on the development machine. A maximum
    // does not depend on the order it is taken in: the same `amax`.
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes
        .iter()
        .chain(tail)
        .fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    if d.is_normal() {
        // A normal, finite `d` is `amax / 127` to half an ulp and `id` its
        // inverse to another: |v * id| <= 127 (1 + 2^-22), which rounds to
        // at most 127, and a NaN value rounds to NaN, which `as i32` makes
        // 0. So the clamp and the NaN select leave every level as the
        // saturating cast below makes it, and the conversion needs no
        // saturation: the loop vectorises (the scalar saturating casts were
        // most of the quantiser's time).
        for (q, &v) in q.iter_mut().zip(x) {
            let r = (v * id).round();
            let r = if r.is_nan() {
                0.0
            } else {
                r.clamp(-127.0, 127.0)
            };
            // SAFETY: `r` is finite and within [-127, 127].
            let l: i32 = unsafe { r.to_int_unchecked() };
            *q = l as i8;
            sum += l;
        }
    } else {
        // Zero, subnormal or infinite scales: levels may leave [-127, 127]
        // (a subnormal `d` is far from `amax / 127`); the saturating cast.
        for (q, &v) in q.iter_mut().zip(x) {
            let l = (v * id).round() as i32;
            *q = l as i8;
            sum = sum.wrapping_add(l);
        }
    }
    *d_out = d;
    *s_out = d * sum as f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantiser's levels, scale and sum are those of the plain
    /// definition (a running maximum, `round() as i32` saturating, wrapping
    /// sums) for blocks of every kind of value: ordinary, tiny (subnormal
    /// scales), huge, infinite, NaN, zero.
    #[test]
    fn quantiser_matches_the_plain_definition_on_every_kind_of_block() {
        fn plain(x: &[f32]) -> ([i8; QK], f32, f32) {
            let amax = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let (mut q, mut sum) = ([0i8; QK], 0i32);
            for (q, &v) in q.iter_mut().zip(x) {
                let l = (v * id).round() as i32;
                *q = l as i8;
                sum = sum.wrapping_add(l);
            }
            (q, d, d * sum as f32)
        }
        let mut r = metallic::rng::Xoshiro256::new(5);
        for round in 0..3000 {
            let scale = [1.0, 1e-3, 1e-39, 1e-44, 3e38][round % 5];
            let x: Vec<f32> = (0..QK)
                .map(|_| match (r.next_f64() * 40.0) as u32 {
                    0 if round % 3 == 0 => f32::NAN,
                    1 if round % 7 == 0 => f32::INFINITY,
                    2 => 0.0,
                    _ => ((r.next_f64() * 2.0 - 1.0) * scale) as f32,
                })
                .collect();
            let (want_q, want_d, want_s) = plain(&x);
            let (mut q, mut d, mut s) = ([0i8; QK], [0.0f32], [0.0f32]);
            quantize_blocks(&x, &mut q, &mut d, &mut s);
            assert_eq!(q, want_q, "{x:?}");
            assert_eq!(d[0].to_bits(), want_d.to_bits(), "{x:?}");
            assert_eq!(s[0].to_bits(), want_s.to_bits(), "{x:?}");
        }
    }

    #[test]
    fn simd_quantiser_gives_the_portable_bytes() {
        // Ties (x.5 steps), zeros, a negative maximum and ragged magnitudes.
        let mut blocks: Vec<Vec<f32>> = vec![vec![0.0; QK]];
        blocks.push((0..QK).map(|i| i as f32 - 15.5).collect());
        blocks.push(
            (0..QK)
                .map(|i| {
                    if i == 7 {
                        -127.0
                    } else {
                        (i as f32) * 2.5 - 40.0
                    }
                })
                .collect(),
        );
        blocks.push(
            (0..QK)
                .map(|i| ((i * 7919 % 263) as f32 - 131.0) / 17.0)
                .collect(),
        );
        for x in blocks {
            let (mut qa, mut qb) = ([0i8; QK], [0i8; QK]);
            let (mut da, mut sa, mut db, mut sb) = (0.0, 0.0, 0.0, 0.0);
            quantize_block(&x, &mut qa, &mut da, &mut sa);
            quantize_block_scalar(&x, &mut qb, &mut db, &mut sb);
            assert_eq!(qa, qb, "block {x:?}");
            assert_eq!((da, sa), (db, sb));
            // The many-block entry point (AVX2-compiled on x86-64).
            let (mut qc, mut dc, mut sc) = ([0i8; QK], [0.0f32], [0.0f32]);
            quantize_blocks(&x, &mut qc, &mut dc, &mut sc);
            assert_eq!(qc, qb, "blocks {x:?}");
            assert_eq!((dc[0], sc[0]), (db, sb));
        }
    }

    /// The pool's quantiser writes what the serial one does, on a shape
    /// whose blocks do not split evenly into tasks.
    #[test]
    fn parallel_quantiser_gives_the_serial_bytes() {
        let (m, k) = (37, 896);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 13.0)
            .collect();
        let (mut a, mut b) = (Q8Acts::default(), Q8Acts::default());
        a.quantize(&x, m, k);
        b.quantize_parallel(&x, m, k);
        assert_eq!(a.qs, b.qs);
        assert_eq!(a.d, b.d);
        assert_eq!(a.s, b.s);
        let mut scalar = vec![0i8; QK];
        let (mut d, mut s) = (0.0, 0.0);
        for (blk, xb) in x.chunks_exact(QK).enumerate() {
            quantize_block_scalar(xb, &mut scalar, &mut d, &mut s);
            assert_eq!(&a.qs[blk * QK..(blk + 1) * QK], &scalar[..], "block {blk}");
            assert_eq!((a.d[blk], a.s[blk]), (d, s), "block {blk}");
        }
    }

    #[test]
    fn q8_rows_dequantise_within_half_a_step() {
        let k = 96;
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut a = Q8Acts::default();
        a.quantize(&x, 2, k);
        for i in 0..2 {
            let r = a.row(i);
            for (b, (&d, &s)) in r.d.iter().zip(r.s).enumerate() {
                let qs = &r.qs[b * QK..(b + 1) * QK];
                let sum: i32 = qs.iter().map(|&q| q as i32).sum();
                assert_eq!(s, d * sum as f32);
                for (j, &q) in qs.iter().enumerate() {
                    let v = x[i * k + b * QK + j];
                    // Rounding to the nearest level: off by at most half a step.
                    assert!((q as f32 * d - v).abs() <= d * 0.5 + 1e-6, "{v} vs {q}*{d}");
                }
            }
        }
    }
}
