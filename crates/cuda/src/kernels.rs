//! Every kernel the backend launches, loaded once from NVRTC-compiled
//! modules (through the disk cache) and kept as function handles, so that
//! launching never looks a name up.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::sys;

use crate::cache::{cache_root, fnv1a64, KernelCache};
use crate::compile::{self, KernelSource};
use crate::device::{check, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::wtype::WType;

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

/// Largest M of the small-batch matrix-vector kernels.
pub const GEMV_MAX_M: usize = 8;

pub(crate) struct Kernels {
    _modules: Vec<Module>,
    /// `[weight type][m - 1]`: dp4a kernels for quantised weights.
    pub gemv: [[Func; GEMV_MAX_M]; WType::COUNT],
    /// `[weight type][m - 1]`: f32-activation kernels (the same as `gemv` for float weights).
    pub gemvx: [[Func; GEMV_MAX_M]; WType::COUNT],
    pub embed: [Func; WType::COUNT],
    /// Quantised types only (null for float types).
    pub dequant: [Func; WType::COUNT],
    pub quantize_act: Func,
    pub f32_to_f16: Func,
    pub f32_to_bf16: Func,
    pub bias_add: Func,
    pub rms_norm: Func,
    pub rope: Func,
    pub kv_store: Func,
    pub attn_decode: Func,
    pub attn_prefill: Func,
    pub swiglu: Func,
    pub add: Func,
    pub advance: Func,
    pub stream_read: Func,
    pub sample_prepare: Func,
    pub sample_argmax: Func,
    pub sample_filter: Func,
    pub sample_topk_blocks: Func,
    pub sampler_accept: Func,
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

/// Load one kernel file: from the cache when a valid entry exists, else
/// compiled by NVRTC (and then cached).
fn load_module(
    src: &KernelSource,
    dev: &Device,
    cache: &KernelCache,
    nvrtc: (i32, i32),
) -> CudaResult<Module> {
    let key = cache_key(src, dev, nvrtc);
    if let Some(image) = cache.load(src.name, key) {
        if let Some(m) = load_image(&image) {
            return Ok(m);
        }
        // The driver refused it (damaged or stale): rebuild.
        cache.evict(src.name, key);
    }
    let compiled = compile::compile(src, dev.cc.0, dev.cc.1, false)?;
    let m = load_image(&compiled.cubin).ok_or_else(|| {
        CudaError::Invalid(format!(
            "the driver could not load the module compiled from kernels/{}.cu",
            src.name
        ))
    })?;
    cache.store(src.name, key, &compiled.cubin);
    Ok(m)
}

fn function(m: &Module, name: &str) -> CudaResult<Func> {
    let c = CString::new(name).expect("kernel names have no NUL");
    let mut f = std::ptr::null_mut();
    check(
        unsafe { sys::cuModuleGetFunction(&mut f, m.0, c.as_ptr()) },
        "cuModuleGetFunction",
    )
    .map_err(|_| CudaError::Invalid(format!("kernel `{name}` missing from its module")))?;
    Ok(Func(f))
}

/// Allow a kernel as much dynamic shared memory as the device lets one block
/// have (`optin`), less what the kernel declares statically.
fn allow_smem(f: Func, optin: u32) -> CudaResult<()> {
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
                optin as i32 - stat,
            )
        },
        "cuFuncSetAttribute",
    )
}

impl Kernels {
    pub fn load(dev: &Arc<Device>) -> CudaResult<Kernels> {
        crate::driver::nvrtc()?;
        dev.bind()?;
        let nvrtc = compile::nvrtc_version()?;
        let cache = KernelCache::new(cache_root());
        let load = |src: &KernelSource| load_module(src, dev, &cache, nvrtc);
        let gemv_m = load(&compile::GEMV)?;
        let dequant_m = load(&compile::DEQUANT)?;
        let norm_m = load(&compile::NORM)?;
        let rope_m = load(&compile::ROPE)?;
        let kv_m = load(&compile::KV)?;
        let attn_m = load(&compile::ATTENTION)?;
        let elem_m = load(&compile::ELEMENTWISE)?;
        let sample_m = load(&compile::SAMPLE)?;

        let mut gemv = [[Func::null(); GEMV_MAX_M]; WType::COUNT];
        let mut gemvx = [[Func::null(); GEMV_MAX_M]; WType::COUNT];
        let mut embed = [Func::null(); WType::COUNT];
        let mut dequant = [Func::null(); WType::COUNT];
        for t in WType::ALL {
            let s = t.suffix();
            for m in 1..=GEMV_MAX_M {
                let f = function(&gemv_m, &format!("gemv_{s}_m{m}"))?;
                gemv[t as usize][m - 1] = f;
                gemvx[t as usize][m - 1] = if t.is_quantized() {
                    function(&gemv_m, &format!("gemvx_{s}_m{m}"))?
                } else {
                    f
                };
                if t.is_quantized() {
                    allow_smem(f, dev.smem_optin)?;
                }
            }
            embed[t as usize] = function(&dequant_m, &format!("embed_{s}"))?;
            if t.is_quantized() {
                dequant[t as usize] = function(&dequant_m, &format!("dequant_{s}"))?;
            }
        }
        let attn_prefill = function(&attn_m, "attn_prefill")?;
        allow_smem(attn_prefill, dev.smem_optin)?;
        let sample_filter = function(&sample_m, "sample_filter")?;
        Ok(Kernels {
            gemv,
            gemvx,
            embed,
            dequant,
            quantize_act: function(&gemv_m, "quantize_act")?,
            f32_to_f16: function(&dequant_m, "f32_to_f16")?,
            f32_to_bf16: function(&dequant_m, "f32_to_bf16")?,
            bias_add: function(&dequant_m, "bias_add")?,
            rms_norm: function(&norm_m, "rms_norm")?,
            rope: function(&rope_m, "rope")?,
            kv_store: function(&kv_m, "kv_store")?,
            attn_decode: function(&attn_m, "attn_decode")?,
            attn_prefill,
            swiglu: function(&elem_m, "swiglu")?,
            add: function(&elem_m, "add")?,
            advance: function(&elem_m, "advance")?,
            stream_read: function(&elem_m, "stream_read")?,
            sample_prepare: function(&sample_m, "sample_prepare")?,
            sample_argmax: function(&sample_m, "sample_argmax")?,
            sample_filter,
            sample_topk_blocks: function(&sample_m, "sample_topk_blocks")?,
            sampler_accept: function(&sample_m, "sampler_accept")?,
            _modules: vec![
                gemv_m, dequant_m, norm_m, rope_m, kv_m, attn_m, elem_m, sample_m,
            ],
        })
    }
}
