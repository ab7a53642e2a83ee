//! CPU backend of metallic: weights stay in the GGUF map, activations and
//! the KV cache are f32 host buffers, work is spread over a rayon pool.

mod attention;
mod attention_simd;
mod elementwise;
mod linear;
pub mod matmul;
#[cfg(target_arch = "x86_64")]
mod matmul_f16;
mod matmul_fdot;
mod matmul_gemm;
pub mod matmul_vecdot;
pub mod matmul_vecdot_gemm;
#[cfg(target_arch = "aarch64")]
mod neon;
mod paged_attention;
pub mod q8_act;
mod rope;
mod shared_out;
mod stream;
mod swiglu_simd;
pub mod team;
mod tensor;
pub mod vec_dot;
#[cfg(target_arch = "x86_64")]
mod vec_dot_x86;

use std::time::Instant;

use metallic::backend::{
    matmul_composed, Backend, DType, Epilogue, FusedScratch, KvLayer, LinearInfo, MatmulImpl,
    MatmulShape, MemoryInfo, NormPrologue, PagedLayout, QkvLayout, Rope, TimingKind, WeightView,
};
use metallic::error::{Error, Result};
use metallic::sampler::{Sampler, SamplerParams};
use metallic_gguf::quant;

pub use linear::CpuLinear;
pub use tensor::CpuTensor;

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    /// Runs the decode row kernels (`fdot`, `vecdot`) with the calling
    /// thread taking part and no pool hand-off per product (team.rs); none
    /// with `METALLIC_CPU_TEAM=0` (the rayon pool then runs them, to compare).
    team: Option<team::Team>,
    /// Decode's gate|up product and SwiGLU as one team job
    /// (`matmul_vecdot::vecdot_swiglu`); METALLIC_CPU_FUSE=0 runs them apart,
    /// to compare (the same bits either way).
    fuse: bool,
    threads: usize,
    /// `(n, k, type)` of the model's output projections (`output.weight`,
    /// or the tied `token_embd.weight`) uploaded here: the default rule
    /// keeps their prefill products in float32 activations where the
    /// quality table asks for it ([`matmul::Role`]).
    outputs: std::sync::Mutex<Vec<(usize, usize, metallic_gguf::GgmlType)>>,
    /// The copy of a logits row a sampler works on: one for every sampler,
    /// so a server with many sequences keeps one row warm in cache (and in
    /// memory) rather than one per sequence.
    sample_scratch: std::sync::Mutex<Vec<f32>>,
}

/// Sampling on the CPU: the core sampler (its logits copy is the backend's).
pub struct CpuSampler {
    sampler: Sampler,
}

fn f32s<'a>(t: &'a CpuTensor, what: &str) -> Result<&'a [f32]> {
    match t {
        CpuTensor::F32(v) => Ok(v),
        _ => Err(Error::backend(
            "cpu",
            format!("{what}: expected an f32 tensor"),
        )),
    }
}

fn f32s_mut<'a>(t: &'a mut CpuTensor, what: &str) -> Result<&'a mut [f32]> {
    match t {
        CpuTensor::F32(v) => Ok(v),
        _ => Err(Error::backend(
            "cpu",
            format!("{what}: expected an f32 tensor"),
        )),
    }
}

fn paged_cache_type() -> Error {
    Error::backend("cpu", "paged K and V caches must both be f32 or both f16")
}

fn i32s<'a>(t: &'a CpuTensor, what: &str) -> Result<&'a [i32]> {
    match t {
        CpuTensor::I32(v) => Ok(v),
        _ => Err(Error::backend(
            "cpu",
            format!("{what}: expected an i32 tensor"),
        )),
    }
}

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::backend(
            "cpu",
            format!("{what}: buffer of {have} elements, {need} needed"),
        ));
    }
    Ok(())
}

fn check_positions(pos: &[i32], m: usize, capacity: usize) -> Result<()> {
    check_len("positions", pos.len(), m)?;
    for &p in &pos[..m] {
        if p < 0 || p as usize >= capacity {
            return Err(Error::backend(
                "cpu",
                format!("position {p} outside the cache of {capacity}"),
            ));
        }
    }
    Ok(())
}

/// Shortest decode SwiGLU row split over the team: below it a task's
/// `exp`s take less than the hand-off (~1 us).
const TEAM_SWIGLU_MIN: usize = 1024;

impl CpuBackend {
    /// `threads == 0` uses every available core.
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("metallic-cpu-{i}"))
            .build()
            .map_err(|e| Error::backend("cpu", e.to_string()))?;
        let team = match std::env::var("METALLIC_CPU_TEAM")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            None | Some("" | "1" | "on" | "true" | "yes") => Some(team::Team::new(threads)),
            Some("0" | "off" | "false" | "no") => None,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "METALLIC_CPU_TEAM={other}: use 1 (the default: decode products on the \
                     spinning decode team) or 0 (on the rayon pool)"
                )))
            }
        };
        let fuse = !matches!(
            std::env::var("METALLIC_CPU_FUSE").as_deref().map(str::trim),
            Ok("0" | "off" | "false" | "no")
        );
        Ok(CpuBackend {
            pool,
            team,
            fuse,
            threads,
            outputs: Default::default(),
            sample_scratch: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A shape's role for the default rule, which sees only the shape: the
    /// output projection where its shape and type are those of a weight
    /// uploaded as one (by name), else a layer's. Products themselves carry
    /// their weight's [`CpuLinear::role`].
    fn role(&self, shape: &MatmulShape) -> matmul::Role {
        let outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        if outputs.contains(&(shape.n, shape.k, shape.dtype)) {
            matmul::Role::Output
        } else {
            matmul::Role::Layer
        }
    }

    /// Run `f` in the pool when the work is large enough to share, else on the
    /// calling thread (the serial kernels do not touch the pool).
    fn run<R: Send>(&self, parallel: bool, f: impl FnOnce() -> R + Send) -> R {
        if parallel {
            self.pool.install(f)
        } else {
            f()
        }
    }

    /// Run attention of `m` query rows: decode-sized calls (fewer than
    /// `GEMM_MIN_M` rows) on the decode team, where the backend has one,
    /// as the decode products are; prefill in the pool (see [`Self::run`]).
    /// The split never changes the result (attention.rs).
    fn run_attention<R: Send>(&self, parallel: bool, m: usize, f: impl FnOnce() -> R + Send) -> R {
        match &self.team {
            Some(team) if parallel && m < matmul::GEMM_MIN_M => team::with(team, f),
            _ => self.run(parallel, f),
        }
    }
}

/// A short description of the host CPU: model name and widest SIMD level.
pub fn cpu_description() -> String {
    format!("{} ({})", cpu_model(), simd_level())
}

/// The CPU's model name (from /proc/cpuinfo where there is one).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "AVX2+FMA";
        }
        if std::arch::is_x86_feature_detected!("sse4.2") {
            return "SSE4.2";
        }
        "SSE2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            return "NEON+dotprod";
        }
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// MemAvailable/MemTotal from /proc/meminfo and this process's resident size; `None` where
/// there is no /proc (the allocation itself then is the only check).
fn host_memory() -> Option<MemoryInfo> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some(MemoryInfo {
        used_by_us: resident_pages.saturating_mul(4096),
        free: field("MemAvailable:")?,
        total: field("MemTotal:")?,
    })
}

/// Values a [`CpuReadback`] holds without allocating (a decode step reads one
/// token id).
const INLINE_READ: usize = 8;

/// A finished read (the CPU has no queue to overlap with).
pub enum CpuReadback {
    Inline([i32; INLINE_READ], usize),
    Heap(Vec<i32>),
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type Sampler = CpuSampler;
    type Mark = Instant;
    type Readback = CpuReadback;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device_description(&self) -> String {
        format!("{}, {} threads", cpu_description(), self.threads)
    }

    /// Host memory: `free` is the kernel's MemAvailable, so that a request the machine
    /// cannot hold is refused up front (with overcommit, an allocation that succeeds can
    /// still get the process killed when its pages are touched).
    fn memory(&self) -> Option<MemoryInfo> {
        host_memory()
    }

    fn alloc(&self, dtype: DType, len: usize, what: &str) -> Result<CpuTensor> {
        CpuTensor::try_zeros(dtype, len, what)
    }

    fn upload_vector(&self, w: &WeightView) -> Result<CpuTensor> {
        let mut v = vec![0.0f32; w.n_elements()];
        quant::dequantize(w.ggml_type(), w.bytes(), &mut v)?;
        Ok(CpuTensor::F32(v))
    }

    fn upload_linear(
        &self,
        parts: &[WeightView],
        biases: Option<&[WeightView]>,
    ) -> Result<CpuLinear> {
        let bias = match biases {
            None => None,
            Some(bs) => {
                let mut all = Vec::new();
                for b in bs {
                    let mut v = vec![0.0f32; b.n_elements()];
                    quant::dequantize(b.ggml_type(), b.bytes(), &mut v)?;
                    all.extend_from_slice(&v);
                }
                Some(all)
            }
        };
        let w = CpuLinear::new(parts, bias)?;
        if w.role == matmul::Role::Output {
            let mut outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
            outputs.push((w.info.n, w.info.k, w.info.dtype));
        }
        Ok(w)
    }

    fn linear_info(&self, w: &CpuLinear) -> LinearInfo {
        w.info.clone()
    }

    fn write_i32(&self, dst: &mut CpuTensor, offset: usize, src: &[i32]) -> Result<()> {
        match dst {
            CpuTensor::I32(v) => {
                check_len("write_i32", v.len(), offset + src.len())?;
                v[offset..offset + src.len()].copy_from_slice(src);
                Ok(())
            }
            _ => Err(Error::backend("cpu", "write_i32 into a float tensor")),
        }
    }

    fn read_f32(&self, src: &CpuTensor, offset: usize, out: &mut [f32]) -> Result<()> {
        let s = f32s(src, "read_f32")?;
        check_len("read_f32", s.len(), offset + out.len())?;
        out.copy_from_slice(&s[offset..offset + out.len()]);
        Ok(())
    }

    fn read_i32(&self, src: &CpuTensor, offset: usize, out: &mut [i32]) -> Result<()> {
        let s = i32s(src, "read_i32")?;
        check_len("read_i32", s.len(), offset + out.len())?;
        out.copy_from_slice(&s[offset..offset + out.len()]);
        Ok(())
    }

    fn read_i32_start(&self, src: &CpuTensor, offset: usize, len: usize) -> Result<CpuReadback> {
        // The CPU's work is done when a call returns: read at once.
        let s = i32s(src, "read_i32_start")?;
        check_len("read_i32_start", s.len(), offset + len)?;
        let vals = &s[offset..offset + len];
        Ok(if len <= INLINE_READ {
            let mut a = [0i32; INLINE_READ];
            a[..len].copy_from_slice(vals);
            CpuReadback::Inline(a, len)
        } else {
            CpuReadback::Heap(vals.to_vec())
        })
    }

    fn read_i32_finish(&self, r: CpuReadback, out: &mut [i32]) -> Result<()> {
        let vals = match &r {
            CpuReadback::Inline(a, len) => &a[..*len],
            CpuReadback::Heap(v) => &v[..],
        };
        if vals.len() != out.len() {
            return Err(Error::InvalidArgument(format!(
                "read_i32_finish: {} values were read, {} asked for",
                vals.len(),
                out.len()
            )));
        }
        out.copy_from_slice(vals);
        Ok(())
    }

    fn embed(
        &self,
        table: &CpuLinear,
        ids: &CpuTensor,
        m: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let ids = i32s(ids, "embed ids")?;
        let out = f32s_mut(out, "embed out")?;
        let k = table.info.k;
        check_len("embed ids", ids.len(), m)?;
        check_len("embed out", out.len(), m * k)?;
        for (i, &id) in ids[..m].iter().enumerate() {
            let (part, r) = usize::try_from(id)
                .ok()
                .and_then(|id| table.locate(id))
                .ok_or_else(|| {
                    Error::backend("cpu", format!("token id {id} outside the vocabulary"))
                })?;
            quant::dequantize(part.ty, part.row(r), &mut out[i * k..(i + 1) * k])?;
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        m: usize,
        n: usize,
        eps: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (x, w) = (f32s(x, "rms_norm x")?, f32s(w, "rms_norm w")?);
        let out = f32s_mut(out, "rms_norm out")?;
        check_len("rms_norm x", x.len(), m * n)?;
        check_len("rms_norm w", w.len(), n)?;
        check_len("rms_norm out", out.len(), m * n)?;
        self.run(elementwise::parallel(m * n), || {
            elementwise::rms_norm(x, w, m, n, eps, out)
        });
        Ok(())
    }

    fn matmul_impls(&self) -> &[MatmulImpl] {
        matmul::IMPLS
    }

    fn default_matmul_impl(&self, shape: &MatmulShape) -> usize {
        matmul::default_impl_for(shape, self.role(shape))
    }

    fn matmul(
        &self,
        imp: usize,
        x: &CpuTensor,
        w: &CpuLinear,
        m: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let x = f32s(x, "matmul x")?;
        let out = f32s_mut(out, "matmul out")?;
        // `decode` forced: the decode rule with the weight's own role, as the
        // default rule has it (an output projection may stay in f32). The
        // weight knows it: no lookup by shape on every product.
        let imp = if imp == matmul::DECODE {
            matmul::decode_impl_for(&matmul::shape_of(w, m), w.role)
        } else {
            imp
        };
        // The row kernels (decode) run on the team, the calling thread
        // included; small ones stay on this thread (see matmul::split).
        // The tiled prefill kernels run in the rayon pool.
        match &self.team {
            Some(team) if matmul::row_kernel(imp, w, m) => {
                team::with(team, || matmul::run(imp, x, w, m, out))
            }
            _ => {
                let serial =
                    matmul::row_kernel(imp, w, m) && matmul::work(w, m) < matmul::SERIAL_WORK;
                self.run(!serial, || matmul::run(imp, x, w, m, out))
            }
        }
    }

    fn fuses(&self, imp: usize, w: &CpuLinear, m: usize, norm: bool, epilogue: Epilogue) -> bool {
        // Only gate|up + SwiGLU of a decode step on the team (one hand-off a
        // layer fewer, see matmul_vecdot::vecdot_swiglu); the norm runs first
        // on this thread, as it would apart.
        let _ = norm;
        let imp = if imp == matmul::DECODE {
            matmul::decode_impl_for(&matmul::shape_of(w, m), w.role)
        } else {
            imp
        };
        self.fuse
            && epilogue == Epilogue::SwiGlu
            && m == 1
            && self.team.is_some()
            && imp == matmul::VECDOT
            && matmul_vecdot::fuses_swiglu(w)
    }

    fn matmul_fused(
        &self,
        imp: usize,
        x: &CpuTensor,
        norm: Option<&NormPrologue<'_, CpuTensor>>,
        w: &CpuLinear,
        m: usize,
        epilogue: Epilogue,
        out: &mut CpuTensor,
        scratch: FusedScratch<'_, CpuTensor>,
    ) -> Result<()> {
        let team = match &self.team {
            Some(team) if self.fuses(imp, w, m, norm.is_some(), epilogue) => team,
            _ => return matmul_composed(self, imp, x, norm, w, m, epilogue, out, scratch),
        };
        let FusedScratch { normed, product } = scratch;
        let missing = |what: &str| {
            Error::InvalidArgument(format!(
                "matmul_fused: gate|up + SwiGLU needs a `{what}` scratch buffer"
            ))
        };
        let input: &CpuTensor = match norm {
            Some(nm) => {
                let h = normed.ok_or_else(|| missing("normed"))?;
                self.rms_norm(x, nm.weight, m, w.info.k, nm.eps, h)?;
                h
            }
            None => x,
        };
        let gate_up = f32s_mut(
            product.ok_or_else(|| missing("product"))?,
            "gate|up product",
        )?;
        let input = f32s(input, "matmul x")?;
        let out = f32s_mut(out, "swiglu out")?;
        team::with(team, || {
            matmul_vecdot::vecdot_swiglu(input, w, gate_up, out)
        })
    }

    fn rope(
        &self,
        qkv: &mut CpuTensor,
        pos: &CpuTensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, CpuTensor>,
    ) -> Result<()> {
        let pos = i32s(pos, "rope positions")?;
        check_len("rope positions", pos.len(), m)?;
        let factors = match rope.freq_factors {
            Some(t) => {
                let f = f32s(t, "rope factors")?;
                check_len("rope factors", f.len(), rope.dim / 2)?;
                Some(f)
            }
            None => None,
        };
        let qkv = f32s_mut(qkv, "rope qkv")?;
        check_len("rope qkv", qkv.len(), m * layout.row_width())?;
        rope::apply(qkv, pos, m, layout, rope, factors);
        Ok(())
    }

    fn kv_store(
        &self,
        qkv: &CpuTensor,
        cache: &mut KvLayer<CpuTensor>,
        capacity: usize,
        pos: &CpuTensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()> {
        let pos = i32s(pos, "kv positions")?;
        check_positions(pos, m, capacity)?;
        let qkv = f32s(qkv, "kv qkv")?;
        check_len("kv qkv", qkv.len(), m * layout.row_width())?;
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        let KvLayer { k, v } = cache;
        let kc = f32s_mut(k, "k cache")?;
        let vc = f32s_mut(v, "v cache")?;
        check_len("k cache", kc.len(), need)?;
        check_len("v cache", vc.len(), need)?;
        attention::kv_store(qkv, kc, vc, capacity, pos, m, layout);
        Ok(())
    }

    fn attention(
        &self,
        qkv: &CpuTensor,
        cache: &KvLayer<CpuTensor>,
        capacity: usize,
        pos: &CpuTensor,
        m: usize,
        _kv_len: usize,
        layout: &QkvLayout,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let pos = i32s(pos, "attention positions")?;
        check_positions(pos, m, capacity)?;
        let qkv = f32s(qkv, "attention qkv")?;
        let (k, v) = (f32s(&cache.k, "k cache")?, f32s(&cache.v, "v cache")?);
        let out = f32s_mut(out, "attention out")?;
        check_len("attention qkv", qkv.len(), m * layout.row_width())?;
        check_len(
            "attention out",
            out.len(),
            m * layout.n_heads * layout.head_dim,
        )?;
        let need = layout.n_kv_heads * capacity * layout.head_dim;
        check_len("k cache", k.len(), need)?;
        check_len("v cache", v.len(), need)?;
        let parallel = elementwise::parallel(attention::work(pos, m, layout));
        self.run_attention(parallel, m, || {
            attention::attention(parallel, qkv, k, v, capacity, pos, m, layout, out)
        });
        Ok(())
    }

    /// `decode`: the default decode kernel of each product (`vecdot` where
    /// 8-bit activations are the default, else `fdot`) at every row count.
    /// Each output row is computed on its own in an order fixed by `k` (each
    /// activation row quantised alone for `vecdot`; its multi-row kernels
    /// are bit-identical per row, as tests assert), so a row's values do not
    /// depend on the batch; and served tokens get `generate`'s decode
    /// arithmetic at `vecdot`'s speed rather than `fdot`'s.
    fn batch_invariant_matmul(&self) -> Option<&'static str> {
        Some("decode")
    }

    fn paged_kv_store(
        &self,
        qkv: &CpuTensor,
        cache: &mut KvLayer<CpuTensor>,
        paged: &PagedLayout,
        tables: &CpuTensor,
        pos: &CpuTensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()> {
        let pos = i32s(pos, "paged kv positions")?;
        let tables = i32s(tables, "block tables")?;
        paged_attention::check_rows(paged, tables, pos, m).map_err(|e| Error::backend("cpu", e))?;
        let qkv = f32s(qkv, "paged kv qkv")?;
        check_len("paged kv qkv", qkv.len(), m * layout.row_width())?;
        let need = paged.layer_len(layout);
        check_len("paged k cache", cache.k.len(), need)?;
        check_len("paged v cache", cache.v.len(), need)?;
        match (&mut cache.k, &mut cache.v) {
            (CpuTensor::F32(kc), CpuTensor::F32(vc)) => {
                paged_attention::kv_store(qkv, kc, vc, paged, tables, pos, m, layout)
            }
            (CpuTensor::F16(kc), CpuTensor::F16(vc)) => {
                paged_attention::kv_store(qkv, kc, vc, paged, tables, pos, m, layout)
            }
            _ => return Err(paged_cache_type()),
        }
        Ok(())
    }

    fn paged_attention(
        &self,
        qkv: &CpuTensor,
        cache: &KvLayer<CpuTensor>,
        paged: &PagedLayout,
        tables: &CpuTensor,
        pos: &CpuTensor,
        m: usize,
        _max_kv_len: usize,
        layout: &QkvLayout,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let pos = i32s(pos, "paged attention positions")?;
        let tables = i32s(tables, "block tables")?;
        paged_attention::check_rows(paged, tables, pos, m).map_err(|e| Error::backend("cpu", e))?;
        let qkv = f32s(qkv, "paged attention qkv")?;
        let out = f32s_mut(out, "paged attention out")?;
        check_len("paged attention qkv", qkv.len(), m * layout.row_width())?;
        check_len(
            "paged attention out",
            out.len(),
            m * layout.n_heads * layout.head_dim,
        )?;
        let need = paged.layer_len(layout);
        check_len("paged k cache", cache.k.len(), need)?;
        check_len("paged v cache", cache.v.len(), need)?;
        let parallel = elementwise::parallel(attention::work(pos, m, layout));
        match (&cache.k, &cache.v) {
            (CpuTensor::F32(k), CpuTensor::F32(v)) => self.run_attention(parallel, m, || {
                paged_attention::attention(parallel, qkv, k, v, paged, tables, pos, m, layout, out)
            }),
            (CpuTensor::F16(k), CpuTensor::F16(v)) => self.run_attention(parallel, m, || {
                paged_attention::attention(parallel, qkv, k, v, paged, tables, pos, m, layout, out)
            }),
            _ => return Err(paged_cache_type()),
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: &CpuTensor, m: usize, ffn: usize, out: &mut CpuTensor) -> Result<()> {
        let gu = f32s(gate_up, "swiglu in")?;
        let out = f32s_mut(out, "swiglu out")?;
        check_len("swiglu in", gu.len(), m * 2 * ffn)?;
        check_len("swiglu out", out.len(), m * ffn)?;
        match &self.team {
            // A decode step's row: on the team (see swiglu_row_on_team).
            Some(team) if m == 1 && ffn >= TEAM_SWIGLU_MIN => {
                elementwise::swiglu_row_on_team(team, gu, ffn, out)
            }
            _ => self.run(elementwise::parallel(m * ffn), || {
                elementwise::swiglu(gu, m, ffn, out)
            }),
        }
        Ok(())
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor, len: usize) -> Result<()> {
        let y = f32s(y, "add y")?;
        let x = f32s_mut(x, "add x")?;
        check_len("add x", x.len(), len)?;
        check_len("add y", y.len(), len)?;
        elementwise::add(&mut x[..len], &y[..len]);
        Ok(())
    }

    fn copy(
        &self,
        src: &CpuTensor,
        src_offset: usize,
        dst: &mut CpuTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        // i32 too: the server gathers each sequence's sampled id this way.
        if let (CpuTensor::I32(s), CpuTensor::I32(d)) = (src, &mut *dst) {
            check_len("copy src", s.len(), src_offset + len)?;
            check_len("copy dst", d.len(), dst_offset + len)?;
            d[dst_offset..dst_offset + len].copy_from_slice(&s[src_offset..src_offset + len]);
            return Ok(());
        }
        let s = f32s(src, "copy src")?;
        let d = f32s_mut(dst, "copy dst")?;
        check_len("copy src", s.len(), src_offset + len)?;
        check_len("copy dst", d.len(), dst_offset + len)?;
        d[dst_offset..dst_offset + len].copy_from_slice(&s[src_offset..src_offset + len]);
        Ok(())
    }

    fn new_sampler(&self, params: &SamplerParams, vocab: usize) -> Result<CpuSampler> {
        Ok(CpuSampler {
            sampler: Sampler::new(*params, vocab)?,
        })
    }

    fn sampler_accept(&self, s: &mut CpuSampler, tokens: &[u32]) -> Result<()> {
        for &t in tokens {
            s.sampler.accept(t);
        }
        Ok(())
    }

    fn sample(
        &self,
        logits: &CpuTensor,
        row: usize,
        vocab: usize,
        s: &mut CpuSampler,
        ids: &mut CpuTensor,
    ) -> Result<()> {
        let l = f32s(logits, "sample logits")?;
        check_len("sample logits", l.len(), (row + 1) * vocab)?;
        let logits = &l[row * vocab..(row + 1) * vocab];
        if let Some(tok) = s.sampler.sample_unpenalized(logits) {
            let tok = tok?;
            s.sampler.accept(tok);
            return self.write_i32(ids, 0, &[tok as i32]);
        }
        let mut scratch = self
            .sample_scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        scratch.clear();
        scratch.try_reserve(vocab).map_err(|_| {
            Error::backend("cpu", format!("sampling: no memory for {vocab} logits"))
        })?;
        scratch.extend_from_slice(logits);
        let tok = s.sampler.sample(&mut scratch)?;
        drop(scratch);
        s.sampler.accept(tok);
        self.write_i32(ids, 0, &[tok as i32])
    }

    fn advance(&self, pos: &mut CpuTensor, m: usize) -> Result<()> {
        match pos {
            CpuTensor::I32(v) if m >= 1 && v.len() >= m => {
                v[0] = v[m - 1] + 1;
                Ok(())
            }
            _ => Err(Error::backend("cpu", "advance: bad position tensor")),
        }
    }

    fn stream_read(&self, t: &CpuTensor, len: usize) -> Result<()> {
        let v = i32s(t, "stream_read")?;
        check_len("stream_read", v.len(), len)?;
        let sum = self.pool.install(|| stream::stream_sum(&v[..len]));
        std::hint::black_box(sum);
        Ok(())
    }

    fn mark(&self) -> Result<Instant> {
        Ok(Instant::now())
    }

    fn elapsed_ms(&self, start: &Instant, end: &Instant) -> Result<f64> {
        Ok(end.duration_since(*start).as_secs_f64() * 1e3)
    }

    fn timing_kind(&self) -> TimingKind {
        TimingKind::Host
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
