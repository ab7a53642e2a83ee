//! Writes a few small synthetic GGUF files covering the format's features (every value type,
//! nested arrays, every quantisable tensor type, custom alignment, version 2, explicit
//! offsets): seed material for the fuzzer and handy test input for `metallic inspect`.
//!
//! Usage: cargo run -p metallic-gguf --example synth_gguf -- OUT_DIR

use std::path::PathBuf;

use metallic_gguf::{quant, GgmlType, GgufError, GgufWriter, Value, ValueType};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + seed as f32) * 0.37).sin() * (1.0 + (i % 7) as f32))
        .collect()
}

fn main() -> Result<(), GgufError> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir).map_err(|error| GgufError::Io {
        path: dir.clone(),
        error,
    })?;

    let mut minimal = GgufWriter::new();
    minimal.add_metadata("general.architecture", Value::from("llama"));
    minimal.add_tensor(
        "w",
        GgmlType::F32,
        &[4],
        quant::quantize(GgmlType::F32, &[1.0, 2.0, 3.0, 4.0])?,
    )?;
    minimal.write_file(dir.join("minimal.gguf"))?;

    let mut all = GgufWriter::new();
    all.add_metadata("general.architecture", Value::from("llama"))
        .add_metadata("u8", Value::U8(1))
        .add_metadata("i8", Value::I8(-1))
        .add_metadata("u16", Value::U16(2))
        .add_metadata("i16", Value::I16(-2))
        .add_metadata("u32", Value::U32(3))
        .add_metadata("i32", Value::I32(-3))
        .add_metadata("u64", Value::U64(4))
        .add_metadata("i64", Value::I64(-4))
        .add_metadata("f32", Value::F32(0.5))
        .add_metadata("f64", Value::F64(0.25))
        .add_metadata("bool", Value::Bool(true))
        .add_metadata("str", Value::from("text"))
        .add_metadata(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(
                    ValueType::U8,
                    vec![Value::U8(1), Value::U8(2)],
                )],
            ),
        )
        .add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                (0..300).map(|i| Value::String(format!("tok{i}"))).collect(),
            ),
        )
        .add_metadata(
            "tokenizer.ggml.scores",
            Value::Array(
                ValueType::F32,
                (0..300).map(|i| Value::F32(-(i as f32))).collect(),
            ),
        );
    for (i, ty) in GgmlType::ALL
        .into_iter()
        .filter(|&t| quant::can_quantize(t))
        .enumerate()
    {
        let n = ty.block_size() * 2;
        all.add_tensor(
            format!("t{i}.{}", ty.name()),
            ty,
            &[n as u64, 1],
            quant::quantize(ty, &values(n, i as u32))?,
        )?;
    }
    all.write_file(dir.join("all_types.gguf"))?;

    let mut v2 = GgufWriter::new();
    v2.version(2).alignment(64);
    v2.add_tensor(
        "a",
        GgmlType::Q8_0,
        &[32, 2],
        quant::quantize(GgmlType::Q8_0, &values(64, 9))?,
    )?;
    v2.add_tensor(
        "b",
        GgmlType::F16,
        &[3],
        quant::quantize(GgmlType::F16, &values(3, 1))?,
    )?;
    v2.write_file(dir.join("v2_align64.gguf"))?;

    let mut offsets = GgufWriter::new();
    offsets.add_tensor_at("late", GgmlType::F32, &[8], vec![1u8; 32], 64)?;
    offsets.add_tensor_at("early", GgmlType::F32, &[8], vec![2u8; 32], 0)?;
    offsets.add_tensor_at("empty", GgmlType::F32, &[0, 3], Vec::new(), 32)?;
    offsets.write_file(dir.join("explicit_offsets.gguf"))?;

    let mut meta_only = GgufWriter::new();
    meta_only.add_metadata("general.name", Value::from("no tensors"));
    meta_only.write_file(dir.join("metadata_only.gguf"))?;

    println!("wrote synthetic GGUFs to {}", dir.display());
    Ok(())
}
