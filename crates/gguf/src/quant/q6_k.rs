//! Q6_K: super-blocks of 256 values in 16 groups of 16, each with an 8-bit signed scale
//! relative to the f16 `d`; values are 6-bit signed levels (stored `+ 32`) split into 4 low
//! bits (`ql`) and 2 high bits (`qh`): `x = d * sc * (q - 32)`.

use super::float::{f16_to_f32, f32_to_f16};
use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use crate::{GgmlType, QK_K};

/// ggml's `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits: for half `h`, byte `64 * h + l` holds values `128h + l` (low nibble) and
    /// `128h + 64 + l` (high nibble); byte `64 * h + 32 + l` holds `128h + 32 + l` and
    /// `128h + 96 + l`.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: byte `32 * h + l` holds those of values `128h + l + 32k` in bits `2k..2k+2`.
    pub qh: [u8; QK_K / 4],
    /// Group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 bits.
    pub d: u16,
}

super::impl_quant_block!(BlockQ6K, GgmlType::Q6_K, QK_K);

impl BlockQ6K {
    /// ggml `dequantize_row_q6_K` for one block (`d * sc` first, then times the level).
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }

    /// ggml `quantize_row_q6_K_ref` for one block.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(
                &x[16 * ib..16 * ib + 16],
                32,
                &mut levels[16 * ib..16 * ib + 16],
            );
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        let mut b = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f32_to_f16(0.0),
        };
        if max_abs_scale < GROUP_MAX_EPS {
            return b;
        }
        let iscale = -128.0 / max_scale;
        b.d = f32_to_f16(1.0 / iscale);
        for (s, &scale) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = f16_to_f32(b.d) * f32::from(b.scales[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                levels[16 * j + ii] = (l + 32) as i8;
            }
        }
        for h in 0..2 {
            let j = 128 * h;
            for l in 0..32 {
                let lv = |k: usize| levels[j + l + 32 * k] as u8;
                b.ql[64 * h + l] = (lv(0) & 0x0f) | ((lv(2) & 0x0f) << 4);
                b.ql[64 * h + l + 32] = (lv(1) & 0x0f) | ((lv(3) & 0x0f) << 4);
                b.qh[32 * h + l] =
                    (lv(0) >> 4) | ((lv(1) >> 4) << 2) | ((lv(2) >> 4) << 4) | ((lv(3) >> 4) << 6);
            }
        }
        b
    }
}
