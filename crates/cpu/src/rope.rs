//! Rotary position embedding, in place on the Q and K heads.

use metallic::backend::{QkvLayout, Rope};
use metallic::config::RopeStyle;

/// Inverse frequencies of the rotated pairs, computed in f64 then rounded,
/// so that they equal HF's `1 / base^(2i/d)` to the last bit in most cases.
pub fn inv_freqs(theta: f32, dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let f = 1.0 / (theta as f64).powf((2 * i) as f64 / dim as f64);
            let f = f as f32;
            match factors {
                Some(ff) => f / ff[i],
                None => f,
            }
        })
        .collect()
}

pub fn apply(
    qkv: &mut [f32],
    pos: &[i32],
    m: usize,
    layout: &QkvLayout,
    rope: &Rope<'_, crate::CpuTensor>,
    factors: Option<&[f32]>,
) {
    let hd = layout.head_dim;
    let width = layout.row_width();
    let heads = layout.n_heads + layout.n_kv_heads;
    let freqs = inv_freqs(rope.theta, rope.dim, factors);
    let half = rope.dim / 2;
    let mut cs = vec![(0.0f32, 0.0f32); half];
    for (i, &p) in pos.iter().enumerate().take(m) {
        let p = p as f32 * rope.pos_scale;
        for (j, c) in cs.iter_mut().enumerate() {
            let a = p * freqs[j];
            *c = (a.cos(), a.sin());
        }
        let row = &mut qkv[i * width..i * width + heads * hd];
        for head in row.chunks_exact_mut(hd) {
            match rope.style {
                RopeStyle::Neox => {
                    for (j, &(c, s)) in cs.iter().enumerate() {
                        let (x0, x1) = (head[j], head[j + half]);
                        head[j] = x0 * c - x1 * s;
                        head[j + half] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::Normal => {
                    for (j, &(c, s)) in cs.iter().enumerate() {
                        let (x0, x1) = (head[2 * j], head[2 * j + 1]);
                        head[2 * j] = x0 * c - x1 * s;
                        head[2 * j + 1] = x0 * s + x1 * c;
                    }
                }
            }
        }
    }
}
