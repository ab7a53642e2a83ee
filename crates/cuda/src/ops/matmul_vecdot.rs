//! `vecdot`: matrix-vector products for up to [`MAX_M`] rows with the
//! activations rounded to 8 bits per 32 values and integer (dp4a) dot
//! products against quantised weights (`kernels/matmul_vecdot.cu`). The same
//! arithmetic as the CPU's `vecdot`; float weights take f32 activations
//! through the `fdot` kernels, as there.
//!
//! The activations are quantised either inside every block of the product
//! (one launch a product) or once by a separate kernel whose result each
//! block copies (two launches, less work a block); the results are
//! identical. By default Q8_0 weights quantise inside the product and the
//! other types in the separate kernel: on the H200, Qwen2.5-0.5B decoded
//! 1097 vs 1047 tok/s in Q8_0 that way, and 1099 vs 1040 in Q4_0 the other
//! way (a 4-bit row streams in half the time, so the per-block quantisation
//! weighs more). [`Vecdot::set_fused`] (METALLIC_CUDA_VECDOT_FUSED=0/1 when
//! the backend opens) forces one way for every type. A product with a fused
//! norm or epilogue ([`Fusion`], the decode path) always quantises in the
//! block: it saves the separate kernel, and the norm must come before rounding.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metallic::backend::{Epilogue, QkvLayout};

use super::matmul_fdot::{
    check_fusion, check_m, matvec_args, matvec_grid, no_rope_product, rope_args, rope_rows, Fdot,
    Fusion, RopeStore, MAX_M,
};
use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;
use crate::linear::CudaLinear;
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("matmul_vecdot");

/// Shared memory the kernels may use for the quantised activations.
const SMEM_LIMIT: usize = 160 * 1024;

/// The quantised-activation scratch is first sized for rows of this length,
/// so that the products of one step do not regrow it mid-step.
const XQ_MIN_K: usize = 16384;

/// Bytes of `m` rows of `k` quantised activations (in shared memory and in
/// the scratch buffer): int8 quants, then a 16-byte group record (scale,
/// scaled sum, half sums) per 32 values.
fn xq_bytes(m: usize, k: usize) -> usize {
    m * k + m * (k / 32) * 16
}

/// Whether `vecdot` reads rows of `k` values of type `t` for `m` rows.
pub(crate) fn supports(t: WType, k: usize, m: usize) -> bool {
    if t.has_vecdot() {
        k.is_multiple_of(t.block()) && xq_bytes(m, k) <= SMEM_LIMIT
    } else {
        super::matmul_fdot::supports_k(t, k)
    }
}

const AUTO: u8 = 0;
const FUSED: u8 = 1;
const SEPARATE: u8 = 2;

/// METALLIC_CUDA_VECDOT_FUSED: `1`/`on` quantises activations inside every
/// product, `0`/`off` in a separate kernel; unset, by weight type.
fn mode_from_env() -> u8 {
    match std::env::var("METALLIC_CUDA_VECDOT_FUSED").as_deref() {
        Ok("1" | "on" | "true" | "yes") => FUSED,
        Ok("0" | "off" | "false" | "no") => SEPARATE,
        _ => AUTO,
    }
}

/// METALLIC_CUDA_VECDOT_SPLIT=1|2|4: warps that share one weight row (split-K)
/// in a product of at most 2 activation rows whose weight rows are too few to
/// fill the GPU with warps (the 4-warp grid of `matvec_grid`: Qwen2.5-0.5B's
/// QKV, O and down); 1 for none. Unset (or anything else): 2, which measured
/// fastest on the H200 (Qwen2.5-0.5B tg128, fused path, two alternating
/// rounds: Q8_0 1,117 / 1,179 / 1,165 tok/s and Q4_0 1,286 / 1,362 / 1,277
/// with 1 / 2 / 4 warps a row).
fn split_from_env() -> usize {
    match std::env::var("METALLIC_CUDA_VECDOT_SPLIT").as_deref() {
        Ok("1") => 1,
        Ok("4") => 4,
        _ => 2,
    }
}

/// METALLIC_CUDA_VECDOT_PRELOAD=0|off: one-row products do not load their
/// first weight units into registers before the wait for their activations
/// (for comparison; the results are the same either way).
fn preload_from_env() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_VECDOT_PRELOAD").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// METALLIC_CUDA_VECDOT_WARPS_PER_SM: the warps a product's grid may put on
/// each SM before a warp takes a second row (default 32).
fn warps_per_sm_from_env() -> usize {
    std::env::var("METALLIC_CUDA_VECDOT_WARPS_PER_SM")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&w: &usize| (4..=64).contains(&w))
        .unwrap_or(32)
}

/// Weight units (16 bytes of quants with their block's scale) a row holds:
/// Q8_0's 16-byte chunks, the 4- and 5-bit types' blocks (`units_per_row`
/// in the kernel).
fn units_per_row(t: WType, k: usize) -> usize {
    if t == WType::Q8_0 {
        k / 16
    } else {
        k / 32
    }
}

/// The types whose one-row kernels can preload units (`unit_is_raw`).
fn has_preload(t: WType) -> bool {
    matches!(
        t,
        WType::Q8_0 | WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1
    )
}

pub(crate) struct Vecdot {
    /// `vecdot_<type>_m<M>` (quantising in the block) for the types with a
    /// dp4a kernel (null for the others).
    fused: [[Func; MAX_M]; WType::COUNT],
    /// `vecdotpre_<type>_m<M>` (copying what `quantize_act` made).
    pre: [[Func; MAX_M]; WType::COUNT],
    /// The most threads a block of `fused` / `pre` may have (by their registers).
    max_threads: [[[u32; MAX_M]; WType::COUNT]; 2],
    /// `vecdot_<type>_p<R>_m1` for R = 1, 2, 4: one row, quantised in the
    /// block, R units a lane loaded before the wait; with their thread limits.
    preload: [[(Func, u32); 3]; WType::COUNT],
    /// `vecdot_<type>_rope_m1`: the fused QKV product of decode (rope and
    /// the KV-cache write in its epilogue), with its thread limit.
    rope: [(Func, u32); WType::COUNT],
    preload_on: bool,
    warps_per_sm: usize,
    quantize: Func,
    /// AUTO, FUSED or SEPARATE.
    mode: AtomicU8,
    /// Warps sharing a weight row (split-K) in products of few rows.
    split: AtomicUsize,
    /// The activations quantised by `quantize_act`, grown on demand.
    xq: Mutex<Option<DeviceBuffer>>,
}

impl Vecdot {
    pub fn load(l: &mut Loader) -> CudaResult<Vecdot> {
        let module = l.module(&SOURCE)?;
        let mut fused = [[Func::null(); MAX_M]; WType::COUNT];
        let mut pre = [[Func::null(); MAX_M]; WType::COUNT];
        let mut max_threads = [[[0u32; MAX_M]; WType::COUNT]; 2];
        for t in WType::ALL.into_iter().filter(|t| t.has_vecdot()) {
            for m in 1..=MAX_M {
                for (i, (set, prefix)) in [(&mut fused, "vecdot"), (&mut pre, "vecdotpre")]
                    .into_iter()
                    .enumerate()
                {
                    let f = module.function(&format!("{prefix}_{}_m{m}", t.suffix()))?;
                    l.allow_smem(f)?;
                    set[t as usize][m - 1] = f;
                    max_threads[i][t as usize][m - 1] = l.max_threads(f)?;
                }
            }
        }
        let mut preload = [[(Func::null(), 0u32); 3]; WType::COUNT];
        for t in WType::ALL.into_iter().filter(|&t| has_preload(t)) {
            for (i, r) in [1, 2, 4].into_iter().enumerate() {
                let f = module.function(&format!("vecdot_{}_p{r}_m1", t.suffix()))?;
                l.allow_smem(f)?;
                preload[t as usize][i] = (f, l.max_threads(f)?);
            }
        }
        let mut rope = [(Func::null(), 0u32); WType::COUNT];
        for t in WType::ALL.into_iter().filter(|t| t.has_vecdot()) {
            let f = module.function(&format!("vecdot_{}_rope_m1", t.suffix()))?;
            l.allow_smem(f)?;
            rope[t as usize] = (f, l.max_threads(f)?);
        }
        Ok(Vecdot {
            fused,
            pre,
            max_threads,
            preload,
            rope,
            preload_on: preload_from_env(),
            warps_per_sm: warps_per_sm_from_env(),
            quantize: module.function("quantize_act")?,
            mode: AtomicU8::new(mode_from_env()),
            split: AtomicUsize::new(split_from_env()),
            xq: Mutex::new(None),
        })
    }

    /// Quantise activations inside every product (`Some(true)`), in a
    /// separate kernel first (`Some(false)`), or by weight type (`None`).
    /// Same results every way.
    pub fn set_fused(&self, on: Option<bool>) {
        let m = match on {
            None => AUTO,
            Some(true) => FUSED,
            Some(false) => SEPARATE,
        };
        self.mode.store(m, Ordering::Relaxed);
    }

    /// Warps sharing a weight row in products with few rows (1, 2 or 4;
    /// other values read as 1). The sums' order changes, so the results may
    /// differ in the last bits from an unsplit product.
    pub fn set_split(&self, split: usize) {
        let s = if matches!(split, 2 | 4) { split } else { 1 };
        self.split.store(s, Ordering::Relaxed);
    }

    pub fn split(&self) -> usize {
        self.split.load(Ordering::Relaxed)
    }

    pub fn fused(&self) -> Option<bool> {
        match self.mode.load(Ordering::Relaxed) {
            FUSED => Some(true),
            SEPARATE => Some(false),
            _ => None,
        }
    }

    /// Quantise `x[m, k]` into the scratch buffer; its address.
    fn quantize(&self, dev: &Arc<Device>, x: u64, m: usize, k: usize) -> CudaResult<u64> {
        // Sized for the largest batch at once, so that a decode step (m = 1)
        // and a prefill chunk share one buffer.
        let want = xq_bytes(MAX_M, k.max(XQ_MIN_K));
        let mut slot = self.xq.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.bytes < want) {
            *slot = None;
            *slot = Some(DeviceBuffer::new(dev, want, "quantised activations")?);
        }
        let buf = slot.as_ref().expect("just set").ptr;
        // One warp per 32-value group.
        dev.launch(
            self.quantize,
            ew_grid(m * k),
            EW_BLOCK,
            0,
            &[Arg(x), Arg::from(m as i32), Arg::from(k as i32), Arg(buf)],
        )?;
        Ok(buf)
    }

    /// `out = epilogue(norm(x)[m, k] W^T (+ bias))` (`out` is `[m, n]`, or
    /// `[m, n / 2]` for SwiGLU); segments of types without a `vecdot` kernel
    /// (float, 3- and 2-bit) go to `fdot`. A fused product always
    /// quantises its (normed) activations in the block: no separate kernel.
    /// `may_split`: products of few rows may share a row over warps
    /// ([`set_split`](Self::set_split)); off where a row's bits must not
    /// depend on `m` (`vecdot_chunked`).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        dev: &Arc<Device>,
        fdot: &Fdot,
        x: u64,
        w: &CudaLinear,
        m: usize,
        out: u64,
        fu: &Fusion,
        may_split: bool,
    ) -> CudaResult<()> {
        check_m(m)?;
        check_fusion(w, fu)?;
        let (n, k) = (w.info.n, w.info.k);
        let ldo = n / fu.rows_per_column();
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        let forced = self.fused();
        let mut xq = 0;
        for seg in &w.segs {
            if !seg.ty.has_vecdot() {
                fdot.launch_segment(dev, seg, k, m, x, out, ldo, bias, fu)?;
                continue;
            }
            if xq_bytes(m, k) > SMEM_LIMIT {
                return Err(CudaError::Invalid(format!(
                    "vecdot: rows of k = {k} are too long for m = {m}"
                )));
            }
            // Measured (see the module note): fused pays where rows are long
            // in bytes (8-bit weights).
            let fused = !fu.is_none() || forced.unwrap_or(seg.ty == WType::Q8_0);
            let (f, xin) = if fused {
                (self.fused[seg.ty as usize][m - 1], x)
            } else {
                if xq == 0 {
                    xq = self.quantize(dev, x, m, k)?;
                }
                (self.pre[seg.ty as usize][m - 1], xq)
            };
            // Split-K only where the per-warp registers are few (m <= 2).
            let limit = self.max_threads[!fused as usize][seg.ty as usize][m - 1];
            let (warps, blocks, split) = self.grid(
                dev,
                seg.rows / fu.rows_per_column(),
                may_split && m <= 2,
                limit,
            );
            // One row quantised in the block: the variant that preloads the
            // fewest units holding a lane's share of its row (both rows for
            // SwiGLU), at most 4, where its registers allow the block.
            let mut f = f;
            if fused && m == 1 && self.preload_on && has_preload(seg.ty) {
                let per_lane = units_per_row(seg.ty, k).div_ceil(32 * split) * fu.rows_per_column();
                let i = match per_lane {
                    1 => 0,
                    2 => 1,
                    _ => 2,
                };
                let (pf, pl) = self.preload[seg.ty as usize][i];
                if warps * split * 32 <= pl as usize {
                    f = pf;
                }
            }
            dev.launch(
                f,
                (blocks as u32, 1, 1),
                (warps * split * 32) as u32,
                xq_bytes(m, k) as u32,
                &matvec_args(seg, k, xin, out, ldo, bias, fu, split),
            )?;
        }
        Ok(())
    }

    /// Whether [`launch_rope`](Self::launch_rope) runs the product of `w`
    /// for one row of `k` values: one segment of a type with a `vecdot`
    /// kernel, rows in whole heads of an even size. (Float weights take
    /// `fdot`'s: [`Fdot::launch_rope`].)
    pub fn supports_rope(w: &CudaLinear, layout: &QkvLayout) -> bool {
        rope_rows(w, layout) && w.segs[0].ty.has_vecdot() && supports(w.segs[0].ty, w.info.k, 1)
    }

    /// Warps a block, blocks and warps a row (split-K) of a one-row-a-warp
    /// product over `rows` rows: [`matvec_grid`]'s blocks capped so that
    /// each block's one quantisation (or copy) of the activations into
    /// shared memory is amortised over many rows while every SM is still
    /// filled several times; split-K (where `may_split`) only where the rows
    /// alone leave the SMs short of warps (the 4-warp grid), halved until
    /// the block fits the kernel's `limit` threads.
    fn grid(
        &self,
        dev: &Device,
        rows: usize,
        may_split: bool,
        limit: u32,
    ) -> (usize, usize, usize) {
        let (warps, blocks) = matvec_grid(dev, rows);
        let blocks = blocks.min(dev.sm_count as usize * self.warps_per_sm / warps);
        let mut split = if may_split && warps == 4 {
            self.split()
        } else {
            1
        };
        while split > 1 && warps * split * 32 > limit as usize {
            split /= 2;
        }
        (warps, blocks, split)
    }

    /// The fused QKV product of one decode row: `qkv = norm(x) W^T (+
    /// bias)` with the Q and K heads rotated and the K and V heads written
    /// into the f32 caches `[kv_heads, capacity, head_dim]` at `pos[0]` (not
    /// stored outside it): the values of the product then `rope_kv_store`.
    /// One warp a pair of rows that rope moves together
    /// (`EPI_ROPE` in the kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_rope(
        &self,
        dev: &Arc<Device>,
        x: u64,
        w: &CudaLinear,
        out: u64,
        norm: u64,
        eps: f32,
        st: &RopeStore<'_>,
    ) -> CudaResult<()> {
        if !Self::supports_rope(w, st.layout) {
            return Err(no_rope_product("vecdot", w));
        }
        let (n, k) = (w.info.n, w.info.k);
        let seg = &w.segs[0];
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        let (f, limit) = self.rope[seg.ty as usize];
        let (warps, blocks, split) = self.grid(dev, n / 2, true, limit);
        let fu = Fusion {
            norm,
            eps,
            epilogue: Epilogue::Store,
        };
        let mv = matvec_args(seg, k, x, out, n, bias, &fu, split);
        dev.launch(
            f,
            (blocks as u32, 1, 1),
            (warps * split * 32) as u32,
            xq_bytes(1, k) as u32,
            &rope_args(mv, st),
        )
    }
}
