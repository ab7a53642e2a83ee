//! A file copied into anonymous memory in transparent huge pages (Linux).
//!
//! Why: a model's weights are read once per decoded token, end to end, and
//! decode on the CPU is bound by memory bandwidth. Read from the file's map
//! they sit in 4 KiB page-cache pages: every 4 KiB is a TLB entry and a new
//! page the hardware prefetchers stop at. Copied into a 2 MiB-aligned
//! anonymous mapping advised `MADV_HUGEPAGE`, the same bytes sit in 2 MiB
//! pages: on the 2-core development VM (AVX-512 loads, 2 threads, 1 GiB
//! buffer) a streaming read ran ~10% faster so (BENCHMARKS.md). The cost is
//! the copy at load (a read of the file) and the memory: the copy is the
//! process's own, not the shared page cache.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::GgufError;

/// The transparent huge page size on x86-64 and on aarch64 with 4 KiB base
/// pages, where the kernel does not say (see [`huge_page_size`]).
pub const HUGE_PAGE: usize = 2 << 20;

/// The transparent huge page size (`hpage_pmd_size`: 2 MiB on x86-64, 512 MiB
/// on aarch64 kernels with 64 KiB base pages): the copy is aligned to it, so
/// every whole huge page of the file can be one. Sizes outside 4 KiB..1 GiB
/// or not a power of two are not believed.
pub fn huge_page_size() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&s| s.is_power_of_two() && (4 << 10..=1 << 30).contains(&s))
        .unwrap_or(HUGE_PAGE)
}

/// Memory left to everything else after the copy: below this much
/// `MemAvailable` the copy is refused instead of pushing the machine into
/// swap or the OOM killer.
pub const HEADROOM: u64 = 512 << 20;

/// The kernel's transparent huge page policy
/// (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpMode {
    /// Every anonymous mapping may get huge pages.
    Always,
    /// Only mappings advised `MADV_HUGEPAGE` (what the copy does).
    Madvise,
    /// Turned off by the administrator: a copy would gain nothing.
    Never,
    /// Not Linux, or a kernel without transparent huge pages.
    Unavailable,
}

impl ThpMode {
    /// Whether an advised anonymous mapping can get huge pages.
    pub fn usable(self) -> bool {
        matches!(self, ThpMode::Always | ThpMode::Madvise)
    }

    /// The mode named in brackets in the sysfs file's text
    /// (`always [madvise] never`).
    pub fn parse(text: &str) -> ThpMode {
        let chosen = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
        match chosen {
            Some("always") => ThpMode::Always,
            Some("madvise") => ThpMode::Madvise,
            Some("never") => ThpMode::Never,
            _ => ThpMode::Unavailable,
        }
    }

    /// This machine's mode.
    pub fn current() -> ThpMode {
        if !cfg!(target_os = "linux") {
            return ThpMode::Unavailable;
        }
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map_or(ThpMode::Unavailable, |t| ThpMode::parse(&t))
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes (None where it cannot be read).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB"))
        .then_some(kib)?
        .checked_mul(1024)
}

/// `len` bytes of `file` read into a fresh huge-page mapping.
pub(crate) struct HugeCopy {
    map: memmap2::Mmap,
    /// Where the data starts in `map`: the first 2 MiB boundary.
    start: usize,
    len: usize,
}

impl HugeCopy {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Reads `path` (opened as `file`, `len` bytes) into huge pages, refusing
    /// when `available` (bytes of free memory, None: unknown) cannot hold the
    /// copy plus [`HEADROOM`].
    pub(crate) fn read(
        path: &Path,
        file: &mut File,
        len: u64,
        available: Option<u64>,
    ) -> Result<HugeCopy, GgufError> {
        let fail = |reason: String| GgufError::HugePages {
            path: path.to_owned(),
            bytes: len,
            reason,
        };
        if let Some(available) = available {
            if len.saturating_add(HEADROOM) > available {
                return Err(fail(format!(
                    "only {} MiB of memory is available (MemAvailable), and the copy needs \
                     {} MiB plus {} MiB to spare",
                    available >> 20,
                    len.div_ceil(1 << 20),
                    HEADROOM >> 20
                )));
            }
        }
        let too_large = || fail("the file is larger than this machine's address space".into());
        let n = usize::try_from(len).map_err(|_| too_large())?;
        // Whole huge pages, plus one for aligning the start: mmap aligns to
        // base pages only. The slack is address space, never touched, never backed.
        let page = huge_page_size();
        let map_len = n
            .checked_next_multiple_of(page)
            .and_then(|l| l.checked_add(page))
            .ok_or_else(too_large)?;
        let mut map = memmap2::MmapOptions::new()
            .len(map_len)
            .map_anon()
            .map_err(|e| {
                fail(format!(
                    "mapping {} MiB of memory failed: {e}",
                    map_len >> 20
                ))
            })?;
        advise_huge(&map).map_err(|e| fail(format!("the kernel refused MADV_HUGEPAGE: {e}")))?;
        let start = map.as_ptr().align_offset(page);
        // Advised before the first touch: each 2 MiB is faulted in as one
        // huge page as the read fills it (not 4 KiB pages merged later).
        file.read_exact(&mut map[start..start + n])
            .map_err(|error| GgufError::Io {
                path: path.to_owned(),
                error,
            })?;
        let map = map
            .make_read_only()
            .map_err(|e| fail(format!("making the copy read-only failed: {e}")))?;
        Ok(HugeCopy { map, start, len: n })
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(map: &memmap2::MmapMut) -> std::io::Result<()> {
    map.advise(memmap2::Advice::HugePage)
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: &memmap2::MmapMut) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "transparent huge pages are a Linux feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        assert_eq!(ThpMode::parse("always [madvise] never\n"), ThpMode::Madvise);
        assert_eq!(ThpMode::parse("[always] madvise never"), ThpMode::Always);
        assert_eq!(ThpMode::parse("always madvise [never]"), ThpMode::Never);
        assert_eq!(ThpMode::parse(""), ThpMode::Unavailable);
        assert!(!ThpMode::Never.usable());
        assert!(ThpMode::Madvise.usable());
    }

    #[test]
    fn mem_available_reads_kib() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2 << 20));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn copy_is_refused_when_memory_is_short_and_says_how_much() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 4096]).unwrap();
        let path = Path::new("model.gguf");
        let err = HugeCopy::read(path, &mut f, 4096, Some(HEADROOM))
            .err()
            .expect("no room for the copy");
        let msg = err.to_string();
        assert!(matches!(err, GgufError::HugePages { .. }), "{msg}");
        assert!(
            msg.contains("model.gguf") && msg.contains("MemAvailable"),
            "{msg}"
        );
        assert!(msg.contains("512 MiB"), "{msg}");
    }

    #[test]
    fn a_mapping_larger_than_memory_is_an_error_not_an_abort() {
        let mut f = tempfile::tempfile().unwrap();
        // Half the address space: mmap refuses it (ENOMEM), nothing is touched.
        let len = (isize::MAX as u64) / 2;
        let err = HugeCopy::read(Path::new("big.gguf"), &mut f, len, None)
            .err()
            .expect("no such mapping");
        let msg = err.to_string();
        assert!(matches!(err, GgufError::HugePages { .. }), "{msg}");
        assert!(msg.contains("big.gguf"), "{msg}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn copy_starts_on_a_huge_page_and_holds_the_file() {
        if ThpMode::current() == ThpMode::Unavailable {
            eprintln!("skipped: this kernel has no transparent huge pages (MADV_HUGEPAGE fails)");
            return;
        }
        let bytes: Vec<u8> = (0..3 * HUGE_PAGE + 123)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let copy = HugeCopy::read(Path::new("x"), &mut f, bytes.len() as u64, None).unwrap();
        assert_eq!(copy.as_slice().as_ptr() as usize % huge_page_size(), 0);
        assert!(copy.as_slice() == &bytes[..]);
    }
}
