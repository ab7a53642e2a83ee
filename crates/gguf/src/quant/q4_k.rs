//! Q4_K: super-blocks of 256 values in 8 groups of 32. Each group has a 6-bit scale and a
//! 6-bit minimum relative to the super-block's f16 `d` and `dmin`; values are 4-bit levels:
//! `x = d * sc * q - dmin * m`.

use super::float::{f16_to_f32, f32_to_f16};
use super::search::{make_qkx2_quants, nearest_int, Qkx2Search};
use crate::{GgmlType, QK_K};

/// Bytes of packed 6-bit scales and minimums (ggml `K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
    /// Eight 6-bit scales and eight 6-bit minimums; see [`get_scale_min_k4`].
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit levels: byte `32 * c + l` holds value `64 * c + l` (low nibble) and
    /// `64 * c + 32 + l` (high nibble).
    pub qs: [u8; QK_K / 2],
}

super::impl_quant_block!(BlockQ4K, GgmlType::Q4_K, QK_K);

/// ggml `get_scale_min_k4`: the 6-bit scale and minimum of group `j` (0..8) from the packed
/// 12 bytes shared by Q4_K and Q5_K. Groups 0..4 sit in the low 6 bits of bytes `j` and
/// `j + 4`; groups 4..8 in the nibbles of byte `j + 4` plus the top 2 bits of bytes `j - 4`
/// and `j`.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and minimums the way [`get_scale_min_k4`] reads them (the packing
/// of ggml's `quantize_row_q4_K_ref`; values above 63 are clamped as there).
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (l_s, l_m) = (ls[j].min(63), lm[j].min(63));
        if j < 4 {
            s[j] = l_s;
            s[j + 4] = l_m;
        } else {
            s[j + 4] = (l_s & 0x0f) | ((l_m & 0x0f) << 4);
            s[j - 4] |= (l_s >> 4) << 6;
            s[j] |= (l_m >> 4) << 6;
        }
    }
    s
}

/// The per-group search shared by the Q4_K and Q5_K reference quantisers: weights
/// `sqrt(mean(x^2)) + |x|` per group of 32, then [`make_qkx2_quants`]. Returns the group
/// scales and minimums; levels go to `levels`.
pub(crate) fn search_groups(
    x: &[f32; QK_K],
    nmax: i32,
    search: Qkx2Search,
    levels: &mut [u8; QK_K],
) -> ([f32; 8], [f32; 8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let mut aux = [0u8; 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut levels[32 * j..32 * j + 32],
            &mut aux,
            search,
        );
        scales[j] = scale;
        mins[j] = min;
    }
    (scales, mins)
}

/// Turns group scales and minimums into the 6-bit codes and f16 super-scales of Q4_K/Q5_K,
/// then re-picks every level against the stored (rounded) scales. Returns
/// `(d, dmin, packed scales)`.
pub(crate) fn finish_groups(
    x: &[f32; QK_K],
    scales: &[f32; 8],
    mins: &[f32; 8],
    nmax: i32,
    levels: &mut [u8; QK_K],
) -> (u16, u16, [u8; K_SCALE_SIZE]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (&s, &m) in scales.iter().zip(mins) {
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t (truncating), then clamps to 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dd = f16_to_f32(d) * f32::from(sc);
        if dd == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * f32::from(m);
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / dd);
            levels[32 * j + ii] = l.clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

impl BlockQ4K {
    /// ggml `dequantize_row_q4_K` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for c in 0..4 {
            let q = &self.qs[32 * c..32 * c + 32];
            let (sc, m) = get_scale_min_k4(2 * c, &self.scales);
            let d1 = d * f32::from(sc);
            let m1 = min * f32::from(m);
            let (sc, m) = get_scale_min_k4(2 * c + 1, &self.scales);
            let d2 = d * f32::from(sc);
            let m2 = min * f32::from(m);
            for l in 0..32 {
                y[64 * c + l] = d1 * f32::from(q[l] & 0x0f) - m1;
                y[64 * c + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }

    /// ggml `quantize_row_q4_K_ref` for one block.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut levels = [0u8; QK_K];
        let search = Qkx2Search {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (scales, mins) = search_groups(x, 15, search, &mut levels);
        let (d, dmin, packed) = finish_groups(x, &scales, &mins, 15, &mut levels);
        let mut qs = [0u8; QK_K / 2];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
            }
        }
        BlockQ4K {
            d,
            dmin,
            scales: packed,
            qs,
        }
    }
}
