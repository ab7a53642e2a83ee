//! Step 2 of scripts/reference/gguf_quant_vectors.py: quantises `kquant_input` from
//! crates/gguf/tests/data/quant_vectors.gguf to every k-quant with metallic's reference
//! quantisers and writes crates/gguf/tests/data/kquant_ours.gguf, which the script then
//! dequantises with gguf-py.
//!
//! Usage: cargo run -p metallic-gguf --example kquant_dump [DATA_DIR]

use std::path::PathBuf;

use metallic_gguf::{quant, GgmlType, GgufError, GgufFile, GgufWriter, Value};

fn main() -> Result<(), GgufError> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let vectors = GgufFile::open(dir.join("quant_vectors.gguf"))?;
    let input = vectors
        .tensor("kquant_input")
        .expect("quant_vectors.gguf has kquant_input");
    let x = quant::dequantize_to_vec(input.ggml_type, vectors.tensor_data(input))?;

    let mut w = GgufWriter::new();
    w.add_metadata(
        "reference.note",
        Value::from("metallic-gguf quantize() of kquant_input (examples/kquant_dump.rs)"),
    );
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        let bytes = quant::quantize(ty, &x)?;
        w.add_tensor(ty.name(), ty, &[x.len() as u64], bytes)?;
    }
    let out = dir.join("kquant_ours.gguf");
    w.write_file(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}
