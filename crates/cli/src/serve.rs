//! `metallic serve`: the OpenAI-compatible server (crates/server).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::backend::{Backend, DType};
use metallic_gguf::GgufFile;
use metallic_server::ServeConfig;

use crate::common::{open_model, resolve_model, Device};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// GGUF model (default: SmolLM2-135M-Instruct from assets/, or $METALLIC_MODEL).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Address to listen on (loopback by default; another address exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Device to run on (cuda: GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Element type of the paged KV cache (f16: half the memory a block,
    /// twice the blocks in --kv-memory; arithmetic stays f32).
    #[arg(long, value_enum, default_value_t = KvType::F32)]
    pub kv_type: KvType,
    /// Batch-invariant results: a request's tokens are the same alone and
    /// inside any batch (CUDA: row-chunked matmuls instead of cuBLAS; the
    /// CPU path is always so).
    #[arg(long)]
    pub deterministic: bool,
    /// Queue each decode step before the previous step's tokens are read,
    /// so the host's work overlaps the device's (auto: on CUDA, off on the
    /// CPU, where ops finish before they return).
    #[arg(long, value_enum, default_value_t = LookAhead::Auto)]
    pub look_ahead: LookAhead,
    /// Skip the throwaway prompt and decode step run before the server
    /// reports ready (the first request then pays first-use costs).
    #[arg(long)]
    pub no_warmup: bool,
    /// CPU threads (0: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// CPU: read the weights from the file's memory map (4 KiB page-cache
    /// pages) instead of copying them into 2 MiB transparent huge pages at load.
    #[arg(long)]
    pub no_huge_pages: bool,
    /// Model id reported by /v1/models (default: the file's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $METALLIC_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// KV cache size in MiB, shared by all sequences in blocks.
    #[arg(long, default_value_t = 512)]
    pub kv_memory: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub max_seqs: usize,
    /// Most tokens per step (decode rows plus prefill chunks).
    #[arg(long, default_value_t = 256)]
    pub step_tokens: usize,
    /// Positions per sequence (0: the model's context, capped at 4096).
    #[arg(short, long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Requests waiting for a slot before new ones get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest max_tokens a request may ask for (also the chat default).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Seconds in-flight requests may run after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

async fn serve<B: Backend + 'static>(
    backend: B,
    file: Arc<GgufFile>,
    cfg: ServeConfig,
) -> Result<()> {
    let mut server = metallic_server::start(backend, file, cfg).await?;
    eprintln!(
        "metallic serve: listening on http://{} (loading the model)",
        server.addr()
    );
    let term = async {
        #[cfg(unix)]
        {
            let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = sig.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    tokio::pin!(term);
    tokio::select! {
        r = server.ready() => {
            r?;
            eprintln!("metallic serve: ready");
            (&mut term).await;
        }
        _ = &mut term => {}
    }
    eprintln!("metallic serve: shutting down (finishing in-flight requests)");
    server.shutdown().await?;
    eprintln!("metallic serve: stopped");
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LookAhead {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvType {
    F32,
    F16,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let path = resolve_model(args.model.as_deref())?;
    let file = open_model(&path, args.device, args.no_huge_pages)?;
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or("metallic".into(), |s| s.to_string_lossy().into_owned())
    });
    let api_key = args.api_key.clone().or_else(|| {
        std::env::var("METALLIC_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    let cfg = ServeConfig {
        addr: SocketAddr::new(args.host, args.port),
        model_name,
        api_key,
        kv_memory: args
            .kv_memory
            .checked_mul(1 << 20)
            .context("--kv-memory too large")?,
        block_size: args.block_size,
        max_seqs: args.max_seqs,
        step_tokens: args.step_tokens,
        ctx_size: args.ctx_size,
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_bytes,
        max_tokens_limit: args.max_tokens_limit,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        kv_type: match args.kv_type {
            KvType::F32 => DType::F32,
            KvType::F16 => DType::F16,
        },
        deterministic: args.deterministic,
        look_ahead: match args.look_ahead {
            LookAhead::Auto => None,
            LookAhead::On => Some(true),
            LookAhead::Off => Some(false),
        },
        warm_up: !args.no_warmup,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The engine thread owns the backend (every op binds the device first,
    // so it may be made on this thread and used on that one).
    match args.device {
        Device::Cpu => {
            let backend = crate::device::cpu(crate::common::cap_threads(args.threads))?;
            rt.block_on(serve(backend, file, cfg))
        }
        Device::Cuda => {
            let backend =
                metallic_cuda::CudaBackend::new(0).context("starting the CUDA backend")?;
            if cfg.deterministic {
                // Every product runs `vecdot_chunked`, never cuBLAS: dense
                // f16 copies of the weights would only take memory.
                backend.set_dense_weight_budget(0);
            }
            rt.block_on(serve(backend, file, cfg))
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// Base URL of an OpenAI-compatible server (metallic serve, llama-server).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent streaming clients.
    #[arg(short, long, default_value_t = 4)]
    pub clients: usize,
    /// Requests in all (0: 4 per client).
    #[arg(short = 'r', long, default_value_t = 0)]
    pub requests: usize,
    /// Tokens each request asks for.
    #[arg(short = 'n', long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(
        long,
        default_value = "Once upon a time, in a small village by the sea,"
    )]
    pub prompt: String,
    /// Bearer key, if the server wants one (default: $METALLIC_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds before a request is given up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchServeArgs) -> Result<()> {
    if args.clients == 0 || args.clients > 1024 {
        bail!("--clients must be 1..=1024");
    }
    let requests = if args.requests == 0 {
        4 * args.clients
    } else {
        args.requests
    };
    let cfg = metallic_server::bench::BenchConfig {
        url: args.url.clone(),
        clients: args.clients,
        requests,
        max_tokens: args.max_tokens,
        prompt: args.prompt.clone(),
        api_key: args.api_key.clone().or_else(|| {
            std::env::var("METALLIC_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
        }),
        timeout: Duration::from_secs(args.timeout),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let r = rt.block_on(metallic_server::bench::run(cfg));
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} clients, {} requests ({} failed): {} tokens in {:.2} s = {:.1} tok/s; \
             TTFT p50 {:.0} ms p99 {:.0} ms; inter-token p50 {:.1} ms p99 {:.1} ms (client monotonic clock)",
            r.clients, r.requests, r.failed, r.generated_tokens, r.wall_s, r.tokens_per_s,
            r.ttft_p50_ms, r.ttft_p99_ms, r.itl_p50_ms, r.itl_p99_ms
        );
    }
    if r.failed > 0 {
        bail!("{} of {} requests failed", r.failed, r.requests);
    }
    Ok(())
}
