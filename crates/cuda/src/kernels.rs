//! Loading the kernel modules: each `kernels/<op>.cu` is compiled by NVRTC
//! (or loaded from the disk cache) once when the backend opens, and every op
//! module (`ops/<op>.rs`) takes its function handles from it, so that
//! launching never looks a name up.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::sys;

use crate::cache::{fnv1a64, KernelCache};
use crate::compile::{self, KernelSource};
use crate::device::{check, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::ops;

struct Module(sys::CUmodule);
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        unsafe {
            let _ = sys::cuModuleUnload(self.0);
        }
    }
}

/// A loaded module's handle, valid while the [`Loader`] (then [`Kernels`])
/// that loaded it lives.
#[derive(Clone, Copy)]
pub(crate) struct ModuleRef {
    raw: sys::CUmodule,
    name: &'static str,
}

impl ModuleRef {
    pub fn function(&self, name: &str) -> CudaResult<Func> {
        let c = CString::new(name).expect("kernel names have no NUL");
        let mut f = std::ptr::null_mut();
        check(
            unsafe { sys::cuModuleGetFunction(&mut f, self.raw, c.as_ptr()) },
            "cuModuleGetFunction",
        )
        .map_err(|_| {
            CudaError::Invalid(format!(
                "kernel `{name}` missing from kernels/{}.cu",
                self.name
            ))
        })?;
        Ok(Func(f))
    }
}

/// Everything that changes the compiled code: the program text, the options,
/// the architecture, and the compiler and driver versions.
fn cache_key(src: &KernelSource, dev: &Device, nvrtc: (i32, i32)) -> u64 {
    let opts = compile::options(dev.cc.0, dev.cc.1, false).join(" ");
    fnv1a64(&[
        compile::program_text(src).as_bytes(),
        opts.as_bytes(),
        format!("sm_{}{}", dev.cc.0, dev.cc.1).as_bytes(),
        &dev.driver_version.to_le_bytes(),
        &nvrtc.0.to_le_bytes(),
        &nvrtc.1.to_le_bytes(),
    ])
}

fn load_image(image: &[u8]) -> Option<Module> {
    let mut m = std::ptr::null_mut();
    let r = unsafe { sys::cuModuleLoadData(&mut m, image.as_ptr() as *const std::ffi::c_void) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(Module(m))
}

/// Compiles or loads modules and keeps them loaded.
pub(crate) struct Loader<'a> {
    pub dev: &'a Device,
    cache: KernelCache,
    nvrtc: (i32, i32),
    modules: Vec<Module>,
}

impl Loader<'_> {
    /// Load one kernel file: from the cache when a valid entry exists, else
    /// compiled by NVRTC (and then cached).
    pub fn module(&mut self, src: &KernelSource) -> CudaResult<ModuleRef> {
        let key = cache_key(src, self.dev, self.nvrtc);
        let mut loaded = None;
        if let Some(image) = self.cache.load(src.name, key) {
            loaded = load_image(&image);
            if loaded.is_none() {
                // The driver refused it (damaged or stale): rebuild.
                self.cache.evict(src.name, key);
            }
        }
        let m = match loaded {
            Some(m) => m,
            None => {
                let compiled = compile::compile(src, self.dev.cc.0, self.dev.cc.1, false)?;
                let m = load_image(&compiled.cubin).ok_or_else(|| {
                    CudaError::Invalid(format!(
                        "the driver could not load the module compiled from kernels/{}.cu",
                        src.name
                    ))
                })?;
                self.cache.store(src.name, key, &compiled.cubin);
                m
            }
        };
        let r = ModuleRef {
            raw: m.0,
            name: src.name,
        };
        self.modules.push(m);
        Ok(r)
    }

    /// Allow a kernel as much dynamic shared memory as the device lets one
    /// block have (`optin`), less what the kernel declares statically.
    pub fn allow_smem(&self, f: Func) -> CudaResult<()> {
        let mut stat = 0i32;
        check(
            unsafe {
                sys::cuFuncGetAttribute(
                    &mut stat,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                    f.0,
                )
            },
            "cuFuncGetAttribute",
        )?;
        check(
            unsafe {
                sys::cuFuncSetAttribute(
                    f.0,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    self.dev.smem_optin as i32 - stat,
                )
            },
            "cuFuncSetAttribute",
        )
    }
}

/// Every op's kernels, one field per `kernels/<op>.cu`.
pub(crate) struct Kernels {
    pub embed: ops::embed::Embed,
    pub rms_norm: ops::rms_norm::RmsNorm,
    pub rope: ops::rope::Rope,
    pub kv_store: ops::kv_store::KvStore,
    pub attention: ops::attention::Attention,
    pub paged: ops::paged_attention::PagedAttention,
    pub swiglu: ops::swiglu::Swiglu,
    pub add: ops::add::Add,
    pub advance: ops::advance::Advance,
    pub stream_read: ops::stream_read::StreamRead,
    pub sample: ops::sample::Sample,
    pub fdot: ops::matmul_fdot::Fdot,
    pub vecdot: ops::matmul_vecdot::Vecdot,
    pub cublas: ops::matmul_cublas::CublasKernels,
    _modules: Vec<Module>,
}

impl Kernels {
    pub fn load(dev: &Arc<Device>) -> CudaResult<Kernels> {
        crate::driver::nvrtc()?;
        dev.bind()?;
        let mut l = Loader {
            dev,
            cache: KernelCache::in_cache_dir(|k| std::env::var_os(k)),
            nvrtc: compile::nvrtc_version()?,
            modules: Vec::new(),
        };
        Ok(Kernels {
            embed: ops::embed::Embed::load(&mut l)?,
            rms_norm: ops::rms_norm::RmsNorm::load(&mut l)?,
            rope: ops::rope::Rope::load(&mut l)?,
            kv_store: ops::kv_store::KvStore::load(&mut l)?,
            attention: ops::attention::Attention::load(&mut l)?,
            paged: ops::paged_attention::PagedAttention::load(&mut l)?,
            swiglu: ops::swiglu::Swiglu::load(&mut l)?,
            add: ops::add::Add::load(&mut l)?,
            advance: ops::advance::Advance::load(&mut l)?,
            stream_read: ops::stream_read::StreamRead::load(&mut l)?,
            sample: ops::sample::Sample::load(&mut l)?,
            fdot: ops::matmul_fdot::Fdot::load(&mut l)?,
            vecdot: ops::matmul_vecdot::Vecdot::load(&mut l)?,
            cublas: ops::matmul_cublas::CublasKernels::load(&mut l)?,
            _modules: l.modules,
        })
    }
}
