//! Matrix products against GGUF-format weights: the CPU's matmul registry.
//!
//! | index | name     | runs                                   | supports                          |
//! |-------|----------|----------------------------------------|-----------------------------------|
//! | 0     | `gemv`   | dequantise a row, f32 dot (reference)  | every type the CPU loads          |
//! | 1     | `vecdot` | Q8 activations x quantised rows, SIMD  | Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K, Q6_K, F16, F32 |
//! | 2     | `gemm`   | dequantised tiles through `gemm`; F16 in register tiles (AVX2/AVX-512) | every type the CPU loads |
//! | 3     | `fdot`   | rows dequantised in registers, f32 dot | Q4_0/1, Q5_0/1, Q8_0, Q2_K..Q6_K, F16, F32 |
//! | 4     | `decode` | the decode rule at any row count: `vecdot`, `fdot` or `gemv` by type | every type the CPU loads |
//! | 5     | `vecdot_gemm` | Q8 activations x 16-row repacked weight tiles, AVX-512 VNNI (else `vecdot`'s kernels) | Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K, Q6_K |
//!
//! All take `batch = 1, tA = 0, tB = 1` (activations times transposed weights).
//! `gemm` on F16 weights runs matmul_f16.rs's register tiles where the CPU
//! has AVX2 or AVX-512 (F16 converted in registers, f32 activations): the
//! same arithmetic as its dequantise-then-`gemm`-crate path (an f32 FMA of
//! each converted weight with each activation), in another summation order,
//! so it keeps the name.
//! Default rule ([`default_impl_for`]): `m >= GEMM_MIN_M` rows (prefill:
//! enough rows to reuse each repacked or dequantised tile) go to
//! `vecdot_gemm` where the CPU has AVX-512 VNNI for every type it runs, but
//! for the model's output projection only when Q4_0 or Q4_1
//! ([`prefill_in_8_bits`]; the backend knows the output by its tensor name,
//! [`Role`]), else to `gemm`. Fewer rows (decode) go to `vecdot` for Q4_0
//! and Q4_1 weights ([`decode_in_8_bits`]) and, in the layers, for Q8_0,
//! Q5_0, Q5_1 and the K-quants where the CPU has SIMD kernels for them
//! ([`layers_in_8_bits`]), else to `fdot` where it has a kernel, else to
//! `gemv`.
//!
//! Which decode arithmetic is the default is decided by the KL divergence
//! against the float32 model (docs/quality.md), not by greedy identity: 8-bit
//! activations are the default where their KLD is no worse than llama.cpp's
//! own CPU path on the same files. On SmolLM2 Q4_1 (1,020 positions of
//! alice29.txt) 8-bit activations everywhere cost a KLD of 0.00292 against
//! llama.cpp's 0.00269; about a quarter of it (0.00074 alone) came from the
//! tied Q8_0 lm_head, whose 49,152 logits each sum 576 rounded activations.
//! With Q4_x layers on `vecdot` and Q8_0 (here the lm_head) on `fdot` the KLD
//! is 0.00211: below llama.cpp's, at most of `vecdot`'s speed (the layers
//! are two thirds of the bytes). `METALLIC_MATMUL_BACKEND=fdot` keeps float32
//! activations everywhere (greedy identity with transformers); the threshold
//! comes from `metallic probe` on the development machine (see docs/probe.md);
//! METALLIC_MATMUL_AUTOTUNE=1 replaces the rule by measurements per shape.

use crate::shared_out::SharedOut;
use metallic::backend::{MatmulImpl, MatmulShape};
use metallic::error::{Error, Result};
use metallic_gguf::{quant, GgmlType};
use rayon::prelude::*;

use crate::linear::CpuLinear;

/// The reference path dequantises rows with the gguf crate: every type it can.
pub fn supported_type(ty: GgmlType) -> bool {
    quant::can_dequantize(ty)
}

fn plain_product(s: &MatmulShape) -> bool {
    s.batch == 1 && !s.ta && s.tb && s.m >= 1
}

fn gemv_supports(s: &MatmulShape) -> bool {
    plain_product(s) && supported_type(s.dtype)
}

fn vecdot_supports(s: &MatmulShape) -> bool {
    plain_product(s) && crate::vec_dot::supports_k(s.dtype, s.k)
}

fn fdot_supports(s: &MatmulShape) -> bool {
    plain_product(s)
        && crate::matmul_fdot::supported(s.dtype)
        && crate::matmul_fdot::supports_k(s.dtype, s.k)
}

fn gemm_supports(s: &MatmulShape) -> bool {
    plain_product(s) && supported_type(s.dtype)
}

fn vecdot_gemm_supports(s: &MatmulShape) -> bool {
    plain_product(s) && crate::matmul_vecdot_gemm::supported(s.dtype) && vecdot_supports(s)
}

pub const GEMV: usize = 0;
pub const VECDOT: usize = 1;
pub const GEMM: usize = 2;
pub const FDOT: usize = 3;
pub const DECODE: usize = 4;
pub const VECDOT_GEMM: usize = 5;

pub const IMPLS: &[MatmulImpl] = &[
    MatmulImpl {
        name: "gemv",
        supports: gemv_supports,
    },
    MatmulImpl {
        name: "vecdot",
        supports: vecdot_supports,
    },
    MatmulImpl {
        name: "gemm",
        supports: gemm_supports,
    },
    MatmulImpl {
        name: "fdot",
        supports: fdot_supports,
    },
    MatmulImpl {
        name: "decode",
        supports: gemv_supports,
    },
    MatmulImpl {
        name: "vecdot_gemm",
        supports: vecdot_gemm_supports,
    },
];

/// Rows from which the blocked GEMM beats the vector kernels: on the
/// development machine (2 cores, AVX-512) `metallic probe --prefill-m M
/// --impls vecdot,gemm --dtype q4_1` had vecdot ahead at m = 16 and gemm
/// ahead at m = 32 on every Qwen2.5-0.5B layer shape.
pub const GEMM_MIN_M: usize = 32;

/// Weight types whose decode default is `vecdot` (8-bit activations): those
/// where the quality table shows its KLD no worse than llama.cpp's (see the
/// module comment). Q8_0 stays on `fdot`: as SmolLM2's lm_head it carried a
/// quarter of `vecdot`'s KLD, and on the synthetic Qwen2.5-0.5B Q8_0 file
/// `fdot` halves the KLD of 8-bit activations (0.00097 against 0.00152).
pub fn decode_in_8_bits(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// What a product computes in the model, as far as the default rule cares:
/// the output projection's logits (the lm_head: tens of thousands of
/// outputs read straight by sampling and scoring) or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Layer,
    Output,
}

/// Weight types whose prefill default is `vecdot_gemm` (8-bit activations,
/// integer tiles) where the CPU has its AVX-512 VNNI kernel, by role. Q4_0
/// and Q4_1 everywhere: `vecdot` everywhere scored a KLD no worse than
/// llama.cpp's on the quality table's Q4_0 and Q4_1 files, and `vecdot_gemm`
/// is that arithmetic. The other types with a tile kernel in the layers
/// only: an output projection stays on `gemm` (float32 activations), since
/// on SmolLM2 Q4_1 the tied Q8_0 lm_head in 8 bits carries a quarter of
/// 8-bit activations' KLD and takes the file just above llama.cpp's. With
/// this rule (`metallic perplexity --kld` against the F32 bases of
/// docs/quality.md, 2026-11-29; llama-perplexity on the same files) the
/// KLD stays below llama.cpp's CPU path: synthetic Qwen2.5-0.5B (seed 1,
/// `-c 128 --chunks 2`) Q8_0 0.00150 against 0.00159, Q4_K 0.0752 against
/// 0.0754, Q4_K_M 0.04626 against 0.04633, Q5_K_M 0.03444 against 0.03488;
/// SmolLM2 Q8_0 (`metallic quantize` of its F32 file, `-c 512 --chunks 4`)
/// 0.00314 against 0.00400 (0.00394 with the lm_head in 8 bits too).
pub fn prefill_in_8_bits(ty: GgmlType, role: Role) -> bool {
    let types = match role {
        Role::Layer => crate::matmul_vecdot_gemm::supported(ty),
        Role::Output => decode_in_8_bits(ty),
    };
    types && crate::matmul_vecdot_gemm::has_tile_kernel(crate::vec_dot::kernels())
}

/// The implementation used when nothing is forced or tuned, for a product
/// whose role is unknown (taken as a layer's).
pub fn default_impl(s: &MatmulShape) -> usize {
    default_impl_for(s, Role::Layer)
}

/// The implementation used when nothing is forced or tuned.
pub fn default_impl_for(s: &MatmulShape, role: Role) -> usize {
    if s.m >= GEMM_MIN_M && prefill_in_8_bits(s.dtype, role) && vecdot_gemm_supports(s) {
        VECDOT_GEMM
    } else if s.m >= GEMM_MIN_M && gemm_supports(s) {
        GEMM
    } else {
        decode_impl_for(s, role)
    }
}

/// Weight types whose layer products decode in 8-bit activations (`vecdot`)
/// where this CPU has SIMD kernels for them, but whose output projection
/// ([`Role::Output`]) stays on `fdot`: 8-bit activations on every Q8_0 product of the synthetic
/// Qwen2.5-0.5B Q8_0 file scored a KLD of 0.00152 against llama.cpp's
/// 0.00159 (docs/quality.md), but on SmolLM2 the tied Q8_0 head alone added
/// 0.00074 to it, a quarter of the total: each of the head's logits sums a
/// whole row of rounded activations, and no layer's error reaches a logit so
/// directly. Q5_0 and Q5_1 are the bulk of llama.cpp's Q4_K_M and Q5_K_M
/// Qwen2.5 files (rows of 896 are no whole K-quant super-blocks), Q4_K,
/// Q5_K and Q6_K their down projections. Q4_K_M and Q5_K_M files made from the synthetic
/// Qwen2.5-0.5B F32 scored 0.0462 and 0.0345 with these rules against
/// llama.cpp's 0.0463 and 0.0349 on the same files.
pub fn layers_in_8_bits(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    ) && crate::vec_dot::kernels().has_simd(ty)
}

/// The decode kernel of a layer's product (role unknown: see
/// [`decode_impl_for`]).
pub fn decode_impl(s: &MatmulShape) -> usize {
    decode_impl_for(s, Role::Layer)
}

/// The decode kernel of a shape's weight type: `vecdot` where 8-bit
/// activations are the default ([`decode_in_8_bits`], and
/// [`layers_in_8_bits`] but for the output projection), else `fdot` where it
/// has a kernel, else the reference. Every one of them computes each output
/// row on its own, in the same arithmetic whatever the row count (see
/// matmul_vecdot.rs), so `decode` (this rule at any row count) keeps a
/// batch's rows independent (`metallic serve` can run it:
/// METALLIC_MATMUL_BACKEND=decode).
pub fn decode_impl_for(s: &MatmulShape, role: Role) -> usize {
    let in_8_bits = decode_in_8_bits(s.dtype) || role == Role::Layer && layers_in_8_bits(s.dtype);
    if in_8_bits && vecdot_supports(s) {
        VECDOT
    } else if fdot_supports(s) {
        FDOT
    } else {
        GEMV
    }
}

/// Weight bytes (times activation rows) below which the row kernels run on
/// the calling thread: waking the pool and joining it costs ~10-20 µs, about
/// what one core needs to stream 64 KiB from memory and multiply it.
pub const SERIAL_WORK: usize = 64 << 10;

/// How the row kernels (`fdot`, `vecdot`) split a product's `n` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Rows per task.
    pub rows: usize,
    /// Tasks go to the pool; otherwise everything runs on the calling thread.
    pub parallel: bool,
}

/// Bytes of weights a product reads, times its activation rows.
pub fn work(w: &CpuLinear, m: usize) -> usize {
    let bytes: usize = w.parts.iter().map(|p| p.rows * p.row_bytes).sum();
    bytes.saturating_mul(m.max(1))
}

/// The split of `w`'s rows for `m` activation rows over `threads`: serial
/// below [`SERIAL_WORK`]; else one contiguous run of rows per thread. Each
/// task starts cold (its kernels prefetch only ahead of the rows they are
/// on; `vecdot`'s tiles the next tile), so fewer, longer tasks read closer
/// to the memory's speed: one task a thread instead of up to four (spares
/// for work stealing on a shared machine) made Qwen2.5-0.5B decode 1% (Q8_0)
/// and 4% (Q4_0) faster at 2 threads on the shared development machine
/// (BENCHMARKS.md, 2026-11-30), where a 16-row Q8_0 tile of the down
/// projection (82 KB) had been a whole task at 16 threads.
pub fn split(w: &CpuLinear, m: usize, threads: usize) -> Split {
    let n = w.info.n.max(1);
    let work = work(w, m);
    if threads <= 1 || work < SERIAL_WORK {
        return Split {
            rows: n,
            parallel: false,
        };
    }
    let tasks = threads.min(n);
    Split {
        rows: n.div_ceil(tasks),
        parallel: true,
    }
}

/// Run `f` on every task's row range of `0..n`, in the current pool or, for
/// a serial split, on the calling thread as one range.
pub fn try_for_each_task(
    s: Split,
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<()> + Sync + Send,
) -> Result<()> {
    if !s.parallel {
        return f(0..n);
    }
    let rows = s.rows.max(1);
    let tasks = n.div_ceil(rows);
    let task = |t: usize| f(t * rows..((t + 1) * rows).min(n));
    // On the backend's decode team where the caller set one (no pool
    // hand-off: see team.rs), else in the current rayon pool.
    let on_team = crate::team::current(|team| {
        let first_error = std::sync::Mutex::new(None);
        team.run(tasks, &|t| {
            if let Err(e) = task(t) {
                first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    });
    match on_team {
        Some(r) => r,
        None => (0..tasks).into_par_iter().try_for_each(task),
    }
}

/// Threads a row kernel's product is split over: the current decode team's
/// (see team.rs), else the current rayon pool's.
pub fn threads() -> usize {
    crate::team::current(|t| t.threads()).unwrap_or_else(rayon::current_num_threads)
}

/// Whether a product runs on one of the row kernels (`fdot`, `vecdot`),
/// which split their rows themselves (serially for small products, else on
/// the caller's decode team: see team.rs); the others go to the rayon pool.
pub fn row_kernel(imp: usize, w: &CpuLinear, m: usize) -> bool {
    let imp = if imp == DECODE {
        decode_impl(&shape_of(w, m))
    } else {
        imp
    };
    matches!(imp, FDOT | VECDOT)
}

/// The product shape of `m` activation rows times `w`, as dispatch sees it.
pub(crate) fn shape_of(w: &CpuLinear, m: usize) -> MatmulShape {
    MatmulShape {
        op: metallic::backend::MatmulOp::Matmul,
        dtype: w.info.dtype,
        batch: 1,
        m,
        n: w.info.n,
        k: w.info.k,
        ta: false,
        tb: true,
    }
}

/// `(n, k)` of `w` after checking that `x` holds `m` rows of `k` and `out`
/// `m` rows of `n` (every implementation's first step).
pub(crate) fn check_buffers(
    x: &[f32],
    w: &CpuLinear,
    m: usize,
    out: &[f32],
) -> Result<(usize, usize)> {
    let (n, k) = (w.info.n, w.info.k);
    if x.len() < m * k || out.len() < m * n {
        return Err(Error::InvalidArgument(format!(
            "matmul buffers too small for m={m} n={n} k={k}"
        )));
    }
    Ok((n, k))
}

/// Run implementation `imp` (inside the backend's thread pool).
pub fn run(imp: usize, x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    check_buffers(x, w, m, out)?;
    match imp {
        GEMV => gemv(x, w, m, out),
        VECDOT => crate::matmul_vecdot::vecdot(x, w, m, out),
        GEMM => crate::matmul_gemm::gemm(x, w, m, out),
        FDOT => crate::matmul_fdot::fdot(x, w, m, out),
        DECODE => run(decode_impl(&shape_of(w, m)), x, w, m, out),
        VECDOT_GEMM => crate::matmul_vecdot_gemm::vecdot_gemm(x, w, m, out),
        _ => Err(Error::backend(
            "cpu",
            format!("no matmul implementation #{imp}"),
        )),
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// The reference: `out[m, n] = x[m, k] * w^T + bias`, each weight row
/// dequantised with the gguf crate's (gguf-py-checked) code.
pub fn gemv(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    let (n, k) = crate::matmul::check_buffers(x, w, m, out)?;
    let optr = SharedOut::new(out);
    const ROWS: usize = 16;
    let n_chunks = n.div_ceil(ROWS);
    (0..n_chunks).into_par_iter().try_for_each_init(
        || vec![0.0f32; k],
        |row, c| -> Result<()> {
            for r in c * ROWS..((c + 1) * ROWS).min(n) {
                let (part, pr) = w.locate(r).expect("row within n");
                quant::dequantize(part.ty, part.row(pr), row).map_err(Error::from)?;
                let b = w.bias.as_ref().map_or(0.0, |b| b[r]);
                for i in 0..m {
                    let v = dot(&x[i * k..(i + 1) * k], row) + b;
                    // SAFETY: column r of every row is written by this task only,
                    // and i * n + r < m * n <= out.len() (checked above).
                    unsafe { *optr.ptr().add(i * n + r) = v };
                }
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metallic::backend::WeightView;
    use metallic_gguf::{GgufFile, GgufWriter};

    use super::*;
    use crate::matmul_vecdot::vecdot_with;
    use crate::matmul_vecdot_gemm::{has_tile_kernel, vecdot_gemm_with};
    use crate::q8_act::QK;
    use crate::vec_dot::{self, Kernels, SimdLevel};

    /// Deterministic values in about [-1, 1] with a few larger ones, as activations have.
    fn values(seed: u64, len: usize) -> Vec<f32> {
        metallic_test_support::spiky_values(seed, len, 61, 6.0)
    }

    /// A linear layer of `parts` (rows each) of type `ty`, with an optional bias.
    fn linear(ty: GgmlType, k: usize, parts: &[usize], bias: bool) -> CpuLinear {
        let typed: Vec<(GgmlType, usize)> = parts.iter().map(|&r| (ty, r)).collect();
        mixed_linear(k, &typed, bias)
    }

    /// A fused projection whose parts have their own types.
    fn mixed_linear(k: usize, parts: &[(GgmlType, usize)], bias: bool) -> CpuLinear {
        let mut w = GgufWriter::new();
        for (i, &(ty, rows)) in parts.iter().enumerate() {
            let data = values(100 + i as u64, rows * k);
            let bytes = quant::quantize(ty, &data).unwrap();
            w.add_tensor(format!("w{i}"), ty, &[k as u64, rows as u64], bytes)
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
        let n: usize = parts.iter().map(|&(_, r)| r).sum();
        let b = bias.then(|| values(7, n));
        CpuLinear::new(&views, b).unwrap()
    }

    /// Dequantised weights, row-major `[n, k]`.
    fn dense(w: &CpuLinear) -> Vec<f32> {
        let (n, k) = (w.info.n, w.info.k);
        let mut d = vec![0.0; n * k];
        for r in 0..n {
            let (p, pr) = w.locate(r).unwrap();
            quant::dequantize(p.ty, p.row(pr), &mut d[r * k..(r + 1) * k]).unwrap();
        }
        d
    }

    /// f64 product, and per output the sum of |w||x| and the bound on the
    /// error Q8 activations may add: half a quantisation step of each block
    /// (amax / 254) times the block's sum of |w|.
    fn reference(w: &CpuLinear, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, k) = (w.info.n, w.info.k);
        let d = dense(w);
        let mut y = vec![0.0; m * n];
        let mut abs = vec![0.0; m * n];
        let mut q8 = vec![0.0; m * n];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            for r in 0..n {
                let wr = &d[r * k..(r + 1) * k];
                let mut s = w.bias.as_ref().map_or(0.0, |b| b[r] as f64);
                let (mut a, mut e) = (0.0, 0.0);
                for (wb, xb) in wr.chunks(QK).zip(xr.chunks(QK)) {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                    let wabs: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                    e += amax / 254.0 * wabs;
                    for (wv, xv) in wb.iter().zip(xb) {
                        s += *wv as f64 * *xv as f64;
                        a += (*wv as f64 * *xv as f64).abs();
                    }
                }
                y[i * n + r] = s;
                abs[i * n + r] = a;
                q8[i * n + r] = e;
            }
        }
        (y, abs, q8)
    }

    const TYPES: [GgmlType; 7] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::F16,
        GgmlType::F32,
    ];

    fn check(name: &str, got: &[f32], y: &[f64], abs: &[f64], extra: &[f64]) {
        for (j, &g) in got.iter().enumerate() {
            // f32 accumulation over k terms: relative 1e-5 of sum |w x| is
            // ~ k * eps / sqrt(k) with margin for k up to ~5k.
            let tol = 1e-5 * abs[j] + extra[j] + 1e-6;
            assert!(
                (g as f64 - y[j]).abs() <= tol,
                "{name}: output {j}: {g} vs {} (tolerance {tol})",
                y[j]
            );
        }
    }

    /// Every registered implementation that takes the shape (through the
    /// dispatch entry point), then `vecdot` at every SIMD level this machine
    /// has, against the f64 product. Float implementations: f32 rounding only;
    /// `vecdot` is exact integer arithmetic on Q8 activations, so only the
    /// activations' rounding (and f32 sums) separate it from the product.
    fn check_every_path(w: &CpuLinear, x: &[f32], m: usize, what: &str) {
        let (n, k) = (w.info.n, w.info.k);
        let ty = w.info.dtype;
        let (y, abs, q8) = reference(w, x, m);
        let none = vec![0.0; m * n];
        let mut out = vec![f32::NAN; m * n];
        let shape = MatmulShape {
            op: metallic::backend::MatmulOp::Matmul,
            dtype: ty,
            batch: 1,
            m,
            n,
            k,
            ta: false,
            tb: true,
        };
        for (idx, imp) in IMPLS.iter().enumerate() {
            if !(imp.supports)(&shape) {
                continue;
            }
            let extra = if matches!(idx, VECDOT | DECODE | VECDOT_GEMM) && vec_dot::needs_q8(ty) {
                &q8
            } else {
                &none
            };
            out.fill(f32::NAN);
            run(idx, x, w, m, &mut out).unwrap();
            check(&format!("{} {what}", imp.name), &out, &y, &abs, extra);
        }
        if !(IMPLS[VECDOT].supports)(&shape) {
            return;
        }
        let extra = if vec_dot::needs_q8(ty) { &q8 } else { &none };
        for level in SimdLevel::ALL {
            let Some(kern) = Kernels::for_level(level) else {
                eprintln!("{} not available here, skipped", level.name());
                continue;
            };
            out.fill(f32::NAN);
            vecdot_with(&kern, x, w, m, &mut out).unwrap();
            check(
                &format!("vecdot/{} {what}", level.name()),
                &out,
                &y,
                &abs,
                extra,
            );
            if (IMPLS[VECDOT_GEMM].supports)(&shape) {
                out.fill(f32::NAN);
                vecdot_gemm_with(&kern, x, w, m, &mut out).unwrap();
                check(
                    &format!("vecdot_gemm/{} {what}", level.name()),
                    &out,
                    &y,
                    &abs,
                    extra,
                );
            }
        }
    }

    #[test]
    fn every_impl_and_simd_level_matches_the_f64_product() {
        for ty in TYPES {
            for (k, parts, m, bias) in [
                (32, vec![5], 1, false),
                (96, vec![17], 2, true), // odd block count
                (896, vec![40, 8, 8], 1, true),
                (4864, vec![9], 3, false),
                (128, vec![70], 40, true), // more rows than GEMM_MIN_M
            ] {
                let w = linear(ty, k, &parts, bias);
                let x = values(k as u64 + m as u64, m * k);
                check_every_path(&w, &x, m, &format!("{} k={k} m={m}", ty.name()));
            }
        }
    }

    /// Every implementation and every SIMD level of `vecdot` on every shape
    /// of a small ragged grid: row lengths that are not a multiple of the
    /// kernels' unroll width (odd block counts, odd float lengths), 1..17,
    /// 33 and 50 output rows (the row chunks' and tiles' edges), stacked
    /// parts split mid-chunk, one
    /// and three activation rows. An exhaustive sweep of the grid rather than
    /// random draws: the space is small, and a failure names its shape.
    #[test]
    fn every_impl_and_level_matches_on_ragged_shapes() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F16,
            GgmlType::F32,
        ] {
            let ks: &[usize] = match ty {
                GgmlType::F16 | GgmlType::F32 => &[1, 5, 17, 31, 33, 67],
                GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => &[256, 768],
                _ => &[32, 96, 160, 288],
            };
            for &k in ks {
                // 1..=17, and stacks with whole 16-row tiles of the Q4_0, Q4_1 and Q8_0 tile
                // kernels next to partial ones.
                for n in (1..=17).chain([33, 50]) {
                    let parts = if n >= 3 {
                        vec![n / 3, n - n / 3]
                    } else {
                        vec![n]
                    };
                    let w = linear(ty, k, &parts, n % 2 == 1);
                    for m in [1, 3] {
                        let x = values((k * 31 + n * 7 + m) as u64, m * k);
                        check_every_path(&w, &x, m, &format!("{} k={k} n={n} m={m}", ty.name()));
                    }
                }
            }
        }
    }

    /// Batch invariance: each row of an m-row product is bit for bit the
    /// one-row product of that row alone, for the decode kernels at every
    /// SIMD level (`vecdot`'s multi-row kernels share each weight block's
    /// decode between rows), on ragged shapes: odd block counts, 1..=17, 33
    /// and 50 output rows in stacked parts and 16 and 32 in one (whole and
    /// partial 16-row tiles of the Q4_0, Q4_1 and Q8_0 tile kernels), 1..9
    /// activation rows (partial groups of the kernels' four) and 31 (the
    /// most a decode-sized product has).
    #[test]
    fn every_row_of_a_multi_row_product_is_the_single_row_product() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::F16,
        ] {
            let ks: &[usize] = match ty {
                GgmlType::Q4_K => &[256, 768],
                _ => &[32, 96, 160, 896],
            };
            for &k in ks {
                for n in (1..=17).chain([32, 33, 50]) {
                    let parts = if n >= 3 && n % 16 != 0 {
                        vec![n / 3, n - n / 3]
                    } else {
                        vec![n]
                    };
                    let w = linear(ty, k, &parts, n % 2 == 1);
                    for m in (1..=9).chain([31]) {
                        let x = values((k * 13 + n * 5 + m) as u64, m * k);
                        let what = format!("{} k={k} n={n} m={m}", ty.name());
                        let levels = SimdLevel::ALL.into_iter().filter_map(Kernels::for_level);
                        for kern in levels {
                            let product = |x: &[f32], m: usize| {
                                let mut out = vec![f32::NAN; m * n];
                                vecdot_with(&kern, x, &w, m, &mut out).unwrap();
                                out
                            };
                            let all = product(&x, m);
                            for i in 0..m {
                                let one = product(&x[i * k..(i + 1) * k], 1);
                                let (got, want) = (&all[i * n..(i + 1) * n], &one[..]);
                                assert!(
                                    got.iter()
                                        .zip(want)
                                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "vecdot/{} {what} row {i}: {got:?} vs {want:?}",
                                    kern.level().name()
                                );
                            }
                        }
                        for imp in [
                            FDOT,
                            DECODE,
                            default_impl(&MatmulShape {
                                op: metallic::backend::MatmulOp::Matmul,
                                dtype: ty,
                                batch: 1,
                                m,
                                n,
                                k,
                                ta: false,
                                tb: true,
                            }),
                        ] {
                            let mut all = vec![f32::NAN; m * n];
                            run(imp, &x, &w, m, &mut all).unwrap();
                            for i in 0..m {
                                let mut one = vec![f32::NAN; n];
                                run(imp, &x[i * k..(i + 1) * k], &w, 1, &mut one).unwrap();
                                assert!(
                                    all[i * n..(i + 1) * n]
                                        .iter()
                                        .zip(&one)
                                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{} {what} row {i}",
                                    IMPLS[imp].name
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every row of a `vecdot_gemm` product against `vecdot`'s product of
    /// that row alone, at every SIMD level, on ragged shapes: row counts
    /// around the micro-tile's six (1..=9, 31..=33, 37), weight rows around
    /// the tile's 16 (1, 5, 15, 16, 17, 33) in stacked parts, odd block
    /// counts (and odd super-block counts for the K-quants), with and
    /// without bias, parts of different layouts mixed in one tile (nibbles
    /// with bytes, anything with Q6_K's scale per half). Where the level has
    /// no tile kernel `vecdot_gemm` is `vecdot`'s multi-row kernels: bit for
    /// bit the one-row product. The AVX-512 tile kernel has the same integer
    /// block dots and per-block scales but sums the blocks in its own order
    /// (and adds the weights' offsets apart), so it agrees to float32
    /// summation order: 1e-5 of sum |w x|.
    #[test]
    fn vecdot_gemm_rows_match_the_single_row_vecdot_product() {
        let plain = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ];
        let kquants = [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];
        let split = |ty, n: usize| {
            if n >= 3 {
                vec![(ty, n / 3), (ty, n - n / 3)]
            } else {
                vec![(ty, n)]
            }
        };
        /// A name, the parts, the row lengths to try.
        type Case = (String, Vec<(GgmlType, usize)>, &'static [usize]);
        let mut cases: Vec<Case> = Vec::new();
        for n in [1usize, 5, 15, 16, 17, 33] {
            for ty in plain {
                cases.push((ty.name().into(), split(ty, n), &[32, 96, 160, 896]));
            }
            for ty in kquants {
                cases.push((ty.name().into(), split(ty, n), &[256, 768]));
            }
        }
        for (parts, ks) in [
            (
                vec![(GgmlType::Q4_0, 7), (GgmlType::Q4_1, 12)],
                &[32, 160][..],
            ),
            (vec![(GgmlType::Q4_1, 9), (GgmlType::Q8_0, 9)], &[32, 160]),
            (vec![(GgmlType::Q5_0, 5), (GgmlType::Q8_0, 14)], &[96]),
            // Qwen2.5 Q4_K_M / Q5_K_M projections: K-quants fused with the
            // other types, tiles straddling the parts.
            (
                vec![
                    (GgmlType::Q4_K, 9),
                    (GgmlType::Q4_K, 3),
                    (GgmlType::Q6_K, 6),
                ],
                &[256, 768],
            ),
            (vec![(GgmlType::Q5_K, 20), (GgmlType::Q8_0, 5)], &[256]),
            (vec![(GgmlType::Q5_0, 11), (GgmlType::Q6_K, 7)], &[512]),
        ] {
            let name = parts
                .iter()
                .map(|p| p.0.name())
                .collect::<Vec<_>>()
                .join("+");
            cases.push((name, parts, ks));
        }
        for (name, parts, ks) in &cases {
            for &k in *ks {
                let n: usize = parts.iter().map(|p| p.1).sum();
                let w = mixed_linear(k, parts, n % 2 == 1);
                for m in (1..=9).chain([31, 32, 33, 37]) {
                    let x = values((k * 17 + n * 3 + m) as u64, m * k);
                    let (_, abs, _) = reference(&w, &x, m);
                    let what = format!("{name} k={k} n={n} m={m}");
                    for kern in SimdLevel::ALL.into_iter().filter_map(Kernels::for_level) {
                        let mut all = vec![f32::NAN; m * n];
                        vecdot_gemm_with(&kern, &x, &w, m, &mut all).unwrap();
                        let tiled = has_tile_kernel(&kern);
                        for i in 0..m {
                            let mut one = vec![f32::NAN; n];
                            vecdot_with(&kern, &x[i * k..(i + 1) * k], &w, 1, &mut one).unwrap();
                            for (j, (&g, &v)) in
                                all[i * n..(i + 1) * n].iter().zip(&one).enumerate()
                            {
                                let level = kern.level().name();
                                if tiled {
                                    let tol = 1e-5 * abs[i * n + j] + 1e-6;
                                    assert!(
                                        (g as f64 - v as f64).abs() <= tol,
                                        "vecdot_gemm/{level} {what} row {i} col {j}: {g} vs {v}"
                                    );
                                } else {
                                    assert_eq!(
                                        g.to_bits(),
                                        v.to_bits(),
                                        "vecdot_gemm/{level} {what} row {i} col {j}: {g} vs {v}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_levels_agree_with_the_scalar_kernels() {
        // Same integer dots, different float summation order: 1e-5 of sum |w x|.
        for ty in TYPES {
            let (k, m) = (896, 2);
            let w = linear(ty, k, &[33], true);
            let n = w.info.n;
            let x = values(3, m * k);
            let (_, abs, _) = reference(&w, &x, m);
            let mut base = vec![0.0; m * n];
            vecdot_with(
                &Kernels::for_level(SimdLevel::Scalar).unwrap(),
                &x,
                &w,
                m,
                &mut base,
            )
            .unwrap();
            let base: Vec<f64> = base.iter().map(|&v| v as f64).collect();
            for level in SimdLevel::ALL
                .into_iter()
                .filter(|&l| l != SimdLevel::Scalar)
            {
                if let Some(kern) = Kernels::for_level(level) {
                    let mut out = vec![0.0; m * n];
                    vecdot_with(&kern, &x, &w, m, &mut out).unwrap();
                    check(level.name(), &out, &base, &abs, &vec![0.0; m * n]);
                }
            }
        }
    }

    #[test]
    fn row_split_is_serial_for_small_products_and_one_task_a_thread_otherwise() {
        // 64 rows of 896 Q8_0 values: 61 KB, under the serial threshold.
        let small = linear(GgmlType::Q8_0, 896, &[64], false);
        assert!(work(&small, 1) < SERIAL_WORK);
        assert_eq!(
            split(&small, 1, 16),
            Split {
                rows: 64,
                parallel: false
            }
        );
        assert!(row_kernel(FDOT, &small, 1) && row_kernel(VECDOT, &small, 1));
        assert!(!row_kernel(GEMM, &small, 1));
        // 4864 rows of 896: 4.6 MB, parallel with one task per thread.
        let big = linear(GgmlType::Q8_0, 896, &[4000, 864], false);
        for threads in [2, 3, 16] {
            let s = split(&big, 1, threads);
            let tasks = 4864usize.div_ceil(s.rows);
            assert!(s.parallel && tasks == threads, "{threads}: {s:?}");
        }
        // One thread never goes to the pool.
        assert!(!split(&big, 1, 1).parallel);
        // Every row is visited once, serial or parallel.
        for s in [split(&big, 1, 1), split(&big, 1, 7)] {
            let seen: Vec<std::sync::atomic::AtomicU8> = (0..4864)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect();
            try_for_each_task(s, 4864, |rows| {
                for r in rows {
                    seen[r].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
            .unwrap();
            assert!(seen
                .iter()
                .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn default_rule_picks_vecdot_or_fdot_for_decode_and_8_bit_tiles_or_gemm_for_prefill() {
        let shape = |m, dtype| MatmulShape {
            op: metallic::backend::MatmulOp::Matmul,
            dtype,
            batch: 1,
            m,
            n: 896,
            k: 896,
            ta: false,
            tb: true,
        };
        assert_eq!(
            IMPLS[default_impl(&shape(1, GgmlType::Q4_1))].name,
            "vecdot"
        );
        assert_eq!(
            IMPLS[default_impl(&shape(31, GgmlType::Q4_0))].name,
            "vecdot"
        );
        // Q8_0, Q5_0, Q5_1 and Q4_K layers in 8 bits where the level has
        // SIMD kernels for them; an output projection of theirs on `fdot`.
        let kern = vec_dot::kernels();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
        ] {
            // Rows of 1024: whole Q4_K super-blocks.
            let mut layer = shape(1, ty);
            layer.k = 1024;
            assert_eq!(
                IMPLS[default_impl(&layer)].name,
                if kern.has_simd(ty) { "vecdot" } else { "fdot" },
                "{}",
                ty.name()
            );
            assert_eq!(
                IMPLS[default_impl_for(&layer, Role::Output)].name,
                "fdot",
                "{} output",
                ty.name()
            );
        }
        // Q4_0 and Q4_1 outputs stay in 8 bits (their KLD passes with them).
        assert_eq!(
            IMPLS[default_impl_for(&shape(1, GgmlType::Q4_0), Role::Output)].name,
            "vecdot"
        );
        // Prefill: every type with a tile kernel in 8 bits where the AVX-512
        // VNNI tiles run; an output projection only for Q4_0/Q4_1, else on
        // `gemm` (as every type without that kernel).
        let tiles = has_tile_kernel(vec_dot::kernels());
        let tiled = |yes| if tiles && yes { "vecdot_gemm" } else { "gemm" };
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let output = matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1);
            let s = shape(GEMM_MIN_M, ty);
            assert_eq!(IMPLS[default_impl(&s)].name, tiled(true), "{ty:?}");
            assert_eq!(
                IMPLS[default_impl_for(&s, Role::Output)].name,
                tiled(output),
                "{ty:?} output"
            );
        }
        let mut k_rows = shape(GEMM_MIN_M, GgmlType::Q6_K);
        k_rows.k = 4864;
        assert_eq!(IMPLS[default_impl(&k_rows)].name, tiled(true));
        for ty in [GgmlType::F16, GgmlType::F32, GgmlType::BF16] {
            assert_eq!(IMPLS[default_impl(&shape(GEMM_MIN_M, ty))].name, "gemm");
        }
        // Q4_K rows of 896 are not whole super-blocks: the reference takes them.
        assert_eq!(IMPLS[default_impl(&shape(1, GgmlType::Q4_K))].name, "gemv");
        let mut odd = shape(1, GgmlType::Q8_0);
        odd.batch = 14;
        assert!(IMPLS.iter().all(|i| !(i.supports)(&odd)));
    }

    /// The backend knows the model's output projection by its tensor name
    /// when it is uploaded (`output.weight`, or the tied
    /// `token_embd.weight`) and keeps a Q8_0 one's prefill products in
    /// float32 activations, while a layer of the same type goes to the
    /// 8-bit tiles.
    #[test]
    fn backend_keeps_the_output_projection_prefill_in_float32() {
        use metallic::backend::Backend;
        let k = 64;
        let mut w = GgufWriter::new();
        for (name, rows) in [("output.weight", 40usize), ("blk.0.ffn_up.weight", 24)] {
            let data = values(rows as u64, rows * k);
            let bytes = quant::quantize(GgmlType::Q8_0, &data).unwrap();
            w.add_tensor(name, GgmlType::Q8_0, &[k as u64, rows as u64], bytes)
                .unwrap();
        }
        let mut buf = Vec::new();
        w.write_to(&mut buf).unwrap();
        let file = Arc::new(GgufFile::from_bytes(buf).unwrap());
        let cpu = crate::CpuBackend::new(1).unwrap();
        for t in file.tensors() {
            cpu.upload_linear(&[WeightView::new(file.clone(), t.clone())], None)
                .unwrap();
        }
        let shape = |n| MatmulShape {
            op: metallic::backend::MatmulOp::Matmul,
            dtype: GgmlType::Q8_0,
            batch: 1,
            m: 64,
            n,
            k,
            ta: false,
            tb: true,
        };
        let tiles = has_tile_kernel(vec_dot::kernels());
        assert_eq!(IMPLS[cpu.default_matmul_impl(&shape(40))].name, "gemm");
        assert_eq!(
            IMPLS[cpu.default_matmul_impl(&shape(24))].name,
            if tiles { "vecdot_gemm" } else { "gemm" }
        );
        // Decode-sized products are the decode rule's for their role: the
        // output projection's Q8_0 in float32 activations, the layer's in 8
        // bits where the CPU has Q8_0 SIMD kernels.
        let mut one = shape(40);
        one.m = 1;
        assert_eq!(IMPLS[cpu.default_matmul_impl(&one)].name, "fdot");
        assert_eq!(
            cpu.default_matmul_impl(&one),
            decode_impl_for(&one, Role::Output)
        );
        let mut layer = shape(24);
        layer.m = 1;
        assert_eq!(
            IMPLS[cpu.default_matmul_impl(&layer)].name,
            if vec_dot::kernels().has_simd(GgmlType::Q8_0) {
                "vecdot"
            } else {
                "fdot"
            }
        );
    }

    /// llama.cpp's mixes fuse parts of different types (Q3_K_M on 64-wide
    /// rows: a Q4_0 query, a Q5_1 value); fdot runs its kernel for the parts
    /// it has one for and the reference dot for the others (BF16 here).
    #[test]
    fn fdot_runs_mixed_type_parts_with_and_without_kernels() {
        let k = 256;
        let w = mixed_linear(
            k,
            &[
                (GgmlType::Q4_0, 8),
                (GgmlType::BF16, 4),
                (GgmlType::Q5_1, 4),
            ],
            true,
        );
        let m = 2;
        let x = values(11, m * k);
        let (y, abs, _) = reference(&w, &x, m);
        let mut out = vec![f32::NAN; m * w.info.n];
        crate::matmul_fdot::fdot(&x, &w, m, &mut out).unwrap();
        let none = vec![0.0; m * w.info.n];
        check("fdot mixed", &out, &y, &abs, &none);
    }
}
