//! The HTTP side: routes, request validation, and turning engine events into
//! OpenAI responses (one JSON body, or server-sent events).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metallic::chat::Message;
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, ApiError, ChatRequest, CompletionRequest, Content, Prompt, Sampling, Stop};
use crate::engine::{EngineMsg, Event, GenParams, Submit, TokenLogprob, Usage};
use crate::metrics::Shared;
use crate::prompt::ChatPrompt;

/// Limits the handlers enforce.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_queue: usize,
    pub max_tokens: usize,
    pub max_context: usize,
    pub max_stop_strings: usize,
}

pub struct AppInner {
    pub tx: Mutex<mpsc::Sender<EngineMsg>>,
    pub shared: Arc<Shared>,
    pub tokenizer: Tokenizer,
    pub chat: Option<ChatPrompt>,
    pub limits: Limits,
    pub model_name: String,
    pub api_key: Option<String>,
    pub created: u64,
    pub next_id: AtomicU64,
}

pub type App = Arc<AppInner>;

pub fn router(app: App, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key: send `Authorization: Bearer <key>` with the server's --api-key",
            )
            .with_code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no route {} {} (routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health(State(app): State<App>) -> Response {
    let s = &app.shared;
    if s.draining.load(Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response()
    } else if s.ready.load(Relaxed) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.shared.prometheus(),
    )
        .into_response()
}

async fn models(State(app): State<App>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": app.model_name,
        "object": "model",
        "created": app.created,
        "owned_by": "metallic",
    }]}))
}

/// Parse a JSON object body, refusing fields `known` does not accept.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    known: fn(&str) -> bool,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let mut err = ApiError::invalid(format!("request body: {}", e.body_text()), None);
        err.status = status;
        err
    })?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    let Value::Object(map) = &v else {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    };
    if let Some(k) = map.keys().find(|k| !known(k)) {
        return Err(ApiError::invalid(
            format!("unknown field `{k}` (this server does not support it)"),
            None,
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid request: {e}"), None))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn range(
    v: Option<f32>,
    lo: f32,
    hi: f32,
    param: &'static str,
    default: f32,
) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::invalid(
            format!("`{param}` is {x}; it must be between {lo} and {hi}"),
            Some(param),
        )),
    }
}

/// Validated generation parameters and response options.
struct Plan {
    params: GenParams,
    stream: bool,
    include_usage: bool,
}

fn plan(
    app: &AppInner,
    s: &Sampling,
    max_tokens: Option<u64>,
    default_max: usize,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("`n` is {n}; only 1 is supported"),
                Some("n"),
            ));
        }
    }
    let max = match max_tokens {
        None => default_max,
        Some(0) => {
            return Err(ApiError::invalid(
                "`max_tokens` must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(m) if m as usize > app.limits.max_tokens => {
            return Err(ApiError::invalid(
                format!(
                    "`max_tokens` is {m}; this server allows at most {} (--max-tokens-limit)",
                    app.limits.max_tokens
                ),
                Some("max_tokens"),
            ))
        }
        Some(m) => m as usize,
    };
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(x)) => vec![x.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > app.limits.max_stop_strings || stop.iter().any(|x| x.len() > 256) {
        return Err(ApiError::invalid(
            format!(
                "at most {} stop strings of up to 256 bytes each",
                app.limits.max_stop_strings
            ),
            Some("stop"),
        ));
    }
    let presence = range(s.presence_penalty, -2.0, 2.0, "presence_penalty", 0.0)?;
    let frequency = range(s.frequency_penalty, -2.0, 2.0, "frequency_penalty", 0.0)?;
    let top_k = s.top_k.unwrap_or(0);
    if top_k > 1 << 20 {
        return Err(ApiError::invalid("`top_k` is too large", Some("top_k")));
    }
    let seed = s.seed.unwrap_or_else(|| {
        // No seed: a different stream per request.
        now_unix()
            ^ app
                .next_id
                .load(Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let sampler = SamplerParams {
        temperature: range(s.temperature, 0.0, 2.0, "temperature", 1.0)?,
        top_k: top_k as usize,
        top_p: range(s.top_p, 0.0, 1.0, "top_p", 1.0)?,
        min_p: range(s.min_p, 0.0, 1.0, "min_p", 0.0)?,
        repeat_penalty: 1.0,
        // OpenAI's penalties count every generated token.
        repeat_last_n: if presence != 0.0 || frequency != 0.0 {
            app.limits.max_context
        } else {
            0
        },
        presence_penalty: presence,
        frequency_penalty: frequency,
        seed,
    };
    let include_usage = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let stream = s.stream.unwrap_or(false);
    if include_usage && !stream {
        return Err(ApiError::invalid(
            "`stream_options` is only allowed with `stream: true`",
            Some("stream_options"),
        ));
    }
    Ok(Plan {
        params: GenParams {
            sampler,
            max_tokens: max,
            stop,
            logprobs,
        },
        stream,
        include_usage,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(app: App, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body, api::chat_field)?;
    let Some(chat) = &app.chat else {
        return Err(ApiError::invalid(
            "the model has no chat template: use /v1/completions",
            Some("messages"),
        ));
    };
    if req.messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty", Some("messages")));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !["system", "developer", "user", "assistant"].contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                format!(
                    "messages[{i}].role `{}` is not system, developer, user or assistant",
                    m.role
                ),
                Some("messages"),
            ));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(x)) => t.push_str(x),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: only text content parts are supported"),
                                Some("messages"),
                            ))
                        }
                    }
                }
                t
            }
        };
        let role = if m.role == "developer" {
            "system"
        } else {
            &m.role
        };
        messages.push(Message::new(role, text));
    }
    let prompt = chat
        .encode(&app.tokenizer, &messages)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e))?;
    let top = match (req.logprobs, req.top_logprobs) {
        (Some(true), n) => Some(n.unwrap_or(0)),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    if top.is_some_and(|n| n > 20) {
        return Err(ApiError::invalid(
            "`top_logprobs` is at most 20",
            Some("top_logprobs"),
        ));
    }
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    let default_max = app.limits.max_tokens;
    let p = plan(
        &app,
        &req.sampling,
        max_tokens,
        default_max,
        top.map(|n| n as usize),
    )?;
    submit(app, prompt, p, Kind::Chat).await
}

async fn completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    match completions_inner(app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    app: App,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(body, api::completion_field)?;
    let text = match req.prompt {
        Prompt::Text(t) => t,
        Prompt::Texts(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Texts(v) => {
            return Err(ApiError::invalid(
                format!(
                    "`prompt` has {} strings; only one per request is supported",
                    v.len()
                ),
                Some("prompt"),
            ))
        }
    };
    if req.echo == Some(true) {
        return Err(ApiError::invalid("`echo` is not supported", Some("echo")));
    }
    if req.logprobs.is_some_and(|n| n > 5) {
        return Err(ApiError::invalid(
            "`logprobs` is at most 5",
            Some("logprobs"),
        ));
    }
    // Prompt text is data: special-token text is not parsed.
    let prompt = app.tokenizer.encode_with_bos(&text, false);
    // OpenAI's default for completions.
    let p = plan(
        &app,
        &req.sampling,
        req.sampling.max_tokens,
        16,
        req.logprobs.map(|n| n as usize),
    )?;
    submit(app, prompt, p, Kind::Completion).await
}

async fn submit(app: App, prompt: Vec<u32>, mut p: Plan, kind: Kind) -> Result<Response, ApiError> {
    let s = &app.shared;
    if s.draining.load(Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ));
    }
    if !s.ready.load(Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is still loading: retry when GET /health answers 200",
        ));
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let ctx = app.limits.max_context;
    if prompt.len() >= ctx {
        return Err(ApiError::invalid(
            format!(
                "the prompt has {} tokens and this server's context holds {ctx} (the prompt must leave room for at least one generated token)",
                prompt.len()
            ),
            Some(if kind == Kind::Chat { "messages" } else { "prompt" }),
        )
        .with_code("context_length_exceeded"));
    }
    p.params.max_tokens = p.params.max_tokens.min(ctx - prompt.len());
    let queued = s.queued.fetch_add(1, Ordering::SeqCst);
    if queued >= app.limits.max_queue as u64 {
        s.queued.fetch_sub(1, Ordering::SeqCst);
        s.requests_rejected.fetch_add(1, Relaxed);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the queue is full ({} requests waiting): retry later",
                app.limits.max_queue
            ),
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let prompt_len = prompt.len();
    let msg = EngineMsg::Submit(Submit {
        prompt,
        params: p.params,
        events: tx,
        arrived: Instant::now(),
    });
    let sent = app.tx.lock().unwrap_or_else(|e| e.into_inner()).send(msg);
    if sent.is_err() {
        s.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        ));
    }
    let n = app.next_id.fetch_add(1, Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    };
    let _ = prompt_len;
    let out = Output {
        app: app.clone(),
        id,
        kind,
        created: now_unix(),
    };
    if p.stream {
        Ok(out.stream(rx, p.include_usage).into_response())
    } else {
        out.collect(rx).await
    }
}

/// Shapes one request's events into OpenAI JSON.
struct Output {
    app: App,
    id: String,
    kind: Kind,
    created: u64,
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

impl Output {
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let b = self.app.tokenizer.token_bytes(id).unwrap_or(&[]).to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    }

    /// Chat-style log-probability entries.
    fn chat_logprobs(&self, lps: &[TokenLogprob]) -> Value {
        let entry = |id: u32, lp: f32| {
            let (t, b) = self.token_text(id);
            json!({"token": t, "logprob": lp, "bytes": b})
        };
        let content: Vec<Value> = lps
            .iter()
            .map(|l| {
                let mut e = entry(l.id, l.logprob);
                e["top_logprobs"] = Value::Array(l.top.iter().map(|&(i, p)| entry(i, p)).collect());
                e
            })
            .collect();
        json!({"content": content})
    }

    /// Legacy completions-style log-probabilities.
    fn completion_logprobs(&self, lps: &[TokenLogprob], offset0: usize) -> Value {
        let mut offset = offset0;
        let (mut tokens, mut lp, mut top, mut offs) = (vec![], vec![], vec![], vec![]);
        for l in lps {
            let (t, _) = self.token_text(l.id);
            offs.push(offset);
            offset += t.len();
            tokens.push(t);
            lp.push(l.logprob);
            let mut m = serde_json::Map::new();
            for &(i, p) in &l.top {
                m.insert(self.token_text(i).0, json!(p));
            }
            top.push(Value::Object(m));
        }
        json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": offs})
    }

    fn logprobs(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match self.kind {
            Kind::Chat => self.chat_logprobs(lps),
            Kind::Completion => self.completion_logprobs(lps, offset),
        }
    }

    async fn collect(self, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        let mut text = String::new();
        let mut lps = Vec::new();
        let want_lp = loop {
            match rx.recv().await {
                Some(Event::Token { text: t, logprob }) => {
                    text.push_str(&t);
                    if let Some(l) = logprob {
                        lps.push(l);
                    }
                }
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done { reason, usage }) => break Some((reason, usage)),
                Some(Event::Error(e)) => {
                    self.app.shared.requests_error.fetch_add(1, Relaxed);
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        e,
                    ));
                }
                None => break None,
            }
        };
        let Some((reason, usage)) = want_lp else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the engine dropped the request",
            ));
        };
        let logprobs = if lps.is_empty() {
            Value::Null
        } else {
            self.logprobs(&lps, 0)
        };
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": reason.name(),
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": reason.name(),
            }),
        };
        Ok(Json(json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.app.model_name,
            "choices": [choice],
            "usage": usage_json(&usage),
        }))
        .into_response())
    }

    fn chunk(
        &self,
        text: Option<&str>,
        role: bool,
        logprobs: Value,
        finish: Option<&str>,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.app.model_name,
            "choices": [choice],
        })
    }

    fn stream(
        self,
        rx: UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
        struct St {
            out: Output,
            rx: UnboundedReceiver<Event>,
            queue: VecDeque<String>,
            done: bool,
            include_usage: bool,
            offset: usize,
        }
        let mut queue = VecDeque::new();
        if self.kind == Kind::Chat {
            queue.push_back(self.chunk(Some(""), true, Value::Null, None).to_string());
        }
        let st = St {
            out: self,
            rx,
            queue,
            done: false,
            include_usage,
            offset: 0,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(s) = st.queue.pop_front() {
                    return Some((Ok(SseEvent::default().data(s)), st));
                }
                if st.done {
                    return None;
                }
                match st.rx.recv().await {
                    Some(Event::Token { text, logprob }) => {
                        let lp = match &logprob {
                            Some(l) => st.out.logprobs(std::slice::from_ref(l), st.offset),
                            None => Value::Null,
                        };
                        st.offset += text.len();
                        if !text.is_empty() || logprob.is_some() {
                            st.queue
                                .push_back(st.out.chunk(Some(&text), false, lp, None).to_string());
                        }
                    }
                    Some(Event::Text(text)) => {
                        st.offset += text.len();
                        st.queue.push_back(
                            st.out
                                .chunk(Some(&text), false, Value::Null, None)
                                .to_string(),
                        );
                    }
                    Some(Event::Done { reason, usage }) => {
                        let kind = st.out.kind;
                        let text = if kind == Kind::Chat { None } else { Some("") };
                        st.queue.push_back(
                            st.out
                                .chunk(text, false, Value::Null, Some(reason.name()))
                                .to_string(),
                        );
                        if st.include_usage {
                            let mut u = st.out.chunk(None, false, Value::Null, None);
                            u["choices"] = json!([]);
                            u["usage"] = usage_json(&usage);
                            st.queue.push_back(u.to_string());
                        }
                        st.queue.push_back("[DONE]".into());
                        st.done = true;
                    }
                    Some(Event::Error(e)) => {
                        st.out.app.shared.requests_error.fetch_add(1, Relaxed);
                        let err =
                            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e);
                        st.queue.push_back(err.body().to_string());
                        st.done = true;
                    }
                    None => {
                        st.done = true;
                    }
                }
            }
        });
        Sse::new(stream).keep_alive(KeepAlive::default())
    }
}
