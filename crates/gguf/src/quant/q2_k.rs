//! Q2_K: super-blocks of 256 values in 16 groups of 16. Each group has a 4-bit scale and a
//! 4-bit minimum, both relative to the super-block's f16 `d` and `dmin`; values are 2-bit
//! levels: `x = d * sc * q - dmin * m`.

use super::float::{f16_to_f32, f32_to_f16};
use super::search::{make_qkx2_quants, nearest_int, Qkx2Search};
use crate::{GgmlType, QK_K};

/// ggml's `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    /// Group `j`: scale in the low nibble, minimum in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit levels: byte `32 * h + l` holds values `128 * h + l + 32 * k` in bits `2k..2k+2`.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
}

super::impl_quant_block!(BlockQ2K, GgmlType::Q2_K, QK_K);

impl BlockQ2K {
    /// ggml `dequantize_row_q2_K` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let mut out = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0u32, 2, 4, 6] {
                for group in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0x0f);
                    let ml = min * f32::from(sc >> 4);
                    for &qv in &q[16 * group..16 * group + 16] {
                        y[out] = dl * f32::from((qv >> shift) & 3) - ml;
                        out += 1;
                    }
                }
            }
        }
    }

    /// ggml `quantize_row_q2_K_ref` for one block.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        const Q4SCALE: f32 = 15.0;
        let mut levels = [0u8; QK_K];
        let mut aux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let search = Qkx2Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (scale, min) = make_qkx2_quants(
                xs,
                &weights,
                3,
                &mut levels[16 * j..16 * j + 16],
                &mut aux,
                search,
            );
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        let mut b = BlockQ2K {
            scales: [0; QK_K / 16],
            qs: [0; QK_K / 4],
            d: 0,
            dmin: 0,
        };
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &scale) in b.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * scale) as u8;
            }
            b.d = f32_to_f16(max_scale / Q4SCALE);
        } else {
            b.d = f32_to_f16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &min) in b.scales.iter_mut().zip(&mins) {
                let l = nearest_int(iscale * min);
                *s |= (l << 4) as u8;
            }
            b.dmin = f32_to_f16(max_min / Q4SCALE);
        } else {
            b.dmin = f32_to_f16(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = f16_to_f32(b.d) * f32::from(b.scales[j] & 0x0f);
            if d == 0.0 {
                continue;
            }
            let dm = f16_to_f32(b.dmin) * f32::from(b.scales[j] >> 4);
            for ii in 0..16 {
                let l = nearest_int((x[16 * j + ii] + dm) / d);
                levels[16 * j + ii] = l.clamp(0, 3) as u8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for l in 0..32 {
                b.qs[j / 4 + l] = levels[j + l]
                    | (levels[j + l + 32] << 2)
                    | (levels[j + l + 64] << 4)
                    | (levels[j + l + 96] << 6);
            }
        }
        b
    }
}
