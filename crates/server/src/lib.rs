//! `metallic serve`: an OpenAI-compatible HTTP server (axum + tokio) over a
//! scheduler thread that batches every running request into each forward
//! step, with a paged, prefix-cached KV cache.
//!
//! Threads: the tokio runtime serves HTTP; one engine thread owns the model
//! and runs steps (see [`engine`]); they talk through a channel of requests
//! and, per request, a channel of events back.

pub mod api;
pub mod bench;
pub mod blocks;
pub mod engine;
mod http;
pub mod metrics;
pub mod prompt;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt;
use metallic::backend::{Backend, DType};
use metallic::chat::ChatTemplate;
use metallic::config::ModelConfig;
use metallic::model::BatchState;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use tokio::sync::{oneshot, watch};

use engine::{EngineConfig, EngineMsg};
use metrics::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Model(#[from] metallic::error::Error),
    #[error("binding {addr}: {source} (is another server on that port? choose one with --port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the engine failed: {0}")]
    Engine(String),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything `metallic serve` takes.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// The id `/v1/models` reports (requests may name any model).
    pub model_name: String,
    pub api_key: Option<String>,
    /// KV cache size in bytes; blocks = this / bytes per block.
    pub kv_memory: usize,
    pub block_size: usize,
    /// Most sequences decoded together.
    pub max_seqs: usize,
    /// Most tokens (rows) per step: decode rows plus prefill chunks.
    pub step_tokens: usize,
    /// Positions per sequence (0: the model's context, capped at 4096).
    pub ctx_size: usize,
    /// Requests waiting for a slot before new ones get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (also the chat default).
    pub max_tokens_limit: usize,
    /// After SIGTERM, how long in-flight requests may run before they are cancelled.
    pub shutdown_grace: Duration,
    /// Element type of the paged KV cache: f32 or f16 (half the bytes a
    /// block, so twice the blocks in the same `kv_memory`).
    pub kv_type: DType,
    /// Force the backend's batch-invariant matmul (see
    /// [`Backend::batch_invariant_matmul`]): a request's tokens are the same
    /// alone and inside any batch. Always so on the CPU.
    pub deterministic: bool,
    /// Queue each decode step before the previous one's tokens are read
    /// (`Some(false)`: never; `None`: where the backend queues work
    /// asynchronously, [`Backend::queues_work`]).
    pub look_ahead: Option<bool>,
    /// A throwaway prompt step and decode step before the server reports
    /// ready, so the first request pays no first-use costs (on by default,
    /// as in llama-server).
    pub warm_up: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model_name: "metallic".into(),
            api_key: None,
            kv_memory: 512 << 20,
            block_size: 16,
            max_seqs: 32,
            step_tokens: 256,
            ctx_size: 0,
            max_queue: 256,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            shutdown_grace: Duration::from_secs(30),
            kv_type: DType::F32,
            deterministic: false,
            look_ahead: None,
            warm_up: true,
        }
    }
}

/// A started server: HTTP is up; the model may still be loading.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    loaded: Option<oneshot::Receiver<Result<(), String>>>,
    stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: std::thread::JoinHandle<()>,
    engine_tx: std::sync::mpsc::Sender<EngineMsg>,
    grace: Duration,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Wait until the model is loaded (or failed to load).
    pub async fn ready(&mut self) -> Result<(), ServeError> {
        if let Some(rx) = self.loaded.take() {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServeError::Engine(e)),
                Err(_) => {
                    return Err(ServeError::Engine(
                        "the engine thread exited while loading".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Stop taking requests, let in-flight ones finish for up to the grace
    /// period, cancel the rest, and return when HTTP and the engine are done.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.send(true);
        let tx = self.engine_tx.clone();
        let grace = self.grace;
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(EngineMsg::CancelAll);
        });
        let r = self.http.await;
        cancel.abort();
        // Streams are closed: the engine drops what is left and exits once
        // the last sender (ours) is gone.
        let _ = self.engine_tx.send(EngineMsg::CancelAll);
        drop(self.engine_tx);
        let engine = self.engine;
        tokio::task::spawn_blocking(move || engine.join())
            .await
            .map_err(|e| ServeError::Engine(e.to_string()))?
            .map_err(|_| ServeError::Engine("the engine thread panicked".into()))?;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Io(e)),
            Err(e) => Err(ServeError::Engine(e.to_string())),
        }
    }
}

/// Blocks of the paged KV cache that `cfg.kv_memory` holds for this model,
/// and the bytes of one block (all layers, K and V, of `cfg.kv_type`).
pub fn kv_blocks<B: Backend>(
    model: &ModelConfig,
    cfg: &ServeConfig,
) -> Result<(usize, usize), ServeError> {
    if !matches!(cfg.kv_type, DType::F32 | DType::F16) {
        return Err(ServeError::Config(format!(
            "KV cache type {:?}: use f32 or f16",
            cfg.kv_type
        )));
    }
    let block_bytes = BatchState::<B>::block_bytes(model, cfg.block_size, cfg.kv_type);
    Ok((cfg.kv_memory / block_bytes.max(1), block_bytes))
}

/// Bind `cfg.addr`, start the engine thread (which loads the model) and
/// serve HTTP. Call from inside a tokio runtime.
pub async fn start<B: Backend + 'static>(
    backend: B,
    file: Arc<GgufFile>,
    cfg: ServeConfig,
) -> Result<Server, ServeError> {
    let model_cfg = ModelConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file).map_err(metallic::error::Error::from)?;
    let chat = match file.get_str("tokenizer.chat_template") {
        Some(src) => {
            let piece = |id: Option<u32>| {
                id.and_then(|i| tokenizer.token_text(i))
                    .unwrap_or_default()
                    .to_string()
            };
            let t = ChatTemplate::new(src, &piece(tokenizer.bos_id()), &piece(tokenizer.eos_id()))
                .map_err(metallic::error::Error::from)?;
            Some(prompt::ChatPrompt::new(t))
        }
        None => None,
    };
    if cfg.block_size == 0 || cfg.max_seqs == 0 || cfg.step_tokens < cfg.max_seqs {
        return Err(ServeError::Config(format!(
            "--block-size ({}) and --max-seqs ({}) must be positive and --step-tokens ({}) at least --max-seqs",
            cfg.block_size, cfg.max_seqs, cfg.step_tokens
        )));
    }
    let (n_blocks, block_bytes) = kv_blocks::<B>(&model_cfg, &cfg)?;
    let model_ctx = model_cfg.context_length;
    if cfg.ctx_size > model_ctx {
        return Err(ServeError::Config(format!(
            "--ctx-size {} exceeds the model's context length {model_ctx}",
            cfg.ctx_size
        )));
    }
    let ctx = if cfg.ctx_size == 0 {
        model_ctx.min(4096)
    } else {
        cfg.ctx_size
    };
    // One sequence must always fit the pool alone.
    let max_context = ctx.min(n_blocks * cfg.block_size);
    if max_context < 2 * cfg.block_size {
        return Err(ServeError::Config(format!(
            "--kv-memory of {} MiB holds {n_blocks} blocks of {} tokens ({} KiB each): too small; raise --kv-memory",
            cfg.kv_memory >> 20,
            cfg.block_size,
            block_bytes >> 10
        )));
    }
    let shared = Arc::new(Shared::default());
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let (engine_tx, engine_rx) = std::sync::mpsc::channel();
    let (load_tx, load_rx) = oneshot::channel();
    let ecfg = EngineConfig {
        block_size: cfg.block_size,
        n_blocks,
        max_seqs: cfg.max_seqs,
        step_tokens: cfg.step_tokens,
        max_context,
        kv_type: cfg.kv_type,
        deterministic: cfg.deterministic,
        look_ahead: cfg.look_ahead.unwrap_or_else(|| backend.queues_work()),
        warm_up: cfg.warm_up,
    };
    let engine = {
        let (shared, tokenizer) = (shared.clone(), tokenizer.clone());
        std::thread::Builder::new()
            .name("metallic-engine".into())
            .spawn(move || {
                engine::run(backend, file, tokenizer, ecfg, shared, engine_rx, load_tx)
            })?
    };
    let app = Arc::new(http::AppInner {
        tx: Mutex::new(engine_tx.clone()),
        shared: shared.clone(),
        tokenizer,
        chat,
        limits: http::Limits {
            max_queue: cfg.max_queue,
            max_tokens: cfg.max_tokens_limit,
            max_context,
            max_stop_strings: 8,
        },
        model_name: cfg.model_name.clone(),
        api_key: cfg.api_key.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(1),
    });
    let router = http::router(app, cfg.max_body_bytes);
    let (stop, mut stop_rx) = watch::channel(false);
    // TCP_NODELAY on every connection: a stream's events are small writes,
    // and with Nagle's algorithm one can be held back until the client
    // acknowledges the previous one (its delayed ACK is up to ~40 ms on
    // Linux), which would show as a stalled token.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("warning: could not set TCP_NODELAY on a connection ({e}); tokens may arrive in bursts");
        }
    });
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|&s| s).await;
            })
            .await
    });
    Ok(Server {
        addr,
        shared,
        loaded: Some(load_rx),
        stop,
        http,
        engine,
        engine_tx,
        grace: cfg.shutdown_grace,
    })
}
