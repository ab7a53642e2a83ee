//! Q4_1: blocks of 32 values as 4-bit unsigned levels with an f16 scale and minimum
//! (`x = d * q + m`).

use super::c_float_to_int;
use super::float::{f16_to_f32, f32_to_f16};
use crate::GgmlType;

pub const QK4_1: usize = 32;

/// ggml's `block_q4_1`. `qs[j]` holds value `j` (low nibble) and `j + 16` (high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ4_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum, f16 bits.
    pub m: u16,
    pub qs: [u8; QK4_1 / 2],
}

super::impl_quant_block!(BlockQ4_1, GgmlType::Q4_1, QK4_1);

impl BlockQ4_1 {
    /// ggml `dequantize_row_q4_1` for one block (multiply, then add: no fused multiply-add).
    pub fn dequantize(&self, y: &mut [f32; QK4_1]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for j in 0..QK4_1 / 2 {
            let x0 = f32::from(self.qs[j] & 0x0f);
            let x1 = f32::from(self.qs[j] >> 4);
            y[j] = x0 * d + m;
            y[j + QK4_1 / 2] = x1 * d + m;
        }
    }

    /// ggml `quantize_row_q4_1_ref` for one block: the block's range is split in 15 steps.
    pub fn quantize(x: &[f32; QK4_1]) -> Self {
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
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_1 / 2];
        for j in 0..QK4_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK4_1 / 2] - min) * id;
            // ggml: MIN(15, (int8_t)(x + 0.5f)); the sum is never below zero.
            let xi0 = (c_float_to_int(x0 + 0.5) as i8).min(15) as u8;
            let xi1 = (c_float_to_int(x1 + 0.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qs,
        }
    }
}
