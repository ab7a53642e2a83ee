//! Goldens and tolerances shared by the tests of the metallic crates.
//!
//! A dev-dependency only. The goldens live in `golden/` next to this file's
//! crate: logits from Hugging Face transformers (written by
//! `scripts/reference/model_logits.py` and `synth_goldens.sh`), tokenizer ids
//! (`tokenizer_golden.py`) and chat template renderings
//! (`chat_template_golden.py`). [`logits`] reads and compares the logits.
//!
//! Its own tests check that `ARCHITECTURE.md` stays true (`tests/architecture.rs`).

pub mod logits;

use std::path::{Path, PathBuf};

/// A path relative to the repository root. Test binaries normally run where
/// they were built (`CARGO_MANIFEST_DIR` exists); a packed GPU test binary
/// (`scripts/device-check.sh`) runs elsewhere from a checkout's root, so a
/// path missing under the build tree is taken relative to the working
/// directory.
pub fn repo_path(rel: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    if built.exists() {
        built
    } else {
        PathBuf::from(rel)
    }
}

/// Where the goldens live, relative to the repository root (for messages and
/// for scripts, which write there).
pub const GOLDEN_DIR: &str = "crates/test-support/golden";

/// The golden file `name` (e.g. `smollm2_logits.json`).
pub fn golden_path(name: &str) -> PathBuf {
    repo_path(&format!("{GOLDEN_DIR}/{name}"))
}

/// The golden file `name` as JSON; panics naming the file and the script
/// that writes it when it is missing or damaged (a test fixture, not input).
pub fn golden_json(name: &str) -> serde_json::Value {
    let path = golden_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden {}: {e} (the goldens travel with the source tree; scripts/reference/ writes them)",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden {} is not JSON: {e}", path.display()))
}

/// Deterministic values in about [-1, 1] (xorshift64, the top 24 bits),
/// every `every`-th one (from index 0; none when `every` is 0) times
/// `scale`, as activations with a few outliers are. Kernel tests of several
/// crates draw their inputs from it.
pub fn spiky_values(seed: u64, len: usize, every: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if every > 0 && i % every == 0 {
                v * scale
            } else {
                v
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_golden_named_by_the_tests_is_in_the_golden_folder() {
        for name in [
            "smollm2_logits.json",
            "tiny_qwen2_f32_logits.json",
            "tiny_qwen2_q8_0_logits.json",
            "qwen25_05b_f16_logits.json",
            "tokenizer_golden.json",
            "tokenizer_corpus.json",
            "chat_golden.json",
            "smollm2_alice_ppl.json",
            "alice_excerpt.txt",
        ] {
            assert!(golden_path(name).is_file(), "{name} missing");
        }
    }

    #[test]
    fn repo_path_resolves_from_the_repository_root() {
        assert!(repo_path("Cargo.toml").is_file());
        assert!(repo_path("crates/test-support/src/lib.rs").is_file());
    }
}
