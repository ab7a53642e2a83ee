//! Profiling output at exit: the text summary (METALLIC_PROFILING_ENABLED),
//! every event as JSONL (METALLIC_METRICS_JSONL_PATH) and a Chrome trace (`--trace`).

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use metallic::profiler::Recorder;

use crate::common::env_flag;

pub const ENV_ENABLED: &str = "METALLIC_PROFILING_ENABLED";
pub const ENV_JSONL: &str = "METALLIC_METRICS_JSONL_PATH";

fn jsonl_path() -> Option<std::path::PathBuf> {
    std::env::var_os(ENV_JSONL)
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

/// Checks the profile outputs (`--trace`, METALLIC_METRICS_JSONL_PATH) before any work,
/// so that a bad path fails at once instead of after the whole generation, and neither can
/// overwrite the model.
pub fn check_outputs(trace: Option<&Path>, model: &Path) -> Result<()> {
    if let Some(t) = trace {
        crate::common::check_output_path(t, "--trace", &[model], true)?;
    }
    if let Some(j) = jsonl_path() {
        crate::common::check_output_path(&j, ENV_JSONL, &[model], true)?;
    }
    Ok(())
}

pub fn emit<M>(rec: &Recorder<M>, trace: Option<&Path>) -> Result<()> {
    if env_flag(ENV_ENABLED) {
        eprint!("\n{}", metallic::report::summary(rec));
    }
    if let Some(path) = jsonl_path() {
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(f);
        metallic::report::write_jsonl(rec, &mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = trace {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(&mut w, &metallic::trace::chrome_trace(rec))
            .with_context(|| format!("writing {}", path.display()))?;
        w.flush()?;
    }
    Ok(())
}
