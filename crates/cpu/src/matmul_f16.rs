//! F16 prefill: a register-tiled F16 x f32 GEMM, the F16 kernel behind `gemm`.
//!
//! The shape of llamafile's tinyBLAS (llama.cpp's F16 prefill): each tile is
//! `RM` weight rows times `RN` activation rows; along k, a vector at a time
//! (16 values with AVX-512, 8 with AVX2), the `RM` weight vectors are
//! converted from F16 in registers (`vcvtph2ps`) and multiplied into `RM *
//! RN` f32 accumulators, one FMA per pair; the accumulators are summed
//! horizontally once at the end of each chunk of k (below). Weights are read in place from the GGUF
//! map (no repacking, no memory beyond the mapped file), activations stay
//! f32: the arithmetic of `gemm`'s dequantise-then-multiply path (an f32 FMA
//! of each converted F16 weight with an f32 activation), in another summation
//! order. (llama.cpp rounds the activations to F16 first; this does not.)
//!
//! Work is split over weight rows: tasks of up to [`Blocking::max_task_rows`]
//! rows (each part in a multiple of the pool's threads), so every thread
//! streams its own weights and shares the read-only activations. k goes in
//! chunks whose tile of activation rows fits in L1 ([`Blocking::l1_bytes`];
//! one chunk for rows of 896, four for 4864, each chunk's sums added to the
//! output); a task's row groups pass over one such tile at a time, reading
//! their weights from L2.
//!
//! The kernel set follows `vec_dot::kernels()` (so `METALLIC_CPU_SIMD`
//! forces a lower one; AVX-512 without VNNI gets the AVX-512 tiles):
//! AVX-512 (4 x 6 tiles of 16 lanes; 24 accumulators of the 32 registers),
//! AVX2 with FMA and F16C (3 x 4 tiles of 8 lanes: 12 of the 16
//! registers); without either, `gemm` converts tiles and runs the `gemm`
//! crate. Tile sizes from `metallic probe --dtype f16` on the
//! development machine (see BENCHMARKS.md).

use metallic::error::Result;
use metallic_gguf::GgmlType;
use rayon::prelude::*;

use crate::linear::CpuLinear;
use crate::shared_out::SharedOut;
use crate::vec_dot::SimdLevel;

/// The instruction set a tile kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx2,
    Avx512,
}

impl Level {
    /// The tile kernel of the level `vec_dot::kernels()` runs at, if any;
    /// AVX-512 also where that level is AVX2 only for want of VNNI (which
    /// these tiles do not use: Skylake-SP), unless `METALLIC_CPU_SIMD` chose it.
    pub fn detect() -> Option<Level> {
        static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| match crate::vec_dot::kernels().level() {
            SimdLevel::Avx512 => Some(Level::Avx512),
            SimdLevel::Avx2
                if std::env::var_os("METALLIC_CPU_SIMD").is_none() && avx512_without_vnni() =>
            {
                Some(Level::Avx512)
            }
            SimdLevel::Avx2 => Some(Level::Avx2),
            _ => None,
        })
    }

    /// Every level this CPU can run (for tests).
    #[cfg(test)]
    fn available() -> Vec<Level> {
        let mut v = Vec::new();
        if SimdLevel::Avx2.available() {
            v.push(Level::Avx2);
        }
        if SimdLevel::Avx512.available() || avx512_without_vnni() {
            v.push(Level::Avx512);
        }
        v
    }

    /// Weight rows of a tile.
    fn rm(self) -> usize {
        match self {
            Level::Avx2 => 3,
            Level::Avx512 => 4,
        }
    }
}

/// The instructions the AVX-512 tiles use (F, BW, VL, F16C, FMA) on a CPU
/// whose `vec_dot` level is AVX2 because it lacks VNNI.
fn avx512_without_vnni() -> bool {
    SimdLevel::Avx2.available()
        && !SimdLevel::Avx512.available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// How a product is cut into tasks and cache blocks.
#[derive(Clone, Copy, Debug)]
pub struct Blocking {
    /// Most weight rows per task (rounded to whole tiles).
    pub max_task_rows: usize,
    /// Bytes of a tile's activation rows that stay in L1 while the task's
    /// weight rows (from L2) pass over them (48 KiB L1 on Zen 4/5, 32-48
    /// KiB on recent Intel); longer rows go in chunks of k that fit.
    pub l1_bytes: usize,
    /// Bytes of a task's weights (one chunk of k) kept in L2.
    pub l2_bytes: usize,
}

impl Blocking {
    /// From `metallic probe --dtype f16 --prefill-m 512 -t 1` on the
    /// development machine (Zen 5, 1 MiB L2 a core): tasks of 256 rows ran
    /// ~237 GFLOP/s a core against ~229 with 64 and ~222 with 32; 16 KiB
    /// of activations per tile ~218, 32 KiB ~229, 44 KiB no better.
    pub const DEFAULT: Blocking = Blocking {
        max_task_rows: 256,
        l1_bytes: 32 << 10,
        l2_bytes: 640 << 10,
    };
}

/// What a tile does with its sums: the first chunk of k stores them plus
/// the bias, later chunks add them to what is there.
#[derive(Clone, Copy)]
enum Store<'a> {
    Bias(Option<&'a [f32]>),
    Add,
}

/// Whether the tiled kernel runs `w`: every part F16 and a tile kernel for
/// this CPU.
pub fn applies(w: &CpuLinear) -> bool {
    Level::detect().is_some() && w.parts.iter().all(|p| p.ty == GgmlType::F16)
}

/// `out[m, n] = x[m, k] * w^T + bias` for F16 `w` (see [`applies`]).
pub fn gemm_f16(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let level = Level::detect().ok_or_else(|| {
        metallic::error::Error::backend("cpu", "the F16 tile kernel needs AVX2, FMA and F16C")
    })?;
    gemm_f16_with(level, Blocking::DEFAULT, x, w, m, out)
}

/// One task: `rows` rows of part `part` from its row `r0`, output columns
/// from `col`.
#[derive(Clone, Copy)]
struct Task {
    part: usize,
    r0: usize,
    rows: usize,
    col: usize,
}

/// [`gemm_f16`] at a given level and blocking (tests run every level).
pub fn gemm_f16_with(
    level: Level,
    blocking: Blocking,
    x: &[f32],
    w: &CpuLinear,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    let (n, k) = crate::matmul::check_buffers(x, w, m, out)?;
    if let Some(p) = w.parts.iter().find(|p| p.ty != GgmlType::F16) {
        return Err(metallic::error::Error::InvalidArgument(format!(
            "the F16 tile kernel cannot read {} rows",
            p.ty.name()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let rm = level.rm();
    let rn = match level {
        Level::Avx2 => avx2::RN,
        Level::Avx512 => avx512::RN,
    };
    // k in chunks whose tile of activation rows fits in L1 (whole vectors
    // but the last): each tile then reads its activations from L1 and the
    // task's weights from L2. On the development machine that ran the
    // 896-wide Qwen2.5-0.5B products at ~410 GFLOP/s against ~390 with
    // activation blocks of 256 KiB in L2, and passing the row groups over a
    // whole tile of 4864-wide rows (117 KiB) halved the speed.
    let chunks = (rn * 4 * k).div_ceil(blocking.l1_bytes.max(1)).max(1);
    let kc = k.div_ceil(chunks).next_multiple_of(16).min(k);
    // Tasks of up to `max_task_rows` rows whose chunk of weights fits in
    // `l2_bytes`, each part in a multiple of the pool's threads (so 2 threads
    // split 896 rows into 4 tasks of 224, not 7 of 128 and an idle thread).
    let threads = rayon::current_num_threads().max(1);
    let cap = (blocking.l2_bytes / (2 * kc.max(1))).clamp(rm, blocking.max_task_rows.max(rm));
    let mut tasks = Vec::new();
    let mut col = 0;
    for (pi, p) in w.parts.iter().enumerate() {
        let count = p.rows.div_ceil(cap).next_multiple_of(threads);
        let task_rows = p.rows.div_ceil(count).next_multiple_of(rm);
        let mut r0 = 0;
        while r0 < p.rows {
            let rows = task_rows.min(p.rows - r0);
            tasks.push(Task {
                part: pi,
                r0,
                rows,
                col: col + r0,
            });
            r0 += rows;
        }
        col += p.rows;
    }
    let optr = SharedOut::new(out);
    let xp = SharedIn(x.as_ptr());
    tasks.par_iter().for_each(|t| {
        let p = &w.parts[t.part];
        let base = p.w.bytes().as_ptr();
        let bias = w.bias.as_ref().map(|b| &b[t.col..t.col + t.rows]);
        for k0 in (0..k).step_by(kc) {
            let kl = kc.min(k - k0);
            for i0 in (0..m).step_by(rn) {
                let ib = rn.min(m - i0);
                for j in (0..t.rows).step_by(rm) {
                    let rows = rm.min(t.rows - j);
                    // Rows past the task's end repeat its last row (computed,
                    // never stored).
                    let row = |a: usize| {
                        let r = t.r0 + j + a.min(rows - 1);
                        // SAFETY: r < p.rows and k0 < k, and the part holds
                        // p.rows rows of row_bytes = 2k (checked by
                        // CpuLinear::new for F16).
                        unsafe { (base.add(r * p.row_bytes) as *const u16).add(k0) }
                    };
                    let store = if k0 == 0 {
                        Store::Bias(bias.map(|b| &b[j..j + rows]))
                    } else {
                        Store::Add
                    };
                    // SAFETY: x holds m rows of k (checked above): the tile
                    // reads values k0..k0 + kl of rows i0..i0 + ib; it writes
                    // columns t.col + j.. + rows of those rows, in bounds (m *
                    // n <= out.len()) and written by this task only; the
                    // level's instructions are on this CPU (Level::detect or
                    // the test's Level::available).
                    unsafe {
                        let xi = xp.ptr().add(i0 * k + k0);
                        let o = optr.ptr().add(i0 * n + t.col + j);
                        match level {
                            Level::Avx2 => avx2::tiles(
                                [row(0), row(1), row(2)],
                                rows,
                                (xi, k),
                                ib,
                                kl,
                                (o, n),
                                store,
                            ),
                            Level::Avx512 => avx512::tiles(
                                [row(0), row(1), row(2), row(3)],
                                rows,
                                (xi, k),
                                ib,
                                kl,
                                (o, n),
                                store,
                            ),
                        }
                    }
                }
            }
        }
    });
    Ok(())
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

/// Store `rows` of four sums at `out` as `store` says.
#[inline(always)]
unsafe fn store_sums(sums: [f32; 4], rows: usize, out: *mut f32, store: Store<'_>) {
    for (a, &s) in sums.iter().enumerate().take(rows) {
        *out.add(a) = match store {
            Store::Bias(b) => s + b.map_or(0.0, |b| b[a]),
            Store::Add => *out.add(a) + s,
        };
    }
}

// Index loops over the register tile (acc[a][b]) read as the arithmetic.
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Store;

    /// Weight rows of a tile.
    const RM: usize = 4;
    /// Activation rows of a full tile.
    pub const RN: usize = 6;

    /// `m` (at most [`RN`]) activation rows (`x`: pointer, row stride)
    /// times the `RM` weight rows `w` over `k` values, `rows` of them
    /// stored to `out` (pointer, row stride) as `store` says.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub unsafe fn tiles(
        w: [*const u16; RM],
        rows: usize,
        x: (*const f32, usize),
        m: usize,
        k: usize,
        out: (*mut f32, usize),
        store: Store<'_>,
    ) {
        match m {
            1 => tile::<1>(w, rows, x, k, out, store),
            2 => tile::<2>(w, rows, x, k, out, store),
            3 => tile::<3>(w, rows, x, k, out, store),
            4 => tile::<4>(w, rows, x, k, out, store),
            5 => tile::<5>(w, rows, x, k, out, store),
            _ => tile::<RN>(w, rows, x, k, out, store),
        }
    }

    /// One tile of `N` activation rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn tile<const N: usize>(
        w: [*const u16; RM],
        rows: usize,
        (x, xs): (*const f32, usize),
        k: usize,
        (out, os): (*mut f32, usize),
        store: Store<'_>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; RM];
        let mut kk = 0;
        while kk + 16 <= k {
            let mut wv = [_mm512_setzero_ps(); RM];
            for a in 0..RM {
                wv[a] = _mm512_cvtph_ps(_mm256_loadu_si256(w[a].add(kk) as *const __m256i));
            }
            for b in 0..N {
                let xv = _mm512_loadu_ps(x.add(b * xs + kk));
                for a in 0..RM {
                    acc[a][b] = _mm512_fmadd_ps(wv[a], xv, acc[a][b]);
                }
            }
            kk += 16;
        }
        if kk < k {
            let mask = ((1u32 << (k - kk)) - 1) as u16;
            let mut wv = [_mm512_setzero_ps(); RM];
            for a in 0..RM {
                wv[a] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w[a].add(kk) as *const i16));
            }
            for b in 0..N {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(b * xs + kk));
                for a in 0..RM {
                    acc[a][b] = _mm512_fmadd_ps(wv[a], xv, acc[a][b]);
                }
            }
        }
        // Vector stores of the `rows` sums per activation row: scalar ones
        // cost a few percent of a k = 896 tile.
        let mask = (1u8 << rows) - 1;
        let bias = match store {
            Store::Bias(Some(b)) => _mm_maskz_loadu_ps(mask, b.as_ptr()),
            _ => _mm_setzero_ps(),
        };
        for b in 0..N {
            let s = reduce4(acc[0][b], acc[1][b], acc[2][b], acc[3][b]);
            let o = out.add(b * os);
            let v = match store {
                Store::Bias(_) => _mm_add_ps(s, bias),
                Store::Add => _mm_add_ps(_mm_maskz_loadu_ps(mask, o), s),
            };
            _mm_mask_storeu_ps(o, mask, v);
        }
    }

    /// `[sum(a), sum(b), sum(c), sum(d)]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // Lanes [a0+a2, a1+a3, b0+b2, b1+b3], then [a, b, c, d] partials.
        let ab = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(c, d),
            _mm512_shuffle_f32x4::<0xEE>(c, d),
        );
        let abcd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(ab, cd),
            _mm512_shuffle_f32x4::<0xDD>(ab, cd),
        );
        // Each lane's total in all four of its places, then lane totals.
        let t = _mm512_add_ps(abcd, _mm512_permute_ps::<0x4E>(abcd));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0xB1>(t));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, t))
    }
}

#[allow(clippy::needless_range_loop)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Store;

    /// Weight rows of a tile.
    const RM: usize = 3;
    /// Activation rows of a full tile.
    pub const RN: usize = 4;

    /// As avx512::tiles, 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tiles(
        w: [*const u16; RM],
        rows: usize,
        x: (*const f32, usize),
        m: usize,
        k: usize,
        out: (*mut f32, usize),
        store: Store<'_>,
    ) {
        match m {
            1 => tile::<1>(w, rows, x, k, out, store),
            2 => tile::<2>(w, rows, x, k, out, store),
            3 => tile::<3>(w, rows, x, k, out, store),
            _ => tile::<RN>(w, rows, x, k, out, store),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn tile<const N: usize>(
        w: [*const u16; RM],
        rows: usize,
        (x, xs): (*const f32, usize),
        k: usize,
        (out, os): (*mut f32, usize),
        store: Store<'_>,
    ) {
        let mut acc = [[_mm256_setzero_ps(); N]; RM];
        let mut kk = 0;
        while kk + 8 <= k {
            let mut wv = [_mm256_setzero_ps(); RM];
            for a in 0..RM {
                wv[a] = _mm256_cvtph_ps(_mm_loadu_si128(w[a].add(kk) as *const __m128i));
            }
            for b in 0..N {
                let xv = _mm256_loadu_ps(x.add(b * xs + kk));
                for a in 0..RM {
                    acc[a][b] = _mm256_fmadd_ps(wv[a], xv, acc[a][b]);
                }
            }
            kk += 8;
        }
        for b in 0..N {
            let zero = _mm256_setzero_ps();
            let s = reduce4(acc[0][b], acc[1][b], acc[2][b], zero);
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), s);
            // The last k % 8 values one by one.
            for (a, sum) in sums.iter_mut().enumerate().take(RM) {
                for j in kk..k {
                    let h = *w[a].add(j);
                    *sum += metallic_gguf::quant::f16_to_f32(h) * *x.add(b * xs + j);
                }
            }
            super::store_sums(sums, rows, out.add(b * os), store);
        }
    }

    /// `[sum(a), sum(b), sum(c), sum(d)]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn reduce4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(
            _mm256_castps256_ps128(abcd),
            _mm256_extractf128_ps::<1>(abcd),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metallic::backend::WeightView;
    use metallic_gguf::{quant, GgufFile, GgufWriter};

    use super::*;

    /// A linear layer of F16 `parts` (rows each) of rows of `k`.
    fn linear(k: usize, parts: &[usize], bias: bool) -> CpuLinear {
        let mut w = GgufWriter::new();
        for (i, &rows) in parts.iter().enumerate() {
            let data = metallic_test_support::spiky_values(100 + i as u64, rows * k, 61, 6.0);
            let bytes = quant::quantize(GgmlType::F16, &data).unwrap();
            w.add_tensor(
                format!("w{i}"),
                GgmlType::F16,
                &[k as u64, rows as u64],
                bytes,
            )
            .unwrap();
        }
        let mut buf = Vec::new();
        w.write_to(&mut buf).unwrap();
        let file = Arc::new(GgufFile::from_bytes(buf).unwrap());
        let views: Vec<WeightView> = file
            .tensors()
            .iter()
            .map(|t| WeightView::new(file.clone(), t.clone()))
            .collect();
        let n: usize = parts.iter().sum();
        let b = bias.then(|| metallic_test_support::spiky_values(7, n, 61, 6.0));
        CpuLinear::new(&views, b).unwrap()
    }

    /// The f64 product of the F16 weights' values and `x`, and per output
    /// the sum of |w x| (the scale of f32 rounding).
    fn reference(w: &CpuLinear, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
        let (n, k) = (w.info.n, w.info.k);
        let mut y = vec![0.0; m * n];
        let mut abs = vec![0.0; m * n];
        let mut row = vec![0.0f32; k];
        for r in 0..n {
            let (p, pr) = w.locate(r).unwrap();
            quant::dequantize(p.ty, p.row(pr), &mut row).unwrap();
            for i in 0..m {
                let xr = &x[i * k..(i + 1) * k];
                let mut s = w.bias.as_ref().map_or(0.0, |b| b[r] as f64);
                let mut a = 0.0;
                for (wv, xv) in row.iter().zip(xr) {
                    s += *wv as f64 * *xv as f64;
                    a += (*wv as f64 * *xv as f64).abs();
                }
                y[i * n + r] = s;
                abs[i * n + r] = a;
            }
        }
        (y, abs)
    }

    fn check(what: &str, got: &[f32], want: &[f64], abs: &[f64]) {
        for (j, (&g, &y)) in got.iter().zip(want).enumerate() {
            // f32 sums of k products: well within 1e-5 of sum |w x| for k up to ~5k.
            let tol = 1e-5 * abs[j] + 1e-6;
            assert!(
                (g as f64 - y).abs() <= tol,
                "{what}: output {j}: {g} vs {y} (tolerance {tol})"
            );
        }
    }

    /// Every SIMD level's tiles, on ragged shapes (k not a multiple of the
    /// vector, rows not whole tiles, several tasks and activation blocks),
    /// match the f64 product of the same F16 values, and the reference
    /// `gemv` (scalar) within f32 rounding.
    #[test]
    fn f16_tiles_match_the_reference_on_ragged_shapes() {
        let levels = Level::available();
        if levels.is_empty() {
            eprintln!("skipped: this CPU has no AVX2/F16C tile kernel");
            return;
        }
        // Small tasks, and k in chunks of 16 (l1_bytes 0) or of about 40.
        let small = Blocking {
            max_task_rows: 8,
            l1_bytes: 0,
            l2_bytes: 1 << 20,
        };
        let chunked = Blocking {
            max_task_rows: 64,
            l1_bytes: 4 * 6 * 40,
            l2_bytes: 2 * 40 * 12,
        };
        for k in [1usize, 7, 16, 17, 33, 100] {
            for n in (1..=17).chain([100, 131]) {
                let w = linear(k, &[n], n % 3 == 0);
                for m in [1usize, 2, 3, 5, 6, 7, 12, 13, 25, 64, 70] {
                    if n > 17 && !matches!(m, 1 | 7 | 70) {
                        continue;
                    }
                    let x = metallic_test_support::spiky_values(
                        k as u64 * 31 + m as u64,
                        m * k,
                        61,
                        6.0,
                    );
                    let (want, abs) = reference(&w, &x, m);
                    let mut gemv = vec![0.0f32; m * n];
                    crate::matmul::gemv(&x, &w, m, &mut gemv).unwrap();
                    let gemv64: Vec<f64> = gemv.iter().map(|&v| v as f64).collect();
                    for &level in &levels {
                        for blocking in [Blocking::DEFAULT, small, chunked] {
                            let mut got = vec![f32::NAN; m * n];
                            gemm_f16_with(level, blocking, &x, &w, m, &mut got).unwrap();
                            let what = format!("{level:?} {blocking:?} m={m} n={n} k={k}");
                            check(&what, &got, &want, &abs);
                            // Against gemv: both within rounding of the f64 sum.
                            let twice: Vec<f64> = abs.iter().map(|a| 2.0 * a).collect();
                            check(&format!("{what} vs gemv"), &got, &gemv64, &twice);
                        }
                    }
                }
            }
        }
    }

    /// A fused projection (three parts, with a bias) writes each part's
    /// columns, at every level.
    #[test]
    fn f16_tiles_write_every_part_of_a_fused_projection() {
        let (k, m) = (40, 9);
        let w = linear(k, &[10, 3, 7], true);
        let x = metallic_test_support::spiky_values(3, m * k, 61, 6.0);
        let (want, abs) = reference(&w, &x, m);
        for level in Level::available() {
            let mut got = vec![f32::NAN; m * w.info.n];
            gemm_f16_with(level, Blocking::DEFAULT, &x, &w, m, &mut got).unwrap();
            check(&format!("{level:?}"), &got, &want, &abs);
        }
    }

    /// Buffers too small for the shape are an error, not a read past them.
    #[test]
    fn f16_tiles_reject_short_buffers() {
        let w = linear(16, &[4], false);
        let x = vec![0.0f32; 16];
        let mut out = vec![0.0f32; 7];
        for level in Level::available() {
            assert!(gemm_f16_with(level, Blocking::DEFAULT, &x, &w, 2, &mut out).is_err());
        }
    }
}
