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
    // SIMD with a vectorised exp, the same bits at every level (swiglu_simd.rs).
    crate::swiglu_simd::kernel().row(o, g, u);
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

/// One row's SwiGLU (`gate_up` holds `2 * ffn` values) split in column
/// ranges over `team`, the calling thread included: a decode step's row
/// (4,864 values for Qwen2.5-0.5B; ~8 us of scalar `exp` on one core when
/// this was written, ~1-2 us with the SIMD kernel) while the team's other
/// threads would only spin. Each value is computed as
/// [`swiglu`] computes it.
pub fn swiglu_row_on_team(team: &crate::team::Team, gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    let (o, gu) = (&mut out[..ffn], &gate_up[..2 * ffn]);
    let (g, u) = gu.split_at(ffn);
    let chunk = ffn.div_ceil(team.threads()).max(1);
    let optr = crate::shared_out::SharedOut::new(o);
    team.run(ffn.div_ceil(chunk), &|t| {
        let cols = t * chunk..((t + 1) * chunk).min(ffn);
        // SAFETY: tasks take disjoint column ranges inside `o` (length ffn),
        // which outlives `run`.
        let o = unsafe { std::slice::from_raw_parts_mut(optr.ptr().add(cols.start), cols.len()) };
        // The same bits wherever a range starts: every level of the
        // kernel gives the portable code's bits (swiglu_simd.rs).
        crate::swiglu_simd::kernel().row(o, &g[cols.clone()], &u[cols]);
    });
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic::rng::Xoshiro256;

    /// Values in [-3, 3), the range activations mostly take.
    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut r = Xoshiro256::new(seed);
        (0..len)
            .map(|_| (r.next_f64() * 6.0 - 3.0) as f32)
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= rel * w.abs().max(1.0),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    /// `x / sqrt(mean(x^2) + eps) * w` per row, in f64.
    fn rms_norm_reference(x: &[f32], w: &[f32], n: usize, eps: f32) -> Vec<f64> {
        x.chunks(n)
            .flat_map(|r| {
                let ms = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
                let s = 1.0 / (ms + eps as f64).sqrt();
                r.iter().zip(w).map(move |(&v, &g)| v as f64 * s * g as f64)
            })
            .collect()
    }

    /// Both sides of the pool threshold, with row widths that are no power
    /// of two, and rows of very different scale (the norm must be per row).
    #[test]
    fn rms_norm_matches_f64_per_row_serial_and_pooled() {
        for (m, n) in [(1, 896), (3, 13), (29, 1000)] {
            assert_eq!(parallel(m * n), m * n >= SERIAL_ELEMENTS);
            let mut x = values(m as u64, m * n);
            x[..n].iter_mut().for_each(|v| *v *= 1000.0);
            let w = values(7, n);
            let mut out = vec![f32::NAN; m * n + 5];
            rms_norm(&x, &w, m, n, 1e-6, &mut out);
            let want = rms_norm_reference(&x, &w, n, 1e-6);
            assert_close(&out[..m * n], &want, 1e-6, &format!("rms_norm {m}x{n}"));
            assert!(out[m * n..].iter().all(|v| v.is_nan()), "wrote past m*n");
        }
    }

    #[test]
    fn rms_norm_eps_bounds_the_scale_of_a_zero_row() {
        let (x, w) = (vec![0.0f32; 8], vec![1.0f32; 8]);
        let mut out = vec![f32::NAN; 8];
        rms_norm(&x, &w, 1, 8, 1e-5, &mut out);
        assert_eq!(out, vec![0.0; 8]);
    }

    /// `silu(g) * u` with the gate in the first half of each row, in f64.
    /// A row split over the decode team gives every value bit for bit as
    /// the serial row does, for teams of several sizes and ragged widths.
    #[test]
    fn swiglu_on_the_team_matches_the_serial_row_bit_for_bit() {
        for ffn in [1, 7, 4864, 4865] {
            let gu = values(ffn as u64 + 1, 2 * ffn);
            let mut want = vec![f32::NAN; ffn];
            swiglu(&gu, 1, ffn, &mut want);
            for threads in [1, 2, 3, 8] {
                let team = crate::team::Team::new(threads);
                let mut got = vec![f32::NAN; ffn];
                swiglu_row_on_team(&team, &gu, ffn, &mut got);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "ffn={ffn} threads={threads}");
            }
        }
    }

    #[test]
    fn swiglu_matches_f64_serial_and_pooled() {
        for (m, ffn) in [(1, 4864), (5, 7), (9, 2000)] {
            let gu = values(ffn as u64, m * 2 * ffn);
            let mut out = vec![f32::NAN; m * ffn];
            swiglu(&gu, m, ffn, &mut out);
            let want: Vec<f64> = gu
                .chunks(2 * ffn)
                .flat_map(|r| {
                    let (g, u) = r.split_at(ffn);
                    g.iter().zip(u).map(|(&g, &u)| {
                        let g = g as f64;
                        g / (1.0 + (-g).exp()) * u as f64
                    })
                })
                .collect();
            assert_close(&out, &want, 1e-6, &format!("swiglu {m}x{ffn}"));
        }
    }

    #[test]
    fn swiglu_saturates_without_nan_for_large_gates() {
        let gu = [100.0, -100.0, 2.0, 3.0];
        let mut out = [0.0f32; 2];
        swiglu(&gu, 1, 2, &mut out);
        assert_eq!(out[0], 200.0);
        assert!(out[1].abs() < 1e-40 && !out[1].is_nan());
    }

    #[test]
    fn add_accumulates_elementwise() {
        let mut x = values(1, 11);
        let y = values(2, 11);
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        add(&mut x, &y);
        assert_close(&x, &want, 1e-7, "add");
    }
}
