//! `metallic tokenize`: the token ids of a text under a model's tokenizer.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "file"])))]
pub struct TokenizeArgs {
    /// GGUF file whose `tokenizer.ggml.*` metadata defines the tokenizer
    /// [default: $METALLIC_MODEL, else assets/SmolLM2-135M-Instruct.Q4_1.gguf, as generate].
    #[arg(short, long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Encode special tokens written in the text (`<|im_start|>`) as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Print one JSON array of ids instead of one id per line with its text.
    #[arg(long)]
    pub json: bool,
    /// Read the text from this file instead of the command line (`-`: standard input).
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The text to tokenize.
    pub text: Option<String>,
}

/// Tokenize and print to stdout. No BOS/EOS is added: the ids are those of the text alone.
pub fn run(args: &TokenizeArgs) -> Result<()> {
    let model = crate::common::resolve_model(args.model.as_deref())?;
    let file = GgufFile::open(&model).with_context(|| format!("opening {}", model.display()))?;
    let tokenizer = Tokenizer::from_gguf(&file)
        .with_context(|| format!("reading the tokenizer of {}", model.display()))?;
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => {
            crate::common::read_text_input(path, crate::common::TEXT_INPUT_LIMIT, "--file")?
        }
        (None, None) => anyhow::bail!("give the text or --file PATH"),
    };
    let ids = tokenizer.encode(&text, !args.no_parse_special);
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    let mut out = String::with_capacity(ids.len() * 16);
    for &id in &ids {
        let _ = writeln!(out, "{id:>8}  {}", describe(&tokenizer, id));
    }
    print!("{out}");
    eprintln!("{} tokens", ids.len());
    Ok(())
}

/// The text of a token, readable: quoted with escapes for control characters, whitespace
/// other than a plain space, and bytes that are not (yet) valid UTF-8 as `\xNN`; added tokens
/// unquoted with their kind.
fn describe(tokenizer: &Tokenizer, id: u32) -> String {
    let bytes = tokenizer.token_bytes(id).unwrap_or_default();
    if tokenizer.is_special(id) {
        return format!("{}  [special]", String::from_utf8_lossy(bytes));
    }
    if tokenizer.token_type(id) == Some(metallic::tokenizer::token_type::USER_DEFINED) {
        return format!("{}  [added]", String::from_utf8_lossy(bytes));
    }
    let mut s = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                ' ' => s.push(' '),
                c if c.is_control() || c.is_whitespace() || c == '\u{feff}' => {
                    s.extend(c.escape_default())
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02X}");
        }
    }
    s.push('"');
    s
}
