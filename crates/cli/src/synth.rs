//! `metallic synth`: a GGUF with the exact tensor names, shapes and metadata of
//! a real model and seeded random weights, for tests and benchmarks of model
//! sizes whose weights are not at hand.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::chat::builtin;
use metallic::config::Arch;
use metallic::quantize::FileType;
use metallic::synth::{self, SynthOptions};
use metallic::tokenizer::TokenizerSpec;
use metallic_gguf::{GgmlType, GgufFile};

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Architecture: qwen2 or llama.
    #[arg(long)]
    pub arch: String,
    /// Shape preset (qwen2: tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b;
    /// llama: smollm2-135m, llama3.2-1b).
    #[arg(long)]
    pub preset: String,
    /// Weight type of the matrices (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q2_K..Q6_K: one type for all, as llama-quantize --pure), or a
    /// llama-quantize mix (Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S,
    /// Q5_K_M) whose per-tensor types are llama.cpp's. Rows too short for a
    /// block format fall back as llama.cpp's quantizer does; norms and biases
    /// stay F32.
    #[arg(long, default_value = "F16")]
    pub dtype: String,
    /// Give a plain --dtype (Q4_0, Q2_K, ...) llama-quantize's per-tensor rules
    /// too (e.g. Q4_0's Q6_K/Q8_0 embedding), as a file llama-quantize writes.
    #[arg(long)]
    pub mix: bool,
    /// The vocabulary: a tokenizer.json (with tokenizer_config.json beside it, if
    /// present, for special ids) or a GGUF file whose tokenizer is copied.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Chat template file (default: the preset family's own, or the GGUF's).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Seed of the random weights: the same seed writes the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Qwen2.5's tokenizer ends at <|file_sep|>; later ids of the shared vocab file
/// (Qwen3's thinking and tool tokens) are not part of it.
const QWEN2_5_LAST_ID: u32 = 151_664;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The tokenizer spec and, when the source carries one, its chat template.
fn load_tokenizer(path: &Path, arch: Arch) -> Result<(TokenizerSpec, Option<String>)> {
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|()| &magic == b"GGUF")
        })
        .with_context(|| format!("reading {}", path.display()))?;
    if is_gguf {
        let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let spec = TokenizerSpec::from_gguf(&file)
            .with_context(|| format!("the tokenizer of {}", path.display()))?;
        let tmpl = file.get_str("tokenizer.chat_template").map(str::to_string);
        return Ok((spec, tmpl));
    }
    let max_id = (arch == Arch::Qwen2).then_some(QWEN2_5_LAST_ID);
    let mut spec = TokenizerSpec::from_hf_json(&read(path)?, max_id)
        .with_context(|| format!("parsing {}", path.display()))?;
    let config = path.with_file_name("tokenizer_config.json");
    if config.exists() {
        spec.apply_hf_config(&read(&config)?)
            .with_context(|| format!("parsing {}", config.display()))?;
    }
    Ok((spec, None))
}

pub fn run(args: SynthArgs) -> Result<()> {
    let arch = Arch::from_name(&args.arch)
        .with_context(|| format!("unknown --arch {:?} (qwen2 or llama)", args.arch))?;
    let preset = synth::preset(arch, &args.preset)?;
    // A block type alone (Q4_K) is one type for every matrix; a mix name (Q4_K_M) is
    // llama.cpp's per-tensor choice.
    let (dtype, mix) = match GgmlType::from_name(&args.dtype) {
        Some(ty) if args.mix => {
            let ftype = FileType::of_type(ty)
                .with_context(|| format!("--mix: {ty} is not a llama-quantize file type"))?;
            (ty, Some(ftype))
        }
        Some(ty) => (ty, None),
        None => {
            let ftype = FileType::from_name(&args.dtype)
                .filter(|f| f.name().eq_ignore_ascii_case(&args.dtype))
                .with_context(|| {
                    format!(
                        "unknown --dtype {:?} (a type: F16, BF16, Q8_0, Q4_0, Q4_K, ...; or a \
                         mix: Q4_K_M, Q5_K_M, ...)",
                        args.dtype
                    )
                })?;
            (ftype.default_type(), Some(ftype))
        }
    };
    let (spec, gguf_template) = load_tokenizer(&args.tokenizer, arch)?;
    let template = match &args.chat_template {
        Some(p) => Some(read(p)?),
        None => match (arch, preset.name) {
            (Arch::Qwen2, _) => Some(builtin::QWEN2_5.to_string()),
            (Arch::Llama, "llama3.2-1b") => Some(builtin::LLAMA3_2.to_string()),
            _ => gguf_template,
        },
    };
    if preset.vocab < spec.tokens.len() {
        bail!(
            "{} has {} tokens; the {} preset's embedding has {} rows",
            args.tokenizer.display(),
            spec.tokens.len(),
            preset.name,
            preset.vocab
        );
    }
    let opts = SynthOptions {
        preset,
        dtype,
        tokenizer: &spec,
        chat_template: template.as_deref(),
        seed: args.seed,
    };
    let bar = crate::progress::bar(0, "synth");
    bar.set_message("tensors");
    synth::write_with_progress(&opts, mix, &args.output, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64)
    })
    .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish();
    let size = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "wrote {} ({} {}, {}, seed {}, {:.1} MiB)",
        args.output.display(),
        arch.name(),
        preset.name,
        mix.map_or(dtype.name(), |f| f.name()),
        args.seed,
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}
