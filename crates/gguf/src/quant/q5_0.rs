//! Q5_0: blocks of 32 values as 5-bit signed levels times one f16 scale (`x = d * (q - 16)`).
//! The low 4 bits are packed like Q4_0; the fifth bits sit in a 32-bit little-endian mask.

use super::c_float_to_int;
use super::float::{f16_to_f32, f32_to_f16};
use crate::GgmlType;

pub const QK5_0: usize = 32;

/// ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Fifth bit of value `j` in bit `j` of this little-endian u32.
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}

super::impl_quant_block!(BlockQ5_0, GgmlType::Q5_0, QK5_0);

impl BlockQ5_0 {
    /// ggml `dequantize_row_q5_0` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK5_0]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK5_0 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = i32::from((self.qs[j] & 0x0f) | xh_0) - 16;
            let x1 = i32::from((self.qs[j] >> 4) | xh_1) - 16;
            y[j] = x0 as f32 * d;
            y[j + QK5_0 / 2] = x1 as f32 * d;
        }
    }

    /// ggml `quantize_row_q5_0_ref` for one block.
    pub fn quantize(x: &[f32; QK5_0]) -> Self {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK5_0 / 2];
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK5_0 / 2] * id;
            // ggml: MIN(31, (int8_t)(x + 16.5f)); the sum is never below zero.
            let xi0 = (c_float_to_int(x0 + 16.5) as i8).min(31) as u8;
            let xi1 = (c_float_to_int(x1 + 16.5) as i8).min(31) as u8;
            qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        BlockQ5_0 {
            d: f32_to_f16(d),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}
