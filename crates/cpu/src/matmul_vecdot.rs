//! `vecdot`: the decode kernel. Activations are quantised to Q8 once per
//! call, then every weight row is dotted with them in its own block format
//! (no dequantised copy), rows spread over the pool in chunks. Types with a
//! tile kernel at the detected level (Q4_0, Q4_1 and Q8_0 with AVX-512: 16 weight
//! rows a call, see vec_dot_x86.rs) run in tiles, tasks rounded to whole tiles.

use std::cell::RefCell;

use metallic::error::{Error, Result};

use crate::linear::CpuLinear;
use crate::q8_act::{Q8Acts, Q8Row};
use crate::shared_out::SharedOut;
use crate::vec_dot::{self, Kernels};

/// Activation rows per multi-row kernel call.
const ROWS: usize = 4;
/// Activation rows gathered on the stack: every decode-sized product
/// (fewer than `GEMM_MIN_M` rows) fits.
const STACK_ROWS: usize = crate::matmul::GEMM_MIN_M;

thread_local! {
    // Reused across calls: a decode step allocates nothing.
    static ACTS: RefCell<Q8Acts> = RefCell::new(Q8Acts::default());
}

/// `out[m, n] = x[m, k] * w^T + bias` with the detected SIMD level.
pub fn vecdot(x: &[f32], w: &CpuLinear, m: usize, out: &mut [f32]) -> Result<()> {
    vecdot_with(vec_dot::kernels(), x, w, m, out)
}

/// As [`vecdot`] with a given kernel set (tests compare the levels).
pub fn vecdot_with(
    kern: &Kernels,
    x: &[f32],
    w: &CpuLinear,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    let (_, k) = crate::matmul::check_buffers(x, w, m, out)?;
    // A fused projection of llama.cpp's mixes can stack parts of types
    // without a kernel here (Q3_K_M: a Q4_0 query next to a Q5_1 value):
    // `fdot` runs every part with float32 activations, instead of this
    // loop dequantising such rows one at a time.
    if w.parts.iter().any(|p| !vec_dot::supported(p.ty)) {
        return crate::matmul_fdot::fdot(x, w, m, out);
    }
    let any_q8 = w.parts.iter().any(|p| vec_dot::needs_q8(p.ty));
    if any_q8 && !k.is_multiple_of(crate::q8_act::QK) {
        return Err(Error::InvalidArgument(format!(
            "vecdot: row length {k} is not a multiple of 32"
        )));
    }
    ACTS.with_borrow_mut(|acts| {
        if any_q8 {
            acts.quantize(x, m, k);
        }
        run_rows(kern, acts, x, w, m, out)
    })
}

/// Whether [`vecdot_swiglu`] takes this gate|up weight: an even row count
/// and every part dotted with 8-bit activations.
pub fn fuses_swiglu(w: &CpuLinear) -> bool {
    w.info.n.is_multiple_of(2)
        && w.info.k.is_multiple_of(crate::q8_act::QK)
        && w.parts
            .iter()
            .all(|p| vec_dot::supported(p.ty) && vec_dot::needs_q8(p.ty))
}

/// Decode's gate|up product and SwiGLU in one job: for one activation row,
/// `out[j] = silu(g_j) * u_j` with `g|u = x w^T` (`w` holds the `ffn` gate
/// rows, then the `ffn` up rows; the product lands in `gate_up`, [2 ffn]).
/// Each task takes gate rows `a..b` and up rows `ffn + a..ffn + b`, then
/// writes `out[a..b]` itself: one hand-off to the threads a layer fewer
/// than the product followed by `swiglu`, with the same bits (each row's
/// dot product does not depend on the rows beside it, and the SwiGLU kernel
/// gives the same bits wherever a range starts). `w` must pass
/// [`fuses_swiglu`].
pub fn vecdot_swiglu(x: &[f32], w: &CpuLinear, gate_up: &mut [f32], out: &mut [f32]) -> Result<()> {
    let kern = vec_dot::kernels();
    let (n, k) = (w.info.n, w.info.k);
    let ffn = n / 2;
    if !fuses_swiglu(w) {
        return Err(Error::InvalidArgument(format!(
            "vecdot_swiglu: a gate|up weight of {n} rows of {k} values in types {:?} \
             (needs an even row count, rows a multiple of 32 long, 8-bit-activation types)",
            w.parts.iter().map(|p| p.ty).collect::<Vec<_>>()
        )));
    }
    crate::matmul::check_buffers(x, w, 1, gate_up)?;
    if out.len() < ffn {
        return Err(Error::InvalidArgument(format!(
            "vecdot_swiglu: output holds {} values, {ffn} needed",
            out.len()
        )));
    }
    ACTS.with_borrow_mut(|acts| {
        acts.quantize(x, 1, k);
        let a = acts.row(0);
        let gu = SharedOut::new(gate_up);
        let o = SharedOut::new(out);
        // As many tasks as the plain product would have, each over pairs of
        // gate and up rows instead of rows.
        let mut split = crate::matmul::split(w, 1, crate::matmul::threads());
        split.rows = ffn.div_ceil(n.div_ceil(split.rows.max(1)));
        if split.parallel && w.parts.iter().any(|p| kern.has_tile(p.ty)) {
            split.rows = split.rows.next_multiple_of(vec_dot::TILE_ROWS);
        }
        let ahead = (PREFETCH_BYTES / w.parts[0].row_bytes.max(1)).max(1);
        let swiglu = crate::swiglu_simd::kernel();
        crate::matmul::try_for_each_task(split, ffn, |rows| -> Result<()> {
            one_row(kern, w, a, rows.clone(), gu, ahead);
            one_row(kern, w, a, ffn + rows.start..ffn + rows.end, gu, ahead);
            // SAFETY: this task alone wrote gate_up's columns `rows` and
            // `ffn + rows` (just now) and alone writes out[rows]; both
            // buffers outlive the tasks and hold 2 ffn and ffn values
            // (checked above).
            let (g, u, o) = unsafe {
                (
                    std::slice::from_raw_parts(gu.ptr().add(rows.start), rows.len()),
                    std::slice::from_raw_parts(gu.ptr().add(ffn + rows.start), rows.len()),
                    std::slice::from_raw_parts_mut(o.ptr().add(rows.start), rows.len()),
                )
            };
            swiglu.row(o, g, u);
            Ok(())
        })
    })
}

/// How far ahead of the row being multiplied its chunk's rows are prefetched.
/// Hardware prefetchers stop at 4 KiB page boundaries, so weights streamed
/// from DRAM stall at every new page; prefetching ~8 KiB ahead took SmolLM2
/// decode (vecdot, 2 threads) from ~70 to ~90 tok/s on the development
/// machine. (`metallic probe` with 1 GiB of rotated copies showed it slowing
/// the 145 MB lm_head instead: the probe's worst case is not the model's.)
/// Still the best distance with the weights in huge pages (Qwen2.5-0.5B
/// Q4_0 decode, `metallic bench -p 0 -n 128 -t 2`: 8 KiB ahead ran 5-15%
/// faster than 4 KiB or 16 KiB, 2026-11-29, noisy shared machine).
const PREFETCH_BYTES: usize = 8192;

/// Prefetches `bytes` as [`vec_dot::prefetch_hint`] says (`prefetcht0` by
/// default: see [`vec_dot::Prefetch`] for why not non-temporal).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    let hint = vec_dot::prefetch_hint();
    for off in (0..bytes.len()).step_by(64) {
        vec_dot::prefetch_line(hint, bytes[off..].as_ptr());
    }
}

/// Weight rows per group kernel call: [`vec_dot::GROUP_ROWS`] for short
/// rows; long rows (a down projection's 4864 values) one at a time, as the
/// group's side-by-side streams and their prefetch then no longer fit L1
/// (`metallic probe -t 1`: Qwen2.5-0.5B's down projection ran ~30% slower
/// in groups of four, every shorter shape ~10-45% faster).
fn group_rows(row_bytes: usize) -> usize {
    if row_bytes * vec_dot::GROUP_ROWS <= GROUP_BYTES {
        vec_dot::GROUP_ROWS
    } else {
        1
    }
}

/// Most bytes a group's rows may span (see [`group_rows`]).
const GROUP_BYTES: usize = 4096;

fn run_rows(
    kern: &Kernels,
    acts: &Q8Acts,
    x: &[f32],
    w: &CpuLinear,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    let (n, k) = (w.info.n, w.info.k);
    // The quantised activation rows, gathered once per call: on the stack for
    // decode-sized products (no allocation per token), else on the heap.
    let stack: [Q8Row<'_>; STACK_ROWS];
    let heap: Vec<Q8Row<'_>>;
    let arows: &[Q8Row<'_>] = if m == 0 || !w.parts.iter().any(|p| vec_dot::needs_q8(p.ty)) {
        &[]
    } else if m <= STACK_ROWS {
        // Entries past m repeat the last row and are never read.
        stack = std::array::from_fn(|i| acts.row(i.min(m - 1)));
        &stack[..m]
    } else {
        heap = (0..m).map(|i| acts.row(i)).collect();
        &heap
    };
    let optr = SharedOut::new(out);
    let tiles = w.parts.iter().any(|p| kern.has_tile(p.ty));
    let mut split = crate::matmul::split(w, m, crate::matmul::threads());
    if tiles && split.parallel {
        // Tasks of whole tiles: a task's last, partial tile computes all
        // of a tile's lanes for fewer rows.
        split.rows = split.rows.next_multiple_of(vec_dot::TILE_ROWS);
    }
    let ahead = (PREFETCH_BYTES / w.parts[0].row_bytes.max(1)).max(1);
    crate::matmul::try_for_each_task(split, n, |rows| -> Result<()> {
        let (mut r, end) = (rows.start, rows.end);
        if let [one] = arows {
            if w.parts.iter().all(|p| vec_dot::needs_q8(p.ty)) {
                one_row(kern, w, *one, rows, optr, ahead);
                return Ok(());
            }
        }
        while r < end {
            if r + ahead < end {
                if let Some((p, pr)) = w.locate(r + ahead) {
                    prefetch(p.row(pr));
                }
            }
            let (part, pr) = w.locate(r).expect("row within n");
            if kern.has_tile(part.ty) {
                r += tile_rows(kern, w, part, pr, r, end, arows, optr);
                continue;
            }
            let wrow = part.row(pr);
            let b = w.bias.as_ref().map_or(0.0, |b| b[r]);
            if vec_dot::needs_q8(part.ty) {
                // Several activation rows (a batch of decoding sequences, a
                // short prefill) share each decode of this weight row's blocks.
                for (c, chunk) in arows.chunks(ROWS).enumerate() {
                    let mut v = [0.0f32; ROWS];
                    kern.quant_rows(part.ty, wrow, chunk, &mut v[..chunk.len()]);
                    for (j, v) in v[..chunk.len()].iter().enumerate() {
                        let i = c * ROWS + j;
                        // SAFETY: column r of every row is written by this task only,
                        // and i * n + r < m * n <= out.len() (checked by the caller).
                        unsafe { *optr.ptr().add(i * n + r) = v + b };
                    }
                }
            } else {
                for i in 0..m {
                    let v = kern.float(part.ty, wrow, &x[i * k..(i + 1) * k]);
                    // SAFETY: as above.
                    unsafe { *optr.ptr().add(i * n + r) = v + b };
                }
            }
            r += 1;
        }
        Ok(())
    })
}

/// Rows from `r` (row `pr` of `part`) to the end of the tile, the part or
/// `end`, whichever comes first, against every activation row, through the
/// tile kernel (`kern.has_tile(part.ty)`); the next tile's bytes (within
/// the part and `end`) are prefetched meanwhile. Returns the rows done.
#[allow(clippy::too_many_arguments)]
fn tile_rows(
    kern: &Kernels,
    w: &CpuLinear,
    part: &crate::linear::Part,
    pr: usize,
    r: usize,
    end: usize,
    arows: &[Q8Row<'_>],
    out: SharedOut,
) -> usize {
    let (n, rb) = (w.info.n, part.row_bytes);
    let left = (part.rows - pr).min(end - r);
    let g = vec_dot::TILE_ROWS.min(left);
    let bytes = part.w.bytes();
    let next = &bytes[(pr + g) * rb..(pr + g + vec_dot::TILE_ROWS.min(left - g)) * rb];
    let tile = &bytes[pr * rb..(pr + g) * rb];
    let mut v = [0.0f32; vec_dot::TILE_ACTS * vec_dot::TILE_ROWS];
    for (c, chunk) in arows.chunks(vec_dot::TILE_ACTS).enumerate() {
        kern.quant_tile(part.ty, tile, rb, g, chunk, &mut v, next);
        for j in 0..chunk.len() {
            let i = c * vec_dot::TILE_ACTS + j;
            for (t, v) in v[j * vec_dot::TILE_ROWS..][..g].iter().enumerate() {
                let b = w.bias.as_ref().map_or(0.0, |b| b[r + t]);
                // SAFETY: columns r..r + g of every row are written by this
                // task only, and i * n + r + t < m * n <= out.len().
                unsafe { *out.ptr().add(i * n + r + t) = v + b };
            }
        }
    }
    g
}

/// One activation row (plain decode) against rows `rows` of `w`, every part
/// of which takes Q8 activations: up to [`vec_dot::GROUP_ROWS`] weight rows
/// of a part per kernel call, sharing the activation blocks' loads (bit for
/// bit the one-row results). Each part's bytes are looked up once per task,
/// not per group: that lookup and `CpuLinear::locate` per group were ~5% of
/// a Qwen2.5-0.5B Q4_0 decode step's time on the development machine.
fn one_row(
    kern: &Kernels,
    w: &CpuLinear,
    a: Q8Row<'_>,
    rows: std::ops::Range<usize>,
    out: SharedOut,
    ahead: usize,
) {
    let mut base = 0;
    for part in &w.parts {
        let (lo, hi) = (rows.start.max(base), rows.end.min(base + part.rows));
        if lo < hi && kern.has_tile(part.ty) {
            let mut r = lo;
            while r < hi {
                r += tile_rows(kern, w, part, r - base, r, hi, &[a], out);
            }
        } else if lo < hi {
            let rb = part.row_bytes;
            let bytes = part.w.bytes();
            let g_max = group_rows(rb);
            // The rows a whole group ahead at least: a group streams its rows
            // side by side, so one row ahead (long rows) would leave the next
            // group's other rows to the hardware prefetcher, which stops at
            // page boundaries.
            let ahead = ahead.max(g_max);
            let (mut r, end) = (lo - base, hi - base);
            while r < end {
                let g = g_max.min(end - r);
                let pf = (r + ahead).min(end)..(r + ahead + g).min(end);
                prefetch(&bytes[pf.start * rb..pf.end * rb]);
                let mut v = [0.0f32; vec_dot::GROUP_ROWS];
                kern.quant_group(part.ty, &bytes[r * rb..(r + g) * rb], rb, a, &mut v[..g]);
                for (j, v) in v[..g].iter().enumerate() {
                    let c = base + r + j;
                    let b = w.bias.as_ref().map_or(0.0, |b| b[c]);
                    // SAFETY: column c is written by this task only; c < n <= out.len().
                    unsafe { *out.ptr().add(c) = v + b };
                }
                r += g;
            }
        }
        base += part.rows;
    }
}
