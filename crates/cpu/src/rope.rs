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

#[cfg(test)]
mod tests {
    use super::*;
    use metallic::rng::Xoshiro256;

    const LAYOUT: QkvLayout = QkvLayout {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 10,
    };

    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut r = Xoshiro256::new(seed);
        (0..len).map(|_| r.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    fn rope(style: RopeStyle, dim: usize, pos_scale: f32) -> Rope<'static, crate::CpuTensor> {
        Rope {
            style,
            theta: 10000.0,
            dim,
            pos_scale,
            freq_factors: None,
        }
    }

    /// The rotation written out in f64 from its definition: pair `j` of the
    /// first `dim` dimensions of every Q and K head turns by
    /// `pos * pos_scale / (theta^(2j/dim) * factor_j)`; V and the dimensions
    /// past `dim` stay as they are.
    fn reference(
        x: &[f32],
        pos: &[i32],
        r: &Rope<'_, crate::CpuTensor>,
        factors: Option<&[f32]>,
    ) -> Vec<f64> {
        let (hd, width) = (LAYOUT.head_dim, LAYOUT.row_width());
        let half = r.dim / 2;
        let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (i, &p) in pos.iter().enumerate() {
            for h in 0..LAYOUT.n_heads + LAYOUT.n_kv_heads {
                let base = i * width + h * hd;
                for j in 0..half {
                    let factor = factors.map_or(1.0, |f| f[j] as f64);
                    let freq =
                        1.0 / ((r.theta as f64).powf(2.0 * j as f64 / r.dim as f64) * factor);
                    let a = p as f64 * r.pos_scale as f64 * freq;
                    let (i0, i1) = match r.style {
                        RopeStyle::Neox => (base + j, base + j + half),
                        RopeStyle::Normal => (base + 2 * j, base + 2 * j + 1),
                    };
                    let (x0, x1) = (x[i0] as f64, x[i1] as f64);
                    out[i0] = x0 * a.cos() - x1 * a.sin();
                    out[i1] = x0 * a.sin() + x1 * a.cos();
                }
            }
        }
        out
    }

    /// Applies the kernel to fresh values and checks it against [`reference`].
    /// The kernel forms the angle in f32: at position p its error is about
    /// p * 2^-24 radians, so 1e-4 holds to positions in the hundreds.
    fn check(r: &Rope<'_, crate::CpuTensor>, factors: Option<&[f32]>) -> Vec<f32> {
        // Positions out of order and with gaps, as a continued prefill has.
        let pos = [0, 7, 3, 211, 36];
        let x = values(r.dim as u64, pos.len() * LAYOUT.row_width());
        let mut got = x.clone();
        apply(&mut got, &pos, pos.len(), &LAYOUT, r, factors);
        let want = reference(&x, &pos, r, factors);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() < 1e-4, "element {i}: {g} vs {w}");
        }
        // V is never rotated.
        let v_start = (LAYOUT.n_heads + LAYOUT.n_kv_heads) * LAYOUT.head_dim;
        for row in 0..pos.len() {
            let v = row * LAYOUT.row_width() + v_start..(row + 1) * LAYOUT.row_width();
            assert_eq!(got[v.clone()], x[v], "row {row}: V changed");
        }
        got
    }

    #[test]
    fn neox_rotates_dimensions_half_a_head_apart() {
        check(&rope(RopeStyle::Neox, LAYOUT.head_dim, 1.0), None);
    }

    #[test]
    fn normal_rotates_adjacent_dimensions() {
        check(&rope(RopeStyle::Normal, LAYOUT.head_dim, 1.0), None);
    }

    #[test]
    fn partial_rotation_leaves_the_dimensions_past_dim_alone() {
        for style in [RopeStyle::Neox, RopeStyle::Normal] {
            // The reference copies dimensions past `dim`, so `check` asserts them unchanged.
            check(&rope(style, 6, 1.0), None);
        }
    }

    #[test]
    fn position_zero_is_the_identity() {
        let x = values(1, LAYOUT.row_width());
        let mut got = x.clone();
        apply(
            &mut got,
            &[0],
            1,
            &LAYOUT,
            &rope(RopeStyle::Neox, 10, 1.0),
            None,
        );
        assert_eq!(got, x);
    }

    #[test]
    fn linear_scaling_divides_positions() {
        for style in [RopeStyle::Neox, RopeStyle::Normal] {
            check(&rope(style, LAYOUT.head_dim, 0.25), None);
            // Position 8 at scale 1/4 is position 2 unscaled, to the bit.
            let x = values(2, LAYOUT.row_width());
            let (mut scaled, mut plain) = (x.clone(), x);
            apply(&mut scaled, &[8], 1, &LAYOUT, &rope(style, 10, 0.25), None);
            apply(&mut plain, &[2], 1, &LAYOUT, &rope(style, 10, 1.0), None);
            assert_eq!(scaled, plain);
        }
    }

    #[test]
    fn frequency_factors_divide_each_pair_frequency() {
        let factors = [1.0, 2.0, 8.0, 0.5, 32.0];
        for style in [RopeStyle::Neox, RopeStyle::Normal] {
            let r = rope(style, LAYOUT.head_dim, 1.0);
            let with = check(&r, Some(&factors));
            assert_ne!(with, check(&r, None), "factors must change the result");
            // Factors of one change nothing.
            assert_eq!(check(&r, Some(&[1.0; 5])), check(&r, None));
        }
    }

    #[test]
    fn inverse_frequencies_match_the_f64_formula() {
        let f = inv_freqs(1_000_000.0, 64, None);
        assert_eq!(f.len(), 32);
        for (i, &v) in f.iter().enumerate() {
            let want = 1.0 / 1_000_000f64.powf(2.0 * i as f64 / 64.0);
            assert!(((v as f64 - want) / want).abs() < 1e-7, "pair {i}");
        }
    }
}
