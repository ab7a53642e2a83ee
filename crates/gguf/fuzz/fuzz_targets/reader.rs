//! Fuzzes GGUF validation: any input either fails with an error or yields a file whose every
//! accessor works, whose tensor data has the size its info says and dequantises, and which
//! rewrites to a valid file with the same content (and rewrites again to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metallic_gguf::{quant, GgufFile, GgufWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata() {
        let found = file.get(key).expect("every key can be looked up");
        assert!(found.bitwise_eq(value));
        let _ = (value.as_u32(), value.as_u64(), value.as_i64(), value.as_f32());
        let _ = (value.as_str(), value.as_bool(), value.as_array());
    }
    for t in file.tensors() {
        assert_eq!(file.tensor(&t.name), Some(t));
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        let ty = t.ggml_type;
        let n_blocks = (bytes.len() / ty.type_size()).min(4);
        let mut out = vec![0f32; n_blocks * ty.block_size()];
        let result = quant::dequantize(ty, &bytes[..n_blocks * ty.type_size()], &mut out);
        assert_eq!(result.is_ok(), quant::can_dequantize(ty), "{ty}: {result:?}");
    }

    let written = GgufWriter::from_file(&file)
        .to_bytes()
        .expect("a valid file can be written back");
    let again = GgufFile::from_bytes(written.clone()).expect("written file is valid");
    assert_eq!(again.version(), file.version());
    assert_eq!(again.alignment(), file.alignment());
    assert_eq!(again.data_offset(), file.data_offset());
    assert_eq!(again.metadata().len(), file.metadata().len());
    for ((k1, v1), (k2, v2)) in again.metadata().iter().zip(file.metadata()) {
        assert_eq!(k1, k2);
        assert!(v1.bitwise_eq(v2), "{k1}");
    }
    assert_eq!(again.tensors(), file.tensors());
    for (a, b) in again.tensors().iter().zip(file.tensors()) {
        assert_eq!(again.tensor_data(a), file.tensor_data(b));
    }
    let rewritten = GgufWriter::from_file(&again).to_bytes().unwrap();
    assert!(rewritten == written, "rewriting is not idempotent");
});
