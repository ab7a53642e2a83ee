//! `metallic quantize IN.gguf OUT.gguf TYPE`: rewrites a GGUF's weights to another type with
//! llama-quantize's per-tensor rules (the library's `quantize` module), streaming tensor by
//! tensor.

use std::io::{BufWriter, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use metallic::quantize::{self, FileType, MixOptions, QuantizeOptions};
use metallic_gguf::{GgmlType, GgufFile};

#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// The GGUF to read.
    pub input: PathBuf,
    /// The GGUF to write (must not be the input).
    pub output: PathBuf,
    /// File type, as llama-quantize names it: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K (Q3_K, Q4_K and Q5_K
    /// are the _M mixes).
    #[arg(value_name = "TYPE")]
    pub ftype: String,
    /// Every quantisable tensor gets the type's own block format: no per-tensor mix (rows that
    /// do not divide into its blocks still fall back, as in llama-quantize).
    #[arg(long)]
    pub pure: bool,
    /// Type of output.weight (e.g. Q8_0, F16).
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<String>,
    /// Type of token_embd.weight (e.g. Q8_0, F16).
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<String>,
    /// Leave output.weight in its present type.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Allow quantising tensors that are already quantised (which compounds the rounding error;
    /// dequantising to F32 needs no flag).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Print the type each tensor would get and the sizes, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn tensor_type(name: &str, flag: &str) -> Result<GgmlType> {
    GgmlType::from_name(name)
        .filter(|&t| metallic_gguf::quant::can_quantize(t) && t != GgmlType::Q8_K)
        .with_context(|| {
            format!(
                "{flag} {name:?} is not a type that can be written (F32, F16, BF16, Q4_0, Q4_1, \
                 Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
            )
        })
}

/// True when `a` and `b` name the same file (either may not exist yet).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let ftype = FileType::from_name(&args.ftype).with_context(|| {
        format!(
            "unknown TYPE {:?}; one of {}",
            args.ftype,
            FileType::names()
        )
    })?;
    let mix = MixOptions {
        pure: args.pure,
        output_tensor_type: args
            .output_tensor_type
            .as_deref()
            .map(|t| tensor_type(t, "--output-tensor-type"))
            .transpose()?,
        token_embedding_type: args
            .token_embedding_type
            .as_deref()
            .map(|t| tensor_type(t, "--token-embedding-type"))
            .transpose()?,
        quantize_output_tensor: !args.leave_output_tensor,
    };
    let opts = QuantizeOptions {
        ftype,
        mix,
        allow_requantize: args.allow_requantize,
    };
    if !args.input.is_file() {
        bail!(
            "{} is not a file (give the GGUF to quantize)",
            args.input.display()
        );
    }
    if same_file(&args.input, &args.output) {
        bail!(
            "the output {} is the input file; choose another output path",
            args.output.display()
        );
    }
    let file =
        GgufFile::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let plan = quantize::plan(&file, &opts)
        .with_context(|| format!("{} as {}", args.input.display(), ftype.name()))?;
    let bytes_in: u64 = plan.iter().map(|p| p.bytes_in).sum();
    let bytes_out: u64 = plan.iter().map(|p| p.bytes_out).sum();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;

    if args.dry_run {
        for p in &plan {
            println!(
                "{:<40} {:>6} -> {:<6} {:>10.3} MiB -> {:>10.3} MiB",
                p.name,
                p.from.name(),
                p.to.name(),
                mib(p.bytes_in),
                mib(p.bytes_out)
            );
        }
        println!(
            "{}: {:.2} MiB -> {:.2} MiB",
            ftype.name(),
            mib(bytes_in),
            mib(bytes_out)
        );
        return Ok(());
    }

    // Written beside the output and renamed when complete, so a failed run leaves no
    // half-written file under the output's name.
    let mut partial = args.output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(bytes_in);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let result = (|| -> Result<()> {
        let out = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut last = String::new();
        let mut out = quantize::write(&file, ftype, &plan, BufWriter::new(out), &mut |p, n| {
            if p.name != last {
                last.clone_from(&p.name);
                bar.set_message(format!("{} {} -> {}", p.name, p.from, p.to));
            }
            bar.inc(n);
        })
        .with_context(|| format!("writing {}", partial.display()))?;
        std::io::Write::flush(&mut out)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &args.output).with_context(|| {
            format!(
                "renaming {} to {}",
                partial.display(),
                args.output.display()
            )
        })
    })();
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    eprintln!(
        "wrote {} ({}, {:.2} MiB -> {:.2} MiB)",
        args.output.display(),
        ftype.name(),
        mib(bytes_in),
        mib(bytes_out)
    );
    Ok(())
}
