//! Device-side sampler state: the penalty window (token counts and a ring of
//! recent ids), the random stream (xoshiro256** state, seeded exactly like the
//! host sampler's), and scratch for the kernels. Everything a sample step
//! reads lives in device memory, so the step can be replayed as a graph.

use std::sync::Arc;

use metallic::sampler::SamplerParams;

use crate::device::{Device, DeviceBuffer};
use crate::error::{CudaError, CudaResult};

/// Blocks of the greedy argmax (its partials are sized for this many).
pub const ARGMAX_BLOCKS: usize = 128;
/// Blocks of the two-phase top-k (`sample_topk`), the largest k it takes
/// and its threads a block (TOPK_MAX and TOPK_THREADS are also defined in
/// kernels/sample.cu).
pub const TOPK_BLOCKS: usize = 128;
pub const TOPK_MAX: usize = 128;
pub const TOPK_THREADS: u32 = 512;

pub struct CudaSampler {
    pub(crate) params: SamplerParams,
    pub(crate) vocab: usize,
    /// 0 when penalties are off.
    pub(crate) window: usize,
    /// `SamplerState` (rng[4], hist_len, hist_start, pad[2]): 48 bytes.
    pub(crate) state: DeviceBuffer,
    /// u32 occurrences per token in the window.
    pub(crate) counts: DeviceBuffer,
    /// i32 ring of the last `window` accepted ids.
    pub(crate) hist: DeviceBuffer,
    /// f32 penalised logits.
    pub(crate) work: DeviceBuffer,
    /// Argmax partials: f32 values, then i32 ids, then the u32 block counter.
    pub(crate) argmax: DeviceBuffer,
    /// Two-phase top-k: u64 candidate ranks [TOPK_BLOCKS * TOPK_MAX], each
    /// block's u64 lower bound [TOPK_BLOCKS], then the u32 block counter
    /// (zero between launches).
    pub(crate) cand: DeviceBuffer,
    /// Host tokens on their way into the window.
    pub(crate) upload: Option<DeviceBuffer>,
}

/// The host sampler's generator state for a seed: the device draws the same stream.
pub use metallic::rng::seed_state;

fn check_params(p: &SamplerParams) -> CudaResult<()> {
    for (name, v) in [
        ("temperature", p.temperature),
        ("top_p", p.top_p),
        ("min_p", p.min_p),
        ("repeat_penalty", p.repeat_penalty),
        ("presence_penalty", p.presence_penalty),
        ("frequency_penalty", p.frequency_penalty),
    ] {
        if !v.is_finite() {
            return Err(CudaError::Invalid(format!(
                "invalid sampler parameter `{name}`"
            )));
        }
    }
    if p.repeat_penalty <= 0.0 {
        return Err(CudaError::Invalid(
            "invalid sampler parameter `repeat_penalty`".into(),
        ));
    }
    Ok(())
}

pub fn penalties_active(p: &SamplerParams) -> bool {
    p.repeat_last_n > 0
        && (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0)
}

impl CudaSampler {
    pub(crate) fn new(
        dev: &Arc<Device>,
        params: &SamplerParams,
        vocab: usize,
    ) -> CudaResult<CudaSampler> {
        check_params(params)?;
        if vocab == 0 || vocab > i32::MAX as usize {
            return Err(CudaError::Invalid(format!("vocabulary of {vocab} tokens")));
        }
        let window = if penalties_active(params) {
            params.repeat_last_n.min(i32::MAX as usize)
        } else {
            0
        };
        let mut st = Vec::with_capacity(48);
        for w in seed_state(params.seed) {
            st.extend_from_slice(&w.to_le_bytes());
        }
        st.extend_from_slice(&[0u8; 16]);
        let state = DeviceBuffer::from_host(dev, &st, "sampler state")?;
        let counts = DeviceBuffer::zeroed(
            dev,
            if window > 0 { vocab * 4 } else { 4 },
            "sampler token counts",
        )?;
        let hist = DeviceBuffer::zeroed(dev, window.max(1) * 4, "sampler history")?;
        let work = DeviceBuffer::new(dev, vocab * 4, "sampler logits")?;
        let argmax = DeviceBuffer::zeroed(dev, ARGMAX_BLOCKS * 8 + 4, "sampler argmax partials")?;
        let cand = DeviceBuffer::zeroed(
            dev,
            8 * (TOPK_BLOCKS * TOPK_MAX + TOPK_BLOCKS + 1),
            "sampler top-k candidates",
        )?;
        Ok(CudaSampler {
            cand,
            params: *params,
            vocab,
            window,
            state,
            counts,
            hist,
            work,
            argmax,
            upload: None,
        })
    }
}
