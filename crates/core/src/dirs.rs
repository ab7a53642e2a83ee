//! Where metallic keeps files between runs (the matmul autotune table, the
//! CUDA backend's compiled kernels): one answer for every cache.

use std::ffi::OsString;
use std::path::PathBuf;

/// Overrides the cache directory for every cache metallic keeps.
pub const CACHE_DIR_ENV: &str = "METALLIC_CACHE_DIR";

/// The cache directory of this process's environment: `$METALLIC_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/metallic`, else `$HOME/.cache/metallic`; `None` when
/// none is set (callers then keep no cache).
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_with(|k| std::env::var_os(k))
}

/// [`cache_dir`] reading variables through `env`, so that tests need not
/// change the process-global environment. An empty variable counts as unset.
pub fn cache_dir_with(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    nonempty(CACHE_DIR_ENV)
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|d| d.join("metallic")))
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache").join("metallic")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn metallic_cache_dir_wins_then_xdg_then_home() {
        let all = [
            ("METALLIC_CACHE_DIR", "/m"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_with(env(&all)), Some(PathBuf::from("/m")));
        assert_eq!(
            cache_dir_with(env(&all[1..])),
            Some(PathBuf::from("/x/metallic"))
        );
        assert_eq!(
            cache_dir_with(env(&all[2..])),
            Some(PathBuf::from("/h/.cache/metallic"))
        );
        assert_eq!(cache_dir_with(env(&[])), None);
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let vars = [
            ("METALLIC_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", ""),
            ("HOME", "/h"),
        ];
        assert_eq!(
            cache_dir_with(env(&vars)),
            Some(PathBuf::from("/h/.cache/metallic"))
        );
    }
}
