//! The scale searches ggml's k-quant reference quantisers share (`nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` in ggml-quants.c), with the same
//! operation order so the chosen scales and levels are identical.

/// Below this a group is treated as all zeros (ggml `GROUP_MAX_EPS`).
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `nearest_int`: round to nearest, ties to even, via the 1.5 * 2^23 trick. Exact for
/// `|x| <= 4194303`; like ggml (whose assert is compiled out) it returns a deterministic
/// wrong value outside that range rather than failing.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

#[inline]
fn clamp_i(l: i32, lo: i32, hi: i32) -> i32 {
    // ggml's MAX(lo, MIN(hi, l)).
    l.min(hi).max(lo)
}

/// ggml `make_qx_quants` with `rmse_type == 1` and no importance weights (weights `x^2`), as
/// `quantize_row_q6_K_ref` calls it. Writes levels `0..2*nmax` to `levels` and returns the
/// scale (negative when the largest-magnitude value is positive: level `l - nmax` times the
/// scale gives the value).
pub fn make_qx_quants(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    let nmax_f = nmax as f32;
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let mut iscale = -nmax_f / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (&v, lv) in x.iter().zip(levels.iter_mut()) {
        let l = clamp_i(nearest_int(iscale * v), -nmax, nmax - 1);
        *lv = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = clamp_i(nearest_int(iscale * v), -nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (&v, lv) in x.iter().zip(levels.iter_mut()) {
                let l = clamp_i(nearest_int(iscale * v), -nmax, nmax - 1);
                *lv = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` with `do_rmse == true`, as `quantize_row_q3_K_ref` calls it: an
/// initial rounding followed by up to five passes that move single levels while that improves
/// the weighted (`x^2`) fit. Writes levels `0..2*nmax` and returns the scale.
pub fn make_q3_quants(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (&v, lv) in x.iter().zip(levels.iter_mut()) {
        let l = clamp_i(nearest_int(iscale * v), -nmax, nmax - 1);
        *lv = l as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (&v, lv) in x.iter().zip(levels.iter_mut()) {
            let w = v * v;
            let cur = f32::from(*lv);
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = clamp_i(nearest_int(v * sl2 / slx), -nmax, nmax - 1);
                if new_l != i32::from(*lv) {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *lv = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for lv in levels.iter_mut() {
        *lv = (i32::from(*lv) + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of ggml `make_qkx2_quants`' search over candidate scales.
#[derive(Clone, Copy, Debug)]
pub struct Qkx2Search {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the squared error.
    pub use_mad: bool,
}

/// ggml `make_qkx2_quants`: fits `x ≈ scale * l - min` with levels `l` in `0..=nmax` and
/// `min >= 0`, trying `nstep + 1` candidate scales and a weighted least-squares refit of each.
/// Writes the levels, returns `(scale, min)`. `aux` is scratch of `x.len()` levels.
pub fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    levels: &mut [u8],
    aux: &mut [u8],
    p: Qkx2Search,
) -> (f32, f32) {
    let (Some(&x0), Some(&w0)) = (x.first(), weights.first()) else {
        return (0.0, 0.0);
    };
    let nmax_f = nmax as f32;
    let mut min = x0;
    let mut max = x0;
    let mut sum_w = w0;
    let mut sum_x = sum_w * x0;
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((&v, &w), lv) in x.iter().zip(weights).zip(levels.iter_mut()) {
        let l = nearest_int(iscale * (v - min));
        *lv = clamp_i(l, 0, nmax) as u8;
        let diff = scale * f32::from(*lv) + min - v;
        let diff = if p.use_mad { diff.abs() } else { diff * diff };
        best_error += w * diff;
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for ((&v, &w), la) in x.iter().zip(weights).zip(aux.iter_mut()) {
            let l = clamp_i(nearest_int(iscale * (v - min)), 0, nmax);
            *la = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&v, &w), &la) in x.iter().zip(weights).zip(aux.iter()) {
                let diff = this_scale * f32::from(la) + this_min - v;
                let diff = if p.use_mad { diff.abs() } else { diff * diff };
                cur_error += w * diff;
            }
            if cur_error < best_error {
                for (l, &la) in levels.iter_mut().zip(aux.iter()) {
                    *l = la;
                }
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_in_range() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-7.49), -7);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        // Out of range and non-finite inputs give some value, never a panic.
        let _ = nearest_int(f32::NAN);
        let _ = nearest_int(f32::INFINITY);
        let _ = nearest_int(-1e30);
    }

    #[test]
    fn qkx2_fits_an_exactly_representable_group() {
        // Values on a grid 0.5 * l - 1.0: the fit must recover it with zero error.
        let x: Vec<f32> = (0..32).map(|i| 0.5 * (i % 16) as f32 - 1.0).collect();
        let w = vec![1.0; 32];
        let mut levels = [0u8; 32];
        let mut aux = [0u8; 32];
        let (scale, min) = make_qkx2_quants(
            &x,
            &w,
            15,
            &mut levels,
            &mut aux,
            Qkx2Search {
                rmin: -1.0,
                rdelta: 0.1,
                nstep: 20,
                use_mad: false,
            },
        );
        for (&v, &l) in x.iter().zip(&levels) {
            assert!((scale * f32::from(l) - min - v).abs() < 1e-6, "{v} {l}");
        }
    }
}
