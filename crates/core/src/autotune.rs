//! Measured matmul choices, cached on disk.
//!
//! `METALLIC_MATMUL_AUTOTUNE`:
//! - unset: winners already in the cache for this device and program are
//!   used; shapes not in it take the default rule; nothing is timed.
//! - `1|true|yes|on`: as unset, and each new (op, dtype, shape) is timed on
//!   every eligible implementation the first time it runs (on the real
//!   operands); the winner is used from then on and saved.
//! - `0|false|no|off`: the cache is neither read nor written.
//!
//! The cache is `matmul-autotune.json` in the cache directory
//! ([`crate::dirs::cache_dir`]), one table per key: device description, program version
//! and the backend's implementation names (a new implementation re-tunes).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::MatmulShape;
use crate::error::{Error, Result};

pub const ENV: &str = "METALLIC_MATMUL_AUTOTUNE";
pub const FILE_NAME: &str = "matmul-autotune.json";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The default of programmatic configurations: no cache unless asked.
    #[default]
    Off,
    /// Use cached winners only.
    Cached,
    /// Use cached winners and time new shapes.
    Tune,
}

impl Mode {
    pub fn from_env() -> Mode {
        match std::env::var(ENV) {
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Mode::Tune,
                "0" | "false" | "no" | "off" => Mode::Off,
                _ => Mode::Cached,
            },
            Err(_) => Mode::Cached,
        }
    }
}

/// The autotune file in the cache directory of the environment `env`
/// ([`crate::dirs::cache_dir_with`]).
pub fn default_path(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    crate::dirs::cache_dir_with(env).map(|d| d.join(FILE_NAME))
}

/// One tuned shape: the winner and every candidate's median time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub winner: String,
    pub median_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: u32,
    tables: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// The cache table of this device and program.
pub struct TuneCache {
    path: PathBuf,
    key: String,
    file: File,
}

/// The shape as a cache key (the seed's fields plus the weight type).
pub fn shape_key(s: &MatmulShape) -> String {
    s.to_string()
}

fn cache_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "autotune cache {}: {e} (delete the file to start over, or set {ENV}=0)",
        path.display()
    ))
}

impl TuneCache {
    pub fn table_key(device: &str, impls: &[&str]) -> String {
        format!(
            "{device} | metallic {} | impls {}",
            env!("CARGO_PKG_VERSION"),
            impls.join(",")
        )
    }

    /// Open (or start) the cache at `path` for the table `key`.
    pub fn open(path: PathBuf, key: String) -> Result<TuneCache> {
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| cache_error(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File {
                format: 1,
                ..File::default()
            },
            Err(e) => return Err(cache_error(&path, e)),
        };
        Ok(TuneCache { path, key, file })
    }

    /// The cache in the user's cache directory (None when it has none).
    pub fn open_default(device: &str, impls: &[&str]) -> Result<Option<TuneCache>> {
        match default_path(|k| std::env::var_os(k)) {
            Some(path) => Ok(Some(TuneCache::open(path, Self::table_key(device, impls))?)),
            None => Ok(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, shape: &MatmulShape) -> Option<&Entry> {
        self.file.tables.get(&self.key)?.get(&shape_key(shape))
    }

    pub fn len(&self) -> usize {
        self.file.tables.get(&self.key).map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record a winner and write the file (through a temporary, then renamed).
    pub fn insert(&mut self, shape: &MatmulShape, entry: Entry) -> Result<()> {
        self.file
            .tables
            .entry(self.key.clone())
            .or_default()
            .insert(shape_key(shape), entry);
        self.file.format = 1;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| cache_error(&self.path, e))?;
        }
        let tmp = self
            .path
            .with_extension(format!("json.{}", std::process::id()));
        let text =
            serde_json::to_string_pretty(&self.file).map_err(|e| cache_error(&self.path, e))?;
        std::fs::write(&tmp, text).map_err(|e| cache_error(&self.path, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| cache_error(&self.path, e))
    }
}

/// Median of a few timings (ms).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MatmulOp;
    use metallic_gguf::GgmlType;

    fn shape(m: usize) -> MatmulShape {
        MatmulShape {
            op: MatmulOp::Matmul,
            dtype: GgmlType::Q8_0,
            batch: 1,
            m,
            n: 64,
            k: 128,
            ta: false,
            tb: true,
        }
    }

    #[test]
    fn entries_survive_a_reopen_under_their_own_table_only() {
        let dir =
            std::env::temp_dir().join(format!("metallic-autotune-unit-{}", std::process::id()));
        let path = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&path);
        let key = TuneCache::table_key("dev A", &["x", "y"]);
        let mut c = TuneCache::open(path.clone(), key.clone()).unwrap();
        assert!(c.is_empty());
        let e = Entry {
            winner: "y".into(),
            median_ms: [("x".to_string(), 2.0), ("y".to_string(), 1.0)].into(),
        };
        c.insert(&shape(1), e.clone()).unwrap();
        let c = TuneCache::open(path.clone(), key).unwrap();
        assert_eq!(c.get(&shape(1)), Some(&e));
        assert_eq!(c.get(&shape(2)), None);
        let other =
            TuneCache::open(path.clone(), TuneCache::table_key("dev B", &["x", "y"])).unwrap();
        assert!(other.get(&shape(1)).is_none());
        std::fs::write(&path, "{ not json").unwrap();
        let err = TuneCache::open(path, "k".into()).err().unwrap().to_string();
        assert!(err.contains("autotune cache"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
