//! The batched forward over the paged KV cache on SmolLM2: it computes the
//! same logits as the single-sequence forward, bit for bit, and a sequence's
//! logits do not depend on the other rows of a step nor on how its prompt was
//! chunked (batch invariance by construction: see core `model/batched.rs`);
//! an f16 cache gives logits close to the f32 cache's in half the memory.

use std::sync::Arc;

use metallic::backend::{Backend, DType, PagedLayout};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::model::{BatchRow, BatchState, Model, State};
use metallic_cpu::CpuBackend;
use metallic_gguf::GgufFile;
use metallic_test_support::repo_path;

const MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";

fn open() -> Option<Arc<GgufFile>> {
    let path = repo_path(MODEL);
    if !path.exists() {
        eprintln!(
            "skipping: {} missing (run scripts/fetch-assets.sh)",
            path.display()
        );
        return None;
    }
    Some(Arc::new(GgufFile::open(&path).unwrap()))
}

/// The row-independent matmul the server forces on the CPU.
fn fdot_exec(b: &CpuBackend) -> Exec<'_, CpuBackend> {
    exec_with(b, "fdot")
}

/// An executor with every matmul forced to `matmul`.
fn exec_with<'b>(b: &'b CpuBackend, matmul: &str) -> Exec<'b, CpuBackend> {
    let cfg = DispatchConfig {
        all: Some(matmul.into()),
        ..Default::default()
    };
    Exec::new(b, MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap())
}

const PROMPT_A: [u32; 11] = [1, 504, 3458, 282, 4649, 314, 28, 216, 1345, 2830, 30];
const PROMPT_B: [u32; 7] = [1, 19556, 28, 940, 253, 1100, 33];

fn read_row(b: &CpuBackend, t: &metallic_cpu::CpuTensor, row: usize, vocab: usize) -> Vec<f32> {
    let mut v = vec![0.0; vocab];
    b.read_f32(t, row * vocab, &mut v).unwrap();
    v
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn paged(n_blocks: usize) -> PagedLayout {
    PagedLayout {
        block_size: 4,
        n_blocks,
        table_stride: 8,
    }
}

#[test]
fn batched_paged_forward_equals_single_sequence_forward_bitwise() {
    let Some(file) = open() else { return };
    let b = CpuBackend::new(2).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let vocab = model.config.vocab;

    // Single-sequence forward, the prompt in one step.
    let mut ex = fdot_exec(&b);
    let mut st = State::new(&b, &model.config, 32, 16, 1).unwrap();
    st.stage(&b, &PROMPT_A, vocab).unwrap();
    model
        .forward(&mut ex, &mut st, PROMPT_A.len(), 0, false)
        .unwrap();
    let want = read_row(&b, &st.logits, 0, vocab);

    // Batched: the prompt in two chunks over scattered, non-contiguous blocks.
    let mut bs = BatchState::new(&b, &model.config, paged(16), DType::F32, 16, 4).unwrap();
    let table = [9u32, 2, 14];
    let rows: Vec<BatchRow> = PROMPT_A
        .iter()
        .enumerate()
        .map(|(p, &token)| BatchRow {
            token,
            pos: p,
            table: &table,
        })
        .collect();
    model
        .forward_batch(&mut ex, &mut bs, &rows[..5], &[])
        .unwrap();
    model
        .forward_batch(&mut ex, &mut bs, &rows[5..], &[5])
        .unwrap();
    let got = read_row(&b, &bs.logits, 0, vocab);
    assert_eq!(bits(&got), bits(&want), "paged batched logits differ");
}

#[test]
fn sequence_logits_do_not_depend_on_the_rest_of_the_batch() {
    let Some(file) = open() else { return };
    let b = CpuBackend::new(2).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let vocab = model.config.vocab;
    let mut ex = fdot_exec(&b);

    // A alone, whole prompt in one step.
    let mut alone = BatchState::new(&b, &model.config, paged(16), DType::F32, 32, 4).unwrap();
    let ta = [0u32, 1, 2];
    let rows_a: Vec<BatchRow> = PROMPT_A
        .iter()
        .enumerate()
        .map(|(p, &token)| BatchRow {
            token,
            pos: p,
            table: &ta,
        })
        .collect();
    let last = rows_a.len() - 1;
    model
        .forward_batch(&mut ex, &mut alone, &rows_a, &[last])
        .unwrap();
    let want = read_row(&b, &alone.logits, 0, vocab);

    // A interleaved with B in one step, A's rows after B's, other blocks.
    let mut mixed = BatchState::new(&b, &model.config, paged(16), DType::F32, 32, 4).unwrap();
    let (ta2, tb) = ([7u32, 3, 11], [5u32, 6]);
    let mut rows: Vec<BatchRow> = PROMPT_B
        .iter()
        .enumerate()
        .map(|(p, &token)| BatchRow {
            token,
            pos: p,
            table: &tb,
        })
        .collect();
    let b_last = rows.len() - 1;
    rows.extend(PROMPT_A.iter().enumerate().map(|(p, &token)| BatchRow {
        token,
        pos: p,
        table: &ta2,
    }));
    let a_last = rows.len() - 1;
    model
        .forward_batch(&mut ex, &mut mixed, &rows, &[b_last, a_last])
        .unwrap();
    let got = read_row(&b, &mixed.logits, 1, vocab);
    assert_eq!(bits(&got), bits(&want), "A's logits changed inside a batch");
}

#[test]
fn rows_outside_their_block_table_are_refused() {
    let Some(file) = open() else { return };
    let b = CpuBackend::new(1).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let mut ex = fdot_exec(&b);
    let mut bs = BatchState::new(&b, &model.config, paged(4), DType::F32, 8, 2).unwrap();
    // Position 9 needs block index 2; the table has 2 entries.
    let table = [0u32, 1];
    let row = BatchRow {
        token: 1,
        pos: 9,
        table: &table,
    };
    let err = model
        .forward_batch(&mut ex, &mut bs, &[row], &[0])
        .unwrap_err();
    assert!(err.to_string().contains("needs 3 blocks"), "{err}");
    // A block id beyond the cache is refused before any op runs.
    let table = [0u32, 1, 7];
    let row = BatchRow {
        token: 1,
        pos: 9,
        table: &table,
    };
    let err = model
        .forward_batch(&mut ex, &mut bs, &[row], &[0])
        .unwrap_err();
    assert!(
        err.to_string().contains("outside the cache of 4 blocks"),
        "{err}"
    );
}

/// Logits of PROMPT_A then three decode steps of PROMPT_B's tokens, batched
/// one sequence at a time over a paged cache of `kv_type`.
fn paged_logits(b: &CpuBackend, model: &Model<CpuBackend>, kv_type: DType) -> Vec<Vec<f32>> {
    let vocab = model.config.vocab;
    let mut ex = fdot_exec(b);
    let mut bs = BatchState::new(b, &model.config, paged(16), kv_type, 16, 1).unwrap();
    let table = [3u32, 8, 1, 12];
    let rows: Vec<BatchRow> = PROMPT_A
        .iter()
        .chain(&PROMPT_B[..3])
        .enumerate()
        .map(|(p, &token)| BatchRow {
            token,
            pos: p,
            table: &table,
        })
        .collect();
    let n = PROMPT_A.len();
    let mut out = Vec::new();
    model
        .forward_batch(&mut ex, &mut bs, &rows[..n], &[n - 1])
        .unwrap();
    out.push(read_row(b, &bs.logits, 0, vocab));
    for r in &rows[n..] {
        model
            .forward_batch(&mut ex, &mut bs, std::slice::from_ref(r), &[0])
            .unwrap();
        out.push(read_row(b, &bs.logits, 0, vocab));
    }
    out
}

/// f16 storage rounds each cached value once (11 significant bits); with
/// f32 arithmetic the logits stay within 1% (relative L2) of the f32
/// cache's, and the greedy token is the same at every step.
#[test]
fn f16_paged_cache_logits_are_close_to_f32() {
    let Some(file) = open() else { return };
    let b = CpuBackend::new(2).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let want = paged_logits(&b, &model, DType::F32);
    let got = paged_logits(&b, &model, DType::F16);
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let num: f64 = g.iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!(rel < 1e-2, "step {step}: f16 cache logits rel_l2 {rel:.2e}");
        assert_ne!(bits(g), bits(w), "step {step}: f16 cache changed nothing");
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        assert_eq!(argmax(g), argmax(w), "step {step}: greedy token differs");
    }
}

/// An f16 block holds the same positions in half the bytes.
#[test]
fn f16_block_is_half_the_bytes_of_f32() {
    let Some(file) = open() else { return };
    let cfg = metallic::config::ModelConfig::from_gguf(&file).unwrap();
    let f32b = BatchState::<CpuBackend>::block_bytes(&cfg, 16, DType::F32);
    let f16b = BatchState::<CpuBackend>::block_bytes(&cfg, 16, DType::F16);
    assert_eq!(f32b, 2 * f16b);
    assert_eq!(
        f32b,
        2 * cfg.n_layers * cfg.n_kv_heads * 16 * cfg.head_dim * 4
    );
}

/// Sequence 0's logits after its prompt and after one decode token, served
/// with `others` other sequences (their prompt rows before and after its
/// own, then one decode row each around its decode row).
fn in_batch(
    b: &CpuBackend,
    model: &Model<CpuBackend>,
    others: usize,
    matmul: &str,
) -> [Vec<f32>; 2] {
    let vocab = model.config.vocab;
    let mut ex = exec_with(b, matmul);
    let n = others + 1;
    let paged = PagedLayout {
        block_size: 4,
        n_blocks: 5 * n,
        table_stride: 5,
    };
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|s| match s {
            0 => PROMPT_A.to_vec(),
            s => PROMPT_B[..1 + s % PROMPT_B.len()].to_vec(),
        })
        .collect();
    let tables: Vec<Vec<u32>> = (0..n as u32)
        .map(|s| (0..5).map(|j| j * n as u32 + s).collect())
        .collect();
    // Sequence 0 goes in the middle of the step.
    let order: Vec<usize> = (1..=others / 2)
        .chain([0])
        .chain(others / 2 + 1..n)
        .collect();
    let mut bs = BatchState::new(b, &model.config, paged, DType::F32, 128, n).unwrap();
    let mut rows = Vec::new();
    let mut at = 0;
    for &s in &order {
        for (pos, &token) in prompts[s].iter().enumerate() {
            rows.push(BatchRow {
                token,
                pos,
                table: &tables[s],
            });
        }
        if s == 0 {
            at = rows.len() - 1;
        }
    }
    model.forward_batch(&mut ex, &mut bs, &rows, &[at]).unwrap();
    let after_prompt = read_row(b, &bs.logits, 0, vocab);
    let rows: Vec<BatchRow> = order
        .iter()
        .map(|&s| BatchRow {
            token: 42 + s as u32,
            pos: prompts[s].len(),
            table: &tables[s],
        })
        .collect();
    let at = order.iter().position(|&s| s == 0).unwrap();
    model.forward_batch(&mut ex, &mut bs, &rows, &[at]).unwrap();
    [after_prompt, read_row(b, &bs.logits, 0, vocab)]
}

/// The CPU's exact path is batch-invariant by construction: sequence 0's
/// logits, after its prompt and after a decode step, are the same bits alone
/// and among 1, 4 and 8 other sequences. So is `decode` (Q4_1 rows on
/// `vecdot`, whose multi-row kernels share each weight block's decode
/// between rows, the Q8_0 lm_head on `fdot`).
#[test]
fn a_sequence_gets_the_same_logits_in_batches_of_several_sizes() {
    let Some(file) = open() else { return };
    let b = CpuBackend::new(2).unwrap();
    let model = Model::load(&b, &file).unwrap();
    for matmul in ["fdot", "decode"] {
        let alone = in_batch(&b, &model, 0, matmul);
        for others in [1, 4, 8] {
            let got = in_batch(&b, &model, others, matmul);
            for step in 0..2 {
                assert_eq!(
                    bits(&got[step]),
                    bits(&alone[step]),
                    "{matmul}: step {step} changed among {others} other sequences"
                );
            }
        }
    }
}
