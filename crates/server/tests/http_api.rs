//! The OpenAI API over a real socket (reqwest) on SmolLM2, CPU.

mod common;

use std::time::Duration;

use common::{config, sse_events, start, stream_text, Running};
use serde_json::{json, Value};

fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_answers_greedily_with_usage() {
    let Some(s) = start(config()).await else {
        return;
    };
    let (status, v) = s
        .post(
            "/v1/chat/completions",
            &chat_body("Name the capital city of France.", 16),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && (1..=16).contains(&c), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    // The same request again gives the same greedy answer.
    let (_, again) = s
        .post(
            "/v1/chat/completions",
            &chat_body("Name the capital city of France.", 16),
        )
        .await;
    assert_eq!(
        again["choices"][0]["message"]["content"],
        v["choices"][0]["message"]["content"]
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completion_equals_the_unstreamed_one_and_reports_usage() {
    let Some(s) = start(config()).await else {
        return;
    };
    let body = json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
    let (status, whole) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = s
        .http
        .post(format!("{}/v1/completions", s.base))
        .json(&sbody)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        stream_text(&events),
        whole["choices"][0]["text"].as_str().unwrap()
    );
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_error_bodies() {
    let mut cfg = config();
    cfg.api_key = Some("sekret".into());
    cfg.max_body_bytes = 4096;
    let Some(s) = start(cfg).await else { return };
    let url = |p: &str| format!("{}{p}", s.base);
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().await.unwrap())
    };
    let authed = |b: reqwest::RequestBuilder| b.bearer_auth("sekret");

    // No key, wrong key.
    let (st, v) = send(
        s.http
            .post(url("/v1/completions"))
            .json(&json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (st, _) = send(
        s.http
            .post(url("/v1/completions"))
            .bearer_auth("nope")
            .json(&json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(st, 401);
    // Health and metrics stay open.
    assert_eq!(
        s.http.get(url("/health")).send().await.unwrap().status(),
        200
    );

    // Malformed JSON.
    let (st, v) = send(
        authed(s.http.post(url("/v1/completions")))
            .header("content-type", "application/json")
            .body("{\"prompt\": "),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Unknown field, named.
    let (st, v) = send(
        authed(s.http.post(url("/v1/chat/completions")))
            .json(&json!({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{v}"
    );
    // Unknown field inside a message.
    let (st, v) = send(
        authed(s.http.post(url("/v1/chat/completions")))
            .json(&json!({"messages": [{"role": "user", "content": "hi", "mood": "x"}]})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // Value out of range, with its param.
    let (st, v) = send(
        authed(s.http.post(url("/v1/completions"))).json(&json!({"prompt": "x", "temperature": 9})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["param"], "temperature");
    let (st, v) = send(
        authed(s.http.post(url("/v1/completions")))
            .json(&json!({"prompt": "x", "max_tokens": 100000})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("512"),
        "{v}"
    );
    let (st, _) =
        send(authed(s.http.post(url("/v1/completions"))).json(&json!({"prompt": "x", "n": 2})))
            .await;
    assert_eq!(st, 400);
    // A body over --max-body-bytes (4096 here): 413, OpenAI-shaped.
    let (st, v) = send(
        authed(s.http.post(url("/v1/completions"))).json(&json!({"prompt": "hello ".repeat(1500)})),
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request body"),
        "{v}"
    );
    // Unknown route.
    let (st, v) = send(authed(s.http.get(url("/v2/nothing")))).await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/chat/completions"));
    // The server still answers.
    let (st, v) = send(
        authed(s.http.post(url("/v1/completions")))
            .json(&json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_longer_than_the_context_names_both_numbers() {
    let mut cfg = config();
    cfg.ctx_size = 64;
    let Some(s) = start(cfg).await else { return };
    let (st, v) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "one two three four five ".repeat(20)}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("101 tokens") && msg.contains("holds 64"),
        "{msg}"
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut cfg = config();
    cfg.max_seqs = 1;
    cfg.max_queue = 1;
    let Some(s) = start(cfg).await else { return };
    let body = json!({"prompt": "Count: one, two,", "max_tokens": 48, "temperature": 0});
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (http, url, body) = (
            s.http.clone(),
            format!("{}/v1/completions", s.base),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        let (st, retry, v) = t.await.unwrap();
        match st {
            200 => ok += 1,
            429 => {
                rejected += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(v["error"]["type"], "rate_limit_error");
            }
            _ => panic!("unexpected {st}: {v}"),
        }
    }
    assert!(ok >= 1 && rejected >= 1, "ok {ok}, rejected {rejected}");
    s.wait_idle().await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_frees_its_sequence_at_once() {
    let Some(s) = start(config()).await else {
        return;
    };
    let body = json!({"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0.8, "seed": 1, "stream": true});
    let mut r = s
        .http
        .post(format!("{}/v1/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        r.chunk().await.unwrap().expect("a chunk");
    }
    assert_eq!(s.metric("metallic_running_sequences").await, 1.0);
    drop(r);
    s.wait_idle().await;
    assert!(s.metric("metallic_generation_tokens_total").await < 500.0);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_served_from_the_cache() {
    let Some(s) = start(config()).await else {
        return;
    };
    let system = "You are a careful assistant. Answer briefly and precisely. ".repeat(4);
    let body = |q: &str| {
        json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
               "max_tokens": 8, "temperature": 0})
    };
    let (_, first) = s.post("/v1/chat/completions", &body("What is 2+2?")).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, second) = s
        .post("/v1/chat/completions", &body("Name a colour."))
        .await;
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 48 && cached % 16 == 0, "{}", second["usage"]);
    // The cached prefix gives the same answer as computing it.
    let (_, again) = s.post("/v1/chat/completions", &body("What is 2+2?")).await;
    assert_eq!(
        again["choices"][0]["message"],
        first["choices"][0]["message"]
    );
    assert!(s.metric("metallic_prompt_tokens_cached_total").await >= cached as f64);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_max_tokens_and_logprobs() {
    let Some(s) = start(config()).await else {
        return;
    };
    let (_, full) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0}),
        )
        .await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 12);
    // Stop at the second comma of the continuation: the text ends before it.
    let stop = ",";
    let (_, cut) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": [stop]}),
        )
        .await;
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let cut_text = cut["choices"][0]["text"].as_str().unwrap();
    assert_eq!(cut_text, &text[..text.find(stop).unwrap()]);

    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Say hi"}],
              "max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_token_text_in_user_content_is_plain_text() {
    let Some(s) = start(config()).await else {
        return;
    };
    let usage = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let (_, plain) = s.post("/v1/chat/completions", &chat_body("a", 1)).await;
    let (_, special) = s
        .post("/v1/chat/completions", &chat_body("<|im_end|>", 1))
        .await;
    // As a control token `<|im_end|>` would be one token, like "a"; as text it is several.
    assert!(
        usage(&special) > usage(&plain) + 2,
        "{} vs {}",
        usage(&special),
        usage(&plain)
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let Some(s) = start(config()).await else {
        return;
    };
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "stream": true});
    let r = s
        .http
        .post(format!("{}/v1/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(sse_events(r));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let base = s.base.clone();
    let http = s.http.clone();
    let shutdown = tokio::spawn(s.server.shutdown());
    tokio::time::sleep(Duration::from_millis(20)).await;
    // New work is refused while draining (or the listener is already closed).
    if let Ok(r) = http
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
    {
        assert_eq!(r.status(), 503);
    }
    let events = reader.await.unwrap();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    shutdown.await.unwrap().unwrap();
}

/// Send every body to `/v1/completions` at once; each task yields its text.
fn complete_concurrently(s: &Running, bodies: Vec<Value>) -> Vec<tokio::task::JoinHandle<String>> {
    bodies
        .into_iter()
        .map(|b| {
            let (http, url) = (s.http.clone(), format!("{}/v1/completions", s.base));
            tokio::spawn(async move {
                let v: Value = http
                    .post(url)
                    .json(&b)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempted_sequences_resume_with_the_same_tokens() {
    // 6 MiB of KV: 8 blocks of 16 positions for SmolLM2; four sequences
    // growing to 5 blocks each cannot all fit, so some are preempted and
    // recomputed.
    let mut cfg = config();
    cfg.kv_memory = 6 << 20;
    let Some(s) = start(cfg).await else { return };
    let prompts = [
        "Once upon a time",
        "The history of Rome",
        "Dear diary,",
        "Step one:",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 60, "temperature": 0});
    let mut alone = Vec::new();
    for p in prompts {
        let (st, v) = s.post("/v1/completions", &body(p)).await;
        assert_eq!(st, 200, "{v}");
        alone.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let tasks = complete_concurrently(&s, prompts.iter().map(|p| body(p)).collect());
    for (t, want) in tasks.into_iter().zip(&alone) {
        assert_eq!(&t.await.unwrap(), want);
    }
    assert!(
        s.metric("metallic_preemptions_total").await > 0.0,
        "nothing was preempted"
    );
    s.wait_idle().await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_counts_every_streamed_token() {
    let Some(s) = start(config()).await else {
        return;
    };
    let r = metallic_server::bench::run(metallic_server::bench::BenchConfig {
        url: s.base.clone(),
        clients: 2,
        requests: 4,
        max_tokens: 5,
        prompt: "1, 2, 3, 4,".into(),
        api_key: None,
        timeout: Duration::from_secs(60),
    })
    .await;
    assert_eq!(r.failed, 0);
    // Each greedy request runs to its 5 tokens (the continuation has no EOS).
    assert_eq!(r.generated_tokens, 20, "{r:?}");
    assert_eq!(s.metric("metallic_generation_tokens_total").await, 20.0);
    assert!(r.ttft_p50_ms > 0.0 && r.itl_p99_ms >= r.itl_p50_ms, "{r:?}");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_kv_cache_holds_twice_the_blocks_and_answers_alike() {
    let Some(s32) = start(config()).await else {
        return;
    };
    let body = chat_body("Name the capital city of France.", 12);
    let (st, v32) = s32.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v32}");
    let blocks32 = s32.metric("metallic_kv_blocks_total").await;
    s32.server.shutdown().await.unwrap();

    let mut cfg = config();
    cfg.kv_type = metallic::backend::DType::F16;
    let s16 = start(cfg).await.unwrap();
    let blocks16 = s16.metric("metallic_kv_blocks_total").await;
    assert!(blocks32 > 0.0);
    assert_eq!(blocks16, 2.0 * blocks32, "same --kv-memory, f16 blocks");
    let (st, v16) = s16.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v16}");
    let text = v16["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    s16.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_and_seeded_requests_in_one_batch_get_the_tokens_they_get_alone() {
    let Some(s) = start(config()).await else {
        return;
    };
    // Greedy, seeded sampling with each filter, and penalties (whose history
    // lives in each sequence's own backend sampler).
    let bodies = [
        json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}),
        json!({"prompt": "The history of Rome", "max_tokens": 24, "temperature": 0.9, "seed": 7}),
        json!({"prompt": "Dear diary,", "max_tokens": 24, "temperature": 0.8, "top_k": 20, "seed": 11}),
        json!({"prompt": "Step one:", "max_tokens": 24, "temperature": 1.0, "top_p": 0.9, "min_p": 0.05, "seed": 3}),
        json!({"prompt": "1, 2, 3, 4,", "max_tokens": 24, "temperature": 0.7, "seed": 5,
               "presence_penalty": 0.8, "frequency_penalty": 0.5}),
        json!({"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0}),
    ];
    let mut alone = Vec::new();
    for b in &bodies {
        let (st, v) = s.post("/v1/completions", b).await;
        assert_eq!(st, 200, "{v}");
        alone.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let steps_before = s.metric("metallic_engine_steps_total").await;
    let tasks = complete_concurrently(&s, bodies.to_vec());
    for (k, (t, want)) in tasks.into_iter().zip(&alone).enumerate() {
        assert_eq!(&t.await.unwrap(), want, "request {k}: {}", bodies[k]);
    }
    // They did share steps: far fewer steps than the tokens generated.
    let steps = s.metric("metallic_engine_steps_total").await - steps_before;
    let tokens: f64 = 6.0 * 24.0;
    assert!(steps < tokens * 0.6, "{steps} steps for {tokens} tokens");
    s.server.shutdown().await.unwrap();
}

/// Log-softmax on the host of the single-sequence forward's logits after
/// `tokens`: (log-probability of every token, argmax).
fn host_logprobs(
    ex: &mut metallic::exec::Exec<'_, metallic_cpu::CpuBackend>,
    model: &metallic::model::Model<metallic_cpu::CpuBackend>,
    tokens: &[u32],
) -> (Vec<f64>, u32) {
    use metallic::backend::Backend;
    let mut st =
        metallic::model::State::new(ex.backend, &model.config, tokens.len() + 1, 64, 1).unwrap();
    metallic::generate::prefill(ex, model, &mut st, tokens).unwrap();
    let mut logits = vec![0.0f32; model.config.vocab];
    ex.backend.read_f32(&st.logits, 0, &mut logits).unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
        .unwrap() as u32;
    (logits.iter().map(|&l| l as f64 - lse).collect(), best)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_a_batch_equal_a_host_log_softmax_of_the_logits() {
    use metallic::backend::Backend;
    let Some(s) = start(config()).await else {
        return;
    };
    let prompts = ["The capital of France is", "Dear diary,", "1, 2, 3, 4,"];
    let n_tok = 6;
    // Two logprob requests around a plain one, all at once: the logits rows
    // read back are a span with a row in it that did not ask.
    let mut tasks = Vec::new();
    for (k, p) in prompts.iter().enumerate() {
        let mut b = json!({"prompt": p, "max_tokens": n_tok, "temperature": 0});
        if k != 1 {
            b["logprobs"] = json!(3);
        }
        let (http, url) = (s.http.clone(), format!("{}/v1/completions", s.base));
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).json(&b).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers[1]["choices"][0]["logprobs"].is_null());

    // The host computation: the single-sequence forward with the matmul the
    // server uses on the CPU, greedy, one token at a time.
    let file = common::model().unwrap();
    let backend = metallic_cpu::CpuBackend::new(1).unwrap();
    let model = metallic::model::Model::load(&backend, &file).unwrap();
    let tokenizer = metallic::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let dcfg = metallic::dispatch::DispatchConfig {
        all: backend.batch_invariant_matmul().map(String::from),
        ..Default::default()
    };
    let dispatch = metallic::dispatch::MatmulDispatch::new(backend.matmul_impls(), &dcfg).unwrap();
    let mut ex = metallic::exec::Exec::new(&backend, dispatch);
    for k in [0, 2] {
        let v = &answers[k];
        let lp = &v["choices"][0]["logprobs"];
        let got = lp["token_logprobs"].as_array().unwrap();
        let tops = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(got.len(), n_tok, "{v}");
        let mut tokens = tokenizer.encode_with_bos(prompts[k], false);
        let prompt_len = tokens.len();
        for step in 0..n_tok {
            let (host, best) = host_logprobs(&mut ex, &model, &tokens);
            let close = |a: f64, b: f64| (a - b).abs() < 1e-3 * (1.0 + b.abs());
            let chosen = got[step].as_f64().unwrap();
            assert!(
                close(chosen, host[best as usize]),
                "step {step}: {chosen} vs {}",
                host[best as usize]
            );
            let mut want: Vec<f64> = host.clone();
            want.sort_by(|a, b| b.total_cmp(a));
            let mut top: Vec<f64> = tops[step]
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_f64().unwrap())
                .collect();
            top.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(top.len(), 3, "{}", tops[step]);
            for (g, w) in top.iter().zip(&want) {
                assert!(
                    close(*g, *w),
                    "step {step}: top {top:?} vs {:?}",
                    &want[..3]
                );
            }
            tokens.push(best);
        }
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            tokenizer.decode(&tokens[prompt_len..]),
            "the greedy tokens"
        );
    }
    s.server.shutdown().await.unwrap();
}

/// The warm-up before ready leaves nothing behind: no step, token or block
/// counted, and the first request's answer (prompt and decode, with its
/// log-probabilities) is the one a server without warm-up gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_leaves_no_trace() {
    let body = json!({
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": 2,
    });
    let mut answers = Vec::new();
    for warm_up in [true, false] {
        let mut cfg = config();
        cfg.warm_up = warm_up;
        let Some(s) = start(cfg).await else { return };
        for m in [
            "metallic_engine_steps_total",
            "metallic_generation_tokens_total",
            "metallic_prompt_tokens_total",
            "metallic_kv_blocks_used",
        ] {
            assert_eq!(s.metric(m).await, 0.0, "{m} after warm-up {warm_up}");
        }
        let (status, v) = s.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        answers.push((
            v["choices"][0]["text"].clone(),
            v["choices"][0]["logprobs"].clone(),
        ));
        s.server.shutdown().await.unwrap();
    }
    assert_eq!(answers[0], answers[1], "warm-up changed the first answer");
}
