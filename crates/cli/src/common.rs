//! What several commands share: finding the model, choosing a device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use metallic_gguf::GgufFile;

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

pub fn open_gguf(path: &Path) -> Result<Arc<GgufFile>> {
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

/// Read UTF-8 text from `path` (`-`: standard input), at most `limit` bytes:
/// more is an error naming `what` and the limit rather than memory eaten by
/// `/dev/zero`. A FIFO is read as the data comes.
pub fn read_text_input(path: &Path, limit: usize, what: &str) -> Result<String> {
    use std::io::Read;
    let (mut reader, name): (Box<dyn Read>, String) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), "standard input".into())
    } else {
        if path.is_dir() {
            bail!("{what}: {} is a directory, not a file", path.display());
        }
        let f = std::fs::File::open(path)
            .with_context(|| format!("{what}: opening {}", path.display()))?;
        (Box::new(f), path.display().to_string())
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{what}: reading {name}"))?;
    if bytes.len() > limit {
        bail!("{what}: {name} is larger than the {limit}-byte limit; give a shorter text");
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what}: {name} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
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
