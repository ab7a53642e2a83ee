//! The official `openai` Python package drives the server: chat and
//! completions, streamed and not, errors as typed exceptions. The client
//! lives in `.venv-test/` (scripts/test.sh installs it). Without it the test
//! skips with a message, unless METALLIC_REQUIRE_OPENAI_TESTS=1 (set by
//! scripts/test.sh, so CI cannot skip it silently).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{config, repo_path, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_drives_chat_and_completions() {
    let python = repo_path(".venv-test/bin/python");
    if !python.exists() {
        let msg = format!(
            "{} missing: run scripts/test.sh (it installs the openai client there)",
            python.display()
        );
        if std::env::var("METALLIC_REQUIRE_OPENAI_TESTS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return;
    }
    let mut cfg = config();
    cfg.api_key = Some("test-key".into());
    let Some(s) = start(cfg).await else { return };
    let script = repo_path("crates/server/tests/openai_client.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", s.base))
        .arg("test-key")
        .arg("smollm2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting python");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the openai client finishes within 300 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    s.server.shutdown().await.unwrap();
}
