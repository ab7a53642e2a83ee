//! Helpers shared by the CLI's integration tests: the repo's assets, running
//! the built `metallic` binary, per-run scratch directories, and writing a
//! tiny synthetic model with `metallic synth`. Each test crate uses a subset,
//! hence the `dead_code` allowances.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use regex::Regex;

pub use metallic_test_support::repo_path as repo;

/// The SmolLM2 Q4_1 test model; None (with a skip message) without assets.
pub fn smollm2() -> Option<PathBuf> {
    let p = repo("assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: SmolLM2 missing (run scripts/fetch-assets.sh)");
        None
    }
}

/// The Qwen2 tokenizer that `synth` embeds; None (with a skip message) without assets.
pub fn qwen2_tokenizer() -> Option<PathBuf> {
    let tok = repo("assets/qwen2/tokenizer.json");
    if tok.exists() {
        Some(tok)
    } else {
        eprintln!("skipping: assets missing (run scripts/fetch-assets.sh)");
        None
    }
}

/// The built binary with the environment that changes its behaviour removed,
/// so a developer's shell settings cannot change a test's result.
pub fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_metallic"));
    c.env_remove("METALLIC_PROFILING_ENABLED")
        .env_remove("METALLIC_MATMUL_BACKEND");
    c
}

/// Runs the binary to the end with its output captured.
pub fn metallic(args: &[&str]) -> Output {
    cmd().args(args).output().unwrap()
}

/// Asserts the run succeeded, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "metallic failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts the run succeeded and returns its stdout.
pub fn ok(out: &Output) -> String {
    assert_success(out);
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts the run failed with `needle` in its stderr and without a panic.
pub fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// `metallic-{kind}-{pid}` under the system temp dir, created; one per test run.
/// Nothing removes it when the test process ends (tests share it through a
/// static), so the folders that earlier runs of the same kind left behind
/// (their process gone) are removed first: a developer's temp dir keeps one
/// run's files, not every run's (~160 MB each for the quantize tests).
pub fn temp_dir(kind: &str) -> PathBuf {
    remove_stale(kind);
    let d = std::env::temp_dir().join(format!("metallic-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Remove `metallic-{kind}-{pid}` folders whose process no longer runs
/// (Linux: no `/proc/{pid}`; elsewhere nothing is removed).
fn remove_stale(kind: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!("metallic-{kind}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `metallic-{kind}-{pid}-{name}` under the system temp dir, created: one per test.
pub fn scratch(kind: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("metallic-{kind}-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `metallic synth` arguments of the tiny synthetic Qwen2 in `dtype`,
/// written to `out`; callers append further flags.
pub fn synth_args<'a>(tokenizer: &'a Path, dtype: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "synth",
        "--arch",
        "qwen2",
        "--preset",
        "tiny",
        "--dtype",
        dtype,
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
}

/// Writes the tiny synthetic Qwen2 in `dtype` to `out` with `metallic synth`
/// (`seed` given or synth's default), asserting success.
pub fn synth_tiny(tokenizer: &Path, dtype: &str, seed: Option<&str>, out: &Path) {
    let mut args = synth_args(tokenizer, dtype, out);
    if let Some(seed) = seed {
        args.extend(["--seed", seed]);
    }
    assert_success(&metallic(&args));
}

/// The three chat turns the chat tests send (pipe and terminal alike).
pub const TURNS: [&str; 3] = [
    "What is the capital of France?",
    "And the capital of Germany?",
    "Which of the two cities is larger?",
];

/// (prompt, reused, prefilled, cache) of every reply's stats line in `text`.
pub fn turn_stats(text: &str) -> Vec<(usize, usize, usize, usize)> {
    let re = Regex::new(r"prompt (\d+) tokens: (\d+) reused, (\d+) prefilled .*\| cache (\d+)/\d+")
        .unwrap();
    re.captures_iter(text)
        .map(|c| {
            let n = |i: usize| c[i].parse::<usize>().unwrap();
            (n(1), n(2), n(3), n(4))
        })
        .collect()
}
