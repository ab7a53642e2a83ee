//! A bounded loopback load test on SmolLM2 (CPU): 32 concurrent streaming
//! clients send 256 requests of mixed prompts and lengths, greedy and seeded
//! sampling; every 8th is cancelled mid-stream. Every other stream must
//! complete with exactly the tokens the same request gets when served alone
//! (none lost, none duplicated: each chunk carries one token's log-prob
//! entry), and the server must return to idle with its memory at the level
//! it reached after the first wave.
//!
//! Sized for CI on 2 cores: generations are short (1 to 10 tokens) and the KV
//! pool is small (24 MiB, about 500 positions), so admission control and
//! preemption are exercised too.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, start};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at",
    "My favourite food is",
    "In 1969, humans",
    "A list of fruits: apple,",
];
const LENGTHS: [u64; 4] = [1, 3, 6, 10];
const LONGEST: u64 = 10;

#[derive(Clone, Copy, Debug)]
struct Req {
    prompt: usize,
    /// None: greedy; Some(seed): sampling at temperature 0.9.
    seed: Option<u64>,
    max_tokens: u64,
    cancel: bool,
}

fn body(r: &Req, stream: bool) -> Value {
    let mut b = json!({
        "prompt": PROMPTS[r.prompt],
        "max_tokens": r.max_tokens,
        "logprobs": 0,
        "stream": stream,
    });
    match r.seed {
        None => b["temperature"] = json!(0),
        Some(s) => {
            b["temperature"] = json!(0.9);
            b["seed"] = json!(s);
        }
    }
    b
}

/// Tokens of a non-streamed response.
async fn alone(http: &reqwest::Client, base: &str, r: &Req) -> Vec<String> {
    let v: Value = http
        .post(format!("{base}/v1/completions"))
        .json(&body(r, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// Tokens of a streamed response (one per chunk), or None when cancelled.
async fn streamed(http: reqwest::Client, base: String, r: Req) -> Option<(Vec<String>, String)> {
    let mut resp = http
        .post(format!("{base}/v1/completions"))
        .json(&body(&r, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let mut chunks = 0;
    while let Some(c) = resp.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&c));
        chunks += 1;
        if r.cancel && chunks >= 2 {
            return None; // hang up mid-stream
        }
    }
    let mut tokens = Vec::new();
    let mut finish = String::new();
    let mut done = false;
    for ev in buf.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if ev == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(ev).unwrap();
        let c = &v["choices"][0];
        if let Some(t) = c["logprobs"]["tokens"].as_array() {
            assert_eq!(t.len(), 1, "one token per chunk: {v}");
            tokens.push(t[0].as_str().unwrap().to_string());
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert!(done, "stream ended without [DONE]: {buf}");
    Some((tokens, finish))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_match_requests_served_alone() {
    load_test(Some(false), 256).await;
}

/// The same with every decode step queued before the previous step's
/// tokens are read (CUDA's default): sequences that end or are cancelled
/// while a step ahead holds their row must neither lose nor gain a token,
/// nor leave a block behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_with_look_ahead_match_requests_served_alone() {
    load_test(Some(true), 128).await;
}

async fn load_test(look_ahead: Option<bool>, n_requests: u64) {
    let mut cfg = config();
    cfg.kv_memory = 24 << 20;
    cfg.max_seqs = 32;
    cfg.step_tokens = 128;
    cfg.max_queue = 256;
    cfg.look_ahead = look_ahead;
    let Some(s) = start(cfg).await else { return };
    let t0 = Instant::now();

    // References: each prompt, greedy and one seed, alone, at the longest length.
    let mut reference = Vec::new();
    for p in 0..PROMPTS.len() {
        for seed in [None, Some(p as u64 + 7)] {
            let r = Req {
                prompt: p,
                seed,
                max_tokens: LONGEST,
                cancel: false,
            };
            reference.push(((p, seed), alone(&s.http, &s.base, &r).await));
        }
    }
    let expect = |r: &Req| -> Vec<String> {
        let full = &reference
            .iter()
            .find(|(k, _)| *k == (r.prompt, r.seed))
            .unwrap()
            .1;
        full[..full.len().min(r.max_tokens as usize)].to_vec()
    };

    let reqs: Vec<Req> = (0..n_requests)
        .map(|i| Req {
            prompt: (i * 5 % 8) as usize,
            seed: if i % 3 == 0 {
                Some((i * 5 % 8) + 7)
            } else {
                None
            },
            max_tokens: LENGTHS[(i % 4) as usize],
            cancel: i % 8 == 7,
        })
        .collect();
    let clients = Arc::new(Semaphore::new(32));
    let mut rss_after_first_wave = 0;
    for (wave, chunk) in reqs.chunks(64).enumerate() {
        let mut tasks = Vec::new();
        for &r in chunk {
            let permit = clients.clone().acquire_owned().await.unwrap();
            let (http, base) = (s.http.clone(), s.base.clone());
            tasks.push((
                r,
                tokio::spawn(async move {
                    let out = streamed(http, base, r).await;
                    drop(permit);
                    out
                }),
            ));
        }
        for (r, t) in tasks {
            let out = tokio::time::timeout(Duration::from_secs(300), t)
                .await
                .expect("a stream finishes within 300 s")
                .unwrap();
            match (r.cancel, out) {
                (true, None) => {}
                (false, Some((tokens, finish))) => {
                    let want = expect(&r);
                    assert_eq!(
                        tokens, want,
                        "{r:?}: tokens differ from the request served alone"
                    );
                    let by_length = tokens.len() as u64 == r.max_tokens;
                    assert_eq!(finish, if by_length { "length" } else { "stop" }, "{r:?}");
                }
                (c, o) => panic!("{r:?}: cancel {c} but got {o:?}"),
            }
        }
        s.wait_idle().await;
        if wave == 0 {
            rss_after_first_wave = rss_kib();
        }
    }
    s.wait_idle().await;
    let grown = rss_kib().saturating_sub(rss_after_first_wave);
    assert!(
        grown < 32 * 1024,
        "resident memory grew by {grown} KiB after the first wave"
    );
    assert!(s.metric("metallic_kv_blocks_used").await == 0.0);
    let ahead = s.metric("metallic_engine_steps_queued_ahead_total").await;
    match look_ahead {
        Some(true) => assert!(ahead > 0.0, "no step was queued ahead"),
        _ => assert_eq!(ahead, 0.0, "steps queued ahead with look-ahead off"),
    }
    eprintln!(
        "load test (look-ahead {look_ahead:?}): {n_requests} requests in {:.1} s, {} preemptions, {ahead} steps queued ahead",
        t0.elapsed().as_secs_f64(),
        s.metric("metallic_preemptions_total").await
    );
    s.server.shutdown().await.unwrap();
}
