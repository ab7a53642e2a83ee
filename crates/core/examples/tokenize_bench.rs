//! Encode throughput, the counterpart of `scripts/reference/tokenize_bench.py run FILE`.
//!
//! ```text
//! python scripts/reference/tokenize_bench.py make-text /tmp/bench.txt
//! cargo run --release -p metallic --example tokenize_bench -- /tmp/bench.txt
//! ```
//!
//! Single thread, two modes, MB/s (10^6 input bytes per second) and tokens/s:
//! `whole` encodes the entire text as one string, `lines` encodes each line separately.
//! Special tokens are recognised, no BOS/EOS. Tokenizers: Qwen2 from
//! `assets/qwen2/tokenizer.json` (specials up to 151664) and SmolLM2 from its GGUF, or pass
//! `--qwen2 PATH` / `--gguf PATH` to choose.

use std::time::Instant;

use metallic::tokenizer::{Tokenizer, TokenizerSpec};

const REPEATS: usize = 5;

fn usage() -> ! {
    eprintln!("usage: tokenize_bench FILE [--qwen2 tokenizer.json] [--gguf model.gguf]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let assets = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
    let mut qwen2 = Some(format!("{assets}/qwen2/tokenizer.json"));
    let mut gguf = Some(format!("{assets}/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let mut chose = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--qwen2" | "--gguf" => {
                if !chose {
                    (qwen2, gguf, chose) = (None, None, true);
                }
                let path = args.next().unwrap_or_else(|| usage());
                if a == "--qwen2" {
                    qwen2 = Some(path);
                } else {
                    gguf = Some(path);
                }
            }
            _ if file.is_none() && !a.starts_with('-') => file = Some(a),
            _ => usage(),
        }
    }
    let Some(file) = file else { usage() };
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        eprintln!("{file}: {e}");
        std::process::exit(1)
    });
    let lines: Vec<&str> = text.split('\n').collect();
    let nbytes = text.len() as f64;

    let mut tokenizers: Vec<(&str, Tokenizer)> = Vec::new();
    if let Some(path) = qwen2 {
        let t = Instant::now();
        let json = std::fs::read_to_string(&path).expect("read tokenizer.json");
        let spec = TokenizerSpec::from_hf_json(&json, Some(151_664)).expect("parse tokenizer.json");
        tokenizers.push(("qwen2", Tokenizer::from_spec(spec).expect("build")));
        println!(
            "qwen2: tokenizer.json loaded in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(path) = gguf {
        let t = Instant::now();
        let f = metallic_gguf::GgufFile::open(&path).expect("open gguf");
        tokenizers.push(("smollm2", Tokenizer::from_gguf(&f).expect("build")));
        println!(
            "smollm2: GGUF opened and tokenizer built in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    println!(
        "metallic, {} bytes, {} lines, single thread, best of {REPEATS} (first run in parentheses)",
        text.len(),
        lines.len()
    );
    for (name, tok) in &tokenizers {
        let whole = || tok.encode(&text, true).len();
        let per_line = || {
            lines
                .iter()
                .map(|l| tok.encode(l, true).len())
                .sum::<usize>()
        };
        for (mode, f) in [
            ("whole", &whole as &dyn Fn() -> usize),
            ("lines", &per_line),
        ] {
            let (mut first, mut best, mut ntok) = (0.0f64, f64::MAX, 0);
            for i in 0..REPEATS {
                let t = Instant::now();
                ntok = f();
                let dt = t.elapsed().as_secs_f64();
                if i == 0 {
                    first = dt;
                }
                best = best.min(dt);
            }
            println!(
                "{name:8} {mode:6} {:8.2} MB/s ({:.2})  {:6.2} Mtok/s  {ntok} tokens",
                nbytes / best / 1e6,
                nbytes / first / 1e6,
                ntok as f64 / best / 1e6
            );
        }
    }
}
