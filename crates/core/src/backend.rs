//! The contract between the model code and a compute device.
//!
//! The model never names a backend: it uploads weights through this trait and
//! calls its ops in forward order. Ops on a device are queued, not waited on;
//! only `read_*` and `synchronize` block. Positions live in device memory, so a
//! decode step needs no host data and can be captured and replayed (see
//! [`Backend::replayable`]).

use std::sync::Arc;

use metallic_gguf::{GgmlType, GgufFile, TensorInfo};

use crate::config::RopeStyle;
use crate::error::{Error, Result};
use crate::sampler::SamplerParams;

/// Element type of activation, cache and index tensors (weights keep their
/// GGUF type and live in [`Backend::Linear`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A tensor of the GGUF file, borrowed from the map for as long as the file lives.
#[derive(Clone)]
pub struct WeightView {
    file: Arc<GgufFile>,
    info: TensorInfo,
}

impl WeightView {
    pub fn new(file: Arc<GgufFile>, info: TensorInfo) -> Self {
        WeightView { file, info }
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }
    /// Length of a row (the innermost dimension, GGUF's ne[0]).
    pub fn cols(&self) -> usize {
        self.info.dims.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows (product of the outer dimensions).
    pub fn rows(&self) -> usize {
        self.info.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn n_elements(&self) -> usize {
        self.info.n_elements as usize
    }
    pub fn bytes(&self) -> &[u8] {
        self.file.tensor_data(&self.info)
    }
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }
    pub fn info(&self) -> &TensorInfo {
        &self.info
    }
}

/// Shape of a weight matrix as uploaded: `parts` stacked by rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearInfo {
    /// Output features: the sum of the parts' rows.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// The weights' type (of the first part when parts differ).
    pub dtype: GgmlType,
    /// Every part has the same type.
    pub uniform: bool,
    pub has_bias: bool,
}

/// The three names under which the seed profile
/// (`docs/seed_profile_qwen25_05b.md`) reports matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatmulOp {
    /// Activation x weight^T.
    Matmul,
    /// Activation x weight^T + bias.
    MatmulBiasAdd,
    /// Scaled batched products inside attention.
    MatmulAlphaBeta,
}

impl MatmulOp {
    pub fn name(self) -> &'static str {
        match self {
            MatmulOp::Matmul => "matmul",
            MatmulOp::MatmulBiasAdd => "matmul_bias_add",
            MatmulOp::MatmulAlphaBeta => "matmul_alpha_beta",
        }
    }
}

/// Everything a matmul implementation needs to decide whether it can run a
/// product: `C[m, n] = A[m, k] * op(B)` repeated `batch` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    pub op: MatmulOp,
    /// Type of the B operand (the weight); activations are f32.
    pub dtype: GgmlType,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

impl std::fmt::Display for MatmulShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "op={} | dtype={} | batch={} | m={} | n={} | k={} | tA={} | tB={}",
            self.op.name(),
            self.dtype.name(),
            self.batch,
            self.m,
            self.n,
            self.k,
            self.ta as u8,
            self.tb as u8
        )
    }
}

/// One registered matmul implementation of a backend.
#[derive(Clone, Copy)]
pub struct MatmulImpl {
    pub name: &'static str,
    pub supports: fn(&MatmulShape) -> bool,
}

/// Rotary embedding of a step, applied in place to the Q and K heads of the
/// fused QKV activation.
pub struct Rope<'a, T> {
    pub style: RopeStyle,
    pub theta: f32,
    /// Rotated leading dimensions of a head.
    pub dim: usize,
    /// Multiplies positions (1 / linear scaling factor).
    pub pos_scale: f32,
    /// Per-frequency divisors (Llama 3 `rope_freqs.weight`), `dim / 2` values.
    pub freq_factors: Option<&'a T>,
}

/// Layout of the fused QKV activation `[m, (heads + 2 kv_heads) * head_dim]`:
/// Q heads, then K heads, then V heads.
#[derive(Clone, Copy, Debug)]
pub struct QkvLayout {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvLayout {
    pub fn row_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
}

/// Key/value cache of one layer: `[kv_heads, capacity, head_dim]` each.
pub struct KvLayer<T> {
    pub k: T,
    pub v: T,
}

/// Geometry of a paged KV cache (see [`Backend::paged_kv_store`]): each
/// layer's K and V are `[n_blocks, kv_heads, block_size, head_dim]`, shared
/// by every sequence; a sequence owns a list of blocks (its block table), and
/// position `p` of it lives in block `table[p / block_size]`, slot
/// `p % block_size`. Tables travel per row: row `i` of a step reads its
/// table at `tables[i * table_stride..][..table_stride]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedLayout {
    pub block_size: usize,
    pub n_blocks: usize,
    /// Entries per row in the tables tensor: the most blocks one sequence
    /// may own (its longest context / block_size, rounded up).
    pub table_stride: usize,
}

impl PagedLayout {
    /// Elements of one layer's K (or V) tensor.
    pub fn layer_len(&self, layout: &QkvLayout) -> usize {
        self.n_blocks * layout.n_kv_heads * self.block_size * layout.head_dim
    }
}

/// An RMS norm of a product's input rows, applied by the product itself
/// ([`Backend::matmul_fused`]): `x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight`.
pub struct NormPrologue<'a, T> {
    pub weight: &'a T,
    pub eps: f32,
}

/// What a fused product ([`Backend::matmul_fused`]) does with `p = x W^T (+ bias)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `out[m, n] = p`.
    Store,
    /// `out[m, n] += p`: the residual add, in place on the residual stream.
    AddInto,
    /// `out[m, n / 2] = silu(p[:, ..n / 2]) * p[:, n / 2..]`: SwiGLU over the
    /// stacked gate|up product (gate rows first, then up rows).
    SwiGlu,
}

/// Buffers the unfused composition of [`Backend::matmul_fused`] writes its
/// intermediates to (a backend that fuses leaves them alone): `normed` holds
/// the normed input `[m, k]` when there is a norm, `product` the product
/// `[m, n]` when the epilogue is not [`Epilogue::Store`].
pub struct FusedScratch<'a, T> {
    pub normed: Option<&'a mut T>,
    pub product: Option<&'a mut T>,
}

impl<'a, T> FusedScratch<'a, T> {
    /// For a norm and no epilogue.
    pub fn normed(normed: &'a mut T) -> Self {
        FusedScratch {
            normed: Some(normed),
            product: None,
        }
    }
    /// For an epilogue and no norm.
    pub fn product(product: &'a mut T) -> Self {
        FusedScratch {
            normed: None,
            product: Some(product),
        }
    }
    /// For a norm and an epilogue.
    pub fn both(normed: &'a mut T, product: &'a mut T) -> Self {
        FusedScratch {
            normed: Some(normed),
            product: Some(product),
        }
    }
}

/// [`Backend::matmul_fused`] as separate ops: `rms_norm` into
/// `scratch.normed`, `matmul`, then `add` or `swiglu` from `scratch.product`.
/// The default of every backend, and the reference a fused kernel is checked against.
#[allow(clippy::too_many_arguments)]
pub fn matmul_composed<B: Backend + ?Sized>(
    b: &B,
    imp: usize,
    x: &B::Tensor,
    norm: Option<&NormPrologue<'_, B::Tensor>>,
    w: &B::Linear,
    m: usize,
    epilogue: Epilogue,
    out: &mut B::Tensor,
    scratch: FusedScratch<'_, B::Tensor>,
) -> Result<()> {
    let info = b.linear_info(w);
    let missing = |what: &str| {
        crate::error::Error::InvalidArgument(format!(
            "matmul_fused: the unfused composition needs a `{what}` scratch buffer"
        ))
    };
    let input: &B::Tensor = match norm {
        Some(nm) => {
            let normed = scratch.normed.ok_or_else(|| missing("normed"))?;
            b.rms_norm(x, nm.weight, m, info.k, nm.eps, normed)?;
            normed
        }
        None => x,
    };
    match epilogue {
        Epilogue::Store => b.matmul(imp, input, w, m, out),
        Epilogue::AddInto => {
            let p = scratch.product.ok_or_else(|| missing("product"))?;
            b.matmul(imp, input, w, m, p)?;
            b.add(out, p, m * info.n)
        }
        Epilogue::SwiGlu => {
            if !info.n.is_multiple_of(2) {
                return Err(crate::error::Error::InvalidArgument(format!(
                    "SwiGLU over a product of {} columns (gate|up needs an even count)",
                    info.n
                )));
            }
            let p = scratch.product.ok_or_else(|| missing("product"))?;
            b.matmul(imp, input, w, m, p)?;
            b.swiglu(p, m, info.n / 2, out)
        }
    }
}

/// Whether `elapsed_ms` measures device execution or host wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingKind {
    /// Device events: time the device spent between two marks.
    Device,
    /// A monotonic host clock: on a synchronous backend this is the op's time.
    Host,
}

/// Device memory as reported by the backend.
#[derive(Clone, Copy, Debug)]
pub struct MemoryInfo {
    pub used_by_us: u64,
    pub free: u64,
    pub total: u64,
}

pub trait Backend: Send + Sync {
    /// Activations, caches, index vectors and f32 parameter vectors.
    type Tensor: Send + Sync;
    /// An uploaded weight matrix in its GGUF block format, maybe with bias.
    type Linear: Send + Sync;
    /// Sampler state (penalty history, random stream) where sampling runs.
    type Sampler: Send;
    /// A point in the op stream for timing.
    type Mark;
    /// A device-to-host read in flight ([`Backend::read_i32_start`]).
    type Readback;

    /// Short name used in reports and on the command line (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Human description of the device (CPU model and SIMD, GPU name).
    fn device_description(&self) -> String;
    fn memory(&self) -> Option<MemoryInfo> {
        None
    }

    fn alloc(&self, dtype: DType, len: usize, what: &str) -> Result<Self::Tensor>;
    /// A 1-D f32 parameter (norm weight, rope factors), converted from any float type.
    fn upload_vector(&self, w: &WeightView) -> Result<Self::Tensor>;
    /// A weight matrix whose rows are the parts' rows stacked in order
    /// (Q|K|V, gate|up), with biases stacked the same way when given.
    fn upload_linear(
        &self,
        parts: &[WeightView],
        biases: Option<&[WeightView]>,
    ) -> Result<Self::Linear>;
    fn linear_info(&self, w: &Self::Linear) -> LinearInfo;
    fn write_i32(&self, dst: &mut Self::Tensor, offset: usize, src: &[i32]) -> Result<()>;
    /// Blocks until the queued work that writes `src` is done.
    fn read_f32(&self, src: &Self::Tensor, offset: usize, out: &mut [f32]) -> Result<()>;
    fn read_i32(&self, src: &Self::Tensor, offset: usize, out: &mut [i32]) -> Result<()>;
    /// Start reading `len` i32 at `offset` of `src` as they will be once the
    /// work queued so far is done, without waiting for it: work queued
    /// before [`Backend::read_i32_finish`] overlaps the wait. The decode loop
    /// queues the next step this way before it reads this step's token.
    fn read_i32_start(
        &self,
        src: &Self::Tensor,
        offset: usize,
        len: usize,
    ) -> Result<Self::Readback>;
    /// Wait for a read begun by [`Backend::read_i32_start`]; `out.len()`
    /// must be the `len` it was started with.
    fn read_i32_finish(&self, r: Self::Readback, out: &mut [i32]) -> Result<()>;

    /// `out[i] = dequant(table row ids[i])` for `m` ids.
    fn embed(
        &self,
        table: &Self::Linear,
        ids: &Self::Tensor,
        m: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Row-wise RMS norm of `x[m, n]`, scaled by `w`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        m: usize,
        n: usize,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// The registered matmul implementations, in preference order.
    fn matmul_impls(&self) -> &[MatmulImpl];
    /// Implementation index used when nothing is forced or tuned.
    fn default_matmul_impl(&self, shape: &MatmulShape) -> usize;
    /// `out[m, n] = x[m, k] * w^T (+ bias)` with implementation `imp`.
    fn matmul(
        &self,
        imp: usize,
        x: &Self::Tensor,
        w: &Self::Linear,
        m: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Whether [`matmul_fused`](Self::matmul_fused) runs this product with
    /// implementation `imp` as one fused pass (else it composes the ops, and
    /// `Exec` records them one by one). The default: never.
    fn fuses(
        &self,
        imp: usize,
        w: &Self::Linear,
        m: usize,
        norm: bool,
        epilogue: Epilogue,
    ) -> bool {
        let _ = (imp, w, m, norm, epilogue);
        false
    }
    /// `out = epilogue(norm(x) W^T (+ bias))` (see [`Epilogue`]): the
    /// product with an optional RMS norm of its input and a residual add or
    /// SwiGLU after it. The default composes the separate ops
    /// ([`matmul_composed`]); a backend overrides it where
    /// [`fuses`](Self::fuses) says so. `x` and `out` must not alias.
    #[allow(clippy::too_many_arguments)]
    fn matmul_fused(
        &self,
        imp: usize,
        x: &Self::Tensor,
        norm: Option<&NormPrologue<'_, Self::Tensor>>,
        w: &Self::Linear,
        m: usize,
        epilogue: Epilogue,
        out: &mut Self::Tensor,
        scratch: FusedScratch<'_, Self::Tensor>,
    ) -> Result<()> {
        matmul_composed(self, imp, x, norm, w, m, epilogue, out, scratch)
    }
    /// Rotate Q and K heads of `qkv` in place at positions `pos[0..m]`.
    fn rope(
        &self,
        qkv: &mut Self::Tensor,
        pos: &Self::Tensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, Self::Tensor>,
    ) -> Result<()>;
    /// Copy the K and V heads of `qkv` into the cache at positions `pos[0..m]`.
    fn kv_store(
        &self,
        qkv: &Self::Tensor,
        cache: &mut KvLayer<Self::Tensor>,
        capacity: usize,
        pos: &Self::Tensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()>;
    /// Whether [`rope_kv_store`](Self::rope_kv_store) is one fused pass for
    /// this cache (else `Exec` records rope and kv_store apart). Default: never.
    fn fuses_rope_kv_store(&self, cache: &KvLayer<Self::Tensor>) -> bool {
        let _ = cache;
        false
    }
    /// [`rope`](Self::rope) then [`kv_store`](Self::kv_store): rotate the Q
    /// and K heads of `qkv` in place and copy the rotated K and the V heads
    /// into the cache. The default runs the two ops.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_store(
        &self,
        qkv: &mut Self::Tensor,
        pos: &Self::Tensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, Self::Tensor>,
        cache: &mut KvLayer<Self::Tensor>,
        capacity: usize,
    ) -> Result<()> {
        self.rope(qkv, pos, m, layout, rope)?;
        self.kv_store(qkv, cache, capacity, pos, m, layout)
    }
    /// Whether [`matmul_rope_kv_store`](Self::matmul_rope_kv_store) is one
    /// fused pass for this QKV product (implementation `imp`, `m` rows) and
    /// cache (else `Exec` runs the normed product, then
    /// [`rope_kv_store`](Self::rope_kv_store)). Default: never.
    fn fuses_matmul_rope_kv_store(
        &self,
        imp: usize,
        w: &Self::Linear,
        m: usize,
        layout: &QkvLayout,
        cache: &KvLayer<Self::Tensor>,
    ) -> bool {
        let _ = (imp, w, m, layout, cache);
        false
    }
    /// `qkv = rms_norm(x) W^T (+ bias)`, then [`rope_kv_store`](Self::rope_kv_store),
    /// in one pass, where [`fuses_matmul_rope_kv_store`](Self::fuses_matmul_rope_kv_store)
    /// says so: the values of the two. The default refuses (no backend is
    /// asked without saying it fuses).
    #[allow(clippy::too_many_arguments)]
    fn matmul_rope_kv_store(
        &self,
        imp: usize,
        x: &Self::Tensor,
        norm: &NormPrologue<'_, Self::Tensor>,
        w: &Self::Linear,
        m: usize,
        qkv: &mut Self::Tensor,
        pos: &Self::Tensor,
        layout: &QkvLayout,
        rope: &Rope<'_, Self::Tensor>,
        cache: &mut KvLayer<Self::Tensor>,
        capacity: usize,
    ) -> Result<()> {
        let _ = (imp, x, norm, w, m, qkv, pos, layout, rope, cache, capacity);
        Err(Error::InvalidArgument(format!(
            "the {} backend has no fused QKV product with rope and the KV-cache write",
            self.name()
        )))
    }
    /// Causal attention of the Q heads of `qkv` over the cache: row `i` sees
    /// positions `0..=pos[i]`. `kv_len` is the host's knowledge of the longest
    /// row (for shape records and launch bounds); kernels read `pos`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        qkv: &Self::Tensor,
        cache: &KvLayer<Self::Tensor>,
        capacity: usize,
        pos: &Self::Tensor,
        m: usize,
        kv_len: usize,
        layout: &QkvLayout,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out[m, ffn] = silu(gate) * up` from `gate_up[m, 2 ffn]`.
    fn swiglu(
        &self,
        gate_up: &Self::Tensor,
        m: usize,
        ffn: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `x[0..len] += y[0..len]`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor, len: usize) -> Result<()>;
    /// `dst[dst_offset..][..len] = src[src_offset..][..len]` (same dtype).
    fn copy(
        &self,
        src: &Self::Tensor,
        src_offset: usize,
        dst: &mut Self::Tensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()>;

    fn new_sampler(&self, params: &SamplerParams, vocab: usize) -> Result<Self::Sampler>;
    /// Feed tokens into the penalty history (the prompt, or tokens chosen elsewhere).
    fn sampler_accept(&self, sampler: &mut Self::Sampler, tokens: &[u32]) -> Result<()>;
    /// Draw a token from `logits[row]`, store it at `ids[0]` and into the history.
    fn sample(
        &self,
        logits: &Self::Tensor,
        row: usize,
        vocab: usize,
        sampler: &mut Self::Sampler,
        ids: &mut Self::Tensor,
    ) -> Result<()>;
    /// `pos[0] = pos[m - 1] + 1`: the next decode position, on the device.
    fn advance(&self, pos: &mut Self::Tensor, m: usize) -> Result<()>;

    /// Run `step` so that later calls with the same `key` may replay it
    /// without calling it (CUDA graphs). Only valid when the step's kernels
    /// take every varying input from device memory. The default just runs it.
    fn replayable(&self, _key: u64, step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        step()
    }

    /// Paged [`kv_store`](Self::kv_store): copy the K and V heads of row `i`
    /// of `qkv` to position `pos[i]` of the sequence whose block table is row
    /// `i` of `tables` (see [`PagedLayout`]). Rows of one step may belong to
    /// different sequences; no two rows may name the same (block, slot).
    #[allow(clippy::too_many_arguments)]
    fn paged_kv_store(
        &self,
        qkv: &Self::Tensor,
        cache: &mut KvLayer<Self::Tensor>,
        paged: &PagedLayout,
        tables: &Self::Tensor,
        pos: &Self::Tensor,
        m: usize,
        layout: &QkvLayout,
    ) -> Result<()> {
        let _ = (qkv, cache, paged, tables, pos, m, layout);
        Err(crate::error::Error::Unsupported(format!(
            "paged KV cache on the {} backend (metallic serve runs on cpu and cuda)",
            self.name()
        )))
    }

    /// Whether [`paged_rope_kv_store`](Self::paged_rope_kv_store) is one
    /// fused pass for this cache (else `Exec` records rope and
    /// paged_kv_store apart). Default: never.
    fn fuses_paged_rope_kv_store(&self, cache: &KvLayer<Self::Tensor>) -> bool {
        let _ = cache;
        false
    }

    /// [`rope`](Self::rope) then [`paged_kv_store`](Self::paged_kv_store).
    /// The default runs the two ops.
    #[allow(clippy::too_many_arguments)]
    fn paged_rope_kv_store(
        &self,
        qkv: &mut Self::Tensor,
        pos: &Self::Tensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, Self::Tensor>,
        cache: &mut KvLayer<Self::Tensor>,
        paged: &PagedLayout,
        tables: &Self::Tensor,
    ) -> Result<()> {
        self.rope(qkv, pos, m, layout, rope)?;
        self.paged_kv_store(qkv, cache, paged, tables, pos, m, layout)
    }

    /// Paged [`attention`](Self::attention): row `i` attends to positions
    /// `0..=pos[i]` of its own sequence, read through row `i` of `tables`.
    /// `max_kv_len` is the host's bound on `pos[i] + 1` over the rows.
    #[allow(clippy::too_many_arguments)]
    fn paged_attention(
        &self,
        qkv: &Self::Tensor,
        cache: &KvLayer<Self::Tensor>,
        paged: &PagedLayout,
        tables: &Self::Tensor,
        pos: &Self::Tensor,
        m: usize,
        max_kv_len: usize,
        layout: &QkvLayout,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (qkv, cache, paged, tables, pos, m, max_kv_len, layout, out);
        Err(crate::error::Error::Unsupported(format!(
            "paged attention on the {} backend (metallic serve runs on cpu and cuda)",
            self.name()
        )))
    }

    /// The matmul implementation whose output rows do not depend on how many
    /// rows share a product (each row computed the same way for every `m`),
    /// usable for every `m`; batched serving forces it where results must be
    /// batch-invariant. `None` where the backend has none.
    fn batch_invariant_matmul(&self) -> Option<&'static str> {
        None
    }

    /// Whether ops only queue work that runs while the host goes on (a
    /// CUDA stream), so that queueing the next step before reading this
    /// one's results overlaps host and device work. False where every op
    /// has finished when it returns (the CPU).
    fn queues_work(&self) -> bool {
        false
    }

    /// Read `t[..len]` (an i32 tensor) once, as fast as the device can
    /// stream memory, discarding a reduction of it: the memory-bandwidth
    /// floor `metallic probe` compares matmuls with.
    fn stream_read(&self, t: &Self::Tensor, len: usize) -> Result<()> {
        let _ = (t, len);
        Err(crate::error::Error::Unsupported(format!(
            "stream_read on the {} backend",
            self.name()
        )))
    }

    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds between two marks; may wait for the second one.
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64>;
    fn timing_kind(&self) -> TimingKind;
    fn synchronize(&self) -> Result<()>;
}
