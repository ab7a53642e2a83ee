//! Parity of the block formats with the `gguf` Python package.
//!
//! The reference vectors come from scripts/reference/gguf_quant_vectors.py (see its docstring):
//! random blocks dequantised by gguf.quants.dequantize, f32 inputs quantised by
//! gguf.quants.quantize, and gguf-py's dequantisation of metallic's own k-quant output.
//!
//! Tolerance everywhere in this file: none. ggml's reference dequantisation is a fixed
//! sequence of f32 multiplies and adds (no FMA), which numpy reproduces operation by
//! operation, so the outputs must agree bit for bit; likewise the quantisers gguf-py implements
//! follow ggml's `quantize_row_*_ref` operation by operation, so the bytes must be identical.

mod common;

use common::{assert_bits_eq, f32_tensor, open_data, tensor_bytes};
use metallic_gguf::{quant, GgmlType};

fn check_dequant(ty: GgmlType) {
    let file = open_data("quant_vectors.gguf");
    let (stored_ty, blocks) = tensor_bytes(&file, &format!("{}.blocks", ty.name()));
    assert_eq!(stored_ty, ty);
    let expected = f32_tensor(&file, &format!("{}.dequant", ty.name()));
    let mut ours = vec![f32::NAN; expected.len()];
    quant::dequantize(ty, blocks, &mut ours).unwrap();
    assert_bits_eq(&ours, &expected, &format!("{ty} dequantize"));
}

fn check_quantize(ty: GgmlType) {
    let file = open_data("quant_vectors.gguf");
    let input = f32_tensor(&file, "quant_input");
    let (stored_ty, expected) = tensor_bytes(&file, &format!("{}.quantized", ty.name()));
    assert_eq!(stored_ty, ty);
    let ours = quant::quantize(ty, &input).unwrap();
    assert_eq!(ours.len(), expected.len(), "{ty}");
    let bs = ty.type_size();
    for (i, (a, b)) in ours.chunks(bs).zip(expected.chunks(bs)).enumerate() {
        assert_eq!(
            a,
            b,
            "{ty} block {i}: input {:?}",
            &input[i * ty.block_size()..][..ty.block_size()]
        );
    }
}

macro_rules! parity_tests {
    ($check:ident: $($name:ident => $ty:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $check(GgmlType::$ty);
            }
        )*
    };
}

parity_tests! { check_dequant:
    f16_dequant_matches_gguf_py => F16,
    bf16_dequant_matches_gguf_py => BF16,
    q4_0_dequant_matches_gguf_py => Q4_0,
    q4_1_dequant_matches_gguf_py => Q4_1,
    q5_0_dequant_matches_gguf_py => Q5_0,
    q5_1_dequant_matches_gguf_py => Q5_1,
    q8_0_dequant_matches_gguf_py => Q8_0,
    q2_k_dequant_matches_gguf_py => Q2_K,
    q3_k_dequant_matches_gguf_py => Q3_K,
    q4_k_dequant_matches_gguf_py => Q4_K,
    q5_k_dequant_matches_gguf_py => Q5_K,
    q6_k_dequant_matches_gguf_py => Q6_K,
    // gguf-py has no Q8_K: the script computes ggml's `d * q` in numpy f32 instead.
    q8_k_dequant_matches_numpy_reference => Q8_K,
}

parity_tests! { check_quantize:
    f16_quantize_matches_gguf_py => F16,
    bf16_quantize_matches_gguf_py => BF16,
    q4_0_quantize_matches_gguf_py => Q4_0,
    q4_1_quantize_matches_gguf_py => Q4_1,
    q5_0_quantize_matches_gguf_py => Q5_0,
    q5_1_quantize_matches_gguf_py => Q5_1,
    q8_0_quantize_matches_gguf_py => Q8_0,
}
