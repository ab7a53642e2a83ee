//! Kernel sources and their compilation by NVRTC.
//!
//! The `.cu` files under `kernels/` are embedded in the binary (each by its
//! op module, `ops/<op>.rs`). Each is
//! compiled on first use for the GPU's own architecture (a cubin, so the
//! driver does no JIT work) with `common.cuh` and `formats.cuh` prepended, and
//! the result is cached on disk (see [`crate::cache`]).

use std::ffi::CString;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{CudaError, CudaResult, DriverContext};

pub struct KernelSource {
    pub name: &'static str,
    pub text: &'static str,
}

const COMMON: &str = include_str!("../kernels/common.cuh");
const FORMATS: &str = include_str!("../kernels/formats.cuh");

/// The text NVRTC compiles: the shared headers, then the file, with a `#line`
/// marker so that diagnostics point into the file itself.
///
/// `METALLIC_CUDA_KERNEL_DIR=dir` (kernel development) reads `common.cuh`,
/// `formats.cuh` and `<name>.cu` from `dir` instead of the embedded copies,
/// each file that is there: a kernel can then be changed and timed on a GPU
/// machine that has no Rust toolchain, without rebuilding the binary. The
/// launchers stay the binary's, so a changed kernel must keep its signature.
pub fn program_text(src: &KernelSource) -> String {
    let dir = std::env::var_os("METALLIC_CUDA_KERNEL_DIR");
    let read = |file: &str, embedded: &'static str| -> std::borrow::Cow<'static, str> {
        match dir.as_ref().map(|d| std::path::Path::new(d).join(file)) {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => text.into(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => embedded.into(),
                Err(e) => {
                    eprintln!(
                        "warning: METALLIC_CUDA_KERNEL_DIR: {} unreadable ({e}); using the built-in copy",
                        path.display()
                    );
                    embedded.into()
                }
            },
            None => embedded.into(),
        }
    };
    let common = read("common.cuh", COMMON);
    let formats = read("formats.cuh", FORMATS);
    let text = read(&format!("{}.cu", src.name), src.text);
    format!("{common}\n{formats}\n#line 1 \"{}.cu\"\n{text}", src.name)
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> CudaResult<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ctx("nvrtcVersion")?;
    Ok((major, minor))
}

/// Compile options for compute capability `major.minor`.
pub fn options(major: i32, minor: i32, verbose: bool) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_string(),
        // Line tables let compute-sanitizer and profilers name source lines.
        "-lineinfo".to_string(),
    ];
    if verbose {
        o.push("--ptxas-options=-v".to_string());
        o.push("--ptxas-options=-warn-spills".to_string());
    }
    o
}

/// A compiled module and NVRTC's log (ptxas resource usage when verbose).
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// Read by tests and when tuning kernels (ptxas resource usage).
    #[allow(dead_code)]
    pub log: String,
}

/// Compile one kernel file to a cubin for compute capability `major.minor`.
pub fn compile(src: &KernelSource, major: i32, minor: i32, verbose: bool) -> CudaResult<Compiled> {
    let text = CString::new(program_text(src))
        .map_err(|_| CudaError::Invalid(format!("kernels/{}.cu contains a NUL byte", src.name)))?;
    let name = CString::new(format!("{}.cu", src.name)).expect("file names have no NUL");
    let prog = nvrtc::create_program(&text, Some(&name)).ctx("nvrtcCreateProgram")?;
    let opts = options(major, minor, verbose);
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let result = match compiled {
        Err(_) => Err(CudaError::Compile {
            name: src.name.to_string(),
            log: log.clone(),
        }),
        Ok(()) => cubin(prog).map(|cubin| Compiled { cubin, log }),
    };
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

fn cubin(prog: nvrtc_sys::nvrtcProgram) -> CudaResult<Vec<u8>> {
    let mut size = 0usize;
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .ctx("nvrtcGetCUBINSize")?;
    let mut buf = vec![0u8; size];
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char) }
        .result()
        .ctx("nvrtcGetCUBIN")?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel file must compile for Hopper (sm_90) and for the oldest
    /// supported architecture (sm_75). Needs only NVRTC, no GPU: skipped with
    /// a message where NVRTC cannot be found.
    #[test]
    fn every_kernel_compiles_for_hopper_and_turing() {
        if let Err(e) = crate::driver::nvrtc() {
            eprintln!("skipped: {e}");
            return;
        }
        // METALLIC_KERNELS=a,b limits the check to those files (a quicker
        // loop while editing one kernel).
        let only = std::env::var("METALLIC_KERNELS").ok();
        let wanted = |name: &str| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == name))
        };
        for (major, minor) in [(9, 0), (7, 5)] {
            for src in crate::ops::SOURCES.iter().filter(|s| wanted(s.name)) {
                let c = compile(src, major, minor, true).unwrap_or_else(|e| {
                    panic!("kernels/{}.cu for sm_{major}{minor}: {e}", src.name)
                });
                assert!(!c.cubin.is_empty());
                if std::env::var_os("METALLIC_PTXAS_LOG").is_some() {
                    eprintln!("== {} sm_{major}{minor}\n{}", src.name, c.log);
                }
            }
        }
    }
}
