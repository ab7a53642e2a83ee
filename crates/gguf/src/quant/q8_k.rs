//! Q8_K: super-blocks of 256 values as 8-bit levels times an f32 scale, with the sums of each
//! 16 levels precomputed (`bsums`) for k-quant dot products: `x = d * q`.

use super::search::nearest_int;
use crate::{GgmlType, QK_K};

/// ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K {
    /// Scale (a full f32, unlike the other formats).
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sum of levels `16 * j .. 16 * j + 16`.
    pub bsums: [i16; QK_K / 16],
}

super::impl_quant_block!(BlockQ8K, GgmlType::Q8_K, QK_K);

impl BlockQ8K {
    /// ggml `dequantize_row_q8_K` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * f32::from(q);
        }
    }

    /// ggml `quantize_row_q8_K_ref` for one block: the largest-magnitude value maps to level
    /// -127 (ggml uses 127, not 128, so that IQ2 dot products stay in range). An all-zero block
    /// gets zero sums too (ggml leaves them unwritten).
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (sum, group) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *sum = group.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
        b
    }
}
