//! `metallic bench`: prompt-processing and text-generation speed, like llama-bench.
//!
//! For each repetition the KV cache starts empty. `ppN` feeds N prompt tokens in
//! one batch and times until the backend has finished (synchronize); `tgN`
//! feeds one token and then times N single-token decode steps through the same
//! loop as `metallic generate` (device-side greedy sampling, one token id read
//! back per step, decode graphs where the backend has them). Token ids are
//! drawn from a fixed seed, so every run sees the same input. Times are host
//! monotonic clock around synchronised work; one warm-up run of each test is
//! not counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::backend::Backend;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate, prefill, GenerateOptions};
use metallic::model::{Model, State};
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use serde_json::json;

use crate::common::{count_in, open_model, resolve_model, Device};
use crate::device::{on_device, OnBackend};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// GGUF model [default: $METALLIC_MODEL, else assets/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt lengths to test (comma-separated; 0 skips prompt processing).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generated token counts to test (comma-separated; 0 skips generation).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Repetitions of each test (1 to 10000).
    #[arg(short = 'r', long, default_value_t = 5, value_parser = count_in(1, 10_000))]
    pub repetitions: usize,
    /// CPU threads (0: all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs: cpu, or cuda (the first NVIDIA GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// CPU: read the weights from the file's memory map (4 KiB page-cache
    /// pages) instead of copying them into 2 MiB transparent huge pages at load.
    #[arg(long)]
    pub no_huge_pages: bool,
}

/// One test's result: tokens per second of every repetition.
struct Outcome {
    test: String,
    n_tokens: usize,
    tok_s: Vec<f64>,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Deterministic token ids below `vocab` (xorshift), so runs are comparable.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

struct Job {
    args: BenchArgs,
    path: PathBuf,
    file: Arc<GgufFile>,
}

impl OnBackend for Job {
    type Out = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let args = &self.args;
        let model = Model::load(&backend, &self.file).context("loading the model")?;
        let tok = Tokenizer::from_gguf(&self.file).context("building the tokenizer")?;
        let cfg = &model.config;
        let max_p = args.n_prompt.iter().copied().max().unwrap_or(0);
        let max_g = args.n_gen.iter().copied().max().unwrap_or(0);
        let ctx = max_p.max(max_g + 1).max(1);
        if ctx > cfg.context_length {
            bail!(
                "a test needs {ctx} positions, the model's context is {}",
                cfg.context_length
            );
        }
        let mut st = State::new(&backend, cfg, ctx, max_p.max(1), 1)?;
        let dispatch = MatmulDispatch::new(backend.matmul_impls(), &DispatchConfig::from_env())?;
        let mut ex = Exec::new(&backend, dispatch);
        let vocab = cfg.vocab;
        let mut outcomes = Vec::new();
        let runs = (args.n_prompt.iter().filter(|&&p| p > 0).count()
            + args.n_gen.iter().filter(|&&n| n > 0).count())
            * (args.repetitions + 1);
        let bar = crate::progress::bar(runs as u64, "bench");

        for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
            bar.set_message(format!("pp{p}"));
            let ids = tokens(p, vocab, 0x5eed ^ p as u64);
            let mut tok_s = Vec::new();
            for rep in 0..=args.repetitions {
                st.reset();
                backend.synchronize()?;
                let t = Instant::now();
                prefill(&mut ex, &model, &mut st, &ids)?;
                backend.synchronize()?;
                let dt = t.elapsed().as_secs_f64();
                if rep > 0 {
                    tok_s.push(p as f64 / dt);
                }
                bar.inc(1);
            }
            outcomes.push(Outcome {
                test: format!("pp{p}"),
                n_tokens: p,
                tok_s,
            });
        }
        for &n in args.n_gen.iter().filter(|&&n| n > 0) {
            let first = tokens(1, vocab, 0x6e6e ^ n as u64);
            let opts = GenerateOptions {
                max_tokens: n + 1,
                sampler: SamplerParams::greedy(),
                ignore_eos: true,
                ..GenerateOptions::default()
            };
            let mut tok_s = Vec::new();
            bar.set_message(format!("tg{n}"));
            for rep in 0..=args.repetitions {
                st.reset();
                let g = generate(&mut ex, &model, &mut st, &tok, &first, &opts, &mut |_| {})?;
                if g.decode_steps != n {
                    bail!("tg{n}: only {} decode steps ran", g.decode_steps);
                }
                if rep > 0 {
                    tok_s.push(n as f64 / g.decode_time.as_secs_f64());
                }
                bar.inc(1);
            }
            outcomes.push(Outcome {
                test: format!("tg{n}"),
                n_tokens: n,
                tok_s,
            });
        }

        // The table replaces the bar.
        bar.finish_and_clear();
        let name = self
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size_gib = self.file.len() as f64 / (1u64 << 30) as f64;
        let params: u64 = self.file.tensors().iter().map(|t| t.n_elements).sum();
        let machine = crate::machine::describe(&backend, args.threads);
        if args.json {
            let tests: Vec<_> = outcomes
                .iter()
                .map(|o| {
                    let (m, s) = mean_sd(&o.tok_s);
                    json!({"test": o.test, "n_tokens": o.n_tokens, "tokens_per_s": o.tok_s,
                           "mean": m, "stddev": s})
                })
                .collect();
            let v = json!({
                "model": name, "size_bytes": self.file.len(), "params": params,
                "backend": backend.name(), "threads": machine.threads,
                "repetitions": args.repetitions,
                "clock": "host monotonic around synchronised work",
                "machine": machine.to_json(), "tests": tests,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("{}", machine.to_line());
        println!();
        println!("| model | size | params | backend | threads | test | t/s |");
        println!("| ----- | ---: | -----: | ------- | ------: | ---: | --: |");
        for o in &outcomes {
            let (m, s) = mean_sd(&o.tok_s);
            println!(
                "| {name} | {size_gib:.2} GiB | {:.2} M | {} | {} | {} | {m:.2} ± {s:.2} |",
                params as f64 / 1e6,
                backend.name(),
                machine.threads,
                o.test,
            );
        }
        Ok(())
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.n_prompt.iter().all(|&p| p == 0) && args.n_gen.iter().all(|&n| n == 0) {
        bail!("nothing to run: every -p and -n is 0");
    }
    let path = resolve_model(args.model.as_deref())?;
    let file = open_model(&path, args.device, args.no_huge_pages)?;
    let threads = args.threads;
    on_device(args.device, threads, Job { args, path, file })
}
