//! The paged KV cache of batched serving on the GPU: `paged_kv_store` and
//! `paged_attention` against the CPU backend (several sequences of different
//! lengths, lengths that are not multiples of the block or of the kernel's
//! 32-key tile, grouped-query heads, f32 and f16 caches), `forward_batch`
//! against each sequence's own `forward`, and batch invariance under the
//! batch-invariant matmul (`metallic serve --deterministic`): a sequence's
//! logits are the same bits alone and inside batches of several sizes.
//!
//! Skipped with a message where no GPU can be used; METALLIC_REQUIRE_GPU=1
//! makes that a failure.

mod common;

use std::sync::Arc;

use common::*;
use metallic::backend::{Backend, DType, KvLayer, PagedLayout, QkvLayout};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::model::{BatchRow, BatchState, Model, State};
use metallic_cpu::CpuBackend;
use metallic_gguf::{GgmlType, GgufFile};

// ---------------------------------------------------------------- the two ops

/// One step's rows: sequence `s` has `prior[s]` positions cached before the
/// step and `new[s]` rows in it, through its own scattered block table.
struct Case {
    layout: QkvLayout,
    paged: PagedLayout,
    prior: Vec<usize>,
    new: Vec<usize>,
}

impl Case {
    /// Sequence `s`'s table: blocks spread over the cache, interleaved with
    /// the other sequences' (block `j` of `s` is `(j * n_seqs + s) * 7 % n`,
    /// distinct for all `(j, s)` while `n` is prime to 7).
    fn table(&self, s: usize) -> Vec<i32> {
        let n = self.paged.n_blocks;
        (0..self.paged.table_stride)
            .map(|j| ((j * self.prior.len() + s) * 7 % n) as i32)
            .collect()
    }

    /// Rows of a step: (sequence, position) for `counts[s]` positions from `from[s]`.
    fn rows(&self, from: &[usize], counts: &[usize]) -> Vec<(usize, usize)> {
        let mut rows = Vec::new();
        for (s, (&f, &c)) in from.iter().zip(counts).enumerate() {
            rows.extend((f..f + c).map(|p| (s, p)));
        }
        rows
    }
}

/// Store random K/V for `rows`, return (qkv, tables, pos) tensors of the rows.
fn store<B: Backend>(
    b: &B,
    c: &Case,
    cache: &mut KvLayer<B::Tensor>,
    rows: &[(usize, usize)],
    seed: u64,
) -> (B::Tensor, B::Tensor, B::Tensor) {
    let (m, w) = (rows.len(), c.layout.row_width());
    let qkv = activations(b, &randn(m * w, seed), m, w);
    let mut tables = Vec::new();
    let mut pos = Vec::new();
    for &(s, p) in rows {
        tables.extend(c.table(s));
        pos.push(p as i32);
    }
    let mut tt = b.alloc(DType::I32, tables.len(), "tables").unwrap();
    b.write_i32(&mut tt, 0, &tables).unwrap();
    let mut pt = b.alloc(DType::I32, m, "pos").unwrap();
    b.write_i32(&mut pt, 0, &pos).unwrap();
    b.paged_kv_store(&qkv, cache, &c.paged, &tt, &pt, m, &c.layout)
        .unwrap();
    (qkv, tt, pt)
}

/// The attention output of the step's rows, and the K and V caches (read
/// as f32 where the cache is f32).
/// K and V caches read back as f32.
type Caches = (Vec<f32>, Vec<f32>);

fn paged_rows<B: Backend>(b: &B, c: &Case, kv: DType) -> (Vec<f32>, Option<Caches>) {
    let len = c.paged.layer_len(&c.layout);
    let mut cache = KvLayer {
        k: b.alloc(kv, len, "k").unwrap(),
        v: b.alloc(kv, len, "v").unwrap(),
    };
    let zeros = vec![0; c.prior.len()];
    let prior = c.rows(&zeros, &c.prior);
    if !prior.is_empty() {
        store(b, c, &mut cache, &prior, 51);
    }
    let step = c.rows(&c.prior, &c.new);
    let (qkv, tables, pos) = store(b, c, &mut cache, &step, 52);
    let m = step.len();
    let max_len = step.iter().map(|&(_, p)| p + 1).max().unwrap();
    let n = m * c.layout.n_heads * c.layout.head_dim;
    let mut out = b.alloc(DType::F32, n, "out").unwrap();
    b.paged_attention(
        &qkv, &cache, &c.paged, &tables, &pos, m, max_len, &c.layout, &mut out,
    )
    .unwrap();
    let caches = (kv == DType::F32).then(|| (read(b, &cache.k, len), read(b, &cache.v, len)));
    (read(b, &out, n), caches)
}

/// Decode steps (one row per sequence) and mixed steps (prefill chunks and
/// decode rows), sequences of 1 to 700 positions, blocks of 16 and of 5,
/// head dims 64, 80 and 128, f32 and f16 caches: every output within 3e-5
/// (relative L2) of the CPU's, and the f32 caches equal to the last bit.
#[test]
fn paged_store_and_attention_match_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let steps: [(&[usize], &[usize]); 4] = [
        (&[0, 0, 0], &[1, 7, 33]),
        (&[5, 31, 100, 699], &[1, 1, 1, 1]),
        (&[17, 0, 64], &[1, 40, 3]),
        (&[300], &[19]),
    ];
    for hd in [64, 80, 128] {
        for block_size in [16, 5] {
            for (prior, new) in steps {
                let layout = QkvLayout {
                    n_heads: 8,
                    n_kv_heads: 2,
                    head_dim: hd,
                };
                let longest = prior.iter().zip(new).map(|(p, n)| p + n).max().unwrap();
                let stride = longest.div_ceil(block_size);
                // Not a multiple of 7, so that `table` permutes the blocks:
                // no two sequences share one.
                let mut n_blocks = stride * prior.len() + 3;
                if n_blocks % 7 == 0 {
                    n_blocks += 1;
                }
                let c = Case {
                    layout,
                    paged: PagedLayout {
                        block_size,
                        n_blocks,
                        table_stride: stride,
                    },
                    prior: prior.to_vec(),
                    new: new.to_vec(),
                };
                for kv in [DType::F32, DType::F16] {
                    let what = format!(
                        "paged attention hd={hd} block={block_size} prior={prior:?} new={new:?} {kv:?}"
                    );
                    let (want, want_cache) = paged_rows(&cpu, &c, kv);
                    let (got, got_cache) = paged_rows(&gpu, &c, kv);
                    let err = rel_l2(&got, &want);
                    eprintln!("{what}: rel_l2={err:.2e}");
                    assert!(err <= 3e-5, "{what}: rel_l2 {err:.3e}");
                    assert_eq!(got_cache, want_cache, "{what}: caches differ");
                }
            }
        }
    }
}

/// Other head layouts and long rows: 16 query heads per KV head, one
/// (multi-head attention), six; rows of 1 to 2,503 keys (every warp walks
/// many tiles), decode and prefill rows mixed: within 3e-5 of the CPU.
#[test]
fn paged_attention_of_other_head_layouts_and_long_rows_matches_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let prior: &[usize] = &[0, 1000, 2500, 95];
    let new: &[usize] = &[1, 1, 3, 40];
    let block_size = 16;
    let stride = (2500 + 3usize).div_ceil(block_size);
    for (n_heads, n_kv_heads, head_dim) in [(16, 1, 64), (4, 4, 128), (12, 2, 64)] {
        let c = Case {
            layout: QkvLayout {
                n_heads,
                n_kv_heads,
                head_dim,
            },
            paged: PagedLayout {
                block_size,
                n_blocks: stride * prior.len() + 1,
                table_stride: stride,
            },
            prior: prior.to_vec(),
            new: new.to_vec(),
        };
        for kv in [DType::F32, DType::F16] {
            let what = format!("paged attention {n_heads}/{n_kv_heads} heads hd={head_dim} {kv:?}");
            let (want, _) = paged_rows(&cpu, &c, kv);
            let (got, _) = paged_rows(&gpu, &c, kv);
            let err = rel_l2(&got, &want);
            eprintln!("{what}: rel_l2={err:.2e}");
            assert!(err <= 3e-5, "{what}: rel_l2 {err:.3e}");
        }
    }
}

// ---------------------------------------------------------------- the batched forward

fn exec<'a, B: Backend>(b: &'a B, forced: Option<&str>) -> Exec<'a, B> {
    let cfg = DispatchConfig {
        all: forced.map(str::to_string),
        ..Default::default()
    };
    Exec::new(b, MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap())
}

fn model_file() -> Arc<GgufFile> {
    synth_model(&tiny256(), GgmlType::Q8_0, 7)
}

/// Prompts of several lengths (below, at and above a block of 16).
fn prompts(n: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            let len = [11, 3, 16, 1, 29, 7][s % 6];
            (0..len)
                .map(|i| ((s * 131 + i * 17 + 5) % vocab.min(500)) as u32)
                .collect()
        })
        .collect()
}

fn row_logits<B: Backend>(b: &B, t: &B::Tensor, row: usize, vocab: usize) -> Vec<f32> {
    let mut v = vec![0.0; vocab];
    b.read_f32(t, row * vocab, &mut v).unwrap();
    v
}

/// Each sequence alone through `forward` (contiguous cache) with `forced`,
/// its prompt in chunks of at most 8: logits after its prompt, then after
/// one decode token.
fn single<B: Backend>(
    b: &B,
    model: &Model<B>,
    forced: Option<&str>,
    prompt: &[u32],
    next: u32,
) -> [Vec<f32>; 2] {
    let vocab = model.config.vocab;
    let mut ex = exec(b, forced);
    let mut st = State::new(b, &model.config, 64, 8, 1).unwrap();
    metallic::generate::prefill(&mut ex, model, &mut st, prompt).unwrap();
    let a = row_logits(b, &st.logits, 0, vocab);
    let start = st.n_past;
    st.stage(b, &[next], vocab).unwrap();
    model.forward(&mut ex, &mut st, 1, start, false).unwrap();
    [a, row_logits(b, &st.logits, 0, vocab)]
}

/// Sequences together, batched through `forward_batch` with `forced`: every
/// prompt row in sequence order, cut into steps of at most `step_rows` rows
/// (so one step mixes the end of one prompt with the start of the next),
/// then one decode step with a row each. Per sequence, the logits after its
/// prompt and after its decode token. Sequence `s` owns blocks `2s, 2s+1`.
fn batched_in_steps<B: Backend>(
    b: &B,
    model: &Model<B>,
    forced: Option<&str>,
    kv: DType,
    prompts: &[Vec<u32>],
    next: &[u32],
    step_rows: usize,
) -> Vec<[Vec<f32>; 2]> {
    let vocab = model.config.vocab;
    let n = prompts.len();
    let paged = PagedLayout {
        block_size: 16,
        n_blocks: 2 * n,
        table_stride: 2,
    };
    let mut ex = exec(b, forced);
    let mut bs = BatchState::new(b, &model.config, paged, kv, step_rows.max(n), n).unwrap();
    let tables: Vec<[u32; 2]> = (0..n as u32).map(|s| [2 * s, 2 * s + 1]).collect();
    // (sequence, row) in order; a sequence's last prompt row wants logits.
    let mut rows = Vec::new();
    for (s, p) in prompts.iter().enumerate() {
        for (pos, &token) in p.iter().enumerate() {
            let row = BatchRow {
                token,
                pos,
                table: &tables[s],
            };
            rows.push((s, pos + 1 == p.len(), row));
        }
    }
    let mut after_prompt = vec![Vec::new(); n];
    for chunk in rows.chunks(step_rows) {
        let step: Vec<BatchRow> = chunk.iter().map(|r| r.2).collect();
        let wanted: Vec<usize> = (0..chunk.len()).filter(|&i| chunk[i].1).collect();
        model
            .forward_batch(&mut ex, &mut bs, &step, &wanted)
            .unwrap();
        for (j, &i) in wanted.iter().enumerate() {
            after_prompt[chunk[i].0] = row_logits(b, &bs.logits, j, vocab);
        }
    }
    let rows: Vec<BatchRow> = (0..n)
        .map(|s| BatchRow {
            token: next[s],
            pos: prompts[s].len(),
            table: &tables[s],
        })
        .collect();
    let all: Vec<usize> = (0..n).collect();
    model.forward_batch(&mut ex, &mut bs, &rows, &all).unwrap();
    after_prompt
        .into_iter()
        .enumerate()
        .map(|(s, a)| [a, row_logits(b, &bs.logits, s, vocab)])
        .collect()
}

/// Sequences `seqs` together: one step with every prompt, then one decode
/// step with a row each. Returns, per sequence, the logits after its prompt
/// and after its decode token. Tables: sequence `s` owns blocks `2s, 2s+1`.
fn batched<B: Backend>(
    b: &B,
    model: &Model<B>,
    forced: Option<&str>,
    kv: DType,
    prompts: &[Vec<u32>],
    next: &[u32],
) -> Vec<[Vec<f32>; 2]> {
    let vocab = model.config.vocab;
    let n = prompts.len();
    let paged = PagedLayout {
        block_size: 16,
        n_blocks: 2 * n,
        table_stride: 2,
    };
    let total: usize = prompts.iter().map(Vec::len).sum();
    let mut ex = exec(b, forced);
    let mut bs = BatchState::new(b, &model.config, paged, kv, total.max(n), n).unwrap();
    let tables: Vec<[u32; 2]> = (0..n as u32).map(|s| [2 * s, 2 * s + 1]).collect();
    let mut rows = Vec::new();
    let mut last = Vec::new();
    for (s, p) in prompts.iter().enumerate() {
        for (pos, &token) in p.iter().enumerate() {
            rows.push(BatchRow {
                token,
                pos,
                table: &tables[s],
            });
        }
        last.push(rows.len() - 1);
    }
    model.forward_batch(&mut ex, &mut bs, &rows, &last).unwrap();
    let after_prompt: Vec<Vec<f32>> = (0..n)
        .map(|s| row_logits(b, &bs.logits, s, vocab))
        .collect();
    let rows: Vec<BatchRow> = (0..n)
        .map(|s| BatchRow {
            token: next[s],
            pos: prompts[s].len(),
            table: &tables[s],
        })
        .collect();
    let all: Vec<usize> = (0..n).collect();
    model.forward_batch(&mut ex, &mut bs, &rows, &all).unwrap();
    after_prompt
        .into_iter()
        .enumerate()
        .map(|(s, a)| [a, row_logits(b, &bs.logits, s, vocab)])
        .collect()
}

/// Six sequences of 1 to 29 positions batched together (prompt rows in
/// steps of 8 that mix sequences, then a decode row each) give each
/// sequence the logits its own single-sequence `forward` gives, both on the
/// exact `fdot` matmul (f32 activations; the matrix-vector kernels take at
/// most 8 rows): within 1e-4 (relative L2) with an f32 cache, 1e-2 with an
/// f16 one. (The default matmuls are not compared: `vecdot` rounds
/// activations to 8 bits and cuBLAS to f16, and which one runs depends on
/// the row count, so single and batched runs differ by about 1e-2 on these
/// random weights.)
#[test]
fn forward_batch_matches_each_sequence_alone() {
    let Some(gpu) = cuda_or_skip() else { return };
    let file = model_file();
    let model = Model::load(&gpu, &file).unwrap();
    let vocab = model.config.vocab;
    let ps = prompts(6, vocab);
    let next: Vec<u32> = (0..6).map(|s| (40 + 3 * s) as u32).collect();
    let want: Vec<[Vec<f32>; 2]> = ps
        .iter()
        .zip(&next)
        .map(|(p, &t)| single(&gpu, &model, Some("fdot"), p, t))
        .collect();
    for (kv, tol) in [(DType::F32, 1e-4), (DType::F16, 1e-2)] {
        let got = batched_in_steps(&gpu, &model, Some("fdot"), kv, &ps, &next, 8);
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            for step in 0..2 {
                let err = rel_l2(&g[step], &w[step]);
                eprintln!("{kv:?} sequence {s} step {step}: rel_l2={err:.2e}");
                assert!(
                    err <= tol,
                    "{kv:?} sequence {s} step {step}: rel_l2 {err:.3e}"
                );
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Under the batch-invariant matmul (`vecdot_chunked`, what `metallic
/// serve --deterministic` forces), sequence 0's logits after its prompt and
/// after a decode step are the same bits alone and inside batches of 2, 7,
/// 13 and 64 sequences (up to 64 decode rows and 700 prefill rows in a
/// step), f32 and f16 caches. The default matmuls' agreement is reported.
#[test]
fn deterministic_logits_are_the_same_alone_and_in_batches() {
    let Some(gpu) = cuda_or_skip() else { return };
    let name = gpu.batch_invariant_matmul().expect("cuda has one");
    let file = model_file();
    let model = Model::load(&gpu, &file).unwrap();
    let vocab = model.config.vocab;
    for kv in [DType::F32, DType::F16] {
        let ps = prompts(64, vocab);
        let next: Vec<u32> = (0..64).map(|s| (40 + 3 * s) as u32).collect();
        let alone = batched(&gpu, &model, Some(name), kv, &ps[..1], &next[..1]);
        let default_alone = batched(&gpu, &model, None, kv, &ps[..1], &next[..1]);
        for n in [2, 7, 13, 64] {
            let got = batched(&gpu, &model, Some(name), kv, &ps[..n], &next[..n]);
            for step in 0..2 {
                assert_eq!(
                    bits(&got[0][step]),
                    bits(&alone[0][step]),
                    "{kv:?}: sequence 0 step {step} changed inside a batch of {n}"
                );
            }
            let dflt = batched(&gpu, &model, None, kv, &ps[..n], &next[..n]);
            let same = (0..2)
                .filter(|&st| bits(&dflt[0][st]) == bits(&default_alone[0][st]))
                .count();
            eprintln!(
                "{kv:?} batch of {n}: default matmuls bit-identical in {same} of 2 steps, \
                 rel_l2 {:.2e} / {:.2e}",
                rel_l2(&dflt[0][0], &default_alone[0][0]),
                rel_l2(&dflt[0][1], &default_alone[0][1])
            );
        }
    }
}

/// Logits of `steps` decode steps of 4 sequences after their prompts, decode
/// steps replayed as graphs or not.
fn decode_steps(
    gpu: &metallic_cuda::CudaBackend,
    model: &Model<metallic_cuda::CudaBackend>,
    replay: bool,
    steps: usize,
) -> Vec<Vec<f32>> {
    let vocab = model.config.vocab;
    let ps = prompts(4, vocab);
    let paged = PagedLayout {
        block_size: 16,
        n_blocks: 12,
        table_stride: 3,
    };
    let mut ex = exec(gpu, None);
    let mut bs = BatchState::new(gpu, &model.config, paged, DType::F32, 64, 4).unwrap();
    bs.replay_decode = replay;
    let tables: Vec<[u32; 3]> = (0..4u32).map(|s| [3 * s, 3 * s + 1, 3 * s + 2]).collect();
    let mut rows = Vec::new();
    let mut last = Vec::new();
    for (s, p) in ps.iter().enumerate() {
        for (pos, &token) in p.iter().enumerate() {
            rows.push(BatchRow {
                token,
                pos,
                table: &tables[s],
            });
        }
        last.push(rows.len() - 1);
    }
    model.forward_batch(&mut ex, &mut bs, &rows, &last).unwrap();
    let mut out = Vec::new();
    for step in 0..steps {
        let rows: Vec<BatchRow> = (0..4)
            .map(|s| BatchRow {
                token: (7 * step + s + 1) as u32,
                pos: ps[s].len() + step,
                table: &tables[s],
            })
            .collect();
        model
            .forward_batch(&mut ex, &mut bs, &rows, &[0, 1, 2, 3])
            .unwrap();
        out.push(row_logits(gpu, &bs.logits, 0, vocab * 4));
    }
    out
}

/// Decode steps of one batch size are captured once and then replayed as a
/// CUDA graph (positions and block tables read from device memory), with
/// the same logits, to the bit, as running them directly.
#[test]
fn batched_decode_steps_replay_as_graphs_with_the_same_logits() {
    let Some(gpu) = cuda_or_skip() else { return };
    let file = model_file();
    let model = Model::load(&gpu, &file).unwrap();
    let direct = decode_steps(&gpu, &model, false, 4);
    let (c0, r0) = gpu.graph_stats();
    let replayed = decode_steps(&gpu, &model, true, 4);
    let (c1, r1) = gpu.graph_stats();
    assert!(c1 > c0, "no graph captured");
    assert!(
        r1 >= r0 + 3,
        "decode steps not replayed ({} replays)",
        r1 - r0
    );
    for (step, (g, w)) in replayed.iter().zip(&direct).enumerate() {
        assert_eq!(bits(g), bits(w), "step {step}: replayed logits differ");
    }
}
