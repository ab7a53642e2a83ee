//! `metallic bench-serve`: N concurrent streaming clients against any
//! OpenAI-compatible server (metallic serve, llama-server, ...), reporting
//! aggregate generated tokens per second, time to first token and
//! inter-token latency percentiles. Times are taken on the client's
//! monotonic clock and include HTTP and SSE overhead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metallic::percentile::Stats;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub clients: usize,
    pub requests: usize,
    pub max_tokens: usize,
    pub prompt: String,
    pub api_key: Option<String>,
    /// Give up on a request after this long.
    pub timeout: Duration,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub clients: usize,
    pub requests: usize,
    pub failed: usize,
    pub generated_tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
}

struct One {
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    tokens: usize,
}

async fn one(http: reqwest::Client, cfg: Arc<BenchConfig>) -> Result<One, String> {
    let body = json!({
        "prompt": cfg.prompt,
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
        "stream": true,
    });
    let t0 = Instant::now();
    let mut req = http
        .post(format!("{}/v1/completions", cfg.url.trim_end_matches('/')))
        .json(&body);
    if let Some(k) = &cfg.api_key {
        req = req.bearer_auth(k);
    }
    let mut r = req.send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    let mut out = One {
        ttft: None,
        gaps: Vec::new(),
        tokens: 0,
    };
    let mut last = t0;
    let mut buf = String::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        // Each complete SSE event with text counts as one token (both
        // metallic and llama-server send one token per event).
        while let Some(end) = buf.find("\n\n") {
            let ev: String = buf.drain(..end + 2).collect();
            let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            let has_text = v["choices"][0]["text"]
                .as_str()
                .or(v["choices"][0]["delta"]["content"].as_str())
                .is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match out.ttft {
                    None => out.ttft = Some(now - t0),
                    Some(_) => out.gaps.push(now - last),
                }
                last = now;
                out.tokens += 1;
            }
        }
    }
    Ok(out)
}

pub async fn run(cfg: BenchConfig) -> BenchReport {
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .pool_max_idle_per_host(cfg.clients)
        .build()
        .expect("an HTTP client");
    let cfg = Arc::new(cfg);
    let sem = Arc::new(Semaphore::new(cfg.clients.max(1)));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.requests);
    for _ in 0..cfg.requests {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (http, cfg) = (http.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(http, cfg).await;
            drop(permit);
            r
        }));
    }
    let (mut ttft, mut itl) = (Vec::new(), Vec::new());
    let (mut tokens, mut failed) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(o)) => {
                tokens += o.tokens;
                ttft.extend(o.ttft.map(|d| d.as_secs_f64() * 1e3));
                itl.extend(o.gaps.iter().map(|d| d.as_secs_f64() * 1e3));
            }
            _ => failed += 1,
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (ttft, itl) = (Stats::of(&mut ttft), Stats::of(&mut itl));
    BenchReport {
        clients: cfg.clients,
        requests: cfg.requests,
        failed,
        generated_tokens: tokens,
        wall_s: wall,
        tokens_per_s: tokens as f64 / wall.max(1e-9),
        ttft_p50_ms: ttft.p50,
        ttft_p99_ms: ttft.p99,
        itl_p50_ms: itl.p50,
        itl_p99_ms: itl.p99,
    }
}
