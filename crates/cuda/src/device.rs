//! The device: context, stream, allocation with accounting, pinned staging
//! memory, and the single launch path every kernel, copy and cuBLAS call goes
//! through.
//!
//! The launch path has three modes. `Normal` enqueues work. `Capture` enqueues
//! it while the stream is being captured into a graph. `DryRun` enqueues
//! nothing. In the last two, every launch also folds its function and
//! arguments into a fingerprint: a replayed graph is only valid if a dry run
//! of the step produces the fingerprint recorded at capture (same kernels,
//! same buffers, same sizes).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::CudaContext;

use crate::driver;
use crate::error::{CudaError, CudaResult};

/// Raw driver handles are plain pointers; the driver allows their use from
/// any thread once the context is current there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stream(pub sys::CUstream);
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Func(pub sys::CUfunction);
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

impl Func {
    pub fn null() -> Func {
        Func(std::ptr::null_mut())
    }
}

pub(crate) fn check(r: CUresult, what: &'static str) -> CudaResult<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Invalid(format!(
            "CUDA driver: {what} failed: {}",
            driver::error_name(r)
        )))
    }
}

/// The most arguments a launch takes (the fused QKV product with rope and
/// the KV-cache write has 26).
const MAX_ARGS: usize = 32;

/// A kernel argument: every parameter is passed through an 8-byte slot; the
/// kernel reads as many bytes as its parameter has (little-endian).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arg(pub u64);

impl From<u64> for Arg {
    fn from(v: u64) -> Arg {
        Arg(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg(v as u64)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg(v as u32 as u64)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg(v as u64)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg(v.to_bits() as u64)
    }
}
impl From<usize> for Arg {
    fn from(v: usize) -> Arg {
        Arg(v as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    Normal = 0,
    DryRun = 1,
    Capture = 2,
}

struct Pinned(*mut u8);
unsafe impl Send for Pinned {}

/// Bytes of pinned host memory: small synchronous reads use the first
/// `STAGING_BYTES - READBACK_SLOTS * READBACK_SLOT_BYTES`, asynchronous ones
/// (`readback_begin`) a slot each of the rest.
const STAGING_BYTES: usize = 64 * 1024;
const READBACK_SLOTS: usize = 16;
pub(crate) const READBACK_SLOT_BYTES: usize = 256;
const SYNC_BYTES: usize = STAGING_BYTES - READBACK_SLOTS * READBACK_SLOT_BYTES;

pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Stream,
    pub ordinal: usize,
    pub name: String,
    pub cc: (i32, i32),
    pub sm_count: u32,
    pub smem_optin: u32,
    pub driver_version: i32,
    /// Launch kernels with programmatic stream serialization (programmatic
    /// dependent launch): sm_90 and newer, unless METALLIC_CUDA_PDL=0.
    pdl: AtomicBool,
    used: AtomicU64,
    mode: AtomicU8,
    fingerprint: Mutex<u64>,
    staging: Mutex<Pinned>,
    /// The asynchronous read slots at the end of `staging`: address, and a
    /// bit set per free slot.
    readback_base: usize,
    readback_free: Mutex<u32>,
}

/// METALLIC_CUDA_PDL=0 (or `off`, `false`) turns programmatic dependent
/// launch off, for comparison.
fn pdl_enabled() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_PDL").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

impl Device {
    pub fn open(ordinal: usize) -> CudaResult<Arc<Device>> {
        let info = driver::discover()?;
        if ordinal >= info.devices as usize {
            return Err(CudaError::BadOrdinal {
                ordinal,
                count: info.devices,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::Driver {
            context: "creating the context",
            source: e,
        })?;
        // Tensors here are raw allocations; cudarc's per-slice event tracking
        // would record events inside captured graphs.
        unsafe { ctx.disable_event_tracking() };
        let attr = |a| {
            ctx.attribute(a).map_err(|e| CudaError::Driver {
                context: "reading a device attribute",
                source: e,
            })
        };
        use sys::CUdevice_attribute as A;
        let cc = (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        if cc < (7, 5) {
            return Err(CudaError::UnsupportedDevice {
                major: cc.0,
                minor: cc.1,
            });
        }
        let sm_count = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        ctx.bind_to_thread().map_err(|e| CudaError::Driver {
            context: "binding the context",
            source: e,
        })?;
        let mut stream = std::ptr::null_mut();
        check(
            unsafe {
                sys::cuStreamCreate(
                    &mut stream,
                    sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                )
            },
            "cuStreamCreate",
        )?;
        let mut host = std::ptr::null_mut();
        check(
            unsafe { sys::cuMemHostAlloc(&mut host, STAGING_BYTES, 0) },
            "cuMemHostAlloc",
        )?;
        Ok(Arc::new(Device {
            ctx,
            stream: Stream(stream),
            ordinal,
            name,
            cc,
            sm_count,
            smem_optin,
            driver_version: info.version,
            pdl: AtomicBool::new(cc >= (9, 0) && pdl_enabled()),
            used: AtomicU64::new(0),
            mode: AtomicU8::new(Mode::Normal as u8),
            fingerprint: Mutex::new(0),
            staging: Mutex::new(Pinned(host as *mut u8)),
            readback_base: host as usize + SYNC_BYTES,
            readback_free: Mutex::new((1u32 << READBACK_SLOTS) - 1),
        }))
    }

    /// Make the context current on the calling thread (cheap when it is).
    #[inline]
    pub fn bind(&self) -> CudaResult<()> {
        thread_local! {
            static CURRENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let want = self.ctx.cu_ctx() as usize;
        if CURRENT.with(|c| c.get()) != want {
            check(
                unsafe { sys::cuCtxSetCurrent(self.ctx.cu_ctx()) },
                "cuCtxSetCurrent",
            )?;
            CURRENT.with(|c| c.set(want));
        }
        Ok(())
    }

    /// Whether kernels launch with programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Turn programmatic dependent launch on (where the device has it) or off.
    pub fn set_pdl(&self, on: bool) {
        self.pdl.store(on && self.cc >= (9, 0), Ordering::Relaxed);
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::DryRun,
            2 => Mode::Capture,
            _ => Mode::Normal,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        if mode != Mode::Normal {
            *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        }
        self.mode.store(mode as u8, Ordering::Release);
    }

    pub fn fingerprint(&self) -> u64 {
        *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fold words into the fingerprint when not in normal mode; true when the
    /// work must also be enqueued.
    #[inline]
    pub fn note(&self, words: &[u64]) -> bool {
        match self.mode() {
            Mode::Normal => true,
            m => {
                let mut h = self.fingerprint.lock().unwrap_or_else(|e| e.into_inner());
                for &w in words {
                    *h = mix(*h, w);
                }
                m == Mode::Capture
            }
        }
    }

    pub fn launch(
        &self,
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> CudaResult<()> {
        if args.len() > MAX_ARGS {
            return Err(CudaError::Invalid(format!(
                "a kernel launch with {} arguments (at most {MAX_ARGS})",
                args.len()
            )));
        }
        let pdl = self.pdl();
        if self.mode() != Mode::Normal {
            let head = [
                f.0 as u64 ^ pdl as u64,
                grid.0 as u64 | (grid.1 as u64) << 32,
                grid.2 as u64 | (block as u64) << 32,
                smem as u64,
            ];
            self.note(&head);
            let mut words = [0u64; MAX_ARGS];
            for (w, a) in words.iter_mut().zip(args) {
                *w = a.0;
            }
            if !self.note(&words[..args.len()]) {
                return Ok(());
            }
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut slots = [0u64; MAX_ARGS];
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (i, a) in args.iter().enumerate() {
            slots[i] = a.0;
        }
        for i in 0..args.len() {
            ptrs[i] = &mut slots[i] as *mut u64 as *mut c_void;
        }
        if pdl {
            // Every kernel starts with `pdl_enter` (common.cuh), which waits
            // for its predecessor before touching memory: the attribute only
            // lets its launch overlap the predecessor's tail.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            let cfg = sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem,
                hStream: self.stream.0,
                attrs: &mut attr,
                numAttrs: 1,
            };
            return check(
                unsafe {
                    sys::cuLaunchKernelEx(&cfg, f.0, ptrs.as_mut_ptr(), std::ptr::null_mut())
                },
                "cuLaunchKernelEx",
            );
        }
        check(
            unsafe {
                sys::cuLaunchKernel(
                    f.0,
                    grid.0,
                    grid.1,
                    grid.2,
                    block,
                    1,
                    1,
                    smem,
                    self.stream.0,
                    ptrs.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }

    /// Device-to-device copy on the stream.
    pub fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> CudaResult<()> {
        if !self.note(&[0xC0B1, dst, src, bytes as u64]) || bytes == 0 {
            return Ok(());
        }
        check(
            unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream.0) },
            "cuMemcpyDtoDAsync",
        )
    }

    /// Host-to-device copy, ordered on the stream; `src` may be reused on return.
    pub fn copy_htod(&self, dst: u64, src: &[u8]) -> CudaResult<()> {
        if self.mode() != Mode::Normal {
            return Err(CudaError::Invalid(
                "host-to-device copy inside a replayable step".into(),
            ));
        }
        if src.is_empty() {
            return Ok(());
        }
        check(
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    dst,
                    src.as_ptr() as *const c_void,
                    src.len(),
                    self.stream.0,
                )
            },
            "cuMemcpyHtoDAsync",
        )
    }

    /// Device-to-host copy after the stream's queued work; blocks.
    pub fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> CudaResult<()> {
        if self.mode() != Mode::Normal {
            return Err(CudaError::Invalid(
                "device-to-host read inside a replayable step".into(),
            ));
        }
        if dst.is_empty() {
            return Ok(());
        }
        if dst.len() <= SYNC_BYTES {
            let staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            check(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        staging.0 as *mut c_void,
                        src,
                        dst.len(),
                        self.stream.0,
                    )
                },
                "cuMemcpyDtoHAsync",
            )?;
            self.synchronize()?;
            dst.copy_from_slice(unsafe { std::slice::from_raw_parts(staging.0, dst.len()) });
            Ok(())
        } else {
            check(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        dst.as_mut_ptr() as *mut c_void,
                        src,
                        dst.len(),
                        self.stream.0,
                    )
                },
                "cuMemcpyDtoHAsync",
            )?;
            self.synchronize()
        }
    }

    /// Queue a copy of `bytes` (at most [`READBACK_SLOT_BYTES`]) from `src`
    /// into a free pinned slot, after the stream's queued work; returns the
    /// slot, or `None` when none is free or the read is too long (then read
    /// with the blocking `copy_dtoh`). The caller waits for an event recorded
    /// after it before [`Device::readback_take`].
    pub(crate) fn readback_begin(&self, src: u64, bytes: usize) -> CudaResult<Option<usize>> {
        if self.mode() != Mode::Normal {
            return Err(CudaError::Invalid(
                "device-to-host read inside a replayable step".into(),
            ));
        }
        if bytes > READBACK_SLOT_BYTES {
            return Ok(None);
        }
        let slot = {
            let mut free = self.readback_free.lock().unwrap_or_else(|e| e.into_inner());
            if *free == 0 {
                return Ok(None);
            }
            let s = free.trailing_zeros() as usize;
            *free &= !(1u32 << s);
            s
        };
        let dst = self.readback_base + slot * READBACK_SLOT_BYTES;
        let r = check(
            unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, self.stream.0) },
            "cuMemcpyDtoHAsync",
        );
        if let Err(e) = r {
            self.readback_release(slot);
            return Err(e);
        }
        Ok(Some(slot))
    }

    /// The bytes a finished `readback_begin` copy left in `slot`, into
    /// `out`; frees the slot.
    pub(crate) fn readback_take(&self, slot: usize, out: &mut [u8]) {
        let src = (self.readback_base + slot * READBACK_SLOT_BYTES) as *const u8;
        // SAFETY: the slot lies inside the pinned staging allocation, is
        // owned by the caller until released, and its copy has completed.
        out.copy_from_slice(unsafe { std::slice::from_raw_parts(src, out.len()) });
        self.readback_release(slot);
    }

    pub(crate) fn readback_release(&self, slot: usize) {
        let mut free = self.readback_free.lock().unwrap_or_else(|e| e.into_inner());
        *free |= 1u32 << slot;
    }

    pub fn synchronize(&self) -> CudaResult<()> {
        check(
            unsafe { sys::cuStreamSynchronize(self.stream.0) },
            "cuStreamSynchronize (a kernel failed)",
        )
    }

    /// (free, total) device memory.
    pub fn mem_info(&self) -> (u64, u64) {
        let (mut free, mut total) = (0usize, 0usize);
        let _ = unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
        (free as u64, total as u64)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A raw allocation of at least `bytes` (rounded up to 256 so that every
    /// buffer can be read with 16-byte vectors past its end within bounds).
    pub fn alloc_raw(&self, bytes: usize, what: &str) -> CudaResult<u64> {
        if self.mode() == Mode::Capture {
            return Err(CudaError::Invalid(format!(
                "allocating {what} inside a captured step"
            )));
        }
        self.bind()?;
        let size = bytes.max(1).checked_next_multiple_of(256).ok_or_else(|| {
            CudaError::Invalid(format!("allocating {what}: {bytes} bytes overflow"))
        })?;
        let mut ptr = 0u64;
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, size) };
        if r == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = self.mem_info();
            return Err(CudaError::OutOfMemory {
                what: what.to_string(),
                bytes: size as u64,
                free,
                total,
            });
        }
        check(r, "cuMemAlloc")?;
        self.used.fetch_add(size as u64, Ordering::Relaxed);
        Ok(ptr)
    }

    pub fn free_raw(&self, ptr: u64, bytes: usize) {
        if self.bind().is_ok() {
            let size = bytes.max(1).div_ceil(256) * 256;
            if unsafe { sys::cuMemFree_v2(ptr) } == CUresult::CUDA_SUCCESS {
                self.used.fetch_sub(size as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            unsafe {
                let _ = sys::cuStreamSynchronize(self.stream.0);
                let _ = sys::cuStreamDestroy_v2(self.stream.0);
                let staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
                let _ = sys::cuMemFreeHost(staging.0 as *mut c_void);
            }
        }
    }
}

/// A device allocation, freed on drop.
pub(crate) struct DeviceBuffer {
    pub ptr: u64,
    pub bytes: usize,
    dev: Arc<Device>,
}

impl DeviceBuffer {
    pub fn new(dev: &Arc<Device>, bytes: usize, what: &str) -> CudaResult<DeviceBuffer> {
        let ptr = dev.alloc_raw(bytes, what)?;
        Ok(DeviceBuffer {
            ptr,
            bytes,
            dev: dev.clone(),
        })
    }

    /// A buffer holding `data`.
    pub fn from_host(dev: &Arc<Device>, data: &[u8], what: &str) -> CudaResult<DeviceBuffer> {
        let b = DeviceBuffer::new(dev, data.len(), what)?;
        dev.copy_htod(b.ptr, data)?;
        Ok(b)
    }

    /// A zero-filled buffer. The fill is enqueued even during the dry run of a
    /// replayable step (buffers made lazily there, such as attention scratch,
    /// must start zeroed); allocating during a capture is refused earlier.
    pub fn zeroed(dev: &Arc<Device>, bytes: usize, what: &str) -> CudaResult<DeviceBuffer> {
        let b = DeviceBuffer::new(dev, bytes, what)?;
        check(
            unsafe {
                sys::cuMemsetD8Async(b.ptr, 0, bytes.max(1).div_ceil(256) * 256, dev.stream.0)
            },
            "cuMemsetD8Async",
        )?;
        Ok(b)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.dev.free_raw(self.ptr, self.bytes);
    }
}
