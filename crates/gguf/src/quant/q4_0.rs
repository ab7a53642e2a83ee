//! Q4_0: blocks of 32 values as 4-bit signed levels times one f16 scale (`x = d * (q - 8)`).

use super::c_float_to_int;
use super::float::{f16_to_f32, f32_to_f16};
use crate::GgmlType;

pub const QK4_0: usize = 32;

/// ggml's `block_q4_0`. `qs[j]` holds value `j` in its low nibble and value `j + 16` in its
/// high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits.
    pub d: u16,
    pub qs: [u8; QK4_0 / 2],
}

super::impl_quant_block!(BlockQ4_0, GgmlType::Q4_0, QK4_0);

impl BlockQ4_0 {
    /// ggml `dequantize_row_q4_0` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK4_0]) {
        let d = f16_to_f32(self.d);
        for j in 0..QK4_0 / 2 {
            let x0 = i32::from(self.qs[j] & 0x0f) - 8;
            let x1 = i32::from(self.qs[j] >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }

    /// ggml `quantize_row_q4_0_ref` for one block: the value of largest magnitude maps to
    /// level -8 exactly, so the scale's sign follows it.
    pub fn quantize(x: &[f32; QK4_0]) -> Self {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_0 / 2];
        for j in 0..QK4_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK4_0 / 2] * id;
            // ggml: MIN(15, (int8_t)(x + 8.5f)); the sum is never below zero.
            let xi0 = (c_float_to_int(x0 + 8.5) as i8).min(15) as u8;
            let xi1 = (c_float_to_int(x1 + 8.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: f32_to_f16(d),
            qs,
        }
    }
}
