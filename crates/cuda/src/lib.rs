//! CUDA backend of metallic.
//!
//! Weights are uploaded once in their GGUF block formats (split into aligned
//! planes, never dequantised to a full-precision copy). Kernels live in
//! `kernels/*.cu`, are compiled by NVRTC for the GPU's own architecture on
//! first use and cached on disk. Each op has one home: `kernels/<op>.cu` and
//! its launcher `ops/<op>.rs`; this file checks buffers and calls one
//! launcher per op. Matrix products run on own matrix-vector kernels
//! (`vecdot`, `fdot`) for decode-sized batches and on cuBLAS above (see
//! `matmul.rs`); attention, norms, rotary embedding and sampling are own
//! kernels. Positions,
//! KV lengths and the sampler state live in device memory, so a decode step
//! can be captured once and replayed as a CUDA graph; only the chosen token id
//! crosses to the host.
//!
//! Opening the backend without a driver or a GPU is a typed error
//! ([`CudaError`]), never a panic: the libraries are looked for
//! (`driver.rs`) before cudarc first touches them.

mod cache;
mod compile;
mod device;
mod driver;
pub mod error;
mod graph;
mod kernels;
mod linear;
mod matmul;
mod ops;
mod repack;
mod sampler;
mod tensor;
mod timing;
mod wtype;

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use metallic::backend::{
    matmul_composed, Backend, DType, Epilogue, FusedScratch, KvLayer, LinearInfo, MatmulImpl,
    MatmulShape, MemoryInfo, NormPrologue, PagedLayout, QkvLayout, Rope, TimingKind, WeightView,
};
use metallic::error::{Error, Result};
use metallic::sampler::SamplerParams;

use crate::device::{Device, DeviceBuffer};
pub use crate::driver::{discover as discover_driver, DriverInfo};
pub use crate::error::CudaError;
use crate::graph::Graphs;
use crate::kernels::Kernels;
pub use crate::linear::CudaLinear;
use crate::ops::attention::Cache;
use crate::ops::matmul_cublas::Blas;
use crate::ops::matmul_fdot::Fusion;
use crate::ops::paged_attention::{KvType, PagedCache, Rows};
use crate::ops::rope::RopeParams;
pub use crate::sampler::CudaSampler;
pub use crate::tensor::CudaTensor;
pub use crate::timing::CudaMark;
use crate::timing::EventPool;

pub struct CudaBackend {
    dev: Arc<Device>,
    k: Kernels,
    blas: std::result::Result<Blas, CudaError>,
    graphs: Graphs,
    events: Arc<EventPool>,
    /// Fused decode kernels (norm prologues, add and SwiGLU epilogues,
    /// rope + kv_store): METALLIC_CUDA_FUSE=0 turns them off when the
    /// backend opens.
    fuse: AtomicBool,
    /// The QKV product with rope and the KV-cache write in its epilogue
    /// (decode, one row, `vecdot`, or float weights on `vecdot` or `fdot`:
    /// `matmul::fuses_rope`; then rope + kv_store is not its own
    /// kernel): on with the other fusions, METALLIC_CUDA_FUSE_ROPE=0 turns
    /// it off alone (same results; measured in BENCHMARKS.md).
    fuse_rope: AtomicBool,
    /// Bytes left for dense f16 copies of quantised weights (see
    /// `matmul_cublas::dense_copies`).
    dense_budget: std::sync::atomic::AtomicUsize,
}

/// METALLIC_CUDA_FUSE=0 (or `off`, `false`, `no`) runs the fused ops of the
/// forward pass as separate kernels, for comparison; on by default.
fn fuse_enabled() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_FUSE").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// METALLIC_CUDA_FUSE_ROPE=0 (or `off`, `false`, `no`) keeps rope and the
/// KV-cache write out of the decode QKV product (see `fuse_rope`); on by
/// default.
fn fuse_rope_enabled() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_FUSE_ROPE").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

fn invalid(msg: impl Into<String>) -> metallic::error::Error {
    CudaError::Invalid(msg.into()).into()
}

impl CudaBackend {
    /// Open device `ordinal`: find the driver, compile (or load cached)
    /// kernels, create the cuBLAS handle.
    pub fn new(ordinal: usize) -> std::result::Result<CudaBackend, CudaError> {
        let dev = Device::open(ordinal)?;
        let k = Kernels::load(&dev)?;
        let blas = Blas::new(&dev);
        // No cuBLAS, no product reads a dense copy.
        let dense = match &blas {
            Ok(_) => ops::matmul_cublas::dense_budget(dev.mem_info().0),
            Err(_) => 0,
        };
        Ok(CudaBackend {
            dev,
            k,
            blas,
            graphs: Graphs::default(),
            events: EventPool::new(),
            fuse: AtomicBool::new(fuse_enabled()),
            fuse_rope: AtomicBool::new(fuse_rope_enabled()),
            dense_budget: std::sync::atomic::AtomicUsize::new(dense),
        })
    }

    /// Whether a usable CUDA device is present (looks for the driver without panicking).
    pub fn available() -> bool {
        driver::discover().is_ok()
    }

    /// Why no CUDA device can be used, if none can.
    pub fn unavailable_reason() -> Option<String> {
        driver::discover().err().map(|e| e.to_string())
    }

    /// Bytes that dense f16 copies of quantised weights uploaded from now on
    /// may take (see `matmul_cublas::dense_copies`; METALLIC_CUDA_DENSE_WEIGHTS
    /// sets it when the backend opens). 0: none, each cuBLAS product
    /// dequantises its weight tile by tile.
    pub fn set_dense_weight_budget(&self, bytes: usize) {
        self.dense_budget.store(bytes, Ordering::Relaxed);
    }

    /// Whether kernels launch with programmatic dependent launch (sm_90+;
    /// METALLIC_CUDA_PDL=0 turns it off when the backend opens).
    pub fn programmatic_launch(&self) -> bool {
        self.dev.pdl()
    }

    /// Turn programmatic dependent launch on (where the device has it) or
    /// off; graphs captured the other way are captured again.
    pub fn set_programmatic_launch(&self, on: bool) {
        self.dev.set_pdl(on);
    }

    /// Whether the forward pass runs its fused kernels (norm folded into the
    /// product, residual add and SwiGLU in its epilogue, rope + kv_store).
    pub fn fusion(&self) -> bool {
        self.fuse.load(Ordering::Relaxed)
    }

    /// Whether the decode QKV product takes rope and the KV-cache write
    /// into its epilogue (where [`fusion`](Self::fusion) is on too).
    pub fn rope_fusion(&self) -> bool {
        self.fuse_rope.load(Ordering::Relaxed)
    }

    /// Turn the QKV + rope + KV-cache-write fusion on or off (graphs are
    /// captured again, as for [`set_fusion`](Self::set_fusion)).
    pub fn set_rope_fusion(&self, on: bool) {
        self.fuse_rope.store(on, Ordering::Relaxed);
    }

    /// The device's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.dev.cc
    }

    /// Whether prefill attention rounds Q, K, V and the probabilities to f16
    /// for tensor-core products (sm_80 and newer, head dimension 64 or 128,
    /// 16 or more rows; on by default, METALLIC_CUDA_ATTN_F16=0 when the
    /// backend opens turns it off). Decode attention is f32 either way.
    pub fn attention_f16(&self) -> bool {
        self.k.attention.f16()
    }

    /// Turn f16 tensor-core prefill attention on or off (off: the f32
    /// kernel, e.g. for the exact path).
    pub fn set_attention_f16(&self, on: bool) {
        self.k.attention.set_f16(on);
    }

    /// Turn the fused kernels on or off. Graphs captured the other way are
    /// captured again: their launches differ, so their fingerprints do.
    pub fn set_fusion(&self, on: bool) {
        self.fuse.store(on, Ordering::Relaxed);
    }

    /// Quantise `vecdot`'s activations inside each product (`Some(true)`),
    /// in a separate kernel first (`Some(false)`), or by weight type (`None`,
    /// the default: inside for Q8_0). METALLIC_CUDA_VECDOT_FUSED=1/0 sets it
    /// when the backend opens. The results are identical.
    pub fn set_vecdot_fused(&self, on: Option<bool>) {
        self.k.vecdot.set_fused(on);
    }

    /// Warps sharing one weight row in `vecdot` products of few rows
    /// (split-K: 1, 2 or 4); METALLIC_CUDA_VECDOT_SPLIT sets it when the
    /// backend opens. Graphs captured the other way are captured again.
    pub fn set_vecdot_split(&self, split: usize) {
        self.k.vecdot.set_split(split);
    }

    pub fn vecdot_split(&self) -> usize {
        self.k.vecdot.split()
    }

    pub fn vecdot_fused(&self) -> Option<bool> {
        self.k.vecdot.fused()
    }

    /// Graphs captured and replayed so far.
    pub fn graph_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.graphs.captures.load(Relaxed),
            self.graphs.replays.load(Relaxed),
        )
    }

    /// Nodes (kernel launches and copies) of the step graph captured last:
    /// the kernels a decoded token runs.
    pub fn last_graph_nodes(&self) -> u64 {
        self.graphs.last_nodes.load(Ordering::Relaxed)
    }

    /// One layer's paged K and V, checked to hold `paged.layer_len` elements
    /// of one float type, and the step's tables and positions for `m` rows.
    fn paged_inputs(
        cache: &KvLayer<CudaTensor>,
        paged: &PagedLayout,
        tables: &CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<(PagedCache, Rows)> {
        let ty = match cache.k.dtype {
            DType::F32 => KvType::F32,
            DType::F16 => KvType::F16,
            DType::I32 => return Err(invalid("paged KV cache of i32 (want f32 or f16)")),
        };
        let need = paged.layer_len(layout);
        let dt = cache.k.dtype;
        let c = PagedCache {
            k: cache.k.ptr_of(dt, need, "paged k cache")?,
            v: cache.v.ptr_of(dt, need, "paged v cache")?,
            ty,
        };
        let table_len = m
            .checked_mul(paged.table_stride)
            .ok_or_else(|| invalid("block tables: size overflows"))?;
        let r = Rows {
            tables: tables.ptr_of(DType::I32, table_len, "block tables")?,
            pos: pos.ptr_of(DType::I32, m, "paged positions")?,
            m,
        };
        Ok((c, r))
    }

    /// Copy 4-byte elements `offset..offset + out.len() / 4` of `src` to the host.
    fn read_words(
        &self,
        src: &CudaTensor,
        dtype: DType,
        offset: usize,
        out: &mut [u8],
        what: &str,
    ) -> Result<()> {
        let p = src.ptr_of(dtype, offset + out.len() / 4, what)?;
        self.dev.bind()?;
        self.dev.copy_dtoh(out, p + 4 * offset as u64)?;
        Ok(())
    }
}

/// The rope kernels' parameters, after checking the rotated dimension
/// against the heads (shared by `rope` and the fused `rope_kv_store`).
fn rope_params(rope: &Rope<'_, CudaTensor>, layout: &QkvLayout) -> Result<RopeParams> {
    let hd = layout.head_dim;
    if rope.dim > hd || !rope.dim.is_multiple_of(2) {
        return Err(invalid(format!(
            "rope dimension {} for heads of {hd}",
            rope.dim
        )));
    }
    let factors = match rope.freq_factors {
        Some(t) => t.ptr_of(DType::F32, rope.dim / 2, "rope factors")?,
        None => 0,
    };
    Ok(RopeParams {
        style: rope.style,
        theta: rope.theta,
        dim: rope.dim,
        pos_scale: rope.pos_scale,
        factors,
    })
}

/// An asynchronous read of a few i32 (a decode step's token id) into pinned
/// memory, with the event that says it landed.
pub struct CudaReadback {
    dev: Arc<Device>,
    len: usize,
    state: Option<ReadbackState>,
}

enum ReadbackState {
    /// Too long for a slot, or no slot free: read at once.
    Ready(Vec<i32>),
    Pending {
        slot: usize,
        mark: CudaMark,
    },
}

impl Drop for CudaReadback {
    fn drop(&mut self) {
        // Unfinished: the copy may still land in the slot, so wait for it
        // before the slot can be handed out again.
        if let Some(ReadbackState::Pending { slot, mark }) = self.state.take() {
            let _ = mark.wait(&self.dev);
            self.dev.readback_release(slot);
        }
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type Sampler = CudaSampler;
    type Mark = CudaMark;
    type Readback = CudaReadback;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_description(&self) -> String {
        let (_, total) = self.dev.mem_info();
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB, CUDA driver {}.{}, PDL {}, fusion {})",
            self.dev.ordinal,
            self.dev.name,
            self.dev.cc.0,
            self.dev.cc.1,
            self.dev.sm_count,
            total as f64 / (1u64 << 30) as f64,
            self.dev.driver_version / 1000,
            (self.dev.driver_version % 1000) / 10,
            if self.dev.pdl() { "on" } else { "off" },
            if self.fusion() { "on" } else { "off" }
        )
    }

    fn memory(&self) -> Option<MemoryInfo> {
        let (free, total) = self.dev.mem_info();
        Some(MemoryInfo {
            used_by_us: self.dev.used(),
            free,
            total,
        })
    }

    fn alloc(&self, dtype: DType, len: usize, what: &str) -> Result<CudaTensor> {
        let bytes = len
            .checked_mul(dtype.size())
            .ok_or_else(|| invalid(format!("{what}: {len} elements overflow")))?;
        let buf = DeviceBuffer::zeroed(&self.dev, bytes, what)?;
        Ok(CudaTensor { buf, dtype, len })
    }

    fn upload_vector(&self, w: &WeightView) -> Result<CudaTensor> {
        let mut v = vec![0.0f32; w.n_elements()];
        metallic_gguf::quant::dequantize(w.ggml_type(), w.bytes(), &mut v)?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let buf = DeviceBuffer::from_host(&self.dev, &bytes, &format!("`{}`", w.name()))?;
        Ok(CudaTensor {
            buf,
            dtype: DType::F32,
            len: v.len(),
        })
    }

    fn upload_linear(
        &self,
        parts: &[WeightView],
        biases: Option<&[WeightView]>,
    ) -> Result<CudaLinear> {
        let mut w = linear::upload(&self.dev, parts, biases)?;
        self.dev.bind()?;
        ops::matmul_cublas::dense_copies(&self.dev, &self.k.cublas, &mut w, &self.dense_budget)?;
        Ok(w)
    }

    fn linear_info(&self, w: &CudaLinear) -> LinearInfo {
        w.info.clone()
    }

    fn write_i32(&self, dst: &mut CudaTensor, offset: usize, src: &[i32]) -> Result<()> {
        let p = dst.ptr_of(DType::I32, offset + src.len(), "write_i32")?;
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len() * 4) };
        self.dev.bind()?;
        self.dev.copy_htod(p + 4 * offset as u64, bytes)?;
        Ok(())
    }

    fn read_f32(&self, src: &CudaTensor, offset: usize, out: &mut [f32]) -> Result<()> {
        // SAFETY: f32 has no invalid bit patterns; the byte view covers `out` exactly.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(out))
        };
        self.read_words(src, DType::F32, offset, bytes, "read_f32")
    }

    fn read_i32(&self, src: &CudaTensor, offset: usize, out: &mut [i32]) -> Result<()> {
        // SAFETY: as above, for i32.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(out))
        };
        self.read_words(src, DType::I32, offset, bytes, "read_i32")
    }

    fn read_i32_start(&self, src: &CudaTensor, offset: usize, len: usize) -> Result<CudaReadback> {
        let p = src.ptr_of(DType::I32, offset + len, "read_i32_start")?;
        self.dev.bind()?;
        let state = match self.dev.readback_begin(p + 4 * offset as u64, 4 * len)? {
            Some(slot) => match timing::record(&self.dev, &self.events) {
                Ok(mark) => ReadbackState::Pending { slot, mark },
                Err(e) => {
                    // Nothing will wait for the copy: finish it before the
                    // slot can be handed out again.
                    let _ = self.dev.synchronize();
                    self.dev.readback_release(slot);
                    return Err(e.into());
                }
            },
            None => {
                let mut v = vec![0i32; len];
                self.read_i32(src, offset, &mut v)?;
                ReadbackState::Ready(v)
            }
        };
        Ok(CudaReadback {
            dev: self.dev.clone(),
            len,
            state: Some(state),
        })
    }

    fn read_i32_finish(&self, mut r: CudaReadback, out: &mut [i32]) -> Result<()> {
        if out.len() != r.len {
            return Err(Error::InvalidArgument(format!(
                "read_i32_finish: {} values were read, {} asked for",
                r.len,
                out.len()
            )));
        }
        match r.state.take() {
            Some(ReadbackState::Ready(v)) => out.copy_from_slice(&v),
            Some(ReadbackState::Pending { slot, mark }) => {
                if let Err(e) = mark.wait(&self.dev) {
                    self.dev.readback_release(slot);
                    return Err(e.into());
                }
                // SAFETY: i32 has no invalid bit patterns; the view covers `out`.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, 4 * out.len())
                };
                self.dev.readback_take(slot, bytes);
            }
            None => {}
        }
        Ok(())
    }

    fn embed(
        &self,
        table: &CudaLinear,
        ids: &CudaTensor,
        m: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let k = table.info.k;
        let idp = ids.ptr_of(DType::I32, m, "embed ids")?;
        let op = out.ptr_of(DType::F32, m * k, "embed out")?;
        let [seg] = table.segs.as_slice() else {
            return Err(invalid("embedding table of several parts"));
        };
        self.dev.bind()?;
        Ok(self.k.embed.launch(&self.dev, seg, k, idp, m, op)?)
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        m: usize,
        n: usize,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let xp = x.ptr_of(DType::F32, m * n, "rms_norm x")?;
        let wp = w.ptr_of(DType::F32, n, "rms_norm w")?;
        let op = out.ptr_of(DType::F32, m * n, "rms_norm out")?;
        self.dev.bind()?;
        Ok(self.k.rms_norm.launch(&self.dev, xp, wp, m, n, eps, op)?)
    }

    fn matmul_impls(&self) -> &[MatmulImpl] {
        matmul::IMPLS
    }

    fn default_matmul_impl(&self, shape: &MatmulShape) -> usize {
        matmul::default_impl(shape)
    }

    fn matmul(
        &self,
        imp: usize,
        x: &CudaTensor,
        w: &CudaLinear,
        m: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let xp = x.ptr_of(DType::F32, m * w.info.k, "matmul x")?;
        let op = out.ptr_of(DType::F32, m * w.info.n, "matmul out")?;
        self.dev.bind()?;
        let blas = self.blas.as_ref();
        Ok(matmul::run(
            &self.dev,
            &self.k,
            blas,
            imp,
            xp,
            w,
            m,
            op,
            &Fusion::NONE,
        )?)
    }

    fn fuses(&self, imp: usize, w: &CudaLinear, m: usize, norm: bool, epilogue: Epilogue) -> bool {
        let probe = Fusion {
            norm: norm as u64,
            eps: 0.0,
            epilogue,
        };
        self.fusion() && matmul::fuses(imp, w, m, &probe)
    }

    fn matmul_fused(
        &self,
        imp: usize,
        x: &CudaTensor,
        norm: Option<&NormPrologue<'_, CudaTensor>>,
        w: &CudaLinear,
        m: usize,
        epilogue: Epilogue,
        out: &mut CudaTensor,
        scratch: FusedScratch<'_, CudaTensor>,
    ) -> Result<()> {
        if !self.fuses(imp, w, m, norm.is_some(), epilogue) {
            return matmul_composed(self, imp, x, norm, w, m, epilogue, out, scratch);
        }
        let (n, k) = (w.info.n, w.info.k);
        let xp = x.ptr_of(DType::F32, m * k, "matmul_fused x")?;
        let out_n = if epilogue == Epilogue::SwiGlu {
            n / 2
        } else {
            n
        };
        let op = out.ptr_of(DType::F32, m * out_n, "matmul_fused out")?;
        let fu = Fusion {
            norm: match norm {
                Some(nm) => nm
                    .weight
                    .ptr_of(DType::F32, k, "matmul_fused norm weight")?,
                None => 0,
            },
            eps: norm.map_or(0.0, |nm| nm.eps),
            epilogue,
        };
        self.dev.bind()?;
        let blas = self.blas.as_ref();
        Ok(matmul::run(
            &self.dev, &self.k, blas, imp, xp, w, m, op, &fu,
        )?)
    }

    fn rope(
        &self,
        qkv: &mut CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, CudaTensor>,
    ) -> Result<()> {
        let p = rope_params(rope, layout)?;
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "rope qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "rope positions")?;
        self.dev.bind()?;
        Ok(self.k.rope.launch(&self.dev, qp, pp, m, layout, &p)?)
    }

    fn kv_store(
        &self,
        qkv: &CudaTensor,
        cache: &mut KvLayer<CudaTensor>,
        capacity: usize,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()> {
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "kv qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "kv positions")?;
        let kp = cache.k.ptr_of(DType::F32, need, "k cache")?;
        let vp = cache.v.ptr_of(DType::F32, need, "v cache")?;
        self.dev.bind()?;
        let k = &self.k.kv_store;
        Ok(k.launch(&self.dev, qp, kp, vp, capacity, pp, m, layout)?)
    }

    fn fuses_rope_kv_store(&self, cache: &KvLayer<CudaTensor>) -> bool {
        // An f16 cache (or any other) takes the separate ops.
        self.fusion() && cache.k.dtype == DType::F32 && cache.v.dtype == DType::F32
    }

    fn rope_kv_store(
        &self,
        qkv: &mut CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, CudaTensor>,
        cache: &mut KvLayer<CudaTensor>,
        capacity: usize,
    ) -> Result<()> {
        if !self.fuses_rope_kv_store(cache) || !ops::rope_kv_store::supports(layout) {
            self.rope(qkv, pos, m, layout, rope)?;
            return self.kv_store(qkv, cache, capacity, pos, m, layout);
        }
        let p = rope_params(rope, layout)?;
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "rope_kv_store qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "rope_kv_store positions")?;
        let kp = cache.k.ptr_of(DType::F32, need, "k cache")?;
        let vp = cache.v.ptr_of(DType::F32, need, "v cache")?;
        self.dev.bind()?;
        let f = &self.k.rope_kv_store;
        Ok(f.launch(&self.dev, qp, pp, m, layout, &p, kp, vp, capacity)?)
    }

    fn fuses_matmul_rope_kv_store(
        &self,
        imp: usize,
        w: &CudaLinear,
        m: usize,
        layout: &QkvLayout,
        cache: &KvLayer<CudaTensor>,
    ) -> bool {
        self.rope_fusion()
            && self.fuses_rope_kv_store(cache)
            && m == 1
            && matmul::fuses_rope(imp, w, layout)
    }

    fn matmul_rope_kv_store(
        &self,
        imp: usize,
        x: &CudaTensor,
        norm: &NormPrologue<'_, CudaTensor>,
        w: &CudaLinear,
        m: usize,
        qkv: &mut CudaTensor,
        pos: &CudaTensor,
        layout: &QkvLayout,
        rope: &Rope<'_, CudaTensor>,
        cache: &mut KvLayer<CudaTensor>,
        capacity: usize,
    ) -> Result<()> {
        if !self.fuses_matmul_rope_kv_store(imp, w, m, layout, cache) {
            return Err(invalid(
                "matmul_rope_kv_store: this product and cache take the separate ops \
                 (ask fuses_matmul_rope_kv_store first)",
            ));
        }
        let p = rope_params(rope, layout)?;
        let k = w.info.k;
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let xp = x.ptr_of(DType::F32, k, "matmul_rope_kv_store x")?;
        let nw = norm
            .weight
            .ptr_of(DType::F32, k, "matmul_rope_kv_store norm weight")?;
        let op = qkv.ptr_of(DType::F32, layout.row_width(), "matmul_rope_kv_store qkv")?;
        let pp = pos.ptr_of(DType::I32, 1, "matmul_rope_kv_store positions")?;
        let kp = cache.k.ptr_of(DType::F32, need, "k cache")?;
        let vp = cache.v.ptr_of(DType::F32, need, "v cache")?;
        self.dev.bind()?;
        let st = ops::matmul_fdot::RopeStore {
            pos: pp,
            layout,
            params: &p,
            k_cache: kp,
            v_cache: vp,
            capacity,
        };
        Ok(matmul::run_rope(
            &self.dev, &self.k, imp, xp, w, op, nw, norm.eps, &st,
        )?)
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        cache: &KvLayer<CudaTensor>,
        capacity: usize,
        pos: &CudaTensor,
        m: usize,
        _kv_len: usize,
        layout: &QkvLayout,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "attention qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "attention positions")?;
        let c = Cache {
            k: cache.k.ptr_of(DType::F32, need, "k cache")?,
            v: cache.v.ptr_of(DType::F32, need, "v cache")?,
            capacity,
        };
        let out_len = m * layout.n_heads * layout.head_dim;
        let op = out.ptr_of(DType::F32, out_len, "attention out")?;
        self.dev.bind()?;
        let a = &self.k.attention;
        Ok(a.launch(&self.dev, qp, &c, pp, m, layout, op)?)
    }

    /// `vecdot_chunked` (see `matmul.rs`): never cuBLAS, whose algorithm
    /// depends on `m`.
    fn batch_invariant_matmul(&self) -> Option<&'static str> {
        Some(matmul::IMPLS[matmul::VECDOT_CHUNKED].name)
    }

    fn paged_kv_store(
        &self,
        qkv: &CudaTensor,
        cache: &mut KvLayer<CudaTensor>,
        paged: &PagedLayout,
        tables: &CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()> {
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "paged kv qkv")?;
        let (c, r) = Self::paged_inputs(cache, paged, tables, pos, m, layout)?;
        self.dev.bind()?;
        Ok(self.k.paged.store(&self.dev, qp, &c, paged, &r, layout)?)
    }

    fn fuses_paged_rope_kv_store(&self, cache: &KvLayer<CudaTensor>) -> bool {
        self.fusion() && cache.k.dtype != DType::I32
    }

    fn paged_rope_kv_store(
        &self,
        qkv: &mut CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, CudaTensor>,
        cache: &mut KvLayer<CudaTensor>,
        paged: &PagedLayout,
        tables: &CudaTensor,
    ) -> Result<()> {
        if !self.fuses_paged_rope_kv_store(cache) || !ops::rope_kv_store::supports(layout) {
            self.rope(qkv, pos, m, layout, rope)?;
            return self.paged_kv_store(qkv, cache, paged, tables, pos, m, layout);
        }
        let p = rope_params(rope, layout)?;
        let qp = qkv.ptr_of(
            DType::F32,
            m * layout.row_width(),
            "paged rope_kv_store qkv",
        )?;
        let (c, r) = Self::paged_inputs(cache, paged, tables, pos, m, layout)?;
        self.dev.bind()?;
        let f = &self.k.rope_kv_store;
        Ok(f.launch_paged(&self.dev, qp, &c, paged, &r, layout, &p)?)
    }

    fn paged_attention(
        &self,
        qkv: &CudaTensor,
        cache: &KvLayer<CudaTensor>,
        paged: &PagedLayout,
        tables: &CudaTensor,
        pos: &CudaTensor,
        m: usize,
        _max_kv_len: usize,
        layout: &QkvLayout,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let qp = qkv.ptr_of(DType::F32, m * layout.row_width(), "paged attention qkv")?;
        let (c, r) = Self::paged_inputs(cache, paged, tables, pos, m, layout)?;
        let out_len = m * layout.n_heads * layout.head_dim;
        let op = out.ptr_of(DType::F32, out_len, "paged attention out")?;
        self.dev.bind()?;
        let a = &self.k.paged;
        Ok(a.attention(&self.dev, qp, &c, paged, &r, layout, op)?)
    }

    fn swiglu(
        &self,
        gate_up: &CudaTensor,
        m: usize,
        ffn: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let gp = gate_up.ptr_of(DType::F32, m * 2 * ffn, "swiglu in")?;
        let op = out.ptr_of(DType::F32, m * ffn, "swiglu out")?;
        self.dev.bind()?;
        Ok(self.k.swiglu.launch(&self.dev, gp, m, ffn, op)?)
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor, len: usize) -> Result<()> {
        let xp = x.ptr_of(DType::F32, len, "add x")?;
        let yp = y.ptr_of(DType::F32, len, "add y")?;
        self.dev.bind()?;
        Ok(self.k.add.launch(&self.dev, xp, yp, len)?)
    }

    fn stream_read(&self, t: &CudaTensor, len: usize) -> Result<()> {
        let p = t.ptr_of(DType::I32, len, "stream_read")?;
        self.dev.bind()?;
        Ok(self.k.stream_read.launch(&self.dev, p, len)?)
    }

    fn copy(
        &self,
        src: &CudaTensor,
        src_offset: usize,
        dst: &mut CudaTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src.dtype != dst.dtype {
            return Err(invalid("copy between tensors of different types"));
        }
        let sz = src.dtype.size() as u64;
        let sp = src.ptr_of(src.dtype, src_offset + len, "copy src")?;
        let dp = dst.ptr_of(dst.dtype, dst_offset + len, "copy dst")?;
        self.dev.bind()?;
        self.dev.copy_dtod(
            dp + sz * dst_offset as u64,
            sp + sz * src_offset as u64,
            len * sz as usize,
        )?;
        Ok(())
    }

    fn new_sampler(&self, params: &SamplerParams, vocab: usize) -> Result<CudaSampler> {
        self.dev.bind()?;
        Ok(CudaSampler::new(&self.dev, params, vocab)?)
    }

    fn sampler_accept(&self, s: &mut CudaSampler, tokens: &[u32]) -> Result<()> {
        self.dev.bind()?;
        Ok(self.k.sample.accept(&self.dev, s, tokens)?)
    }

    fn sample(
        &self,
        logits: &CudaTensor,
        row: usize,
        vocab: usize,
        s: &mut CudaSampler,
        ids: &mut CudaTensor,
    ) -> Result<()> {
        if vocab != s.vocab {
            return Err(invalid(format!(
                "sampler made for {} tokens, logits have {vocab}",
                s.vocab
            )));
        }
        let lp = logits.ptr_of(DType::F32, (row + 1) * vocab, "sample logits")?
            + 4 * (row * vocab) as u64;
        let idp = ids.ptr_of(DType::I32, 1, "sample ids")?;
        self.dev.bind()?;
        Ok(self.k.sample.draw(&self.dev, lp, s, idp)?)
    }

    fn advance(&self, pos: &mut CudaTensor, m: usize) -> Result<()> {
        if m == 0 {
            return Err(invalid("advance: no rows"));
        }
        let pp = pos.ptr_of(DType::I32, m, "advance positions")?;
        self.dev.bind()?;
        Ok(self.k.advance.launch(&self.dev, pp, m)?)
    }

    fn queues_work(&self) -> bool {
        true
    }

    fn replayable(&self, key: u64, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.graphs.run(&self.dev, key, step)
    }

    fn mark(&self) -> Result<CudaMark> {
        Ok(timing::record(&self.dev, &self.events)?)
    }

    fn elapsed_ms(&self, start: &CudaMark, end: &CudaMark) -> Result<f64> {
        Ok(timing::elapsed_ms(&self.dev, start, end)?)
    }

    fn timing_kind(&self) -> TimingKind {
        TimingKind::Device
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.bind()?;
        self.dev.synchronize()?;
        Ok(())
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Graphs reference buffers; drop them before anything else goes.
        let _ = self.dev.bind();
        let _ = self.dev.synchronize();
        self.graphs.clear();
    }
}
