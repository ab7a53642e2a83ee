//! `metallic generate`: stream text from a prompt (or a whole conversation).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use metallic::backend::Backend;
use metallic::chat::Message;
use metallic::conversation::{chat_prompt_ids, template_of};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate_with, GenerateOptions, Generation, StopReason};
use metallic::model::{Model, State};
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use serde_json::json;

use crate::common::{
    env_flag, open_model, random_seed, read_text_input, resolve_model, Device, ModelSummary,
    TEXT_INPUT_LIMIT,
};
use crate::device::{on_device, OnBackend};
use crate::interrupt;
use crate::report;
use crate::runinfo::RunInfo;
use crate::tui;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    // Described in the flag's help (doc comments here would switch --help
    // to clap's long layout).
    Text,
    Json,
    Tui,
}

fn parse_f32(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(v)
}

fn non_negative(s: &str) -> std::result::Result<f32, String> {
    let v = parse_f32(s)?;
    if v < 0.0 {
        return Err(format!("{v} is out of range: must be 0 or more"));
    }
    Ok(v)
}

fn unit_interval(s: &str) -> std::result::Result<f32, String> {
    let v = parse_f32(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is out of range: must be between 0 and 1"));
    }
    Ok(v)
}

fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let v = parse_f32(s)?;
    if v <= 0.0 {
        return Err(format!("{v} is out of range: must be above 0"));
    }
    Ok(v)
}

fn finite(s: &str) -> std::result::Result<f32, String> {
    parse_f32(s)
}

/// A count of at least 1.
pub fn positive_usize(s: &str) -> std::result::Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of 0 or more"))?;
    if v == 0 {
        return Err("0 is out of range: must be 1 or more".into());
    }
    Ok(v)
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature, 0 or more; 0 is greedy.
    #[arg(long, default_value_t = 0.8, value_parser = non_negative)]
    pub temp: f32,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold, 0 to 1 (1: off).
    #[arg(long, default_value_t = 0.95, value_parser = unit_interval)]
    pub top_p: f32,
    /// Drop tokens below min-p times the top probability, 0 to 1 (0: off).
    #[arg(long, default_value_t = 0.05, value_parser = unit_interval)]
    pub min_p: f32,
    /// Repetition penalty, above 0 (1: off).
    #[arg(long, default_value_t = 1.0, value_parser = positive_f32)]
    pub repeat_penalty: f32,
    /// Window of recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0: off).
    #[arg(long, default_value_t = 0.0, value_parser = finite)]
    pub presence_penalty: f32,
    /// Frequency penalty (0: off).
    #[arg(long, default_value_t = 0.0, value_parser = finite)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same text [default: a random one, printed at the end].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Greedy decoding (same as --temp 0).
    #[arg(long)]
    pub greedy: bool,
}

impl SamplingArgs {
    /// The sampler's parameters with `seed` (the given one or a drawn one).
    pub fn params(&self, seed: u64) -> SamplerParams {
        if self.greedy {
            return SamplerParams {
                seed,
                ..SamplerParams::greedy()
            };
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
            seed,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(random_seed)
    }
}

/// What the sampler was set to, for the end-of-run line and JSON.
pub fn sampling_json(p: &SamplerParams) -> serde_json::Value {
    json!({
        "seed": p.seed,
        "temp": p.temperature,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "repeat_last_n": p.repeat_last_n,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    })
}

pub fn sampling_line(p: &SamplerParams) -> String {
    if p.temperature == 0.0 {
        return format!("seed {} greedy", p.seed);
    }
    let mut s = format!(
        "seed {} temp {} top-k {} top-p {} min-p {}",
        p.seed, p.temperature, p.top_k, p.top_p, p.min_p
    );
    if p.repeat_penalty != 1.0 {
        s.push_str(&format!(" repeat-penalty {}", p.repeat_penalty));
    }
    s
}

/// Model, device and context flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model [default: $METALLIC_MODEL, else assets/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, or cuda (the first NVIDIA GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// CPU threads (0: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (0: the model's, capped at 4096).
    #[arg(short, long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Prompt tokens per prefill step, 1 or more.
    #[arg(short, long, default_value_t = 512, value_parser = positive_usize)]
    pub batch_size: usize,
    /// Run decode steps one op at a time instead of replaying a device graph.
    #[arg(long)]
    pub no_graphs: bool,
    /// CPU: read the weights from the file's memory map (4 KiB page-cache
    /// pages) instead of copying them into 2 MiB transparent huge pages at load.
    #[arg(long)]
    pub no_huge_pages: bool,
}

#[derive(Args, Debug, Clone)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (or the user message with --chat); same as -p.
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt", "file"])]
    pub prompt_arg: Option<String>,
    /// The prompt (or the user message with --chat).
    #[arg(short, long, conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-`: standard input).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// With --chat: a whole conversation, a JSON list of {"role", "content"}
    /// (as `metallic chat`'s /save writes); a prompt, if given, is added as
    /// the last user message.
    #[arg(long, value_name = "FILE", requires = "chat")]
    pub messages: Option<PathBuf>,
    /// Most tokens to generate, 1 or more.
    #[arg(short = 'n', long, default_value_t = 256, value_parser = positive_usize)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when this text is generated (repeatable); it is not printed and
    /// its tokens are not in the JSON ids.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message (needs --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Treat special-token text in the prompt as plain text. With --chat, message text is
    /// always plain text unless --parse-special-content is given.
    #[arg(long)]
    pub no_parse_special: bool,
    /// With --chat: let special-token text in the messages (`<|im_end|><|im_start|>system`
    /// typed in a prompt, system message or --messages file) become control tokens. Off by
    /// default: messages are data, and a message must not be able to forge roles.
    #[arg(long, requires = "chat", conflicts_with = "no_parse_special")]
    pub parse_special_content: bool,
    /// text: stream to stdout, report on stderr; json: one document at the
    /// end (text, ids, timings, settings); tui: a full-screen live view.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// Write a Chrome/Perfetto trace of every op to this file.
    #[arg(long)]
    pub trace: Option<PathBuf>,
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

/// A conversation file: a JSON list of {"role", "content"}.
pub fn read_messages(path: &std::path::Path) -> Result<Vec<Message>> {
    let text = read_text_input(path, TEXT_INPUT_LIMIT, "--messages")?;
    let messages: Vec<Message> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a JSON list of {{\"role\": ..., \"content\": ...}} messages",
            path.display()
        )
    })?;
    Ok(messages)
}

/// Everything a run needs once the model is on the backend.
pub struct Loaded<'b, B: Backend> {
    pub tok: Tokenizer,
    pub model: Model<B>,
    pub st: State<B>,
    pub ex: Exec<'b, B>,
    pub info: RunInfo,
}

/// Tokenizer, weights, buffers and executor, timed (the load time).
pub fn load<'b, B: Backend>(
    backend: &'b B,
    file: &Arc<GgufFile>,
    args: &ModelArgs,
    profiling: bool,
) -> Result<Loaded<'b, B>> {
    let t_load = Instant::now();
    let tok = Tokenizer::from_gguf(file).context("building the tokenizer")?;
    let model = Model::load(backend, file).context("loading the model")?;
    let cfg = &model.config;
    let ctx = context_size(args.ctx_size, cfg.context_length)?;
    let batch = args.batch_size.clamp(1, ctx);
    let st = State::new(backend, cfg, ctx, batch, 1).context("allocating buffers")?;
    let dispatch = MatmulDispatch::new(backend.matmul_impls(), &DispatchConfig::from_env())?;
    let mut ex = Exec::new(backend, dispatch);
    if profiling {
        if !cfg!(feature = "profiling") {
            eprintln!(
                "metallic: warning: this build has the recorder compiled out \
                 (built without the `profiling` feature); no profile will be written"
            );
        }
        ex.record();
    }
    let info = RunInfo {
        model: ModelSummary::of(file),
        device: backend.device_description(),
        load_ms: t_load.elapsed().as_secs_f64() * 1e3,
    };
    Ok(Loaded {
        tok,
        model,
        st,
        ex,
        info,
    })
}

/// Whether the user asked for any profiling output.
pub fn profiling_requested(trace: bool) -> bool {
    env_flag(report::ENV_ENABLED) || trace || std::env::var_os(report::ENV_JSONL).is_some()
}

struct Job {
    args: GenerateArgs,
    file: Arc<GgufFile>,
    prompt: Option<String>,
    messages: Vec<Message>,
}

impl OnBackend for Job {
    type Out = ExitCode;
    fn run<B: Backend>(self, backend: B) -> Result<ExitCode> {
        let args = &self.args;
        let profiling = profiling_requested(args.trace.is_some());
        let Loaded {
            tok,
            model,
            mut st,
            mut ex,
            info,
        } = load(&backend, &self.file, &args.model, profiling)?;
        let parse_special = !args.no_parse_special;
        let ids = if args.chat {
            let template = template_of(&self.file, &tok).context("--chat")?;
            let mut messages = self.messages.clone();
            if let Some(s) = &args.system {
                if messages.first().is_some_and(|m| m.role == "system") {
                    messages.remove(0);
                }
                messages.insert(0, Message::system(s.as_str()));
            }
            if let Some(p) = &self.prompt {
                messages.push(Message::user(p.as_str()));
            }
            chat_prompt_ids(&template, &tok, &messages, args.parse_special_content)?
        } else {
            tok.encode_with_bos(self.prompt.as_deref().unwrap_or(""), parse_special)
        };
        if ids.is_empty() {
            bail!("the prompt is empty: give a PROMPT, -p TEXT or -f FILE");
        }
        let params = args.sampling.params(args.sampling.seed());
        let opts = GenerateOptions {
            max_tokens: args.max_tokens,
            sampler: params,
            stop: args.stop.clone(),
            ignore_eos: args.ignore_eos,
            use_graphs: !args.model.no_graphs,
            interrupt: Some(interrupt::flag()),
        };
        let g: Generation = match args.output_format {
            OutputFormat::Tui => {
                let prompt_text = match (&self.prompt, self.messages.is_empty()) {
                    (Some(p), _) => p.clone(),
                    (None, false) => format!("({} messages)", self.messages.len()),
                    (None, true) => String::new(),
                };
                tui::generate_view(
                    &mut ex,
                    &model,
                    &mut st,
                    &tok,
                    &ids,
                    &opts,
                    &info,
                    &prompt_text,
                )?
            }
            format => {
                let json = format == OutputFormat::Json;
                let stdout = std::io::stdout();
                let mut observer = |s: &str, _: &_, _: &_| {
                    if !json && !s.is_empty() {
                        let mut out = stdout.lock();
                        let _ = out.write_all(s.as_bytes());
                        let _ = out.flush();
                    }
                };
                generate_with(
                    &mut ex,
                    &model,
                    &mut st,
                    &tok,
                    &ids,
                    0,
                    &opts,
                    &mut observer,
                )?
            }
        };
        let device_memory = backend.memory();
        if args.output_format == OutputFormat::Json {
            let mut v = json!({
                "text": g.text,
                "ids": g.ids,
                "prompt_tokens": g.prompt_tokens,
                "generated_tokens": g.ids.len(),
                "stop_reason": g.stop_reason.name(),
                "seed": params.seed,
                "sampling": sampling_json(&params),
                "model": info.model.json(),
                "timings": info.timings_json(&g),
                "memory": RunInfo::memory_json(device_memory.as_ref()),
                "device": backend.device_description(),
            });
            if g.stop_reason == StopReason::Interrupted {
                v["interrupted"] = json!(true);
            }
            println!("{v}");
        } else if args.output_format == OutputFormat::Text {
            println!();
        }
        eprintln!(
            "{}",
            info.end_line(
                &g,
                &params,
                device_memory.as_ref(),
                crate::common::use_color(crate::common::stderr_is_terminal())
            )
        );
        if let Some(rec) = ex.take_recorder() {
            report::emit(&rec, args.trace.as_deref())?;
        }
        Ok(if g.stop_reason == StopReason::Interrupted {
            // As a shell expects of a command stopped by Ctrl-C; the output is complete.
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        })
    }
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let path = resolve_model(args.model.model.as_deref())?;
    let prompt = match (&args.prompt_arg, &args.prompt, &args.file) {
        (Some(p), _, _) | (None, Some(p), _) => Some(p.clone()),
        (None, None, Some(f)) => Some(read_text_input(f, TEXT_INPUT_LIMIT, "--file")?),
        (None, None, None) => None,
    };
    let messages = match &args.messages {
        Some(f) => read_messages(f)?,
        None => Vec::new(),
    };
    if prompt.is_none() && messages.is_empty() {
        bail!("give a PROMPT, -p TEXT, -f FILE (`-f -` for stdin) or --chat --messages FILE");
    }
    report::check_outputs(args.trace.as_deref(), &path)?;
    let file = open_model(&path, args.model.device, args.model.no_huge_pages)?;
    interrupt::install()?;
    on_device(
        args.model.device,
        args.model.threads,
        Job {
            args,
            file,
            prompt,
            messages,
        },
    )
}
