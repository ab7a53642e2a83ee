//! Plain float element types: F32, F16 (IEEE half) and BF16, and the scalar conversions the
//! block formats use for their `f16` scale fields.

/// ggml's `GGML_FP16_TO_FP32`: exact. NaN payloads are carried over bit for bit, signalling
/// NaNs included (as numpy, and so gguf-py, converts; ggml's F16C path would quiet them).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x03ff);
    match exp {
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        0 => {
            // Zero or subnormal: man * 2^-24, exact in f32.
            let magnitude = man as f32 * f32::from_bits(0x3380_0000);
            f32::from_bits(sign | magnitude.to_bits())
        }
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// ggml's `GGML_FP32_TO_FP16`: round to nearest, ties to even (as F16C hardware and ggml's
/// software fallback do); overflow gives infinity.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// BF16 is the top half of an f32: exact.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even; NaN stays NaN, made quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    // u + 0x7fff + lsb cannot overflow u32 for a non-NaN: the largest is 0xff80_0000 + 0x8000.
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub(crate) fn dequantize_f32(bytes: &[u8], out: &mut [f32]) -> Result<(), crate::GgufError> {
    for (b, o) in bytes.chunks_exact(4).zip(out.iter_mut()) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(())
}

pub(crate) fn dequantize_f16(bytes: &[u8], out: &mut [f32]) -> Result<(), crate::GgufError> {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
    Ok(())
}

pub(crate) fn dequantize_bf16(bytes: &[u8], out: &mut [f32]) -> Result<(), crate::GgufError> {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
    Ok(())
}

pub(crate) fn quantize_f32(src: &[f32]) -> Vec<u8> {
    src.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn quantize_f16(src: &[f32]) -> Vec<u8> {
    src.iter()
        .flat_map(|&v| f32_to_f16(v).to_le_bytes())
        .collect()
}

pub(crate) fn quantize_bf16(src: &[f32]) -> Vec<u8> {
    src.iter()
        .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_quiet() {
        // 1.0 + 2^-8 is exactly between two bf16 values: ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1.0 + 3 * 2^-8 is between 0x3f81 and 0x3f82: ties to even goes up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        // A signalling NaN with payload only in the low half must not become infinity.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn f16_conversion_rounds_ties_to_even() {
        // 1 + 2^-11 is halfway between 1.0 and the next f16: ties to even gives 1.0.
        assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f16_to_f32(0x3c00), 1.0);
    }

    #[test]
    fn f16_to_f32_agrees_with_half_on_every_non_nan_pattern() {
        for bits in 0..=u16::MAX {
            let h = half::f16::from_bits(bits);
            if h.is_nan() {
                assert!(f16_to_f32(bits).is_nan());
            } else {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    h.to_f32().to_bits(),
                    "{bits:#06x}"
                );
            }
        }
        // A signalling NaN stays signalling with its payload.
        assert_eq!(f16_to_f32(0x7c01).to_bits(), 0x7f80_2000);
    }
}
