//! Row norms and element-wise ops.

use rayon::prelude::*;

pub fn rms_norm(x: &[f32], w: &[f32], m: usize, n: usize, eps: f32, out: &mut [f32]) {
    out[..m * n]
        .par_chunks_mut(n)
        .zip(x[..m * n].par_chunks(n))
        .for_each(|(o, r)| {
            // Accumulate in f64: rows of a few thousand values lose bits in f32.
            let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let scale = (1.0 / ((ss / n as f64) + eps as f64).sqrt()) as f32;
            for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
                *o = v * scale * g;
            }
        });
}

pub fn swiglu(gate_up: &[f32], m: usize, ffn: usize, out: &mut [f32]) {
    out[..m * ffn]
        .par_chunks_mut(ffn)
        .zip(gate_up[..m * 2 * ffn].par_chunks(2 * ffn))
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(ffn);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
