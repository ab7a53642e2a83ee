//! The batched forward over the paged KV cache on SmolLM2: it computes the
//! same logits as the single-sequence forward, bit for bit, and a sequence's
//! logits do not depend on the other rows of a step nor on how its prompt was
//! chunked (batch invariance by construction: see core `model/batched.rs`).

use std::sync::Arc;

use metallic::backend::{Backend, PagedLayout};
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

/// A row-independent matmul (`decode`: Q4_1 rows on `vecdot`, whose
/// multi-row kernels share weight decodes between rows, the Q8_0 lm_head on
/// `fdot`; the server forces `fdot`, the same per-row property).
fn decode_exec(b: &CpuBackend) -> Exec<'_, CpuBackend> {
    let cfg = DispatchConfig {
        all: Some("decode".into()),
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
    let mut ex = decode_exec(&b);
    let mut st = State::new(&b, &model.config, 32, 16, 1).unwrap();
    st.stage(&b, &PROMPT_A, vocab).unwrap();
    model
        .forward(&mut ex, &mut st, PROMPT_A.len(), 0, false)
        .unwrap();
    let want = read_row(&b, &st.logits, 0, vocab);

    // Batched: the prompt in two chunks over scattered, non-contiguous blocks.
    let mut bs = BatchState::new(&b, &model.config, paged(16), 16, 4).unwrap();
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
    let mut ex = decode_exec(&b);

    // A alone, whole prompt in one step.
    let mut alone = BatchState::new(&b, &model.config, paged(16), 32, 4).unwrap();
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
    let mut mixed = BatchState::new(&b, &model.config, paged(16), 32, 4).unwrap();
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
    let mut ex = decode_exec(&b);
    let mut bs = BatchState::new(&b, &model.config, paged(4), 8, 2).unwrap();
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
    // A block id beyond the cache is refused by the backend.
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
