//! `metallic perplexity`: perplexity of a model on a text, and KL divergence
//! from a reference model's saved distributions, scored as llama-perplexity.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::backend::Backend;
use metallic::config::ModelConfig;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::logprob_file::{Header, LogProbReader, LogProbWriter};
use metallic::model::{Model, State};
use metallic::perplexity::{
    chunk_logits, log_probs_into, nll, Chunking, KldSummary, KldSums, NllSums, Perplexity,
};
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use serde_json::json;

use crate::common::{open_model, resolve_model, Device};
use crate::device::{on_device, OnBackend};

const SCORING: &str = "\
The text is tokenized without special-token parsing, with a BOS first when the \
vocabulary adds one, and cut into consecutive non-overlapping chunks of -c tokens \
(a shorter tail is dropped). Each chunk is evaluated from an empty cache, its first \
token replaced by BOS when the vocabulary adds one; the logits at positions \
c/2 ..= c-2 are scored against the next token, c-1-c/2 predictions per chunk \
(255 for -c 512), exactly as llama-perplexity. PPL = exp(mean NLL) +/- \
PPL*sqrt(var(NLL)/(N-1)).";

#[derive(Args, Debug)]
#[command(after_help = SCORING)]
pub struct PerplexityArgs {
    /// GGUF model (default: SmolLM2-135M-Instruct from assets/, or $METALLIC_MODEL).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The text to score (UTF-8).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Tokens per forward step (0: half the chunk, at most 512, so the unscored
    /// first half computes no logits).
    #[arg(short = 'b', long = "batch-size", default_value_t = 0)]
    pub batch_size: usize,
    /// Evaluate at most this many chunks (default: all whole chunks of the text).
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// CPU threads (0: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// CPU: read the weights from the file's memory map (4 KiB page-cache
    /// pages) instead of copying them into 2 MiB transparent huge pages at load.
    #[arg(long)]
    pub no_huge_pages: bool,
    /// Save every scored position's full next-token log-probabilities to BASE
    /// (the reference for a later --kld run; see docs/quality.md for the format).
    #[arg(long, value_name = "BASE", conflicts_with = "kld")]
    pub save_logits: Option<PathBuf>,
    /// Compare with the distributions saved in BASE: KL divergence, top-token
    /// agreement and RMS delta-p, per chunk and in total. Needs the same text,
    /// -c, --chunks and tokenizer as the run that saved it.
    #[arg(long, value_name = "BASE")]
    pub kld: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

struct Job {
    args: PerplexityArgs,
    file: Arc<GgufFile>,
    model_path: PathBuf,
    tok: Tokenizer,
    tokens: Vec<u32>,
    chunking: Chunking,
}

/// What the base's header must say for this run.
fn expected_header(job: &Job, vocab: usize) -> Result<Header> {
    let c = &job.chunking;
    let bos = job.tok.add_bos().then(|| job.tok.bos_id()).flatten();
    let u =
        |v: usize, what: &str| u32::try_from(v).with_context(|| format!("{what} {v} too large"));
    Ok(Header {
        vocab: u(vocab, "vocabulary")?,
        n_ctx: u(c.n_ctx, "context")?,
        n_chunks: u(c.n_chunks, "chunk count")?,
        scored_per_chunk: u(c.scored_per_chunk(), "scored positions")?,
        tokenizer: job.tok.fingerprint(),
        tokens: c.tokens_digest(&job.tokens, bos),
    })
}

fn fmt_ppl(p: &Perplexity) -> String {
    format!("{:.4} ± {:.4}", p.ppl, p.ppl_error)
}

fn kld_json(s: &KldSummary) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

impl OnBackend for Job {
    type Out = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let args = &self.args;
        let model = Model::load(&backend, &self.file).context("loading the model")?;
        let cfg = &model.config;
        let vocab = cfg.vocab;
        if self.tok.vocab_size() > vocab {
            bail!(
                "the tokenizer has {} tokens but the model's output has {vocab} rows",
                self.tok.vocab_size()
            );
        }
        let c = self.chunking;
        let batch = match args.batch_size {
            0 => c.first().clamp(1, 512),
            b => b.min(c.n_ctx),
        };
        let mut st = State::new(&backend, cfg, c.n_ctx, batch, batch)
            .context("allocating buffers (a smaller -b needs less memory)")?;
        let dispatch = MatmulDispatch::new(backend.matmul_impls(), &DispatchConfig::from_env())?;
        let mut ex = Exec::new(&backend, dispatch);
        let bos = self.tok.add_bos().then(|| self.tok.bos_id()).flatten();
        let header = expected_header(&self, vocab)?;

        let mut writer = match &args.save_logits {
            Some(p) => {
                let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
                Some(LogProbWriter::new(BufWriter::new(f), header)?)
            }
            None => None,
        };
        let mut reader = match &args.kld {
            Some(p) => {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                let r = LogProbReader::new(BufReader::new(f))
                    .with_context(|| format!("reading {}", p.display()))?;
                r.header()
                    .check_matches(&header)
                    .with_context(|| format!("{}", p.display()))?;
                Some(r)
            }
            None => None,
        };

        if !args.json {
            eprintln!(
                "metallic: {} tokens, {} chunks of {} ({} scored each, {} in all), batch {}, {}",
                self.tokens.len(),
                c.n_chunks,
                c.n_ctx,
                c.scored_per_chunk(),
                c.scored(),
                batch,
                backend.device_description()
            );
        }
        let pb = crate::progress::bar(c.n_chunks as u64, "chunks");
        let mut total = NllSums::default();
        let mut total_kld = KldSums::default();
        let mut chunk_rows = Vec::with_capacity(c.n_chunks);
        let mut lp = vec![0f32; vocab];
        let mut base = vec![0f32; vocab];
        for i in 0..c.n_chunks {
            let chunk = c.chunk(&self.tokens, i, bos);
            let logits = chunk_logits(&mut ex, &model, &mut st, &c, &chunk)
                .with_context(|| format!("evaluating chunk {}", i + 1))?;
            let targets = c.targets(&chunk);
            let mut sums = NllSums::default();
            let mut ksums = KldSums::default();
            for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
                if let Some(r) = reader.as_mut() {
                    r.read_row(&mut base)
                        .with_context(|| format!("reading the base for chunk {}", i + 1))?;
                    ksums.add(row, &base, t, &mut lp);
                } else {
                    sums.add(nll(row, t));
                }
                if let Some(w) = writer.as_mut() {
                    log_probs_into(row, &mut lp);
                    w.write_row(&lp).context("writing the log-probabilities")?;
                }
            }
            if reader.is_some() {
                sums = ksums.nll;
            }
            total.merge(&sums);
            let p = sums.perplexity();
            let running = total.perplexity();
            let line = if reader.is_some() {
                let k = ksums.summary();
                total_kld.merge(&ksums);
                let line = format!(
                    "[{}] PPL {:.4}  KLD {:.6} ± {:.6}  same top {:.2}%  RMS Δp {:.3}%",
                    i + 1,
                    p.ppl,
                    k.mean_kld,
                    k.mean_kld_error,
                    k.same_top_pct,
                    k.rms_dp_pct
                );
                chunk_rows.push(json!({"chunk": i + 1, "ppl": p, "kld": kld_json(&k)}));
                line
            } else {
                chunk_rows.push(json!({"chunk": i + 1, "ppl": p}));
                format!("[{}] PPL {:.4}", i + 1, p.ppl)
            };
            if !args.json {
                pb.suspend(|| eprintln!("{line}"));
            }
            pb.set_message(format!("PPL ≈ {}", fmt_ppl(&running)));
            pb.inc(1);
        }
        pb.finish_and_clear();
        if let Some(w) = writer {
            w.finish().context("finishing the log-probability file")?;
        }
        if let Some(r) = reader {
            r.finish().context("the base file")?;
        }

        let ppl = total.perplexity();
        let kld = args.kld.as_ref().map(|_| total_kld.summary());
        if args.json {
            let v = json!({
                "model": self.model_path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "text": args.file.file_name().map(|n| n.to_string_lossy().into_owned()),
                "device": backend.device_description(),
                "matmul_backend": DispatchConfig::from_env().all,
                // What METALLIC_MATMUL_BACKEND can force on this backend.
                "matmul_impls": backend.matmul_impls().iter().map(|i| i.name).collect::<Vec<_>>(),
                "tokens": self.tokens.len(),
                "n_ctx": c.n_ctx,
                "chunks": c.n_chunks,
                "scored": c.scored(),
                "ppl": ppl,
                "kld": kld.as_ref().map(kld_json),
                "per_chunk": chunk_rows,
            });
            println!("{v}");
        } else {
            println!(
                "PPL = {} over {} scored tokens ({} chunks of {})",
                fmt_ppl(&ppl),
                ppl.count,
                c.n_chunks,
                c.n_ctx
            );
            if let Some(k) = kld {
                println!("PPL(base)  = {}", fmt_ppl(&k.ppl_base));
                println!("Mean KLD   = {:.6} ± {:.6}", k.mean_kld, k.mean_kld_error);
                println!("99.0% KLD  = {:.6}", k.kld_p99);
                println!("99.9% KLD  = {:.6}", k.kld_p999);
                println!("Max KLD    = {:.6}", k.kld_max);
                println!(
                    "Same top   = {:.3} ± {:.3} %",
                    k.same_top_pct, k.same_top_pct_error
                );
                println!(
                    "RMS Δp     = {:.3} ± {:.3} %",
                    k.rms_dp_pct, k.rms_dp_pct_error
                );
            }
        }
        Ok(())
    }
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let model_path = resolve_model(args.model.as_deref())?;
    let text = std::fs::read(&args.file)
        .with_context(|| format!("reading the text {}", args.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text: {e}", args.file.display()))?;
    let file = open_model(&model_path, args.device, args.no_huge_pages)?;
    let cfg = ModelConfig::from_gguf(&file).context("reading the model's configuration")?;
    if args.ctx_size > cfg.context_length {
        bail!(
            "-c {} exceeds the model's context length {}; use a smaller -c",
            args.ctx_size,
            cfg.context_length
        );
    }
    let tok = Tokenizer::from_gguf(&file).context("building the tokenizer")?;
    // As llama-perplexity's common_tokenize(text, add_special = true,
    // parse_special = false): BOS when the vocabulary adds one, no EOS.
    let mut tokens = Vec::new();
    if let (true, Some(b)) = (tok.add_bos(), tok.bos_id()) {
        tokens.push(b);
    }
    tok.encode_into(&text, false, &mut tokens);
    let chunking = Chunking::new(tokens.len(), args.ctx_size, args.chunks)
        .with_context(|| format!("{}", args.file.display()))?;
    on_device(
        args.device,
        args.threads,
        Job {
            args,
            file,
            model_path,
            tok,
            tokens,
            chunking,
        },
    )
}
