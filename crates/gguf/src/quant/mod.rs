//! ggml block formats: layouts, reference dequantisation and reference quantisation.
//!
//! Each block format lives in its own module with a `#[repr(C)]` block struct whose layout is
//! ggml's `block_*` struct (checked at compile time), per-block `dequantize` / `quantize`
//! functions that other crates' kernels can reuse, and the format's constants. The arithmetic
//! follows ggml's `dequantize_row_*` and `quantize_row_*_ref` in the same order of operations,
//! so results are bit-identical to ggml's reference C compiled without FMA contraction (and to
//! the `gguf` Python package, which the tests check).
//!
//! Block structs are `bytemuck::Pod`: [`cast_blocks`] views aligned tensor data as blocks
//! without copying; the slice functions here read unaligned input by copying each block.

pub mod float;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;
pub mod search;

/// Re-exported so kernels in other crates use the same version for block views.
pub use bytemuck;
pub use float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::{get_scale_min_k4, BlockQ4K};
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_k::BlockQ8K;

use crate::error::GgufError;
use crate::types::GgmlType;

/// A ggml block: `BLOCK_SIZE` values stored in `size_of::<Self>()` bytes.
pub trait QuantBlock: bytemuck::Pod {
    const GGML_TYPE: GgmlType;
    const BLOCK_SIZE: usize;

    /// Writes the block's values to `out`, which must hold exactly `BLOCK_SIZE` values.
    fn dequantize_into(&self, out: &mut [f32]) -> Result<(), GgufError>;

    /// Quantises exactly `BLOCK_SIZE` values with ggml's reference algorithm.
    fn quantize_from(src: &[f32]) -> Result<Self, GgufError>;
}

macro_rules! impl_quant_block {
    ($block:ty, $ty:expr, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$block>() == $ty.type_size());
        const _: () = assert!($n == $ty.block_size());

        impl $crate::quant::QuantBlock for $block {
            const GGML_TYPE: $crate::GgmlType = $ty;
            const BLOCK_SIZE: usize = $n;

            fn dequantize_into(&self, out: &mut [f32]) -> Result<(), $crate::GgufError> {
                let actual = out.len();
                let out: &mut [f32; $n] =
                    out.try_into()
                        .map_err(|_| $crate::GgufError::OutputLength {
                            ty: $ty,
                            expected: $n,
                            actual,
                        })?;
                self.dequantize(out);
                Ok(())
            }

            fn quantize_from(src: &[f32]) -> Result<Self, $crate::GgufError> {
                let len = src.len();
                let src: &[f32; $n] =
                    src.try_into()
                        .map_err(|_| $crate::GgufError::NotBlockMultiple {
                            ty: $ty,
                            len,
                            block_size: $n,
                        })?;
                Ok(Self::quantize(src))
            }
        }
    };
}
pub(crate) use impl_quant_block;

/// True where [`dequantize`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K
    )
}

/// True where [`quantize`] supports `ty` (the same types as [`can_dequantize`]).
pub fn can_quantize(ty: GgmlType) -> bool {
    can_dequantize(ty)
}

/// Dequantises whole blocks of `ty` from `bytes` into `out`, which must have room for exactly
/// the values the blocks hold.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let type_size = ty.type_size();
    if bytes.len() % type_size != 0 {
        return Err(GgufError::PartialBlock {
            ty,
            len: bytes.len(),
            type_size,
        });
    }
    let expected = (bytes.len() / type_size).saturating_mul(ty.block_size());
    if out.len() != expected {
        return Err(GgufError::OutputLength {
            ty,
            expected,
            actual: out.len(),
        });
    }
    match ty {
        GgmlType::F32 => float::dequantize_f32(bytes, out),
        GgmlType::F16 => float::dequantize_f16(bytes, out),
        GgmlType::BF16 => float::dequantize_bf16(bytes, out),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(bytes, out),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2K>(bytes, out),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3K>(bytes, out),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4K>(bytes, out),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5K>(bytes, out),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6K>(bytes, out),
        GgmlType::Q8_K => dequantize_blocks::<BlockQ8K>(bytes, out),
        _ => Err(GgufError::Unsupported {
            ty,
            op: "dequantization",
        }),
    }
}

/// [`dequantize`] into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, GgufError> {
    if !can_dequantize(ty) {
        return Err(GgufError::Unsupported {
            ty,
            op: "dequantization",
        });
    }
    let n_blocks = bytes.len() / ty.type_size();
    let mut out = vec![0.0; n_blocks.saturating_mul(ty.block_size())];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

/// Quantises `src` (a whole number of blocks) to `ty` with ggml's reference algorithm
/// (`quantize_row_*_ref`, no importance matrix).
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, GgufError> {
    if src.len() % ty.block_size() != 0 {
        return Err(GgufError::NotBlockMultiple {
            ty,
            len: src.len(),
            block_size: ty.block_size(),
        });
    }
    match ty {
        GgmlType::F32 => Ok(float::quantize_f32(src)),
        GgmlType::F16 => Ok(float::quantize_f16(src)),
        GgmlType::BF16 => Ok(float::quantize_bf16(src)),
        GgmlType::Q4_0 => quantize_blocks::<BlockQ4_0>(src),
        GgmlType::Q4_1 => quantize_blocks::<BlockQ4_1>(src),
        GgmlType::Q5_0 => quantize_blocks::<BlockQ5_0>(src),
        GgmlType::Q5_1 => quantize_blocks::<BlockQ5_1>(src),
        GgmlType::Q8_0 => quantize_blocks::<BlockQ8_0>(src),
        GgmlType::Q2_K => quantize_blocks::<BlockQ2K>(src),
        GgmlType::Q3_K => quantize_blocks::<BlockQ3K>(src),
        GgmlType::Q4_K => quantize_blocks::<BlockQ4K>(src),
        GgmlType::Q5_K => quantize_blocks::<BlockQ5K>(src),
        GgmlType::Q6_K => quantize_blocks::<BlockQ6K>(src),
        GgmlType::Q8_K => quantize_blocks::<BlockQ8K>(src),
        _ => Err(GgufError::Unsupported {
            ty,
            op: "quantization",
        }),
    }
}

/// Views `bytes` as blocks without copying. Fails when `bytes` is not a whole number of blocks
/// or not aligned for `B` (tensor data of a mapped GGUF is: the map is page-aligned and tensor
/// offsets are multiples of the alignment).
pub fn cast_blocks<B: QuantBlock>(bytes: &[u8]) -> Result<&[B], GgufError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| match e {
        bytemuck::PodCastError::OutputSliceWouldHaveSlop | bytemuck::PodCastError::SizeMismatch => {
            GgufError::PartialBlock {
                ty: B::GGML_TYPE,
                len: bytes.len(),
                type_size: std::mem::size_of::<B>(),
            }
        }
        _ => GgufError::Misaligned {
            ty: B::GGML_TYPE,
            align: std::mem::align_of::<B>(),
        },
    })
}

/// C's float-to-integer conversion as ggml's reference quantisers get it on x86-64
/// (`cvttss2si`): truncation toward zero, with NaN and out-of-range values giving `i32::MIN`.
/// The narrower C conversions (`(int8_t)f`, `(uint8_t)f`) are this followed by truncation to
/// the low bits, which `as i8` / `as u8` on the result reproduce. Out-of-range input is
/// undefined behaviour in C; numpy's `astype` (gguf-py) gives the same values, which is what
/// makes blocks of huge or subnormal inputs (whose inverse scale overflows) match bit for bit.
#[inline]
pub(crate) fn c_float_to_int(x: f32) -> i32 {
    const LIMIT: f32 = 2_147_483_648.0;
    if x.is_nan() || !(-LIMIT..LIMIT).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// Copies `bytes` (any alignment) into blocks; fails when it is not a whole number of them.
pub fn blocks_to_vec<B: QuantBlock>(bytes: &[u8]) -> Result<Vec<B>, GgufError> {
    let size = std::mem::size_of::<B>();
    if bytes.len() % size != 0 {
        return Err(GgufError::PartialBlock {
            ty: B::GGML_TYPE,
            len: bytes.len(),
            type_size: size,
        });
    }
    Ok(bytes
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

fn dequantize_blocks<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let size = std::mem::size_of::<B>();
    for (chunk, values) in bytes
        .chunks_exact(size)
        .zip(out.chunks_exact_mut(B::BLOCK_SIZE))
    {
        // Copies one block, so input of any alignment works.
        let block: B =
            bytemuck::try_pod_read_unaligned(chunk).map_err(|_| GgufError::PartialBlock {
                ty: B::GGML_TYPE,
                len: bytes.len(),
                type_size: size,
            })?;
        block.dequantize_into(values)?;
    }
    Ok(())
}

fn quantize_blocks<B: QuantBlock>(src: &[f32]) -> Result<Vec<u8>, GgufError> {
    let mut out = Vec::with_capacity(src.len() / B::BLOCK_SIZE * std::mem::size_of::<B>());
    for values in src.chunks_exact(B::BLOCK_SIZE) {
        out.extend_from_slice(bytemuck::bytes_of(&B::quantize_from(values)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantize_rejects_partial_blocks_and_wrong_output_length() {
        let bytes = [0u8; 35];
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &bytes, &mut out),
            Err(GgufError::PartialBlock { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &bytes[..34], &mut out[..31]),
            Err(GgufError::OutputLength {
                expected: 32,
                actual: 31,
                ..
            })
        ));
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]),
            Err(GgufError::Unsupported { .. })
        ));
        assert!(matches!(
            quantize(GgmlType::Q4_K, &[0f32; 255]),
            Err(GgufError::NotBlockMultiple { .. })
        ));
    }

    #[test]
    fn cast_blocks_views_aligned_bytes_and_rejects_slop() {
        let blocks = vec![BlockQ8_0::quantize(&[1.0; 32]); 3];
        let bytes: &[u8] = bytemuck::cast_slice(&blocks);
        let view = cast_blocks::<BlockQ8_0>(bytes).unwrap();
        assert_eq!(view, &blocks[..]);
        assert!(matches!(
            cast_blocks::<BlockQ8_0>(&bytes[..bytes.len() - 1]),
            Err(GgufError::PartialBlock { .. })
        ));
    }

    #[test]
    fn every_supported_type_round_trips_zeros_exactly() {
        for ty in GgmlType::ALL.into_iter().filter(|&t| can_quantize(t)) {
            let src = vec![0f32; 2 * crate::QK_K];
            let bytes = quantize(ty, &src).unwrap();
            assert_eq!(bytes.len(), ty.row_bytes(src.len()).unwrap(), "{ty}");
            let back = dequantize_to_vec(ty, &bytes).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{ty}");
        }
    }
}
