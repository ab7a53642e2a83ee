//! The `metallic` command.

mod bench;
mod common;
mod device;
mod generate;
mod inspect;
mod machine;
mod probe;
mod probe_chart;
mod quantize;
mod report;
mod serve;
mod synth;
mod tokenize;

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
    /// Serve the OpenAI API (chat and completions) with continuous batching.
    Serve(serve::ServeArgs),
    /// Concurrent streaming clients against an OpenAI-compatible server: tok/s, TTFT, inter-token latency.
    BenchServe(serve::BenchServeArgs),
    /// Show a GGUF file's metadata and tensor table.
    Inspect {
        file: PathBuf,
        /// Machine-readable output (long arrays summarised, see `metallic inspect --help`).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Tokenize(a) => tokenize::run(&a),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Probe(a) => probe::run(a),
        Command::Serve(a) => serve::run(a),
        Command::BenchServe(a) => serve::bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
