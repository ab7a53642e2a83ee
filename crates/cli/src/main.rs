//! The `metallic` command.

use clap::{Parser, Subcommand};

mod tokenize;

#[derive(Parser)]
#[command(name = "metallic", version, about = "LLM inference engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the token ids of a text under a model's tokenizer.
    Tokenize(tokenize::TokenizeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tokenize(args) => tokenize::run(&args),
    }
}
