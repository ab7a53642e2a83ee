//! Starting a server on SmolLM2 (CPU) on a free loopback port for a test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metallic_cpu::CpuBackend;
use metallic_gguf::GgufFile;
use metallic_server::{ServeConfig, Server};
use serde_json::Value;

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

pub const MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model, or None (with a message) where the assets are not fetched.
pub fn model() -> Option<Arc<GgufFile>> {
    let p = repo_path(MODEL);
    if !p.exists() {
        eprintln!(
            "skipping: {} missing (run scripts/fetch-assets.sh)",
            p.display()
        );
        return None;
    }
    Some(Arc::new(GgufFile::open(&p).expect("opening the model")))
}

/// Small limits so tests stay fast and bounded.
pub fn config() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        model_name: "smollm2".into(),
        kv_memory: 64 << 20,
        max_seqs: 8,
        step_tokens: 128,
        ctx_size: 1024,
        max_tokens_limit: 512,
        shutdown_grace: Duration::from_secs(5),
        ..ServeConfig::default()
    }
}

pub struct Running {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
}

pub async fn start(cfg: ServeConfig) -> Option<Running> {
    let file = model()?;
    let backend = CpuBackend::new(2).unwrap();
    let mut server = metallic_server::start(backend, file, cfg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), server.ready())
        .await
        .expect("model loads within 60 s")
        .unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Some(Running { server, base, http })
}

impl Running {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One value of `/metrics` (a series without labels).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Wait (bounded) until no sequence runs and no KV block is held.
    pub async fn wait_idle(&self) {
        for _ in 0..100 {
            if self.metric("metallic_running_sequences").await == 0.0
                && self.metric("metallic_kv_blocks_used").await == 0.0
                && self.metric("metallic_queue_depth").await == 0.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not return to idle within 5 s");
    }
}

/// Read an SSE body into its `data:` payloads (up to `[DONE]`).
pub async fn sse_events(mut r: reqwest::Response) -> Vec<String> {
    let mut buf = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

/// The text of a completion stream's chunks.
pub fn stream_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            let c = &v["choices"][0];
            c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}
