//! `metallic chat` driven through a pipe on SmolLM2: later turns prefill only
//! their new tokens, /save and /load round-trip, and a third greedy turn
//! equals `generate --chat --messages` run on the same history in one go.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::{smollm2, turn_stats, TURNS};

fn scratch(name: &str) -> PathBuf {
    common::scratch("chat", name)
}

/// The exact CPU path: the reference matmul, row by row, so a row's result
/// does not depend on how the prompt was split into steps.
const EXACT: (&str, &str) = ("METALLIC_MATMUL_BACKEND", "gemv");

fn chat(model: &Path, input: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "40",
        ])
        .args(extra)
        .env(EXACT.0, EXACT.1)
        .env_remove("METALLIC_PROFILING_ENABLED")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn later_turns_prefill_only_their_new_tokens() {
    let Some(model) = smollm2() else { return };
    let input = format!("{}\n{}\n{}\n", TURNS[0], TURNS[1], TURNS[2]);
    let out = chat(&model, &input, &["--system", "You are brief."]);
    let err = String::from_utf8_lossy(&out.stderr);
    let t = turn_stats(&err);
    assert_eq!(t.len(), 3, "{err}");
    assert_eq!(t[0].1, 0, "the first turn has nothing cached: {err}");
    for i in 1..3 {
        let (prompt, reused, prefilled, _) = t[i];
        let cache_before = t[i - 1].3;
        // Everything the cache held after the previous reply is reused (the
        // template renders history as it was generated), and only the rest
        // of the prompt runs.
        assert_eq!(reused, cache_before, "turn {}: {err}", i + 1);
        assert_eq!(prefilled, prompt - reused, "turn {}: {err}", i + 1);
        assert!(
            prefilled < 40,
            "turn {} prefilled {prefilled} tokens: {err}",
            i + 1
        );
    }
}

#[test]
fn third_greedy_turn_equals_generate_given_the_whole_history() {
    let Some(model) = smollm2() else { return };
    let dir = scratch("third");
    let saved = dir.join("conversation.json");
    let input = format!(
        "{}\n{}\n{}\n/save {}\n",
        TURNS[0],
        TURNS[1],
        TURNS[2],
        saved.display()
    );
    chat(&model, &input, &[]);
    let messages: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 6, "{messages:?}");
    assert_eq!(messages[4]["content"], TURNS[2]);
    let history = dir.join("history.json");
    std::fs::write(&history, serde_json::to_string(&messages[..5]).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args([
            "generate",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "40",
        ])
        .args(["--chat", "--messages", history.to_str().unwrap()])
        .args(["--output-format", "json"])
        .env(EXACT.0, EXACT.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], messages[5]["content"], "{v}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn save_then_load_round_trips_the_conversation() {
    let Some(model) = smollm2() else { return };
    let dir = scratch("roundtrip");
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    let input = format!(
        "{}\n/save {}\n/reset\n/stats\n/load {}\n/stats\n/save {}\n",
        TURNS[0],
        a.display(),
        a.display(),
        b.display()
    );
    let out = chat(&model, &input, &["--system", "You are brief."]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = std::fs::read_to_string(&a).unwrap();
    assert_eq!(first, std::fs::read_to_string(&b).unwrap());
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        3,
        "system, user, assistant: {v}"
    );
    assert!(
        stdout.contains("messages 1 |"),
        "/reset keeps the system message: {stdout}"
    );
    assert!(
        stdout.contains("messages 3 |"),
        "/load brings the rest back: {stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_commands_and_bad_files_are_reported_and_the_chat_goes_on() {
    let Some(model) = smollm2() else { return };
    let out = chat(
        &model,
        "/frobnicate\n/load /nonexistent/x.json\n/save\n/help\n",
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("unknown command /frobnicate"), "{err}");
    assert!(err.contains("/nonexistent/x.json"), "{err}");
    assert!(err.contains("/save needs a file name"), "{err}");
    assert!(
        stdout.contains("/reset"),
        "/help lists the commands: {stdout}"
    );
}
