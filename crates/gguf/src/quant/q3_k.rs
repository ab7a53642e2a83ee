//! Q3_K: super-blocks of 256 values in 16 groups of 16, each with a 6-bit signed scale
//! (stored `+ 32`) relative to the f16 `d`; values are 3-bit signed levels split into 2 low
//! bits (`qs`) and a high bit (`hmask`, set meaning "no -4 offset"): `x = d * (sc - 32) * q`.

use super::float::{f16_to_f32, f32_to_f16};
use super::search::{make_q3_quants, nearest_int};
use crate::{GgmlType, QK_K};

/// ggml's `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    /// High bit of value `32 * k + l` in bit `k` of byte `l`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, packed like Q2_K.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales: low nibbles in bytes 0..8, high 2-bit pairs in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale, f16 bits.
    pub d: u16,
}

super::impl_quant_block!(BlockQ3K, GgmlType::Q3_K, QK_K);

/// Unpacks the sixteen 6-bit scales (each `0..64`, to be used as `scale - 32`), exactly as
/// ggml's `dequantize_row_q3_K` does with its `kmask1` / `kmask2` shuffle.
pub fn unpack_q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a0, a1, tmp) = (word(0), word(4), word(8));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(aux) {
        for (o, b) in chunk.iter_mut().zip(w.to_le_bytes()) {
            *o = b as i8;
        }
    }
    out
}

impl BlockQ3K {
    /// ggml `dequantize_row_q3_K` for one block.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d_all = f16_to_f32(self.d);
        let scales = unpack_q3_k_scales(&self.scales);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0u32, 2, 4, 6] {
                for group in 0..2 {
                    let dl = d_all * (i32::from(scales[is]) - 32) as f32;
                    is += 1;
                    let range = 16 * group..16 * group + 16;
                    for (&qv, &hv) in q[range.clone()].iter().zip(&self.hmask[range]) {
                        let low = ((qv >> shift) & 3) as i8;
                        let offset = if hv & m != 0 { 0 } else { 4 };
                        y[out] = dl * f32::from(low - offset);
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }

    /// ggml `quantize_row_q3_K_ref` for one block.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] =
                make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut levels[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let mut b = BlockQ3K {
            hmask: [0; QK_K / 8],
            qs: [0; QK_K / 4],
            scales: [0; 12],
            d: 0,
        };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &scale) in scales.iter().enumerate() {
                let l = nearest_int(iscale * scale) as i8;
                let l = (i32::from(l).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = l & 0x0f;
                } else {
                    b.scales[j - 8] |= (l & 0x0f) << 4;
                }
                b.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            b.d = f32_to_f16(1.0 / iscale);
        } else {
            b.d = f32_to_f16(0.0);
        }

        for j in 0..QK_K / 16 {
            let low = if j < 8 {
                b.scales[j] & 0x0f
            } else {
                b.scales[j - 8] >> 4
            };
            let high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            let sc = i32::from(low | (high << 4)) - 32;
            let d = f16_to_f32(b.d) * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                levels[16 * j + ii] = (l + 4) as i8;
            }
        }

        let mut m = 0;
        let mut hm = 1u8;
        for lv in levels.iter_mut() {
            if *lv > 3 {
                b.hmask[m] |= hm;
                *lv -= 4;
            }
            m += 1;
            if m == QK_K / 8 {
                m = 0;
                hm <<= 1;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for l in 0..32 {
                let lv = |k: usize| levels[j + l + 32 * k] as u8;
                b.qs[j / 4 + l] = lv(0) | (lv(1) << 2) | (lv(2) << 4) | (lv(3) << 6);
            }
        }
        b
    }
}
