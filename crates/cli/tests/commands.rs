//! `metallic synth`, `generate` and `bench` end to end, on a tiny synthetic
//! Qwen2 written by `synth` itself, plus the errors bad arguments must give.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use common::{fails_with, metallic, ok, qwen2_tokenizer, synth_tiny, temp_dir};

/// The tiny model, written once per test run; None without assets.
fn tiny() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let tok = qwen2_tokenizer()?;
        let out = temp_dir("cli").join("tiny-q8_0.gguf");
        synth_tiny(&tok, "q8_0", Some("7"), &out);
        Some(out)
    })
    .as_deref()
}

#[test]
fn synth_writes_a_qwen2_file_that_inspect_reads() {
    let Some(model) = tiny() else { return };
    let v: Value = serde_json::from_str(&ok(&metallic(&[
        "inspect",
        "--json",
        model.to_str().unwrap(),
    ])))
    .unwrap();
    let text = v.to_string();
    assert!(text.contains("\"qwen2\""), "architecture missing");
    assert!(text.contains("blk.1.ffn_down.weight"));
    assert!(text.contains("Q8_0"));
    assert!(text.contains("blk.0.attn_q.bias"), "Qwen2 has Q/K/V biases");
}

#[test]
fn generate_json_reports_ids_text_and_timings() {
    let Some(model) = tiny() else { return };
    let m = model.to_str().unwrap();
    let run = |seed: &str| -> Value {
        let out = metallic(&[
            "generate",
            "-m",
            m,
            "--ignore-eos",
            "-n",
            "6",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "--output-format",
            "json",
            "Hello",
        ]);
        serde_json::from_str(ok(&out).trim()).unwrap()
    };
    let a = run("3");
    assert_eq!(a["generated_tokens"], 6);
    assert_eq!(a["ids"].as_array().unwrap().len(), 6);
    assert_eq!(a["stop_reason"], "length");
    assert!(a["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    // Same seed, same text.
    assert_eq!(run("3")["ids"], a["ids"]);
}

#[test]
fn generate_stops_at_max_tokens_and_streams_text() {
    let Some(model) = tiny() else { return };
    let out = metallic(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--greedy",
        "--ignore-eos",
        "-n",
        "4",
        "Hi",
    ]);
    let text = ok(&out);
    assert!(!text.trim().is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 generated"), "{err}");
}

#[test]
fn generate_chat_uses_the_template() {
    let Some(model) = tiny() else { return };
    let out = metallic(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--chat",
        "--greedy",
        "-n",
        "2",
        "--output-format",
        "json",
        "Hi",
    ]);
    let v: Value = serde_json::from_str(ok(&out).trim()).unwrap();
    // Qwen2.5's template with its default system message is far longer than "Hi".
    assert!(v["prompt_tokens"].as_u64().unwrap() > 20, "{v}");
}

#[test]
fn bench_json_has_pp_and_tg_results() {
    let Some(model) = tiny() else { return };
    let out = metallic(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let tests = v["tests"].as_array().unwrap();
    let names: Vec<&str> = tests.iter().map(|t| t["test"].as_str().unwrap()).collect();
    assert_eq!(names, ["pp8", "tg4"]);
    for t in tests {
        assert_eq!(t["tokens_per_s"].as_array().unwrap().len(), 2);
        assert!(t["mean"].as_f64().unwrap() > 0.0);
    }
    assert!(v["machine"]["cpu"].is_string());
}

#[test]
fn bench_table_is_markdown() {
    let Some(model) = tiny() else { return };
    let out = ok(&metallic(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
    ]));
    assert!(out.contains("| model | size | params | backend | threads | test | t/s |"));
    assert!(out
        .lines()
        .any(|l| l.contains("| pp4 |") && l.contains('±')));
    assert!(out.lines().any(|l| l.contains("| tg2 |")));
}

#[test]
fn context_overflow_is_a_clear_error() {
    let Some(model) = tiny() else { return };
    let long = "word ".repeat(64);
    let out = metallic(&["generate", "-m", model.to_str().unwrap(), "-c", "16", &long]);
    fails_with(&out, "context");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    fails_with(
        &metallic(&["generate", "-m", "/nonexistent/model.gguf", "hi"]),
        "error:",
    );
    fails_with(
        &metallic(&[
            "synth",
            "--arch",
            "qwen2",
            "--preset",
            "huge",
            "--tokenizer",
            "x",
            "-o",
            "y",
        ]),
        "tiny",
    );
    fails_with(
        &metallic(&[
            "synth",
            "--arch",
            "gpt9",
            "--preset",
            "tiny",
            "--tokenizer",
            "x",
            "-o",
            "y",
        ]),
        "--arch",
    );
    fails_with(&metallic(&["bench", "-r", "0"]), "repetitions");
    let Some(model) = tiny() else { return };
    let m = model.to_str().unwrap();
    fails_with(
        &metallic(&["generate", "-m", m, "-c", "999999999", "hi"]),
        "context",
    );
    fails_with(
        &metallic(&["generate", "-m", m, "--repeat-penalty", "0", "hi"]),
        "--repeat-penalty",
    );
    fails_with(
        &metallic(&["generate", "-m", m, "--top-p", "nan", "hi"]),
        "--top-p",
    );
}
