//! The `metallic` command.

mod bench;
mod chat;
mod common;
mod device;
mod generate;
mod inspect;
mod interrupt;
mod machine;
mod perplexity;
mod probe;
mod probe_chart;
mod progress;
mod quantize;
mod report;
mod runinfo;
mod serve;
mod synth;
mod tokenize;
mod tui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "metallic",
    version,
    about = "LLM inference on GGUF models, CPU and CUDA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(generate::GenerateArgs),
    /// Chat with the model: a multi-turn conversation that keeps its KV cache.
    Chat(chat::ChatArgs),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Write a GGUF with a real model's layout and random weights.
    Synth(synth::SynthArgs),
    /// Rewrite a GGUF's weights to another type (llama-quantize's per-tensor rules).
    Quantize(quantize::QuantizeArgs),
    /// Show the token ids of a text under a model's tokenizer.
    Tokenize(tokenize::TokenizeArgs),
    /// Time every matmul implementation on the Qwen2.5 shapes (or a recorded profile's).
    Probe(probe::ProbeArgs),
    /// Perplexity of a model on a text, and KL divergence from a saved reference, as llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Serve the OpenAI API (chat and completions) with continuous batching.
    Serve(serve::ServeArgs),
    /// Concurrent streaming clients against an OpenAI-compatible server: tok/s, TTFT, inter-token latency.
    BenchServe(serve::BenchServeArgs),
    /// Show a GGUF file's metadata and tensor table.
    Inspect {
        /// The GGUF file to show.
        file: PathBuf,
        /// Machine-readable output (long arrays summarised, see `metallic inspect --help`).
        #[arg(long)]
        json: bool,
    },
}

/// llama.cpp flags people type out of habit, with what to use instead.
/// Checked before parsing because clap would read `-ngl` as `-n gl`.
const FOREIGN_FLAGS: &[(&str, &str)] = &[
    ("-ngl", "metallic has no -ngl: every layer runs on the device you pick; use --device cuda"),
    ("--n-gpu-layers", "metallic has no --n-gpu-layers: every layer runs on the device you pick; use --device cuda"),
    ("--gpu-layers", "metallic has no --gpu-layers: every layer runs on the device you pick; use --device cuda"),
    ("-cnv", "for a conversation use `metallic chat`"),
    ("--conversation", "for a conversation use `metallic chat`"),
    ("-i", "for an interactive session use `metallic chat`"),
    ("--interactive", "for an interactive session use `metallic chat`"),
];

fn foreign_flag(args: &[String]) -> Option<&'static str> {
    // Only before `--`, and only the flag itself (or `flag=value`).
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .find_map(|a| {
            let name = a.split('=').next().unwrap_or(a);
            FOREIGN_FLAGS
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, hint)| *hint)
        })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(hint) = foreign_flag(&argv) {
        eprintln!("error: {hint}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    if let Err(e) = common::check_env() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(a) => bench::run(a).map(|()| ExitCode::SUCCESS),
        Command::Synth(a) => synth::run(a).map(|()| ExitCode::SUCCESS),
        Command::Quantize(a) => quantize::run(a).map(|()| ExitCode::SUCCESS),
        Command::Tokenize(a) => tokenize::run(&a).map(|()| ExitCode::SUCCESS),
        Command::Inspect { file, json } => inspect::run(&file, json).map(|()| ExitCode::SUCCESS),
        Command::Probe(a) => probe::run(a).map(|()| ExitCode::SUCCESS),
        Command::Perplexity(a) => perplexity::run(a).map(|()| ExitCode::SUCCESS),
        Command::Serve(a) => serve::run(a).map(|()| ExitCode::SUCCESS),
        Command::BenchServe(a) => serve::bench(a).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
