//! Q5_K: as Q4_K (8 groups of 32 with 6-bit scales and minimums) with 5-bit levels; the fifth
//! bits sit in `qh`: `x = d * sc * q - dmin * m`.

use super::float::f16_to_f32;
use super::q4_k::{finish_groups, get_scale_min_k4, search_groups, K_SCALE_SIZE};
use super::search::Qkx2Search;
use crate::{GgmlType, QK_K};

/// ggml's `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
    /// Packed 6-bit scales and minimums, as Q4_K.
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bit of value `64 * c + l` in bit `2c` of byte `l`, of `64 * c + 32 + l` in bit
    /// `2c + 1`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, packed as Q4_K.
    pub qs: [u8; QK_K / 2],
}

super::impl_quant_block!(BlockQ5K, GgmlType::Q5_K, QK_K);

impl BlockQ5K {
    /// ggml `dequantize_row_q5_K` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let mut u1 = 1u8;
        let mut u2 = 2u8;
        for c in 0..4 {
            let ql = &self.qs[32 * c..32 * c + 32];
            let (sc, m) = get_scale_min_k4(2 * c, &self.scales);
            let d1 = d * f32::from(sc);
            let m1 = min * f32::from(m);
            let (sc, m) = get_scale_min_k4(2 * c + 1, &self.scales);
            let d2 = d * f32::from(sc);
            let m2 = min * f32::from(m);
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * c + l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
                y[64 * c + 32 + l] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }

    /// ggml `quantize_row_q5_K_ref` for one block.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut levels = [0u8; QK_K];
        let search = Qkx2Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (scales, mins) = search_groups(x, 31, search, &mut levels);
        let (d, dmin, packed) = finish_groups(x, &scales, &mins, 31, &mut levels);
        let mut qh = [0u8; QK_K / 8];
        let mut qs = [0u8; QK_K / 2];
        let mut m1 = 1u8;
        let mut m2 = 2u8;
        for c in 0..4 {
            for j in 0..32 {
                let mut l1 = levels[64 * c + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = levels[64 * c + 32 + j];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[32 * c + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
        BlockQ5K {
            d,
            dmin,
            scales: packed,
            qh,
            qs,
        }
    }
}
