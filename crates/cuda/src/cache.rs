//! On-disk cache of compiled kernel modules.
//!
//! An entry is keyed by a hash of the source text, the target architecture,
//! the driver and NVRTC versions and the compile options, and stored with a
//! small header (magic, length, checksum) so that a truncated or corrupt file
//! is detected and rebuilt rather than handed to the driver.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MTLKCU01";

/// FNV-1a, 64-bit: stable across Rust versions and platforms, unlike the
/// standard hasher, which matters for a key that outlives the process.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// The cache under the cache directory of the environment `env`
    /// ([`metallic::dirs::cache_dir_with`], shared with the autotune table).
    pub fn in_cache_dir(env: impl Fn(&str) -> Option<OsString>) -> KernelCache {
        KernelCache::new(metallic::dirs::cache_dir_with(env))
    }

    /// The cache under `root` (none: nothing is cached).
    pub fn new(root: Option<PathBuf>) -> KernelCache {
        KernelCache {
            dir: root.map(|r| r.join("cuda-kernels")),
        }
    }

    pub fn path(&self, name: &str, key: u64) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{name}-{key:016x}.cubin")))
    }

    /// The cached module, or `None` when absent or damaged (a damaged file is removed).
    pub fn load(&self, name: &str, key: u64) -> Option<Vec<u8>> {
        let path = self.path(name, key)?;
        let data = std::fs::read(&path).ok()?;
        match decode(&data) {
            Some(body) => Some(body.to_vec()),
            None => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store a module; failures only cost a recompilation next time.
    pub fn store(&self, name: &str, key: u64, body: &[u8]) {
        if let Some(path) = self.path(name, key) {
            let _ = write_atomic(&path, &encode(body));
        }
    }

    /// Remove an entry the driver refused to load.
    pub fn evict(&self, name: &str, key: u64) {
        if let Some(path) = self.path(name, key) {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(&[body]).to_le_bytes());
    out.extend_from_slice(body);
    out
}

pub fn decode(data: &[u8]) -> Option<&[u8]> {
    if data.len() < 24 || &data[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(data[8..16].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(data[16..24].try_into().ok()?);
    let body = &data[24..];
    (body.len() == len && fnv1a64(&[body]) == sum).then_some(body)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_damage_is_detected() {
        let body = b"\x7fELF some cubin bytes".to_vec();
        let enc = encode(&body);
        assert_eq!(decode(&enc), Some(&body[..]));
        let mut flipped = enc.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), None);
        assert_eq!(decode(&enc[..enc.len() - 1]), None);
        assert_eq!(decode(b"short"), None);
    }

    #[test]
    fn corrupt_file_is_removed_and_reported_missing() {
        let dir = std::env::temp_dir().join(format!("metallic-cache-test-{}", std::process::id()));
        let cache = KernelCache::new(Some(dir.clone()));
        cache.store("norm", 42, b"module");
        assert_eq!(cache.load("norm", 42).as_deref(), Some(&b"module"[..]));
        let path = cache.path("norm", 42).unwrap();
        std::fs::write(&path, b"MTLKCU01garbage").unwrap();
        assert_eq!(cache.load("norm", 42), None);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One variable moves every cache: the compiled kernels and the autotune
    /// table land under `METALLIC_CACHE_DIR`, ahead of `XDG_CACHE_HOME`.
    #[test]
    fn metallic_cache_dir_moves_kernels_and_autotune_table() {
        let env = |k: &str| match k {
            "METALLIC_CACHE_DIR" => Some(OsString::from("/m")),
            "XDG_CACHE_HOME" => Some(OsString::from("/x")),
            _ => None,
        };
        let kernel = KernelCache::in_cache_dir(env).path("norm", 1).unwrap();
        assert!(
            kernel.starts_with("/m/cuda-kernels"),
            "{}",
            kernel.display()
        );
        let tune = metallic::autotune::default_path(env).unwrap();
        assert_eq!(tune, std::path::Path::new("/m/matmul-autotune.json"));
        let no_override = |k: &str| (k == "XDG_CACHE_HOME").then(|| OsString::from("/x"));
        let kernel = KernelCache::in_cache_dir(no_override)
            .path("norm", 1)
            .unwrap();
        assert!(kernel.starts_with("/x/metallic/cuda-kernels"));
        assert_eq!(
            metallic::autotune::default_path(no_override).unwrap(),
            std::path::Path::new("/x/metallic/matmul-autotune.json")
        );
    }

    #[test]
    fn key_separates_parts() {
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        assert_eq!(fnv1a64(&[b"sm_90"]), fnv1a64(&[b"sm_90"]));
    }
}
