//! What several commands share: finding the model, choosing a device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use metallic_gguf::{GgufError, GgufFile, ThpMode};

/// Where the default model lives once `scripts/fetch-assets.sh` has run.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    // No doc comments here: clap would switch every --help to the long
    // two-line layout. The flags' help says what the values mean.
    Cpu,
    Cuda,
}

/// The model to use: the one given, else `METALLIC_MODEL`, else the default
/// small model in `assets/` (of the working directory or of the source tree).
pub fn resolve_model(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("METALLIC_MODEL").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let candidates = [
        PathBuf::from("assets").join(DEFAULT_MODEL_FILE),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets")
            .join(DEFAULT_MODEL_FILE),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no --model given and the default model {DEFAULT_MODEL_FILE} is not in assets/; \
         run scripts/fetch-assets.sh (or set METALLIC_MODEL)"
    )
}

/// Opens the model a command runs on `device`. On the CPU, where the kernel has transparent
/// huge pages and `no_huge_pages` is not set, the file is copied into huge pages (decode reads
/// every weight each token, and reads 2 MiB pages faster than 4 KiB ones: see
/// `metallic_gguf::huge_pages`); where the copy cannot be made (too little free memory), a note
/// says why and the weights are read from the file's map. CUDA uploads from the map: no copy.
pub fn open_model(path: &Path, device: Device, no_huge_pages: bool) -> Result<Arc<GgufFile>> {
    if device != Device::Cpu || no_huge_pages || !ThpMode::current().usable() {
        return open_gguf(path);
    }
    check_input_kind(path, "model", false)?;
    match GgufFile::open_in_huge_pages(path) {
        Ok(f) => Ok(Arc::new(f)),
        Err(e @ GgufError::HugePages { .. }) => {
            eprintln!("metallic: note: {e} (--no-huge-pages skips the attempt)");
            open_gguf(path)
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// Opens a GGUF by its file map (metadata, tokenizer, or a model for CUDA).
pub fn open_gguf(path: &Path) -> Result<Arc<GgufFile>> {
    check_input_kind(path, "model", false)?;
    let f = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Arc::new(f))
}

/// Parse a boolean environment switch (1/true/yes/on).
pub fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The CPU thread count to use: `requested` (0: all cores), capped at the machine's cores
/// with a warning. More threads than cores only oversubscribe (10,000 threads spent minutes
/// spawning and contending), so a larger number is a mistake, not a tuning choice.
pub fn cap_threads(requested: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if requested > cores {
        eprintln!(
            "metallic: warning: -t {requested} is more than the {cores} cores of this machine; \
             using {cores}"
        );
        return cores;
    }
    requested
}

/// Reads the text of `path` (`-`: stdin), at most `limit` bytes. `what` names the input in
/// errors (`"--file"`). Pipes and FIFOs work (reading waits for the writer, as `cat`
/// does); a directory, a device or a text over the limit is a clear error, not a hang or an
/// unbounded read.
pub fn read_text_input(path: &Path, limit: usize, what: &str) -> Result<String> {
    use std::io::Read;
    let (mut reader, name): (Box<dyn Read>, String) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), "stdin".into())
    } else {
        check_input_kind(path, what, true)?;
        let f = std::fs::File::open(path)
            .with_context(|| format!("{what}: cannot open {}", path.display()))?;
        (Box::new(f), path.display().to_string())
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{what}: reading {name}"))?;
    if bytes.len() > limit {
        bail!(
            "{what}: {name} is longer than {} MiB, the most read as text; \
             give a shorter file",
            limit >> 20
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what}: {name} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Refuses what cannot be the file an argument names before opening it (opening a FIFO
/// blocks until a writer comes; mapping a directory fails with "No such device"). With
/// `streams`, FIFOs and character devices are fine (text read through a pipe).
pub fn check_input_kind(path: &Path, what: &str, streams: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() && !streams {
        "a named pipe (FIFO)"
    } else if ft.is_char_device() && !streams {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        return Ok(());
    };
    if streams {
        bail!("{what}: {} is {kind}, not a text file", path.display());
    }
    bail!(
        "{what}: {} is {kind}, not a GGUF file (models are memory-mapped: give a regular file)",
        path.display()
    )
}

/// Checks an output path before any work starts: not a directory, not one of the `inputs`
/// (writing a trace over the model file destroys it), and its folder exists and can be
/// written. Existing files are overwritten unless `overwrite` is false, in which case
/// they are refused with a hint at `--force`.
pub fn check_output_path(path: &Path, what: &str, inputs: &[&Path], overwrite: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            bail!(
                "{what}: {} is a directory; give a file name",
                path.display()
            );
        }
        for input in inputs {
            if let Ok(im) = std::fs::metadata(input) {
                if im.dev() == meta.dev() && im.ino() == meta.ino() {
                    bail!(
                        "{what}: {} is the input file {}; refusing to overwrite it",
                        path.display(),
                        input.display()
                    );
                }
            }
        }
        if !overwrite {
            bail!(
                "{what}: {} exists; pass --force to overwrite it",
                path.display()
            );
        }
        if meta.permissions().readonly() {
            bail!("{what}: {} is read-only", path.display());
        }
        return Ok(());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{what}: the folder {} of {} does not exist",
            parent.display(),
            path.display()
        );
    }
    Ok(())
}

/// Rejects malformed values of the environment variables that change what runs, before
/// any work: a typo there would otherwise be ignored silently.
pub fn check_env() -> Result<()> {
    if let Ok(v) = std::env::var("METALLIC_CPU_SIMD") {
        if !v.trim().is_empty() {
            match metallic_cpu::vec_dot::SimdLevel::parse(&v) {
                None => bail!(
                    "METALLIC_CPU_SIMD={v:?} is not a SIMD level (scalar, avx2, avx512; on aarch64 neon, neon-dot; \
                     unset it for the best this CPU has)"
                ),
                Some(l) if !l.available() => eprintln!(
                    "metallic: warning: METALLIC_CPU_SIMD={v} is not available on this CPU; \
                     using the best level it has"
                ),
                Some(_) => {}
            }
        }
    }
    if let Ok(v) = std::env::var("METALLIC_CPU_PREFETCH") {
        if !v.trim().is_empty() && metallic_cpu::vec_dot::Prefetch::parse(&v).is_none() {
            bail!(
                "METALLIC_CPU_PREFETCH={v:?} is not a prefetch (nta, t0, off; \
                 unset it for the default, t0)"
            );
        }
    }
    metallic::autotune::Mode::check_env().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// A clap value parser for a count in `lo..=hi`: a number out of range is refused when the
/// arguments are parsed, with the range in the message, before anything is sized by it.
pub fn count_in(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|e| format!("`{s}` is not a count: {e}"))?;
        if n < lo || n > hi {
            return Err(format!("{n} is out of range: give {lo} to {hi}"));
        }
        Ok(n)
    }
}

/// Refuses to build `bytes` of host buffers when the machine does not have them available
/// (an allocation that succeeds under overcommit can still get the process killed when its
/// pages are touched). `what` names the buffers and the option to lower.
pub fn check_host_memory(bytes: u128, what: &str) -> Result<()> {
    if let Some(avail) = metallic_gguf::huge_pages::mem_available().map(u128::from) {
        if bytes > avail {
            bail!(
                "{what} need {:.1} GiB but {:.1} GiB of memory are available",
                bytes as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Largest prompt or conversation file read (16 MiB: far beyond any context).
pub const TEXT_INPUT_LIMIT: usize = 16 << 20;

/// A seed nobody chose: the process's randomly keyed hasher over the clock.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Whether stderr is a terminal we may draw progress bars and colour on.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Colour on a terminal only, and never with `NO_COLOR` set (no-color.org).
pub fn use_color(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_host_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A model as people name it: architecture, size and weight type, e.g.
/// `llama 135M Q4_1` (type: the one holding most of the weight bytes).
pub struct ModelSummary {
    pub name: String,
    pub arch: String,
    pub params: u64,
    pub weight_type: String,
    pub file_bytes: u64,
}

impl ModelSummary {
    pub fn of(file: &GgufFile) -> ModelSummary {
        let mut by_type: Vec<(metallic_gguf::GgmlType, u64)> = Vec::new();
        let mut params = 0u64;
        for t in file.tensors() {
            params = params.saturating_add(t.n_elements);
            match by_type.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some(e) => e.1 = e.1.saturating_add(t.n_bytes),
                None => by_type.push((t.ggml_type, t.n_bytes)),
            }
        }
        let weight_type = by_type
            .iter()
            .max_by_key(|(_, b)| *b)
            .map(|(t, _)| t.name().to_string())
            .unwrap_or_else(|| "none".into());
        ModelSummary {
            name: file.get_str("general.name").unwrap_or("").to_string(),
            arch: file
                .get_str("general.architecture")
                .unwrap_or("unknown")
                .to_string(),
            params,
            weight_type,
            file_bytes: file.len(),
        }
    }

    /// `135M`, `1.5B`.
    pub fn size_label(&self) -> String {
        let p = self.params as f64;
        if p >= 1e9 {
            format!("{:.1}B", p / 1e9)
        } else {
            format!("{:.0}M", p / 1e6)
        }
    }

    pub fn line(&self) -> String {
        format!("{} {} {}", self.arch, self.size_label(), self.weight_type)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "arch": self.arch,
            "params": self.params,
            "size": self.size_label(),
            "type": self.weight_type,
            "file_bytes": self.file_bytes,
        })
    }
}
