//! `metallic tokenize` end to end: the binary's ids equal the Hugging Face `tokenizers` goldens
//! (crates/test-support/golden, written by scripts/reference/tokenizer_golden.py). Ids are
//! integers: exact comparison.

use std::path::{Path, PathBuf};
use std::process::Command;

use metallic::tokenizer::TokenizerSpec;
use metallic_gguf::{GgufWriter, Value, ValueType};
use metallic_test_support::{golden_json as load, repo_path as repo};
use serde_json::Value as Json;

fn metallic(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args(args)
        .output()
        .expect("run metallic");
    assert!(
        out.status.success(),
        "metallic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ids(v: &Json) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Corpus strings to run through the binary (each run loads the model, so a sample).
fn sample() -> Vec<(usize, String)> {
    let corpus = load("tokenizer_corpus.json");
    let strings = corpus["strings"].as_array().unwrap();
    let wanted = |s: &str| {
        s.contains("<|im_start|>") || s.contains("DON'T") || s.contains('😀') || s.contains("中文")
    };
    let mut picked: Vec<(usize, String)> = strings
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_str().filter(|s| wanted(s)).map(|s| (i, s.to_string())))
        .take(12)
        .collect();
    // The ~100 kB text goes through --file.
    picked.push((
        strings.len() - 1,
        strings.last().unwrap().as_str().unwrap().to_string(),
    ));
    picked
}

fn check(model: &Path, golden: &Json) {
    let model = model.to_str().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (i, s) in sample() {
        let want_special = ids(&golden["special"][i]);
        let want_plain = if golden["plain"][i].is_null() {
            want_special.clone()
        } else {
            ids(&golden["plain"][i])
        };
        let path = dir.join(format!("tokenize-cli-{}-{i}.txt", std::process::id()));
        std::fs::write(&path, &s).unwrap();
        let file = path.to_str().unwrap();
        let got: Vec<u64> = serde_json::from_str(&metallic(&[
            "tokenize", "--model", model, "--json", "--file", file,
        ]))
        .unwrap();
        assert_eq!(got, want_special, "#{i} {s:.60?}");
        let got: Vec<u64> = serde_json::from_str(&metallic(&[
            "tokenize",
            "--model",
            model,
            "--json",
            "--no-parse-special",
            "--file",
            file,
        ]))
        .unwrap();
        assert_eq!(got, want_plain, "#{i} {s:.60?} --no-parse-special");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn tokenize_smollm2_gguf_matches_hf_tokenizers() {
    let golden = load("tokenizer_golden.json");
    check(
        &repo("assets/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &golden["smollm2"],
    );
}

/// A metadata-only GGUF with Qwen2.5's tokenizer, laid out from tokenizer.json as llama.cpp's
/// converter does.
#[test]
fn tokenize_qwen2_gguf_matches_hf_tokenizers() {
    let json = std::fs::read_to_string(repo("assets/qwen2/tokenizer.json")).unwrap();
    let spec = TokenizerSpec::from_hf_json(&json, Some(151_664)).unwrap();
    let strings = |v: &[String]| {
        Value::Array(
            ValueType::String,
            v.iter().cloned().map(Value::String).collect(),
        )
    };
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("qwen2".into()));
    w.add_metadata("tokenizer.ggml.model", Value::String(spec.model.clone()));
    w.add_metadata("tokenizer.ggml.pre", Value::String(spec.pre.clone()));
    w.add_metadata("tokenizer.ggml.tokens", strings(&spec.tokens));
    w.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(
            ValueType::I32,
            spec.token_types.iter().map(|&t| Value::I32(t)).collect(),
        ),
    );
    w.add_metadata("tokenizer.ggml.merges", strings(&spec.merges));
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(151_645));
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("qwen2-tokenizer-{}.gguf", std::process::id()));
    w.write_file(&path).unwrap();
    let golden = load("tokenizer_golden.json");
    check(&path, &golden["qwen2"]);

    // The readable listing: one line per id, specials marked.
    let listing = metallic(&[
        "tokenize",
        "--model",
        path.to_str().unwrap(),
        "<|im_start|>user\nhi 😀",
    ]);
    let lines: Vec<&str> = listing.lines().collect();
    let json: Vec<u64> = serde_json::from_str(&metallic(&[
        "tokenize",
        "--model",
        path.to_str().unwrap(),
        "--json",
        "<|im_start|>user\nhi 😀",
    ]))
    .unwrap();
    assert_eq!(lines.len(), json.len());
    assert!(
        lines[0].trim_start().starts_with("151644")
            && lines[0].contains("<|im_start|>")
            && lines[0].contains("[special]"),
        "{listing}"
    );
    assert!(lines.iter().any(|l| l.contains(r#""\n""#)), "{listing}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn tokenize_reports_bad_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args(["tokenize", "--model", "/nonexistent/model.gguf", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
    let out = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args(["tokenize", "--model", "x.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no text given must be an error");
}
