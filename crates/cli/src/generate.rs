//! `metallic generate`: stream text from a prompt.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use metallic::backend::Backend;
use metallic::chat::{encode_conversation, ChatTemplate, Message};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate, GenerateOptions, Generation};
use metallic::model::{Model, State};
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use serde_json::json;

use crate::common::{env_flag, open_gguf, read_text_input, resolve_model, Device, MAX_TEXT_INPUT};
use crate::device::{on_device, OnBackend};
use crate::report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below min-p times the top probability (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Greedy decoding (same as --temp 0).
    #[arg(long)]
    pub greedy: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplerParams {
        if self.greedy {
            return SamplerParams::greedy();
        }
        SamplerParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// GGUF model (default: SmolLM2-135M-Instruct from assets/, or $METALLIC_MODEL).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The prompt (or the user message with --chat).
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// CPU threads (0: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when this text is generated (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Treat special-token text in the prompt as plain text. With --chat, message text is
    /// always plain text unless --parse-special-content is given.
    #[arg(long)]
    pub no_parse_special: bool,
    /// With --chat: let special-token text typed in the prompt or system message
    /// (`<|im_end|><|im_start|>system`) become control tokens. Off by default: the
    /// messages are data, and a message must not be able to forge roles.
    #[arg(long, requires = "chat", conflicts_with = "no_parse_special")]
    pub parse_special_content: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// Context size in tokens (0: the model's, capped at 4096).
    #[arg(short, long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Prompt tokens per prefill step.
    #[arg(short, long, default_value_t = 512)]
    pub batch_size: usize,
    /// Run decode steps one op at a time instead of replaying a device graph.
    #[arg(long)]
    pub no_graphs: bool,
    /// Write a Chrome/Perfetto trace of every op to this file.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// The prompt's token ids: chat-templated or plain. `parse_special`: special-token text in
/// the prompt becomes control tokens (with `chat`, in the messages; the template's own
/// special tokens always are).
pub fn prompt_ids(
    file: &GgufFile,
    tok: &Tokenizer,
    text: &str,
    chat: bool,
    system: Option<&str>,
    parse_special: bool,
) -> Result<Vec<u32>> {
    if !chat {
        return Ok(tok.encode_with_bos(text, parse_special));
    }
    let source = file
        .get_str("tokenizer.chat_template")
        .context("--chat: the model has no tokenizer.chat_template")?;
    let piece = |id: Option<u32>| {
        id.and_then(|i| tok.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    let tmpl = ChatTemplate::new(source, &piece(tok.bos_id()), &piece(tok.eos_id()))?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::system(s));
    }
    messages.push(Message::user(text));
    Ok(encode_conversation(
        tok,
        &tmpl,
        &messages,
        true,
        parse_special,
    )?)
}

/// Context positions to allocate: the user's, else the model's capped at 4096.
pub fn context_size(requested: usize, model_limit: usize) -> Result<usize> {
    if requested > model_limit {
        bail!("--ctx-size {requested} exceeds the model's context length {model_limit}");
    }
    Ok(if requested == 0 {
        model_limit.min(4096)
    } else {
        requested
    })
}

struct Job {
    args: GenerateArgs,
    file: Arc<GgufFile>,
    prompt: String,
}

impl OnBackend for Job {
    type Out = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let args = &self.args;
        let t_load = Instant::now();
        let tok = Tokenizer::from_gguf(&self.file).context("building the tokenizer")?;
        let model = Model::load(&backend, &self.file).context("loading the model")?;
        let cfg = &model.config;
        let ctx = context_size(args.ctx_size, cfg.context_length)?;
        let batch = args.batch_size.clamp(1, ctx);
        let mut st = State::new(&backend, cfg, ctx, batch, 1).context("allocating buffers")?;
        let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
        if let Some(mem) = backend.memory() {
            eprintln!(
                "metallic: {} memory: {:.1} MiB used by metallic, {:.1} of {:.1} GiB free",
                backend.name(),
                mem.used_by_us as f64 / (1 << 20) as f64,
                mem.free as f64 / (1 << 30) as f64,
                mem.total as f64 / (1 << 30) as f64
            );
        }
        let ids = prompt_ids(
            &self.file,
            &tok,
            &self.prompt,
            args.chat,
            args.system.as_deref(),
            if args.chat {
                args.parse_special_content
            } else {
                !args.no_parse_special
            },
        )?;
        let dispatch = MatmulDispatch::new(backend.matmul_impls(), &DispatchConfig::from_env())?;
        let mut ex = Exec::new(&backend, dispatch);
        let profiling = env_flag("METALLIC_PROFILING_ENABLED")
            || args.trace.is_some()
            || std::env::var_os("METALLIC_METRICS_JSONL_PATH").is_some();
        if profiling {
            if !cfg!(feature = "profiling") {
                eprintln!(
                    "metallic: warning: this build has the recorder compiled out \
                     (built without the `profiling` feature); no profile will be written"
                );
            }
            ex.record();
        }
        let opts = GenerateOptions {
            max_tokens: args.max_tokens,
            sampler: args.sampling.params(),
            stop: args.stop.clone(),
            ignore_eos: args.ignore_eos,
            use_graphs: !args.no_graphs,
        };
        let json = args.output_format == OutputFormat::Json;
        let stdout = std::io::stdout();
        let mut on_text = |s: &str| {
            if !json {
                let mut out = stdout.lock();
                let _ = out.write_all(s.as_bytes());
                let _ = out.flush();
            }
        };
        let g: Generation = generate(&mut ex, &model, &mut st, &tok, &ids, &opts, &mut on_text)?;
        if json {
            let v = json!({
                "text": g.text,
                "ids": g.ids,
                "prompt_tokens": g.prompt_tokens,
                "generated_tokens": g.ids.len(),
                "stop_reason": g.stop_reason.name(),
                "timings": {
                    "clock": "host monotonic",
                    "load_ms": load_ms,
                    "prefill_ms": g.prefill_time.as_secs_f64() * 1e3,
                    "decode_ms": g.decode_time.as_secs_f64() * 1e3,
                    "prefill_tokens_per_s": g.prefill_tok_s(),
                    "decode_tokens_per_s": g.decode_tok_s(),
                },
                "device": backend.device_description(),
            });
            println!("{v}");
        } else {
            println!();
        }
        eprintln!(
            "metallic: {} prompt tokens, prefill {:.1} tok/s; {} generated, decode {:.1} tok/s ({}; host clock)",
            g.prompt_tokens,
            g.prefill_tok_s(),
            g.ids.len(),
            g.decode_tok_s(),
            g.stop_reason.name(),
        );
        if let Some(rec) = ex.take_recorder() {
            report::emit(&rec, args.trace.as_deref())?;
        }
        Ok(())
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let path = resolve_model(args.model.as_deref())?;
    let prompt = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => read_text_input(f, MAX_TEXT_INPUT, "--file")?,
        (None, None) => bail!("give a PROMPT or --file"),
    };
    report::check_outputs(args.trace.as_deref(), &path)?;
    let file = open_gguf(&path)?;
    on_device(args.device, args.threads, Job { args, file, prompt })
}
