//! Q5_1: blocks of 32 values as 5-bit unsigned levels with an f16 scale and minimum
//! (`x = d * q + m`); bit layout as Q5_0.

use super::c_float_to_int;
use super::float::{f16_to_f32, f32_to_f16};
use crate::GgmlType;

pub const QK5_1: usize = 32;

/// ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ5_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum, f16 bits.
    pub m: u16,
    /// Fifth bit of value `j` in bit `j` of this little-endian u32.
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}

super::impl_quant_block!(BlockQ5_1, GgmlType::Q5_1, QK5_1);

impl BlockQ5_1 {
    /// ggml `dequantize_row_q5_1` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK5_1]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK5_1 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = f32::from((self.qs[j] & 0x0f) | xh_0);
            let x1 = f32::from((self.qs[j] >> 4) | xh_1);
            y[j] = x0 * d + m;
            y[j + QK5_1 / 2] = x1 * d + m;
        }
    }

    /// ggml `quantize_row_q5_1_ref` for one block.
    pub fn quantize(x: &[f32; QK5_1]) -> Self {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK5_1 / 2];
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK5_1 / 2] - min) * id;
            // ggml: (uint8_t)(x + 0.5f), which lies in 0..=31 for finite input. The clamp is
            // gguf-py's and changes nothing there.
            let xi0 = (c_float_to_int(x0 + 0.5) as u8).min(31);
            let xi1 = (c_float_to_int(x1 + 0.5) as u8).min(31);
            qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK5_1 / 2);
        }
        BlockQ5_1 {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}
