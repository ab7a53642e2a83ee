//! Row norms and element-wise ops.

use rayon::prelude::*;

/// Below this many elements an op runs on the calling thread: handing a
/// decode-sized row (a few thousand values, a few microseconds) to the pool
/// costs more than the work.
pub const SERIAL_ELEMENTS: usize = 1 << 14;

/// Whether an op over `elements` values should use the thread pool.
pub fn parallel(elements: usize) -> bool {
    elements >= SERIAL_ELEMENTS
}

fn rms_norm_row(o: &mut [f32], r: &[f32], w: &[f32], eps: f32) {
    // Accumulate in f64: rows of a few thousand values lose bits in f32.
    let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / ((ss / r.len() as f64) + eps as f64).sqrt()) as f32;
    for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
        *o = v * scale * g;
    }
}

pub fn rms_norm(x: &[f32], w: &[f32], m: usize, n: usize, eps: f32, out: &mut [f32]) {
    let (o, x) = (&mut out[..m * n], &x[..m * n]);
    if parallel(m * n) {
        o.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, r)| rms_norm_row(o, r, w, eps));
    } else {
        o.chunks_mut(n)
            .zip(x.chunks(n))
            .for_each(|(o, r)| rms_norm_row(o, r, w, eps));
    }
}

fn swiglu_row(o: &mut [f32], gu: &[f32]) {
    let (g, u) = gu.split_at(o.len());
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

pub fn swiglu(gate_up: &[f32], m: usize, ffn: usize, out: &mut [f32]) {
    let (o, gu) = (&mut out[..m * ffn], &gate_up[..m * 2 * ffn]);
    if parallel(m * ffn) {
        o.par_chunks_mut(ffn)
            .zip(gu.par_chunks(2 * ffn))
            .for_each(|(o, gu)| swiglu_row(o, gu));
    } else {
        o.chunks_mut(ffn)
            .zip(gu.chunks(2 * ffn))
            .for_each(|(o, gu)| swiglu_row(o, gu));
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
