//! Q8_0: blocks of 32 values as 8-bit signed levels times one f16 scale (`x = d * q`).

use super::c_float_to_int;
use super::float::{f16_to_f32, f32_to_f16};
use crate::GgmlType;

pub const QK8_0: usize = 32;

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: u16,
    pub qs: [i8; QK8_0],
}

super::impl_quant_block!(BlockQ8_0, GgmlType::Q8_0, QK8_0);

impl BlockQ8_0 {
    /// ggml `dequantize_row_q8_0` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK8_0]) {
        let d = f16_to_f32(self.d);
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = f32::from(q) * d;
        }
    }

    /// ggml `quantize_row_q8_0_ref` for one block: `d = amax / 127`, levels rounded half away
    /// from zero (C `roundf`, which `f32::round` is).
    pub fn quantize(x: &[f32; QK8_0]) -> Self {
        let mut amax = 0.0f32;
        for &v in x {
            // ggml: MAX(amax, fabsf(v)) = amax > |v| ? amax : |v| (a NaN propagates).
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK8_0];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = c_float_to_int((v * id).round()) as i8;
        }
        BlockQ8_0 {
            d: f32_to_f16(d),
            qs,
        }
    }
}
