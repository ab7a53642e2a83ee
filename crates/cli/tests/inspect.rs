//! `metallic inspect` end to end: the real binary on generated, truncated and foreign files.

use std::path::PathBuf;
use std::process::{Command, Output};

use metallic_gguf::{quant, GgmlType, GgufWriter, Value, ValueType};

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("metallic-inspect-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LONG: &str =
    "This chat template is much longer than the sixty characters shown in text mode {{ end }}";

fn sample_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::from("llama"))
        .add_metadata("llama.block_count", Value::U32(2))
        .add_metadata("llama.rope.freq_base", Value::F32(10000.0))
        .add_metadata("tokenizer.chat_template", Value::from(LONG))
        .add_metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                (0..2000).map(|i| Value::String(format!("t{i}"))).collect(),
            ),
        )
        .add_metadata(
            "short.list",
            Value::Array(ValueType::I32, (0..100).map(Value::I32).collect()),
        )
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
        .add_metadata("odd.float", Value::F32(f32::NAN));
    let q = quant::quantize(GgmlType::Q8_0, &vec![0.5; 64 * 2]).unwrap();
    w.add_tensor("blk.0.attn_q.weight", GgmlType::Q8_0, &[64, 2], q)
        .unwrap();
    w.add_tensor("output_norm.weight", GgmlType::F32, &[3], vec![0u8; 12])
        .unwrap();
    w.to_bytes().unwrap()
}

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metallic"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn text_output_shows_metadata_and_tensor_table() {
    let dir = Scratch::new("text");
    let path = dir.path("m.gguf");
    std::fs::write(&path, sample_gguf()).unwrap();
    let out = inspect(&[path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "GGUF v3",
        "Metadata (8 entries)",
        "general.architecture",
        "\"llama\"",
        "llama.rope.freq_base",
        "10000",
        "[str; 2000]",
        "[\"t0\", \"t1\", \"t2\", \"t3\", \"t4\", \"t5\", ... 2000 total]",
        "[i32; 100]",
        "[[u8; 2]; 1]",
        "[[1, 2]]",
        &format!("({} bytes)", LONG.len()),
        "Tensors (2;",
        "blk.0.attn_q.weight",
        "Q8_0",
        "64 x 2",
        "output_norm.weight",
        "Q8_0 x1 (136 B, 136 B), F32 x1 (12 B, 12 B)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Long strings are cut in text mode.
    assert!(!text.contains(LONG));
    let q_row = text.lines().find(|l| l.contains("attn_q")).unwrap();
    let cells: Vec<&str> = q_row.split_whitespace().collect();
    // #, name, type, shape (3 tokens), elements, bytes, offset
    assert_eq!(cells[6..], ["128", "136", "0"], "{q_row}");
}

#[test]
fn json_output_is_complete_except_long_arrays() {
    let dir = Scratch::new("json");
    let path = dir.path("m.gguf");
    std::fs::write(&path, sample_gguf()).unwrap();
    let out = inspect(&["--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["alignment"], 32);
    let meta = v["metadata"].as_array().unwrap();
    let entry = |key: &str| meta.iter().find(|e| e["key"] == key).unwrap().clone();
    assert_eq!(entry("tokenizer.chat_template")["value"], LONG);
    assert_eq!(entry("llama.block_count")["value"], 2);
    assert_eq!(entry("odd.float")["value"], "NaN");
    let tokens = entry("tokenizer.ggml.tokens");
    assert_eq!(tokens["len"], 2000);
    assert_eq!(tokens["truncated"], true);
    assert_eq!(tokens["value"].as_array().unwrap().len(), 1024);
    assert_eq!(tokens["value"][1023], "t1023");
    let short = entry("short.list");
    assert_eq!(short["value"].as_array().unwrap().len(), 100);
    assert!(short.get("truncated").is_none());
    assert_eq!(entry("nested")["value"], serde_json::json!([[1, 2]]));
    let t = &v["tensors"][0];
    assert_eq!(t["name"], "blk.0.attn_q.weight");
    assert_eq!(t["type"], "Q8_0");
    assert_eq!(t["shape"], serde_json::json!([64, 2]));
    assert_eq!(
        (t["n_elements"].as_u64(), t["n_bytes"].as_u64()),
        (Some(128), Some(136))
    );
    assert_eq!(
        v["by_type"],
        serde_json::json!([
            {"type": "Q8_0", "tensors": 1, "bytes": 136},
            {"type": "F32", "tensors": 1, "bytes": 12},
        ])
    );
}

#[test]
fn truncated_file_fails_cleanly_with_exit_code_1() {
    let dir = Scratch::new("truncated");
    let bytes = sample_gguf();
    // The file ends with the 12 bytes of output_norm.weight and 20 bytes of padding, so
    // len - 21 cuts into tensor data (cutting only padding leaves a valid file).
    for cut in [0, 3, 20, 100, bytes.len() / 2, bytes.len() - 21] {
        let path = dir.path(&format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        for json in [false, true] {
            let mut args = vec![path.to_str().unwrap()];
            if json {
                args.insert(0, "--json");
            }
            let out = inspect(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "cut {cut}: {err}");
            assert!(err.starts_with("error: cannot inspect"), "cut {cut}: {err}");
            assert!(!err.contains("panicked"), "cut {cut}: {err}");
            assert!(out.stdout.is_empty(), "cut {cut}");
        }
    }
}

#[test]
fn foreign_and_missing_files_fail_cleanly() {
    let dir = Scratch::new("foreign");
    let path = dir.path("notes.txt");
    std::fs::write(&path, "just some text, not a model\n").unwrap();
    let out = inspect(&[path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad magic"), "{}", stderr(&out));

    let out = inspect(&[dir.path("missing.gguf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.gguf"));
}
