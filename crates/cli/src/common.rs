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
