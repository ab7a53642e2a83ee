//! Times `GgufFile::open` (metadata parse only) on a given file, or on a synthetic file with a
//! Qwen2.5-sized vocabulary (151,665 token strings, their scores and types, 151,387 merges).
//!
//! Usage: cargo run --release -p metallic-gguf --example open_timing [FILE.gguf]

use std::time::{Duration, Instant};

use metallic_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

fn time_open(path: &std::path::Path) -> Result<(Duration, GgufFile), GgufError> {
    let mut best = Duration::MAX;
    let mut file = GgufFile::open(path)?;
    for _ in 0..10 {
        let t = Instant::now();
        file = GgufFile::open(path)?;
        best = best.min(t.elapsed());
    }
    Ok((best, file))
}

fn main() -> Result<(), GgufError> {
    if let Some(path) = std::env::args().nth(1) {
        let (best, f) = time_open(path.as_ref())?;
        println!(
            "{path}: open (best of 10) {:.2} ms, {} metadata entries, {} tensors",
            best.as_secs_f64() * 1e3,
            f.metadata().len(),
            f.tensors().len()
        );
        return Ok(());
    }
    let n_tokens = 151_665;
    let n_merges = 151_387;
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::from("qwen2"))
        .add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                (0..n_tokens)
                    .map(|i| Value::String(format!("Ġtok{i}")))
                    .collect(),
            ),
        )
        .add_metadata(
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                (0..n_tokens).map(|_| Value::I32(1)).collect(),
            ),
        )
        .add_metadata(
            "tokenizer.ggml.merges",
            Value::Array(
                ValueType::String,
                (0..n_merges)
                    .map(|i| Value::String(format!("Ġt ok{i}")))
                    .collect(),
            ),
        );
    w.add_tensor("token_embd.weight", GgmlType::F32, &[4], vec![0u8; 16])?;
    let dir = std::env::temp_dir().join(format!("metallic-open-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| GgufError::Io {
        path: dir.clone(),
        error,
    })?;
    let path = dir.join("qwen_vocab.gguf");
    w.write_file(&path)?;
    let (best, f) = time_open(&path)?;
    println!(
        "synthetic Qwen2.5-size vocab ({} bytes of metadata): open (best of 10) {:.2} ms, {} tokens",
        f.data_offset(),
        best.as_secs_f64() * 1e3,
        f.get_array("tokenizer.ggml.tokens").map_or(0, <[Value]>::len)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
