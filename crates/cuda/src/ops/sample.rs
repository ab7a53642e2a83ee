//! Sampling on the device (`kernels/sample.cu`): penalties, greedy argmax,
//! top-k / top-p / min-p and the draw, and feeding host tokens into the
//! penalty window. The state they work on is [`CudaSampler`].

use std::sync::Arc;

use super::{ew_grid, kernel_source, EW_BLOCK};
use crate::compile::KernelSource;
use crate::device::{Arg, Device, DeviceBuffer, Func};
use crate::error::CudaResult;
use crate::kernels::Loader;
use crate::sampler::{CudaSampler, ARGMAX_BLOCKS, TOPK_BLOCKS, TOPK_MAX, TOPK_THREADS};

pub(crate) const SOURCE: KernelSource = kernel_source!("sample");

pub(crate) struct Sample {
    prepare: Func,
    argmax: Func,
    filter: Func,
    topk: Func,
    accept: Func,
}

impl Sample {
    pub fn load(l: &mut Loader) -> CudaResult<Sample> {
        let m = l.module(&SOURCE)?;
        Ok(Sample {
            prepare: m.function("sample_prepare")?,
            argmax: m.function("sample_argmax")?,
            filter: m.function("sample_filter")?,
            topk: m.function("sample_topk")?,
            accept: m.function("sampler_accept")?,
        })
    }

    /// Feed host-chosen tokens (the prompt) into the penalty window.
    pub fn accept(&self, dev: &Arc<Device>, s: &mut CudaSampler, tokens: &[u32]) -> CudaResult<()> {
        if s.window == 0 || tokens.is_empty() {
            return Ok(());
        }
        // Only the last `window` tokens can matter; earlier ones would be evicted.
        let tail = &tokens[tokens.len().saturating_sub(s.window)..];
        let ids: Vec<u8> = tail
            .iter()
            .flat_map(|&t| (t.min(i32::MAX as u32) as i32).to_le_bytes())
            .collect();
        if s.upload.as_ref().is_none_or(|b| b.bytes < ids.len()) {
            s.upload = None;
            s.upload = Some(DeviceBuffer::new(dev, ids.len(), "sampler token upload")?);
        }
        let up = s.upload.as_ref().expect("just set").ptr;
        dev.copy_htod(up, &ids)?;
        dev.launch(
            self.accept,
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
        )
    }

    /// Draw a token from `logits[0..vocab]` (f32, `vocab == s.vocab`) into
    /// `ids[0]` (i32) and the penalty window.
    pub fn draw(&self, dev: &Device, logits: u64, s: &CudaSampler, ids: u64) -> CudaResult<()> {
        let p = s.params;
        let vocab = s.vocab;
        let v = vocab as i32;
        let prepare = |penalize: bool, rp: f32, freq: f32, pres: f32| {
            dev.launch(
                self.prepare,
                ew_grid(vocab),
                EW_BLOCK,
                0,
                &[
                    Arg(logits),
                    Arg(s.work.ptr),
                    Arg::from(v),
                    Arg(s.counts.ptr),
                    Arg::from(penalize as i32),
                    Arg::from(rp),
                    Arg::from(freq),
                    Arg::from(pres),
                ],
            )
        };
        let src = if s.window > 0 {
            prepare(
                true,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            )?;
            s.work.ptr
        } else if p.is_greedy() {
            // Argmax maps NaN to "never wins" by itself.
            logits
        } else {
            prepare(false, 1.0, 0.0, 0.0)?;
            s.work.ptr
        };
        let common = [
            Arg(s.state.ptr),
            Arg(s.counts.ptr),
            Arg(s.hist.ptr),
            Arg::from(s.window as i32),
        ];
        if p.is_greedy() {
            let blocks = ARGMAX_BLOCKS.min(vocab.div_ceil(1024)).max(1);
            let a = s.argmax.ptr;
            let n = ARGMAX_BLOCKS as u64;
            return dev.launch(
                self.argmax,
                (blocks as u32, 1, 1),
                1024,
                0,
                &[
                    Arg(src),
                    Arg::from(v),
                    Arg(a),
                    Arg(a + 4 * n),
                    Arg(a + 8 * n),
                    Arg(ids),
                    common[0],
                    common[1],
                    common[2],
                    common[3],
                ],
            );
        }
        let top_k = p.top_k.min(i32::MAX as usize) as i32;
        let filter_args = [
            Arg::from(top_k),
            Arg::from(p.top_p),
            Arg::from(p.min_p),
            Arg::from(p.temperature),
        ];
        // With a small top-k over a large vocabulary, one launch: each block
        // takes its chunk's top-k, and the last block to finish filters and
        // draws from the few thousand candidates (`sample_topk`).
        if p.top_k > 0 && p.top_k <= TOPK_MAX && vocab > 4 * TOPK_BLOCKS * p.top_k {
            let cand = s.cand.ptr;
            let bounds = cand + (8 * TOPK_BLOCKS * TOPK_MAX) as u64;
            let counter = bounds + (8 * TOPK_BLOCKS) as u64;
            return dev.launch(
                self.topk,
                (TOPK_BLOCKS as u32, 1, 1),
                TOPK_THREADS,
                0,
                &[
                    Arg(src),
                    Arg::from(v),
                    filter_args[0],
                    filter_args[1],
                    filter_args[2],
                    filter_args[3],
                    Arg(cand),
                    Arg(bounds),
                    Arg(counter),
                    common[0],
                    common[1],
                    common[2],
                    common[3],
                    Arg(ids),
                ],
            );
        }
        dev.launch(
            self.filter,
            (1, 1, 1),
            1024,
            0,
            &[
                Arg(src),
                Arg::from(v),
                filter_args[0],
                filter_args[1],
                filter_args[2],
                filter_args[3],
                common[0],
                common[1],
                common[2],
                common[3],
                Arg(ids),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sample.cu sizes its shared arrays by TOPK_MAX and declares its launch
    /// bounds by TOPK_THREADS: its copies must be the launcher's, or a top-k
    /// of 128 would write past the arrays and a launch would fail.
    #[test]
    fn kernel_and_launcher_agree_on_the_top_k_limits() {
        let define = |name: &str| -> usize {
            let line = SOURCE
                .text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("kernels/sample.cu defines no {name}"));
            line.trim().parse().expect("a number")
        };
        assert_eq!(define("TOPK_MAX"), TOPK_MAX);
        assert_eq!(define("TOPK_THREADS"), TOPK_THREADS as usize);
        // The last block ranks and scores its survivors one a thread.
        assert!(TOPK_THREADS as usize >= TOPK_MAX);
    }
}
