//! `metallic chat` (plain and `--output-format tui`), `generate` and `synth`
//! in a real terminal: each runs inside a private tmux server, keys go in
//! with send-keys and the screen comes back with capture-pane. Skips with a
//! message where tmux is missing (scripts/test.sh installs it).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{repo, smollm2, synth_args, turn_stats, TURNS};

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: tmux is not installed (scripts/test.sh installs it)");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("term", name)
}

/// One tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    dir: PathBuf,
    /// Plain chat: type only at the prompt, and check what was typed.
    wait_prompt: bool,
}

impl Tmux {
    /// Run `args` of the metallic binary in a 200x50 pane; `EXIT=<status>` is
    /// written to a file when it ends and the pane stays for inspection.
    fn start(name: &str, args: &[&str]) -> Tmux {
        Self::start_with(name, args, "METALLIC_PROFILING_ENABLED=")
    }

    /// [`start`](Self::start) with one `NAME=value` in the environment.
    fn start_with(name: &str, args: &[&str], env: &str) -> Tmux {
        let dir = scratch(name);
        let socket = format!("metallic-{}-{name}", std::process::id());
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let cmd = format!(
            // The shell survives the Ctrl-C sent to the pane's process group.
            "trap : INT; {} {}; echo EXIT=$? > {}; sleep 600",
            quote(env!("CARGO_BIN_EXE_metallic")),
            args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
            quote(dir.join("exit").to_str().unwrap())
        );
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
            ])
            .args(["-x", "200", "-y", "50", "-e", "TERM=xterm-256color"])
            .args(["-e", env, "sh", "-c", &cmd])
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session failed");
        Tmux {
            socket,
            dir,
            wait_prompt: false,
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, text: &str) {
        if !self.wait_prompt {
            self.tmux(&["send-keys", "-t", "t", "-l", text]);
            self.tmux(&["send-keys", "-t", "t", "Enter"]);
            return;
        }
        let at_prompt = |s: &str| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::trim)
                == Some(">>>")
        };
        self.wait_for("the prompt", 120, at_prompt);
        // rustyline asks the terminal for the cursor position when it starts
        // a line and reads keys that arrive meanwhile as the answer. Type,
        // check the line shows it all, else clear it and type again.
        let typed = format!(">>> {text}");
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(300));
            self.tmux(&["send-keys", "-t", "t", "-l", text]);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                if self.screen().lines().any(|l| l.trim_end() == typed) {
                    self.tmux(&["send-keys", "-t", "t", "Enter"]);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.tmux(&["send-keys", "-t", "t", "C-u"]);
        }
        panic!("could not type {text:?}; screen:\n{}", self.screen());
    }

    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]);
    }

    /// The screen, with the scrollback of the normal screen.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t", "-S", "-500"])
    }

    fn wait_for(&self, what: &str, timeout_s: u64, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if t.elapsed() > Duration::from_secs(timeout_s) {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exit_status(&self, timeout_s: u64) -> String {
        let t = Instant::now();
        let f = self.dir.join("exit");
        while t.elapsed() < Duration::from_secs(timeout_s) {
            if let Ok(s) = std::fs::read_to_string(&f) {
                return s.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the command did not exit; screen:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The checks both modes share: three turns that reuse the cache, /save and
/// /load, Ctrl-C during a reply, then Ctrl-D.
fn three_turns_save_load_interrupt(t: &Tmux, tui: bool) {
    let mut stats = Vec::new();
    for (i, turn) in TURNS.iter().enumerate() {
        t.type_line(turn);
        let screen = if tui {
            // The status line changes to this turn's stats when the reply ends.
            t.wait_for("the reply's stats", 120, |s| {
                s.contains(turn)
                    && turn_stats(s).last().is_some_and(|st| {
                        stats
                            .last()
                            .is_none_or(|prev: &(usize, usize, usize, usize)| st != prev)
                    })
            })
        } else {
            t.wait_for("the reply's stats", 120, |s| turn_stats(s).len() == i + 1)
        };
        stats.push(*turn_stats(&screen).last().unwrap());
    }
    assert_eq!(stats[0].1, 0, "{stats:?}");
    for i in 1..3 {
        let (prompt, reused, prefilled, _) = stats[i];
        assert_eq!(
            reused,
            stats[i - 1].3,
            "turn {} reuses the whole cache: {stats:?}",
            i + 1
        );
        assert_eq!(prefilled, prompt - reused, "{stats:?}");
    }

    let a = t.dir.join("a.json");
    let b = t.dir.join("b.json");
    t.type_line(&format!("/save {}", a.display()));
    t.wait_for("/save", 20, |s| s.contains("saved 7 messages"));
    t.type_line("/reset");
    t.wait_for("/reset", 20, |s| s.contains("conversation reset"));
    t.type_line(&format!("/load {}", a.display()));
    t.wait_for("/load", 20, |s| s.contains("loaded 7 messages"));
    t.type_line(&format!("/save {}", b.display()));
    t.wait_for("the second /save", 20, |s| {
        s.matches("saved 7 messages").count() >= if tui { 1 } else { 2 }
    });
    std::thread::sleep(Duration::from_millis(300));
    let first = std::fs::read_to_string(&a).unwrap();
    assert_eq!(first, std::fs::read_to_string(&b).unwrap());
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v[1]["content"], TURNS[0]);
    assert_eq!(v[5]["content"], TURNS[2]);

    // Ctrl-C during a reply: back at the prompt, and the chat goes on.
    let story = "Write a very long story about a dragon, in many chapters.";
    t.type_line(story);
    t.wait_for("the story to start", 60, |s| {
        if tui {
            s.contains("generating")
        } else {
            // Text after the typed line: the reply has begun.
            s.rfind(story)
                .is_some_and(|at| !s[at + story.len()..].trim().is_empty())
        }
    });
    t.key("C-c");
    t.wait_for("the interrupted reply", 30, |s| s.contains("interrupted"));
    t.type_line("/stats");
    t.wait_for("/stats after Ctrl-C", 20, |s| s.contains("turns 4"));
    t.key("C-d");
    assert_eq!(t.exit_status(20), "EXIT=0");
}

#[test]
fn plain_chat_holds_three_turns_and_survives_ctrl_c() {
    if !have_tmux() {
        return;
    }
    let Some(model) = smollm2() else { return };
    let mut t = Tmux::start(
        "plain",
        &[
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "200",
            "--system",
            "You are brief.",
        ],
    );
    // (capture-pane drops the prompt's trailing space)
    t.wait_for("the prompt", 60, |s| s.contains(">>>"));
    t.wait_prompt = true;
    three_turns_save_load_interrupt(&t, false);
}

#[test]
fn tui_chat_holds_three_turns_and_restores_the_terminal() {
    if !have_tmux() {
        return;
    }
    let Some(model) = smollm2() else { return };
    let t = Tmux::start(
        "tui",
        &[
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "200",
            "--system",
            "You are brief.",
            "--output-format",
            "tui",
        ],
    );
    let s = t.wait_for("the live view", 60, |s| {
        s.contains("conversation") && s.contains("cache")
    });
    assert!(
        s.contains("llama 135M Q4_1"),
        "the title names the model: {s}"
    );
    assert!(s.contains("decode"), "{s}");
    three_turns_save_load_interrupt(&t, true);
    // Back on the normal screen, not the alternate one.
    assert_eq!(
        t.tmux(&["display", "-p", "-t", "t", "#{alternate_on}"])
            .trim(),
        "0"
    );
}

#[test]
fn tui_handles_a_tiny_terminal_and_a_resize() {
    if !have_tmux() {
        return;
    }
    let Some(model) = smollm2() else { return };
    let t = Tmux::start(
        "resize",
        &[
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--output-format",
            "tui",
        ],
    );
    t.wait_for("the live view", 60, |s| s.contains("conversation"));
    t.tmux(&["resize-window", "-t", "t", "-x", "20", "-y", "6"]);
    t.wait_for("the small-terminal notice", 20, |s| s.contains("too small"));
    t.tmux(&["resize-window", "-t", "t", "-x", "70", "-y", "30"]);
    let s = t.wait_for("the narrow layout", 20, |s| s.contains("conversation"));
    assert!(
        s.contains("cache"),
        "stats below the conversation when narrow: {s}"
    );
    t.key("C-c");
    assert_eq!(t.exit_status(20), "EXIT=0");
}

#[test]
fn generate_tui_shows_the_reply_and_leaves_the_text_behind() {
    if !have_tmux() {
        return;
    }
    let Some(model) = smollm2() else { return };
    let t = Tmux::start(
        "gen",
        &[
            "generate",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "12",
            "--output-format",
            "tui",
            "-p",
            "The capital of France is",
        ],
    );
    let s = t.wait_for("the finished reply", 60, |s| s.contains("press q"));
    assert!(s.contains("tok/s") && s.contains("ttft"), "{s}");
    assert!(s.contains("Paris"), "{s}");
    t.key("q");
    assert_eq!(t.exit_status(20), "EXIT=0");
    let s = t.screen();
    assert!(s.contains("Paris") && s.contains("12 generated"), "{s}");
}

#[test]
fn synth_shows_a_progress_bar_on_a_terminal_only() {
    if !have_tmux() {
        return;
    }
    let tok = repo("assets/qwen2/tokenizer.json");
    if !tok.exists() {
        eprintln!("skipping: assets missing (run scripts/fetch-assets.sh)");
        return;
    }
    let dir = scratch("synth");
    let out = dir.join("tiny.gguf");
    let args = synth_args(&tok, "q8_0", &out);
    let t = Tmux::start("synth", &args);
    assert_eq!(t.exit_status(60), "EXIT=0");
    let s = t.screen();
    // The bar ends full: "N/N tensors" with the same N.
    let full = regex::Regex::new(r"(\d+)/(\d+) tensors").unwrap();
    let done = full
        .captures(&s)
        .is_some_and(|c| c[1] == c[2] && &c[1] != "0");
    assert!(s.contains("synth [") && done, "{s}");
    // In a pipe: no bar.
    std::fs::remove_file(&out).ok();
    let piped = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args(args)
        .output()
        .unwrap();
    assert!(piped.status.success());
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains("layers") && !err.contains('\x1b') && !err.contains('\r'),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn generate_tui_shows_the_live_profile_when_profiling() {
    if !have_tmux() {
        return;
    }
    let Some(model) = smollm2() else { return };
    let t = Tmux::start_with(
        "profile",
        &[
            "generate",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "8",
            "--output-format",
            "tui",
            "-p",
            "Hello",
        ],
        "METALLIC_PROFILING_ENABLED=1",
    );
    let s = t.wait_for("the finished reply", 60, |s| s.contains("press q"));
    assert!(
        s.contains("top ops") && s.contains("top matmul shapes"),
        "{s}"
    );
    assert!(s.contains("matmul") && s.contains("rms_norm"), "{s}");
    t.key("q");
    assert_eq!(t.exit_status(20), "EXIT=0");
}
