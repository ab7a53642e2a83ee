//! GGUF blocks to the device layout: each block's fields split into separate
//! planes (see `kernels/formats.cuh`) so that quants are read with aligned
//! 16-byte loads. Values are moved, never changed: dequantising the planes
//! gives exactly what dequantising the GGUF blocks gives.

use crate::wtype::WType;

/// Plane starts are aligned to this many bytes.
pub const ALIGN: usize = 256;

/// The planes of one weight matrix in one host buffer, ready to upload.
pub struct Planes {
    pub data: Vec<u8>,
    /// Byte offsets of planes p0..p3 (unused planes point at 0).
    pub offsets: [usize; 4],
    /// Planes in use (1 for float types, whose p0 is the data as it is).
    pub used: usize,
}

/// (bytes per block, [(offset in block, length)] for each plane) of a format.
fn layout(t: WType) -> (usize, &'static [(usize, usize)]) {
    match t {
        WType::F32 | WType::F16 | WType::BF16 => (0, &[]),
        // d, qs[32]
        WType::Q8_0 => (34, &[(2, 32), (0, 2)]),
        // d, qs[16]
        WType::Q4_0 => (18, &[(2, 16), (0, 2)]),
        // d, m, qs[16]
        WType::Q4_1 => (20, &[(4, 16), (0, 4)]),
        // d, dmin, scales[12], qs[128]
        WType::Q4K => (144, &[(16, 128), (0, 16)]),
        // ql[128], qh[64], scales[16], d
        WType::Q6K => (210, &[(0, 128), (128, 64), (192, 16), (208, 2)]),
        // d, qh[4], qs[16]
        WType::Q5_0 => (22, &[(6, 16), (0, 2), (2, 4)]),
        // d, m, qh[4], qs[16]
        WType::Q5_1 => (24, &[(8, 16), (0, 4), (4, 4)]),
        // d, dmin, scales[12], qh[32], qs[128]
        WType::Q5K => (176, &[(48, 128), (0, 16), (16, 32)]),
        // scales[16], qs[64], d, dmin
        WType::Q2K => (84, &[(16, 64), (0, 16), (80, 4)]),
        // hmask[32], qs[64], scales[12], d
        WType::Q3K => (110, &[(32, 64), (0, 32), (96, 12), (108, 2)]),
    }
}

/// Split `raw` (whole GGUF blocks of type `t`) into planes.
pub fn repack(t: WType, raw: &[u8]) -> Result<Planes, String> {
    let (bsize, planes) = layout(t);
    if planes.is_empty() {
        return Ok(Planes {
            data: raw.to_vec(),
            offsets: [0; 4],
            used: 1,
        });
    }
    if !raw.len().is_multiple_of(bsize) {
        return Err(format!(
            "{} bytes is not a whole number of {bsize}-byte blocks",
            raw.len()
        ));
    }
    let nb = raw.len() / bsize;
    let mut offsets = [0usize; 4];
    let mut total = 0;
    for (i, &(_, len)) in planes.iter().enumerate() {
        offsets[i] = total;
        total += (nb * len).div_ceil(ALIGN) * ALIGN;
    }
    let mut data = vec![0u8; total];
    for (i, &(off, len)) in planes.iter().enumerate() {
        let dst = &mut data[offsets[i]..offsets[i] + nb * len];
        for (b, chunk) in raw.chunks_exact(bsize).enumerate() {
            dst[b * len..(b + 1) * len].copy_from_slice(&chunk[off..off + len]);
        }
    }
    Ok(Planes {
        data,
        offsets,
        used: planes.len(),
    })
}

/// Host mirror of the kernels' `decode32`: the values of a repacked matrix
/// (`rows` x `k`), used to test the layout against the reference formats.
#[cfg(test)]
pub fn decode(t: WType, p: &Planes, rows: usize, k: usize) -> Vec<f32> {
    use metallic_gguf::quant::{bf16_to_f32, f16_to_f32};
    let plane = |i: usize| &p.data[p.offsets[i]..];
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
    let mut out = vec![0f32; rows * k];
    for r in 0..rows {
        for c in 0..k {
            let e = r * k + c;
            out[e] = match t {
                WType::F32 => f32::from_le_bytes(p.data[4 * e..4 * e + 4].try_into().unwrap()),
                WType::F16 => f16_to_f32(u16_at(&p.data, e)),
                WType::BF16 => bf16_to_f32(u16_at(&p.data, e)),
                WType::Q8_0 => (plane(0)[e] as i8) as f32 * f16_to_f32(u16_at(plane(1), e / 32)),
                WType::Q4_0 | WType::Q4_1 => {
                    let blk = e / 32;
                    let j = e % 32;
                    let byte = plane(0)[blk * 16 + j % 16];
                    let q = if j < 16 { byte & 15 } else { byte >> 4 };
                    if t == WType::Q4_0 {
                        (q as i32 - 8) as f32 * f16_to_f32(u16_at(plane(1), blk))
                    } else {
                        let d = f16_to_f32(u16_at(plane(1), 2 * blk));
                        let m = f16_to_f32(u16_at(plane(1), 2 * blk + 1));
                        q as f32 * d + m
                    }
                }
                WType::Q4K => {
                    let sb = e / 256;
                    let j = (e % 256) / 32;
                    let l = e % 32;
                    let h = &plane(1)[sb * 16..sb * 16 + 16];
                    let d = f16_to_f32(u16_at(h, 0));
                    let dmin = f16_to_f32(u16_at(h, 1));
                    let (sc, m) =
                        metallic_gguf::quant::get_scale_min_k4(j, h[4..16].try_into().unwrap());
                    let byte = plane(0)[sb * 128 + (j / 2) * 32 + l];
                    let q = if j.is_multiple_of(2) {
                        byte & 15
                    } else {
                        byte >> 4
                    };
                    d * f32::from(sc) * f32::from(q) - dmin * f32::from(m)
                }
                WType::Q6K => {
                    let sb = e / 256;
                    let e0 = e % 256;
                    let (n, i, l) = (e0 / 128, (e0 % 128) / 32, e0 % 32);
                    let ql = plane(0)[sb * 128 + 64 * n + (i & 1) * 32 + l];
                    let qh = plane(1)[sb * 64 + 32 * n + l];
                    let sc = plane(2)[sb * 16 + 8 * n + l / 16 + 2 * i] as i8;
                    let d = f16_to_f32(u16_at(plane(3), sb));
                    let q =
                        (((ql >> ((i >> 1) * 4)) & 15) | (((qh >> (2 * i)) & 3) << 4)) as i32 - 32;
                    d * f32::from(sc) * q as f32
                }
                WType::Q5_0 | WType::Q5_1 => {
                    let (blk, j) = (e / 32, e % 32);
                    let byte = plane(0)[blk * 16 + j % 16];
                    let qh = u32::from_le_bytes(plane(2)[4 * blk..4 * blk + 4].try_into().unwrap());
                    let low = if j < 16 { byte & 15 } else { byte >> 4 };
                    let q = low | ((((qh >> j) & 1) as u8) << 4);
                    if t == WType::Q5_0 {
                        (q as i32 - 16) as f32 * f16_to_f32(u16_at(plane(1), blk))
                    } else {
                        let d = f16_to_f32(u16_at(plane(1), 2 * blk));
                        let m = f16_to_f32(u16_at(plane(1), 2 * blk + 1));
                        f32::from(q) * d + m
                    }
                }
                WType::Q5K => {
                    let (sb, j, l) = (e / 256, (e % 256) / 32, e % 32);
                    let h = &plane(1)[sb * 16..sb * 16 + 16];
                    let d = f16_to_f32(u16_at(h, 0));
                    let dmin = f16_to_f32(u16_at(h, 1));
                    let (sc, m) =
                        metallic_gguf::quant::get_scale_min_k4(j, h[4..16].try_into().unwrap());
                    let byte = plane(0)[sb * 128 + (j / 2) * 32 + l];
                    let low = if j.is_multiple_of(2) {
                        byte & 15
                    } else {
                        byte >> 4
                    };
                    let high = (plane(2)[sb * 32 + l] >> j) & 1;
                    d * f32::from(sc) * f32::from(low + 16 * high) - dmin * f32::from(m)
                }
                WType::Q2K | WType::Q3K => {
                    // 32-value group g: half g / 4, shift 2 (g % 4), two 16-value scale groups.
                    let (sb, g, i) = (e / 256, (e % 256) / 32, e % 32);
                    let (half, s, grp) = (g / 4, g % 4, i / 16);
                    let is = 8 * half + 2 * s + grp;
                    let low = (plane(0)[sb * 64 + 32 * half + i] >> (2 * s)) & 3;
                    if t == WType::Q2K {
                        let sc = plane(1)[sb * 16 + is];
                        let d = f16_to_f32(u16_at(plane(2), 2 * sb));
                        let dmin = f16_to_f32(u16_at(plane(2), 2 * sb + 1));
                        d * f32::from(sc & 15) * f32::from(low) - dmin * f32::from(sc >> 4)
                    } else {
                        let packed: [u8; 12] = plane(2)[sb * 12..sb * 12 + 12].try_into().unwrap();
                        let sc = metallic_gguf::quant::q3_k::unpack_q3_k_scales(&packed)[is];
                        let hv = plane(1)[sb * 32 + i];
                        let q = low as i8
                            - if hv & (1 << (4 * half + s)) != 0 {
                                0
                            } else {
                                4
                            };
                        f16_to_f32(u16_at(plane(3), sb))
                            * (i32::from(sc) - 32) as f32
                            * f32::from(q)
                    }
                }
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metallic_gguf::{quant, GgmlType};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Every value of the split planes, read the way the kernels read them,
    /// must equal the reference dequantisation of the GGUF blocks bit for bit.
    #[test]
    fn planes_decode_to_the_reference_values() {
        let (rows, k) = (3, 512);
        for (t, g) in [
            (WType::F32, GgmlType::F32),
            (WType::F16, GgmlType::F16),
            (WType::BF16, GgmlType::BF16),
            (WType::Q8_0, GgmlType::Q8_0),
            (WType::Q4_0, GgmlType::Q4_0),
            (WType::Q4_1, GgmlType::Q4_1),
            (WType::Q4K, GgmlType::Q4_K),
            (WType::Q6K, GgmlType::Q6_K),
            (WType::Q5_0, GgmlType::Q5_0),
            (WType::Q5_1, GgmlType::Q5_1),
            (WType::Q5K, GgmlType::Q5_K),
            (WType::Q2K, GgmlType::Q2_K),
            (WType::Q3K, GgmlType::Q3_K),
        ] {
            let src = values(rows * k, t as u64 + 1);
            let raw = quant::quantize(g, &src).unwrap();
            let want = quant::dequantize_to_vec(g, &raw).unwrap();
            let planes = repack(t, &raw).unwrap();
            for off in planes.offsets {
                assert_eq!(off % ALIGN, 0, "{t:?}: planes start aligned");
            }
            let got = decode(t, &planes, rows, k);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{t:?} value {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn partial_blocks_are_rejected() {
        assert!(repack(WType::Q8_0, &[0u8; 35]).is_err());
        assert!(repack(WType::Q6K, &[0u8; 209]).is_err());
    }
}
