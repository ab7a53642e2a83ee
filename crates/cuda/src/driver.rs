//! Driver discovery: finding the driver, NVRTC and cuBLAS before cudarc
//! touches them.
//!
//! cudarc loads each library on first use and panics when it is missing, so
//! every library is looked for here first. A library that is not on the
//! loader's path is also looked for in the usual toolkit folders
//! (`$METALLIC_CUDA_LIB_DIR`, `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`);
//! once loaded from there by full path, the dynamic loader matches cudarc's
//! later load by its soname.

use std::path::PathBuf;

use cudarc::driver::sys;

use crate::error::{CudaError, CudaResult};

/// Versions the backend was built against and needs at run time.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// What discovery found: the driver's CUDA version and the device count.
#[derive(Clone, Copy, Debug)]
pub struct DriverInfo {
    pub version: i32,
    pub devices: i32,
}

/// Load the driver, initialise it and count devices; never panics.
pub fn discover() -> CudaResult<DriverInfo> {
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let mut version = 0;
    let r = unsafe { sys::cuDriverGetVersion(&mut version) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(CudaError::NoDevice(format!(
            "cuDriverGetVersion failed: {r:?}"
        )));
    }
    if version < MIN_DRIVER_VERSION {
        return Err(CudaError::DriverTooOld {
            major: version / 1000,
            minor: (version % 1000) / 10,
        });
    }
    let r = unsafe { sys::cuInit(0) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(CudaError::NoDevice(format!(
            "cuInit failed ({}); is a GPU visible to this process?",
            error_name(r)
        )));
    }
    let mut devices = 0;
    let r = unsafe { sys::cuDeviceGetCount(&mut devices) };
    if r != sys::CUresult::CUDA_SUCCESS || devices == 0 {
        return Err(CudaError::NoDevice(
            "the driver reports no CUDA device".into(),
        ));
    }
    Ok(DriverInfo { version, devices })
}

/// A driver error's name, e.g. `CUDA_ERROR_NO_DEVICE`.
pub fn error_name(r: sys::CUresult) -> String {
    let mut p: *const std::ffi::c_char = std::ptr::null();
    let ok = unsafe { sys::cuGetErrorName(r, &mut p) } == sys::CUresult::CUDA_SUCCESS;
    if ok && !p.is_null() {
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("{r:?}")
    }
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("METALLIC_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let root = PathBuf::from(v);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
            dirs.push(root.join("targets/x86_64-linux/lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
    dirs
}

/// The first file in `dir` whose name starts with `prefix` (versioned sonames
/// such as `libnvrtc-builtins.so.13.0`).
fn find_prefixed(dir: &std::path::Path, prefix: &str) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Make `present()` true, loading `files` (dependencies first, each a file
/// name prefix) from the search folders if needed. Libraries loaded here stay
/// loaded for the process, as cudarc keeps its own.
fn ensure(lib: &'static str, files: &[&str], present: unsafe fn() -> bool) -> CudaResult<()> {
    if unsafe { present() } {
        return Ok(());
    }
    let dirs = search_dirs();
    for dir in &dirs {
        let Some(main) = find_prefixed(dir, files[files.len() - 1]) else {
            continue;
        };
        for dep in &files[..files.len() - 1] {
            if let Some(p) = find_prefixed(dir, dep) {
                if let Ok(l) = unsafe { libloading::Library::new(p) } {
                    std::mem::forget(l);
                }
            }
        }
        if let Ok(l) = unsafe { libloading::Library::new(main) } {
            std::mem::forget(l);
            if unsafe { present() } {
                return Ok(());
            }
        }
    }
    Err(CudaError::MissingLibrary {
        lib,
        hint: format!(
            "not on the loader path nor in {}; set LD_LIBRARY_PATH or METALLIC_CUDA_LIB_DIR",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// NVRTC, which compiles the kernels at first use.
pub fn nvrtc() -> CudaResult<()> {
    ensure(
        "NVRTC (libnvrtc.so.13)",
        &["libnvrtc-builtins.so.13", "libnvrtc.so.13"],
        cudarc::nvrtc::sys::is_culib_present,
    )
}

/// cuBLAS, for products with many rows.
pub fn cublas() -> CudaResult<()> {
    ensure(
        "cuBLAS (libcublas.so.13)",
        &["libcublasLt.so.13", "libcublas.so.13"],
        cudarc::cublas::sys::is_culib_present,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver, discovery must answer with a typed error, not a panic;
    /// with one it must find at least one device.
    #[test]
    fn driver_discovery_never_panics() {
        match discover() {
            Ok(info) => assert!(info.devices > 0 && info.version >= MIN_DRIVER_VERSION),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                assert!(matches!(
                    e,
                    CudaError::NoDriver | CudaError::NoDevice(_) | CudaError::DriverTooOld { .. }
                ));
            }
        }
    }
}
