//! The command line as users of llama.cpp expect it, on SmolLM2: one test
//! per surprise found when it was tried as a new user would (issue 11's
//! "Also seen"): Ctrl-C, flag ranges, prompt sources, seeds, the end-of-run
//! report, stop strings, help text.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{cmd, metallic};

fn smollm2() -> Option<String> {
    common::smollm2().map(|p| p.to_str().unwrap().to_string())
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "metallic failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails_naming(args: &[&str], needles: &[&str]) {
    let out = metallic(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn interrupt(pid: u32) {
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn long_run(m: &str, format: &str) -> std::process::Child {
    cmd()
        .args([
            "generate",
            "-m",
            m,
            "--ignore-eos",
            "-n",
            "4000",
            "-c",
            "4096",
        ])
        .args(["--output-format", format, "-p", "Once upon a time"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_in_json_mode_still_prints_a_valid_document() {
    let Some(m) = smollm2() else { return };
    let child = long_run(&m, "json");
    std::thread::sleep(Duration::from_millis(2500));
    interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["stop_reason"], "interrupted", "{v}");
    assert!(v["generated_tokens"].as_u64().unwrap() < 4000, "{v}");
}

#[test]
fn ctrl_c_in_text_mode_ends_the_line_and_prints_the_stats() {
    let Some(m) = smollm2() else { return };
    let mut child = long_run(&m, "text");
    // Wait for text to stream, then interrupt.
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let n = stdout.read(&mut buf).unwrap();
    assert!(n > 0);
    interrupt(child.id());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(rest.last(), Some(&b'\n'), "the text ends with a newline");
    assert!(
        err.contains("(interrupted)") && err.contains("generated"),
        "{err}"
    );
}

#[test]
fn out_of_range_values_are_errors_naming_the_flag_and_range() {
    let Some(m) = smollm2() else { return };
    let g = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["generate".into(), "-m".into(), m.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("hi".into());
        v
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let args = g(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_naming(&args, needles);
    };
    check(&["--top-p", "2"], &["--top-p", "between 0 and 1"]);
    check(&["--min-p", "1.5"], &["--min-p", "between 0 and 1"]);
    // A negative number is a value, not an unknown argument.
    check(&["--temp", "-1"], &["--temp", "0 or more"]);
    check(&["--top-k", "-1"], &["--top-k"]);
    check(&["-b", "0"], &["--batch-size", "1 or more"]);
    check(&["-n", "0"], &["--max-tokens", "1 or more"]);
    check(&["--repeat-penalty", "0"], &["--repeat-penalty", "above 0"]);
    check(&["--system", "be terse"], &["--chat"]);
    check(&["--messages", "x.json"], &["--chat"]);
    check(&["-ngl", "99"], &["no -ngl", "--device cuda"]);
}

#[test]
fn help_describes_every_flag_with_its_default() {
    for sub in [
        "generate", "chat", "bench", "probe", "synth", "tokenize", "inspect",
    ] {
        let out = metallic(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub} --help");
        // Every option or argument has a description: on its line, or on
        // the next, further indented (clap's layout for long help).
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            let indent = line.len() - l.len();
            let is_entry = (l.starts_with('-') || l.starts_with('<') || l.starts_with('['))
                && (2..=6).contains(&indent);
            if is_entry {
                let same_line = l.split("  ").skip(1).any(|p| !p.trim().is_empty());
                let next_line = lines.get(i + 1).is_some_and(|n| {
                    let t = n.trim_start();
                    !t.is_empty() && n.len() - t.len() > indent + 2
                });
                assert!(
                    same_line || next_line,
                    "`metallic {sub}`: no help for `{l}`"
                );
            }
        }
    }
    let help = String::from_utf8_lossy(&metallic(&["generate", "--help"]).stdout).to_string();
    assert!(help.contains("[default: cpu]"), "{help}");
    assert!(help.contains("[default: text]"), "{help}");
    assert!(help.contains("tui"), "{help}");
}

#[test]
fn the_prompt_comes_from_p_f_or_stdin_alike() {
    let Some(m) = smollm2() else { return };
    let dir = std::env::temp_dir().join(format!("metallic-behaviour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("prompt.txt");
    std::fs::write(&f, "The capital of France is").unwrap();
    let base = [
        "generate",
        "-m",
        &m,
        "--greedy",
        "-n",
        "3",
        "--output-format",
        "json",
    ];
    let ids = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        json_of(&metallic(&a))["ids"].clone()
    };
    let by_p = ids(&["-p", "The capital of France is"]);
    assert_eq!(ids(&["The capital of France is"]), by_p);
    assert_eq!(ids(&["-f", f.to_str().unwrap()]), by_p);
    let mut child = cmd()
        .args(base)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"The capital of France is")
        .unwrap();
    assert_eq!(json_of(&child.wait_with_output().unwrap())["ids"], by_p);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenize_uses_the_same_default_model_as_generate() {
    if smollm2().is_none() {
        return;
    }
    let out = cmd()
        .env_remove("METALLIC_MODEL")
        .args(["tokenize", "--json", "Hello"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!ids.is_empty());
}

#[test]
fn the_seed_is_random_unless_given_and_reported() {
    let Some(m) = smollm2() else { return };
    let run = |seed: Option<&str>| {
        let mut a = vec![
            "generate",
            "-m",
            &m,
            "-n",
            "6",
            "--ignore-eos",
            "--temp",
            "1.5",
        ];
        a.extend([
            "--top-k",
            "0",
            "--min-p",
            "0",
            "--output-format",
            "json",
            "Hello",
        ]);
        if let Some(s) = seed {
            a.extend(["--seed", s]);
        }
        json_of(&metallic(&a))
    };
    let (a, b) = (run(None), run(None));
    assert_ne!(a["seed"], b["seed"], "two runs drew the same seed");
    // The printed seed reproduces the run.
    let s = a["seed"].as_u64().unwrap().to_string();
    assert_eq!(run(Some(&s))["ids"], a["ids"]);
    assert_eq!(a["sampling"]["temp"], 1.5);
}

#[test]
fn the_end_of_run_report_names_model_times_memory_and_settings() {
    let Some(m) = smollm2() else { return };
    let out = metallic(&[
        "generate",
        "-m",
        &m,
        "-n",
        "4",
        "--seed",
        "5",
        "--output-format",
        "json",
        "Hi",
    ]);
    let v = json_of(&out);
    assert_eq!(v["model"]["arch"], "llama");
    assert_eq!(v["model"]["type"], "Q4_1");
    assert_eq!(v["model"]["size"], "135M");
    for k in [
        "load_ms",
        "time_to_first_token_ms",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(v["timings"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(
        v["memory"]["peak_host_bytes"].as_u64().unwrap() > 1 << 20,
        "{v}"
    );
    assert_eq!(v["seed"], 5);
    assert_eq!(v["sampling"]["top_k"], 40);
    let err = String::from_utf8_lossy(&out.stderr);
    for k in [
        "llama 135M Q4_1",
        "load",
        "ttft",
        "prompt tokens",
        "generated",
        "peak host",
        "seed 5",
    ] {
        assert!(err.contains(k), "the stderr line lacks {k:?}: {err}");
    }
    assert!(!err.contains('\x1b'), "no colour in a pipe: {err:?}");
}

#[test]
fn ids_drop_the_tokens_of_a_stop_string_as_text_does() {
    let Some(m) = smollm2() else { return };
    let run = |stop: &[&str]| {
        let mut a = vec![
            "generate",
            "-m",
            &m,
            "--greedy",
            "-n",
            "16",
            "--output-format",
            "json",
        ];
        a.extend_from_slice(stop);
        a.push("Count: 1, 2, 3, 4, 5,");
        json_of(&metallic(&a))
    };
    let seven: Vec<u32> =
        serde_json::from_slice(&metallic(&["tokenize", "-m", &m, "--json", "7"]).stdout).unwrap();
    assert_eq!(seven.len(), 1);
    let free = run(&[]);
    let has7 = |v: &Value| v["ids"].as_array().unwrap().iter().any(|i| i == seven[0]);
    assert!(has7(&free), "the test needs a 7 in the free run: {free}");
    let stopped = run(&["--stop", "7"]);
    assert!(
        !stopped["text"].as_str().unwrap().contains('7'),
        "{stopped}"
    );
    assert!(!has7(&stopped), "ids keep the stop token: {stopped}");
    assert_eq!(
        stopped["generated_tokens"],
        stopped["ids"].as_array().unwrap().len()
    );
    // The kept ids are the free run's, up to where the stop text began.
    let n = stopped["ids"].as_array().unwrap().len();
    assert_eq!(
        stopped["ids"].as_array().unwrap()[..],
        free["ids"].as_array().unwrap()[..n]
    );
}

#[test]
fn progress_and_colour_stay_out_of_pipes() {
    let Some(m) = smollm2() else { return };
    let started = Instant::now();
    let out = metallic(&["bench", "-m", &m, "-p", "8", "-n", "2", "-r", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(120));
}
