//! Fuzzes the reference quantisers and dequantisers with arbitrary f32 values (NaN, infinities,
//! subnormals, huge values) and arbitrary block bytes: nothing may panic, and sizes must match.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metallic_gguf::{quant, GgmlType};

fuzz_target!(|data: &[u8]| {
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for ty in GgmlType::ALL.into_iter().filter(|&t| quant::can_quantize(t)) {
        let n = values.len() / ty.block_size() * ty.block_size();
        let bytes = quant::quantize(ty, &values[..n]).expect("whole blocks quantise");
        assert_eq!(Some(bytes.len()), ty.row_bytes(n));
        let back = quant::dequantize_to_vec(ty, &bytes).expect("own output dequantises");
        assert_eq!(back.len(), n);
        // Finite input in a sane range must come back finite.
        if values[..n].iter().all(|v| v.is_finite() && v.abs() < 1e4) {
            assert!(back.iter().all(|v| v.is_finite()), "{ty}");
        }
        let whole = data.len() / ty.type_size() * ty.type_size();
        let raw = quant::dequantize_to_vec(ty, &data[..whole]).expect("any bytes dequantise");
        assert_eq!(raw.len(), whole / ty.type_size() * ty.block_size());
    }
});
