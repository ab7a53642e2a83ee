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

/// The rotation of one position: `(cos, sin)` of each pair's angle.
/// Every layer of a decode step rotates the same position by the same
/// frequencies: [`apply`] keeps the last table it made (and the inverse
/// frequencies) per thread instead of recomputing them for every layer
/// (32 f64 `powf` and 32 `sin_cos` a call, ~2-3 us of a SmolLM2 layer on a
/// Xeon, and two allocations a call).
#[derive(Default)]
struct Table {
    /// What `freqs` were made from: theta's bits, dim, the factors.
    theta: u32,
    dim: usize,
    factors: Option<Vec<f32>>,
    freqs: Vec<f32>,
    /// What `cs` was made for: the position and the scale's bits.
    at: Option<(i32, u32)>,
    cs: Vec<(f32, f32)>,
}

impl Table {
    fn freqs(&mut self, theta: f32, dim: usize, factors: Option<&[f32]>) {
        if self.freqs.len() == dim / 2
            && self.theta == theta.to_bits()
            && self.dim == dim
            && same_bits(self.factors.as_deref(), factors)
        {
            return;
        }
        self.freqs = inv_freqs(theta, dim, factors);
        (self.theta, self.dim) = (theta.to_bits(), dim);
        self.factors = factors.map(<[f32]>::to_vec);
        self.at = None;
    }

    fn position(&mut self, pos: i32, pos_scale: f32) -> &[(f32, f32)] {
        if self.at != Some((pos, pos_scale.to_bits())) {
            let p = pos as f32 * pos_scale;
            self.cs.clear();
            self.cs.extend(self.freqs.iter().map(|&f| {
                let a = p * f;
                (a.cos(), a.sin())
            }));
            self.at = Some((pos, pos_scale.to_bits()));
        }
        &self.cs
    }
}

/// Whether two factor lists hold the same bits (`==` on floats would call
/// -0.0 and 0.0 equal, whose quotients differ in sign).
fn same_bits(a: Option<&[f32]>, b: Option<&[f32]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        }
        _ => false,
    }
}

thread_local! {
    static TABLE: std::cell::RefCell<Table> = std::cell::RefCell::new(Table::default());
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
    let half = rope.dim / 2;
    TABLE.with_borrow_mut(|table| {
        table.freqs(rope.theta, rope.dim, factors);
        for (i, &p) in pos.iter().enumerate().take(m) {
            let cs = table.position(p, rope.pos_scale);
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
    });
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

    /// The kept table never leaks from one call into another: calls that
    /// change the position, the scale, the dimension or the factors between
    /// them give what a fresh thread (an empty table) gives.
    #[test]
    fn a_kept_table_gives_the_bits_of_a_fresh_one() {
        let x = values(3, 3 * LAYOUT.row_width());
        let factors = [1.0, 2.0, 8.0, 0.5, 32.0];
        // style, dim, pos_scale, factors, positions
        type Call<'a> = (RopeStyle, usize, f32, Option<&'a [f32]>, &'a [i32]);
        let calls: [Call<'_>; 7] = [
            (RopeStyle::Neox, 10, 1.0, None, &[5]),
            (RopeStyle::Neox, 10, 1.0, None, &[5]),
            (RopeStyle::Neox, 10, 0.5, None, &[5]),
            (RopeStyle::Normal, 6, 0.5, None, &[5, 6, 6]),
            (RopeStyle::Normal, 10, 1.0, Some(&factors), &[6]),
            (RopeStyle::Normal, 10, 1.0, None, &[6]),
            (RopeStyle::Neox, 10, 1.0, None, &[7, 5, 7]),
        ];
        for (style, dim, scale, f, pos) in calls {
            let mut kept = x.clone();
            apply(
                &mut kept,
                pos,
                pos.len(),
                &LAYOUT,
                &rope(style, dim, scale),
                f,
            );
            let (f, p) = (f.map(<[f32]>::to_vec), pos.to_vec());
            let fresh = std::thread::spawn(move || {
                let mut y = values(3, 3 * LAYOUT.row_width());
                let r = rope(style, dim, scale);
                apply(&mut y, &p, p.len(), &LAYOUT, &r, f.as_deref());
                y
            })
            .join()
            .unwrap();
            assert_eq!(kept, fresh, "{style:?} dim {dim} scale {scale} pos {pos:?}");
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
