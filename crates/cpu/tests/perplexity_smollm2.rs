//! metallic's float32 perplexity of SmolLM2-135M-Instruct on a committed
//! excerpt of Alice's Adventures in Wonderland against transformers'.
//!
//! Golden: `crates/test-support/golden/smollm2_alice_ppl.json`, written by
//! `scripts/reference/perplexity.py assets/SmolLM2-135M-Instruct.Q4_1.gguf
//! crates/test-support/golden/alice_excerpt.txt crates/test-support/golden/smollm2_alice_ppl.json -c 128`
//! (transformers dequantises the Q4_1 file to float32 and runs in float32).
//!
//! metallic runs the same file through its reference matmul (`gemv`:
//! dequantise a row to f32, f32 dot), which is the float32 model of those
//! dequantised weights, i.e. the F32 file `metallic quantize ... F32` writes,
//! scored as `metallic perplexity -c 128` does (chunks of 128, the second half
//! scored, 189 predictions).
//!
//! Tolerance: perplexity within 1e-4 relative (0.01%; the issue asks 0.1%),
//! each chunk's NLL sum within 1e-3 absolute. The logits agree to ~5e-5
//! (see parity_smollm2.rs), which moves an NLL by about as much; a wrong
//! chunking or BOS rule moves the perplexity by percent.

use std::sync::Arc;

use metallic::backend::Backend;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::model::{Model, State};
use metallic::perplexity::{chunk_logits, log_probs_into, nll, Chunking, KldSums, NllSums};
use metallic::tokenizer::Tokenizer;
use metallic_cpu::CpuBackend;
use metallic_gguf::GgufFile;
use metallic_test_support::{golden_json, golden_path, repo_path};
use serde_json::Value;

const MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";
const GOLDEN: &str = "smollm2_alice_ppl.json";
const TEXT: &str = "alice_excerpt.txt";

fn open() -> Option<(Arc<GgufFile>, Value)> {
    let path = repo_path(MODEL);
    if !path.exists() {
        eprintln!(
            "skipping: {} missing (run scripts/fetch-assets.sh)",
            path.display()
        );
        return None;
    }
    Some((
        Arc::new(GgufFile::open(&path).unwrap()),
        golden_json(GOLDEN),
    ))
}

fn golden_tokens(g: &Value) -> Vec<u32> {
    g["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_tokenizes_the_excerpt_as_transformers() {
    let Some((file, g)) = open() else { return };
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let text = std::fs::read_to_string(golden_path(TEXT)).unwrap();
    let want = golden_tokens(&g);
    let ids = tok.encode(&text, false);
    assert!(!tok.add_bos() && g["add_bos"] == false);
    assert_eq!(&ids[..want.len()], &want[..]);
}

#[test]
fn smollm2_f32_perplexity_matches_transformers() {
    let Some((file, g)) = open() else { return };
    let tokens = golden_tokens(&g);
    let n_ctx = g["n_ctx"].as_u64().unwrap() as usize;
    let chunks = g["chunks"].as_u64().unwrap() as usize;
    let c = Chunking::new(tokens.len(), n_ctx, Some(chunks)).unwrap();
    assert_eq!(c.n_chunks, chunks);

    let b = CpuBackend::new(0).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let reference = DispatchConfig {
        all: Some("gemv".into()),
        per_op: Vec::new(),
        ..Default::default()
    };
    let dispatch = MatmulDispatch::new(b.matmul_impls(), &reference).unwrap();
    let mut ex = Exec::new(&b, dispatch);
    // The command's default step: half a chunk.
    let mut st = State::new(&b, &model.config, n_ctx, c.first(), c.first()).unwrap();
    let vocab = model.config.vocab;
    let mut total = NllSums::default();
    for i in 0..c.n_chunks {
        let chunk = c.chunk(&tokens, i, None);
        let logits = chunk_logits(&mut ex, &model, &mut st, &c, &chunk).unwrap();
        let mut sums = NllSums::default();
        for (row, &t) in logits.chunks_exact(vocab).zip(c.targets(&chunk)) {
            sums.add(nll(row, t));
        }
        let want = g["chunk_nll_sums"][i].as_f64().unwrap();
        assert!(
            (sums.sum - want).abs() < 1e-3,
            "chunk {i}: NLL sum {} vs transformers {want}",
            sums.sum
        );
        total.merge(&sums);
    }
    let p = total.perplexity();
    let want = g["ppl"].as_f64().unwrap();
    let rel = (p.ppl / want - 1.0).abs();
    eprintln!(
        "metallic PPL {:.6} vs transformers {want:.6} (relative {rel:.2e})",
        p.ppl
    );
    assert_eq!(p.count, g["scored"].as_u64().unwrap() as usize);
    assert!(rel < 1e-4, "PPL {} vs transformers {want}", p.ppl);
}

/// The default decode path's quality, as the issue defines it: its KL
/// divergence from the float32 model must be no worse than llama.cpp's own
/// CPU path on the same file and text. The default decode runs Q4_1 rows with
/// 8-bit activations (`vecdot`) and the Q8_0 lm_head with float32 ones
/// (`fdot`); one token a step, as decode runs. llama.cpp's figure on this
/// excerpt (`llama-perplexity -c 128 -t 2`, F32 file's `--kl-divergence-base`,
/// then the Q4_1 file's `--kl-divergence`; llama.cpp of the llama-cpp-python
/// 0.3.36 sdist, AVX-512 VNNI): mean KLD 0.003514 ± 0.000289, same top 94.709%.
/// metallic's default decode measured 0.00245 (8-bit activations on the
/// lm_head too: 0.00327). The base is the reference matmul's float32 model,
/// as in `metallic perplexity --kld`.
#[test]
fn smollm2_default_decode_kld_is_no_worse_than_llama_cpp() {
    let Some((file, g)) = open() else { return };
    let tokens = golden_tokens(&g);
    let n_ctx = g["n_ctx"].as_u64().unwrap() as usize;
    let c = Chunking::new(tokens.len(), n_ctx, None).unwrap();
    let b = CpuBackend::new(0).unwrap();
    let model = Model::load(&b, &file).unwrap();
    let vocab = model.config.vocab;
    let run = |dispatch: &DispatchConfig, batch: usize| -> Vec<f32> {
        let dispatch = MatmulDispatch::new(b.matmul_impls(), dispatch).unwrap();
        let mut ex = Exec::new(&b, dispatch);
        let mut st = State::new(&b, &model.config, n_ctx, batch, batch).unwrap();
        let mut all = Vec::new();
        for i in 0..c.n_chunks {
            let chunk = c.chunk(&tokens, i, None);
            all.extend(chunk_logits(&mut ex, &model, &mut st, &c, &chunk).unwrap());
        }
        all
    };
    let reference = DispatchConfig {
        all: Some("gemv".into()),
        per_op: Vec::new(),
        ..Default::default()
    };
    let base = run(&reference, c.first());
    let decode = run(&DispatchConfig::default(), 1);
    let targets: Vec<u32> = (0..c.n_chunks)
        .flat_map(|i| c.targets(&c.chunk(&tokens, i, None)).to_vec())
        .collect();
    let mut sums = KldSums::default();
    let (mut lp, mut scratch) = (vec![0f32; vocab], vec![0f32; vocab]);
    for ((row, brow), &t) in decode
        .chunks_exact(vocab)
        .zip(base.chunks_exact(vocab))
        .zip(&targets)
    {
        log_probs_into(brow, &mut lp);
        sums.add(row, &lp, t, &mut scratch);
    }
    let k = sums.summary();
    eprintln!(
        "default decode: mean KLD {:.6} ± {:.6}, same top {:.3}%",
        k.mean_kld, k.mean_kld_error, k.same_top_pct
    );
    assert_eq!(sums.count(), 189);
    assert!(
        k.mean_kld <= 0.003514,
        "mean KLD {} above llama.cpp's 0.003514",
        k.mean_kld
    );
}
