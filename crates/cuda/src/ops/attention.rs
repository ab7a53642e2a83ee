//! Causal grouped-query attention over the f32 KV cache
//! (`kernels/attention.cu`): a split-KV kernel for one query row (decode)
//! and tiled kernels for many (prefill): f16 tensor-core products where the
//! GPU and head dimension allow, else f32.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use metallic::backend::QkvLayout;

use super::kernel_source;
use crate::compile::KernelSource;
use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;

pub(crate) const SOURCE: KernelSource = kernel_source!("attention");

/// Rows of queries one prefill attention block handles (one warp each).
const PREFILL_ROWS: usize = 8;
/// Rows of queries one tensor-core prefill block handles (16 a warp, 4 warps).
const MMA_ROWS: usize = 64;
/// Fewest query rows given to the tensor-core prefill kernel: below, its
/// 64-row blocks would be mostly empty (and the exact path's greedy tests
/// prefill in chunks of 8 rows).
const MMA_MIN_ROWS: usize = 16;
/// Most KV splits of the decode kernel.
const MAX_SPLITS: usize = 32;
/// Largest head dimension (each lane owns at most 8 output dimensions).
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Most cache rows a decode block copies to shared memory (the fewest keys
/// a split takes, so that every chunk of a context up to MAX_SPLITS times
/// this fits where the head dimension allows).
const STAGE_KEYS: usize = 256;
/// Shared memory a decode block may take for its copy of K and V.
const STAGE_BYTES: usize = 200 * 1024;

pub(crate) struct Attention {
    decode: Func,
    prefill: Func,
    prefill_mma: Func,
    /// Whether prefill may round Q, K, V and P to f16 for tensor-core
    /// products (`attn_prefill_mma`): on by default, METALLIC_CUDA_ATTN_F16=0
    /// turns it off. Measured on an H200 (BENCHMARKS.md, 2026-11-30): pp512
    /// of Qwen2.5-0.5B 2.15x the f32 kernel's, KL divergence against float32
    /// unchanged within its error (docs/quality.md).
    f16: AtomicBool,
    /// Whether decode blocks copy their chunk of K and V to shared memory,
    /// the rows of earlier steps before the wait for their producer (see
    /// `attn_decode`): on by default, METALLIC_CUDA_ATTN_STAGE=0 turns it
    /// off (the same results either way).
    stage: bool,
    scratch: Mutex<Option<Scratch>>,
}

/// METALLIC_CUDA_ATTN_STAGE=0 (or `off`, `false`, `no`): decode attention
/// reads K and V from the cache (asked of L2 early) instead of staging them
/// in shared memory.
fn stage_from_env() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_ATTN_STAGE").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// METALLIC_CUDA_ATTN_F16=0 (or `off`, `false`, `no`): prefill attention in
/// f32 on CUDA cores (see `Attention::f16`); on tensor cores in f16 by
/// default.
fn f16_from_env() -> bool {
    !matches!(
        std::env::var("METALLIC_CUDA_ATTN_F16").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// Partial results of split decode attention: per head and split, (max, sum,
/// acc[hd]); and per head the counter the last block uses to find itself.
struct Scratch {
    part: DeviceBuffer,
    counters: DeviceBuffer,
    part_floats: usize,
    heads: usize,
}

/// The cache of one layer: `[kv_heads, capacity, head_dim]` f32 each.
pub(crate) struct Cache {
    pub k: u64,
    pub v: u64,
    pub capacity: usize,
}

impl Attention {
    pub fn load(l: &mut Loader) -> CudaResult<Attention> {
        let m = l.module(&SOURCE)?;
        let prefill = m.function("attn_prefill")?;
        l.allow_smem(prefill)?;
        let decode = m.function("attn_decode")?;
        l.allow_smem(decode)?;
        Ok(Attention {
            decode,
            prefill,
            prefill_mma: m.function("attn_prefill_mma")?,
            f16: AtomicBool::new(f16_from_env()),
            stage: stage_from_env(),
            scratch: Mutex::new(None),
        })
    }

    /// Whether prefill attention may use the f16 tensor-core kernel.
    pub fn f16(&self) -> bool {
        self.f16.load(Ordering::Relaxed)
    }

    pub fn set_f16(&self, on: bool) {
        self.f16.store(on, Ordering::Relaxed);
    }

    /// The tensor-core kernel takes this prefill: f16 allowed, sm_80 or
    /// newer (m16n8k16 f16 mma), head dimension 64 or 128, enough rows, and
    /// the 16-byte alignment its vector loads assume.
    fn takes_mma(&self, dev: &Device, m: usize, hd: usize, qkv: u64, cache: &Cache) -> bool {
        self.f16()
            && dev.cc.0 >= 8
            && matches!(hd, 64 | 128)
            && m >= MMA_MIN_ROWS
            && (cache.k | cache.v).is_multiple_of(16)
            && qkv.is_multiple_of(8)
    }

    /// Rows of K and V a decode block stages in shared memory (0: none):
    /// as many as [`STAGE_BYTES`] and the device allow, at most
    /// [`STAGE_KEYS`], where rows are whole 16-byte pieces.
    fn stage_keys(&self, dev: &Device, hd: usize, cache: &Cache) -> usize {
        if !self.stage || !hd.is_multiple_of(4) || !(cache.k | cache.v).is_multiple_of(16) {
            return 0;
        }
        // K rows padded by 4 floats, V rows as they are; the kernel's
        // static arrays (~5 KB) come out of the same budget.
        let budget = STAGE_BYTES.min((dev.smem_optin as usize).saturating_sub(8 * 1024));
        (budget / ((2 * hd + 4) * 4)).min(STAGE_KEYS)
    }

    fn scratch(&self, dev: &Arc<Device>, heads: usize, floats: usize) -> CudaResult<(u64, u64)> {
        let mut g = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let fits = g
            .as_ref()
            .is_some_and(|s| s.part_floats >= floats && s.heads >= heads);
        if !fits {
            *g = None;
            let part = DeviceBuffer::new(dev, floats * 4, "attention partials")?;
            let counters = DeviceBuffer::zeroed(dev, heads * 4, "attention counters")?;
            *g = Some(Scratch {
                part,
                counters,
                part_floats: floats,
                heads,
            });
        }
        let s = g.as_ref().expect("just set");
        Ok((s.part.ptr, s.counters.ptr))
    }

    /// `out[m, n_heads * head_dim]`: row `i` of `qkv` attends to cache
    /// positions `0..=pos[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        dev: &Arc<Device>,
        qkv: u64,
        cache: &Cache,
        pos: u64,
        m: usize,
        layout: &QkvLayout,
        out: u64,
    ) -> CudaResult<()> {
        let (nh, nkv, hd) = (layout.n_heads, layout.n_kv_heads, layout.head_dim);
        if hd == 0 || hd > MAX_HEAD_DIM || nkv == 0 || nh % nkv != 0 {
            return Err(CudaError::Invalid(format!(
                "attention layout {nh} heads / {nkv} kv heads / dim {hd}"
            )));
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let capacity = cache.capacity;
        if m == 1 {
            // Splits are fixed by the capacity, not the current length, so that
            // the launch is the same at every step of a replayed decode.
            let splits = capacity.div_ceil(128).clamp(1, MAX_SPLITS);
            let (part, counters) = self.scratch(dev, nh, nh * splits * (hd + 2))?;
            let stage = self.stage_keys(dev, hd, cache);
            dev.launch(
                self.decode,
                (nh as u32, splits as u32, 1),
                128,
                (stage * (2 * hd + 4) * 4) as u32,
                &[
                    Arg(qkv),
                    Arg(cache.k),
                    Arg(cache.v),
                    Arg(pos),
                    Arg::from(nh as i32),
                    Arg::from(nkv as i32),
                    Arg::from(hd as i32),
                    Arg::from(capacity as i32),
                    Arg::from(scale),
                    Arg(part),
                    Arg(counters),
                    Arg(out),
                    Arg::from(stage as i32),
                ],
            )
        } else {
            // Both prefill kernels take the same arguments.
            let args = [
                Arg(qkv),
                Arg(cache.k),
                Arg(cache.v),
                Arg(pos),
                Arg::from(m as i32),
                Arg::from(layout.row_width() as i32),
                Arg::from(nh as i32),
                Arg::from(nkv as i32),
                Arg::from(hd as i32),
                Arg::from(capacity as i32),
                Arg::from(scale),
                Arg(out),
            ];
            if self.takes_mma(dev, m, hd, qkv, cache) {
                // Static shared memory (K and V^T tiles, 36 KB).
                let grid = (m.div_ceil(MMA_ROWS) as u32, nh as u32, 1);
                dev.launch(self.prefill_mma, grid, 128, 0, &args)
            } else {
                let rows = PREFILL_ROWS;
                // K tile transposed and padded [hd][33], V tile [32][hd], queries [rows][hd].
                let smem = (hd * 33 + 32 * hd + rows * hd) * 4;
                let grid = (m.div_ceil(rows) as u32, nh as u32, 1);
                dev.launch(self.prefill, grid, (rows * 32) as u32, smem as u32, &args)
            }
        }
    }
}
