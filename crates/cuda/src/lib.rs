//! CUDA backend of metallic.
//!
//! Weights are uploaded once in their GGUF block formats (split into aligned
//! planes, never dequantised to a full-precision copy). Kernels live in
//! `kernels/*.cu`, are compiled by NVRTC for the GPU's own architecture on
//! first use and cached on disk. Matrix products run on own gemv kernels
//! (dp4a for quantised weights) for decode-sized batches and on cuBLAS above;
//! attention, norms, rotary embedding and sampling are own kernels. Positions,
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
mod repack;
mod sampler;
mod tensor;
mod timing;
mod wtype;

use std::sync::{Arc, Mutex};

use metallic::backend::{
    Backend, DType, KvLayer, LinearInfo, MatmulImpl, MatmulShape, MemoryInfo, QkvLayout, Rope,
    TimingKind, WeightView,
};
use metallic::config::RopeStyle;
use metallic::error::Result;
use metallic::sampler::SamplerParams;

use crate::device::{Arg, Device, DeviceBuffer};
pub use crate::driver::{discover as discover_driver, DriverInfo};
pub use crate::error::CudaError;
use crate::error::CudaResult;
use crate::graph::Graphs;
use crate::kernels::Kernels;
pub use crate::linear::CudaLinear;
use crate::matmul::Blas;
pub use crate::sampler::CudaSampler;
pub use crate::tensor::CudaTensor;
pub use crate::timing::CudaMark;
use crate::timing::EventPool;

/// Rows of queries one prefill attention block handles (one warp each).
const ATTN_PREFILL_ROWS: usize = 8;
/// Most KV splits of the decode attention kernel.
const ATTN_MAX_SPLITS: usize = 32;

pub struct CudaBackend {
    dev: Arc<Device>,
    k: Kernels,
    blas: std::result::Result<Blas, CudaError>,
    graphs: Graphs,
    events: Arc<EventPool>,
    attn: Mutex<Option<AttnScratch>>,
    /// Activations quantised for the dp4a gemv kernels.
    xq: Mutex<Option<DeviceBuffer>>,
}

/// Partial results of split decode attention: per head and split, (max, sum,
/// acc[hd]); and per head the counter the last block uses to find itself.
struct AttnScratch {
    part: DeviceBuffer,
    counters: DeviceBuffer,
    part_floats: usize,
    heads: usize,
}

fn grid1(len: usize, block: usize) -> (u32, u32, u32) {
    (len.div_ceil(block).max(1) as u32, 1, 1)
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
        Ok(CudaBackend {
            dev,
            k,
            blas,
            graphs: Graphs::default(),
            events: EventPool::new(),
            attn: Mutex::new(None),
            xq: Mutex::new(None),
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

    /// Graphs captured and replayed so far.
    pub fn graph_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.graphs.captures.load(Relaxed),
            self.graphs.replays.load(Relaxed),
        )
    }

    fn attn_scratch(&self, heads: usize, floats: usize) -> CudaResult<(u64, u64)> {
        let mut g = self.attn.lock().unwrap_or_else(|e| e.into_inner());
        let fits = g
            .as_ref()
            .is_some_and(|s| s.part_floats >= floats && s.heads >= heads);
        if !fits {
            *g = None;
            let part = DeviceBuffer::new(&self.dev, floats * 4, "attention partials")?;
            let counters = DeviceBuffer::zeroed(&self.dev, heads * 4, "attention counters")?;
            *g = Some(AttnScratch {
                part,
                counters,
                part_floats: floats,
                heads,
            });
        }
        let s = g.as_ref().expect("just set");
        Ok((s.part.ptr, s.counters.ptr))
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

    fn ew(&self, f: device::Func, len: usize, args: &[Arg]) -> Result<()> {
        self.dev.launch(f, grid1(len, 256), 256, 0, args)?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type Sampler = CudaSampler;
    type Mark = CudaMark;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_description(&self) -> String {
        let (_, total) = self.dev.mem_info();
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB, CUDA driver {}.{})",
            self.dev.ordinal,
            self.dev.name,
            self.dev.cc.0,
            self.dev.cc.1,
            self.dev.sm_count,
            total as f64 / (1u64 << 30) as f64,
            self.dev.driver_version / 1000,
            (self.dev.driver_version % 1000) / 10
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
        Ok(linear::upload(&self.dev, parts, biases)?)
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
        let threads = if seg.ty.is_quantized() {
            m * (k / 32)
        } else {
            m * k
        };
        let p = seg.planes;
        self.ew(
            self.k.embed[seg.ty as usize],
            threads,
            &[
                Arg(p[0]),
                Arg(p[1]),
                Arg(p[2]),
                Arg(p[3]),
                Arg::from(seg.rows as i32),
                Arg::from(k as i32),
                Arg(idp),
                Arg::from(m as i32),
                Arg(op),
            ],
        )
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
        let threads = if n >= 4096 { 1024 } else { 256 };
        self.dev.launch(
            self.k.rms_norm,
            (m as u32, 1, 1),
            threads,
            0,
            &[
                Arg(xp),
                Arg(wp),
                Arg::from(n as i32),
                Arg::from(eps),
                Arg(op),
            ],
        )?;
        Ok(())
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
        matmul::matmul(
            &self.dev,
            &self.k,
            self.blas.as_ref(),
            &self.xq,
            imp,
            xp,
            w,
            m,
            op,
        )?;
        Ok(())
    }

    fn rope(
        &self,
        qkv: &mut CudaTensor,
        pos: &CudaTensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, CudaTensor>,
    ) -> Result<()> {
        let hd = layout.head_dim;
        if rope.dim > hd || !rope.dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "rope dimension {} for heads of {hd}",
                rope.dim
            )));
        }
        let width = layout.row_width();
        let qp = qkv.ptr_of(DType::F32, m * width, "rope qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "rope positions")?;
        let fp = match rope.freq_factors {
            Some(t) => t.ptr_of(DType::F32, rope.dim / 2, "rope factors")?,
            None => 0,
        };
        let heads = layout.n_heads + layout.n_kv_heads;
        self.dev.bind()?;
        self.ew(
            self.k.rope,
            m * heads * (rope.dim / 2),
            &[
                Arg(qp),
                Arg(pp),
                Arg::from(m as i32),
                Arg::from(width as i32),
                Arg::from(heads as i32),
                Arg::from(hd as i32),
                Arg::from(rope.dim as i32),
                Arg::from(rope.theta),
                Arg::from(rope.pos_scale),
                Arg(fp),
                Arg::from(match rope.style {
                    RopeStyle::Normal => 0i32,
                    RopeStyle::Neox => 1,
                }),
            ],
        )
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
        let width = layout.row_width();
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let qp = qkv.ptr_of(DType::F32, m * width, "kv qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "kv positions")?;
        let kp = cache.k.ptr_of(DType::F32, need, "k cache")?;
        let vp = cache.v.ptr_of(DType::F32, need, "v cache")?;
        self.dev.bind()?;
        self.ew(
            self.k.kv_store,
            m * layout.n_kv_heads * layout.head_dim,
            &[
                Arg(qp),
                Arg(kp),
                Arg(vp),
                Arg(pp),
                Arg::from(m as i32),
                Arg::from(width as i32),
                Arg::from(layout.n_heads as i32),
                Arg::from(layout.n_kv_heads as i32),
                Arg::from(layout.head_dim as i32),
                Arg::from(capacity as i32),
            ],
        )
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
        let (nh, nkv, hd) = (layout.n_heads, layout.n_kv_heads, layout.head_dim);
        if hd == 0 || hd > 256 || nkv == 0 || nh % nkv != 0 {
            return Err(invalid(format!(
                "attention layout {nh} heads / {nkv} kv heads / dim {hd}"
            )));
        }
        let width = layout.row_width();
        let need = nkv * capacity * hd;
        let qp = qkv.ptr_of(DType::F32, m * width, "attention qkv")?;
        let pp = pos.ptr_of(DType::I32, m, "attention positions")?;
        let kp = cache.k.ptr_of(DType::F32, need, "k cache")?;
        let vp = cache.v.ptr_of(DType::F32, need, "v cache")?;
        let op = out.ptr_of(DType::F32, m * nh * hd, "attention out")?;
        let scale = 1.0 / (hd as f32).sqrt();
        self.dev.bind()?;
        if m == 1 {
            // Splits are fixed by the capacity, not the current length, so that
            // the launch is the same at every step of a replayed decode.
            let splits = capacity.div_ceil(128).clamp(1, ATTN_MAX_SPLITS);
            let (part, counters) = self.attn_scratch(nh, nh * splits * (hd + 2))?;
            self.dev.launch(
                self.k.attn_decode,
                (nh as u32, splits as u32, 1),
                128,
                0,
                &[
                    Arg(qp),
                    Arg(kp),
                    Arg(vp),
                    Arg(pp),
                    Arg::from(nh as i32),
                    Arg::from(nkv as i32),
                    Arg::from(hd as i32),
                    Arg::from(capacity as i32),
                    Arg::from(scale),
                    Arg(part),
                    Arg(counters),
                    Arg(op),
                ],
            )?;
        } else {
            let rows = ATTN_PREFILL_ROWS;
            let smem = (hd * 33 + 32 * hd + rows * hd) * 4;
            self.dev.launch(
                self.k.attn_prefill,
                (m.div_ceil(rows) as u32, nh as u32, 1),
                (rows * 32) as u32,
                smem as u32,
                &[
                    Arg(qp),
                    Arg(kp),
                    Arg(vp),
                    Arg(pp),
                    Arg::from(m as i32),
                    Arg::from(width as i32),
                    Arg::from(nh as i32),
                    Arg::from(nkv as i32),
                    Arg::from(hd as i32),
                    Arg::from(capacity as i32),
                    Arg::from(scale),
                    Arg(op),
                ],
            )?;
        }
        Ok(())
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
        self.ew(
            self.k.swiglu,
            m * ffn,
            &[Arg(gp), Arg::from(m as i32), Arg::from(ffn as i32), Arg(op)],
        )
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor, len: usize) -> Result<()> {
        let xp = x.ptr_of(DType::F32, len, "add x")?;
        let yp = y.ptr_of(DType::F32, len, "add y")?;
        self.dev.bind()?;
        self.ew(self.k.add, len, &[Arg(xp), Arg(yp), Arg::from(len as i64)])
    }

    fn stream_read(&self, t: &CudaTensor, len: usize) -> Result<()> {
        let p = t.ptr_of(DType::I32, len, "stream_read")?;
        self.dev.bind()?;
        // A few resident blocks per SM keep enough loads in flight to saturate HBM.
        let grid = (self.dev.sm_count * 4, 1, 1);
        self.dev.launch(
            self.k.stream_read,
            grid,
            512,
            0,
            &[Arg(p), Arg::from(len as i64)],
        )?;
        Ok(())
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
        if s.window == 0 || tokens.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        // Only the last `window` tokens can matter; earlier ones would be evicted.
        let tail = &tokens[tokens.len().saturating_sub(s.window)..];
        let ids: Vec<u8> = tail
            .iter()
            .flat_map(|&t| (t.min(i32::MAX as u32) as i32).to_le_bytes())
            .collect();
        if s.upload.as_ref().is_none_or(|b| b.bytes < ids.len()) {
            s.upload = None;
            s.upload = Some(DeviceBuffer::new(
                &self.dev,
                ids.len(),
                "sampler token upload",
            )?);
        }
        let up = s.upload.as_ref().expect("just set").ptr;
        self.dev.copy_htod(up, &ids)?;
        self.dev.launch(
            self.k.sampler_accept,
            (1, 1, 1),
            32,
            0,
            &[
                Arg(up),
                Arg::from(tail.len() as i32),
                Arg::from(s.vocab as i32),
                Arg(s.state.ptr),
                Arg(s.counts.ptr),
                Arg(s.hist.ptr),
                Arg::from(s.window as i32),
            ],
        )?;
        Ok(())
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
        let p = s.params;
        let v = vocab as i32;
        let penalize = s.window > 0;
        let src = if penalize {
            self.ew(
                self.k.sample_prepare,
                vocab,
                &[
                    Arg(lp),
                    Arg(s.work.ptr),
                    Arg::from(v),
                    Arg(s.counts.ptr),
                    Arg::from(1i32),
                    Arg::from(p.repeat_penalty),
                    Arg::from(p.frequency_penalty),
                    Arg::from(p.presence_penalty),
                ],
            )?;
            s.work.ptr
        } else if p.temperature <= 0.0 {
            // Argmax maps NaN to "never wins" by itself.
            lp
        } else {
            self.ew(
                self.k.sample_prepare,
                vocab,
                &[
                    Arg(lp),
                    Arg(s.work.ptr),
                    Arg::from(v),
                    Arg(s.counts.ptr),
                    Arg::from(0i32),
                    Arg::from(1.0f32),
                    Arg::from(0.0f32),
                    Arg::from(0.0f32),
                ],
            )?;
            s.work.ptr
        };
        let common = [
            Arg(s.state.ptr),
            Arg(s.counts.ptr),
            Arg(s.hist.ptr),
            Arg::from(s.window as i32),
        ];
        if p.temperature <= 0.0 {
            let blocks = sampler::ARGMAX_BLOCKS.min(vocab.div_ceil(1024)).max(1);
            let a = s.argmax.ptr;
            let n = sampler::ARGMAX_BLOCKS as u64;
            self.dev.launch(
                self.k.sample_argmax,
                (blocks as u32, 1, 1),
                1024,
                0,
                &[
                    Arg(src),
                    Arg::from(v),
                    Arg(a),
                    Arg(a + 4 * n),
                    Arg(a + 8 * n),
                    Arg(idp),
                    common[0],
                    common[1],
                    common[2],
                    common[3],
                ],
            )?;
        } else {
            let top_k = p.top_k.min(i32::MAX as usize) as i32;
            // With a small top-k over a large vocabulary, cut the candidates
            // to each block's top-k first: one block then filters a few
            // thousand values instead of the whole vocabulary.
            let two_phase = p.top_k > 0
                && p.top_k <= sampler::TOPK_MAX
                && vocab > 4 * sampler::TOPK_BLOCKS * p.top_k;
            let (fsrc, fv, map) = if two_phase {
                let n = sampler::TOPK_BLOCKS * p.top_k;
                let cv = s.cand.ptr;
                let ci = s.cand.ptr + (4 * sampler::TOPK_BLOCKS * sampler::TOPK_MAX) as u64;
                self.dev.launch(
                    self.k.sample_topk_blocks,
                    (sampler::TOPK_BLOCKS as u32, 1, 1),
                    256,
                    0,
                    &[Arg(src), Arg::from(v), Arg::from(top_k), Arg(cv), Arg(ci)],
                )?;
                (cv, n as i32, ci)
            } else {
                (src, v, 0)
            };
            self.dev.launch(
                self.k.sample_filter,
                (1, 1, 1),
                1024,
                0,
                &[
                    Arg(fsrc),
                    Arg::from(fv),
                    Arg::from(top_k),
                    Arg::from(p.top_p),
                    Arg::from(p.min_p),
                    Arg::from(p.temperature),
                    common[0],
                    common[1],
                    common[2],
                    common[3],
                    Arg(idp),
                    Arg(map),
                ],
            )?;
        }
        Ok(())
    }

    fn advance(&self, pos: &mut CudaTensor, m: usize) -> Result<()> {
        if m == 0 {
            return Err(invalid("advance: no rows"));
        }
        let pp = pos.ptr_of(DType::I32, m, "advance positions")?;
        self.dev.bind()?;
        self.dev.launch(
            self.k.advance,
            (1, 1, 1),
            32,
            0,
            &[Arg(pp), Arg::from(m as i32)],
        )?;
        Ok(())
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
