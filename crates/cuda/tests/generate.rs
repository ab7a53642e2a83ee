//! Generation and sampling on the device against the CPU: greedy runs give
//! the same tokens, and the device sampler draws what the host sampler draws.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use metallic::backend::{Backend, DType};
use metallic::config::Arch;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate, prefill, GenerateOptions};
use metallic::model::{Model, State};
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_cpu::CpuBackend;
use metallic_gguf::{GgmlType, GgufFile};

/// `n` greedy tokens through `generate` (device-side sampling, decode graphs),
/// prefill in chunks of `batch`, with matmul implementation `forced` if given.
/// The CPU path these tests compare with: float32 activations throughout
/// (the CPU's default decode rounds Q4_x activations to 8 bits since its KLD
/// allows it; see docs/quality.md), the exact reference for greedy identity.
const CPU_FLOAT32: Option<&str> = Some("fdot");

fn greedy<B: Backend>(
    b: &B,
    file: &Arc<GgufFile>,
    prompt: &[u32],
    n: usize,
    forced: Option<&str>,
    batch: usize,
) -> Vec<u32> {
    let model = Model::load(b, file).expect("model loads");
    let tok = Tokenizer::from_gguf(file).expect("tokenizer");
    let cfg = DispatchConfig {
        all: forced.map(str::to_string),
        per_op: Vec::new(),
        ..Default::default()
    };
    let dispatch = MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap();
    let mut ex = Exec::new(b, dispatch);
    let mut st = State::new(b, &model.config, 256, batch, 1).unwrap();
    let opts = GenerateOptions {
        max_tokens: n,
        sampler: SamplerParams::greedy(),
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let g = generate(&mut ex, &model, &mut st, &tok, prompt, &opts, &mut |_| {}).unwrap();
    g.ids
}

/// The CPU's top-1 minus top-2 logit at each step of its greedy path.
fn cpu_margins(file: &Arc<GgufFile>, prompt: &[u32], path: &[u32]) -> Vec<f32> {
    let b = CpuBackend::new(0).unwrap();
    let model = Model::load(&b, file).unwrap();
    let cfg = DispatchConfig {
        all: CPU_FLOAT32.map(str::to_string),
        per_op: Vec::new(),
        ..Default::default()
    };
    let dispatch = MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap();
    let mut ex = Exec::new(&b, dispatch);
    let mut st = State::new(&b, &model.config, 256, 64, 1).unwrap();
    prefill(&mut ex, &model, &mut st, prompt).unwrap();
    let mut out = Vec::new();
    let mut l = vec![0f32; model.config.vocab];
    for &t in path {
        b.read_f32(&st.logits, 0, &mut l).unwrap();
        let best = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let second = l
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != argmax(&l))
            .map(|(_, &v)| v)
            .fold(f32::NEG_INFINITY, f32::max);
        out.push(best - second);
        prefill(&mut ex, &model, &mut st, &[t]).unwrap();
    }
    out
}

/// assets/ of this checkout, or of the working directory (test binaries run
/// on another machine from the repository root there).
fn smollm2_file() -> Option<PathBuf> {
    let name = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";
    [
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(name),
        PathBuf::from(name),
    ]
    .into_iter()
    .find(|p| p.exists())
}

const SMOLLM2_PROMPT: &str =
    "<|im_start|>user\nExplain what a CPU does in simple terms.<|im_end|>\n<|im_start|>assistant\n";

fn smollm2() -> Option<(Arc<GgufFile>, Vec<u32>)> {
    let Some(path) = smollm2_file() else {
        eprintln!("skipped: assets/SmolLM2-135M-Instruct.Q4_1.gguf not present");
        return None;
    };
    let file = Arc::new(GgufFile::open(&path).unwrap());
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let prompt = tok.encode(SMOLLM2_PROMPT, true);
    Some((file, prompt))
}

/// The real SmolLM2-135M-Instruct Q4_1 file (assets/, fetched by
/// scripts/fetch-assets.sh): 32 greedy tokens are identical on both backends,
/// through the whole GPU engine (embedding, attention, decode graphs,
/// device-side sampling) with the `fdot` products, which multiply the
/// exactly dequantised weights with f32 activations as the CPU does. Their
/// logits agree to ~1e-7 relative (forward.rs), and the CPU's smallest top-2
/// margin on this path is about 0.04: no near-tie for rounding to flip.
#[test]
fn smollm2_greedy_32_tokens_match_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let Some((file, prompt)) = smollm2() else {
        return;
    };
    let cpu = CpuBackend::new(0).unwrap();
    let want = greedy(&cpu, &file, &prompt, 32, CPU_FLOAT32, 64);
    // Chunks of 8 rows so that prefill stays within fdot's batch sizes.
    let got = greedy(&gpu, &file, &prompt, 32, Some("fdot"), 8);
    let tok = Tokenizer::from_gguf(&file).unwrap();
    eprintln!(
        "cpu:  {want:?}\ncuda: {got:?}\ntext: {:?}",
        tok.decode(&got)
    );
    assert_eq!(want.len(), 32);
    assert_eq!(got, want);
}

/// The CPU parity test's prompt, "The capital of France is": the GPU engine
/// with the exact `fdot` products reproduces transformers' greedy tokens
/// (crates/test-support/golden/smollm2_logits.json, prompt 0: its argmax after
/// the prompt and after each of 32 decode steps), as the CPU does.
#[test]
fn smollm2_capital_of_france_greedy_matches_transformers_on_exact_path() {
    let Some(gpu) = cuda_or_skip() else { return };
    let Some((file, _)) = smollm2() else {
        return;
    };
    let v = metallic_test_support::golden_json("smollm2_logits.json");
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = ids(&v["prompts"][0]["prompt"]);
    let want = ids(&v["prompts"][0]["greedy"]);
    assert_eq!(want.len(), 33);
    let got = greedy(&gpu, &file, &prompt, want.len(), Some("fdot"), 8);
    assert_eq!(got, want, "greedy continuation differs from transformers");
}

/// With the default products (int8 activations in decode, f16 in prefill),
/// greedy SmolLM2 follows the CPU until the first step where the CPU's top
/// two logits are closer than that rounding moves them: 0.15 logits, about
/// ten times the measured relative error (~1e-2) times the logits' spread
/// of the top few candidates. Diverging anywhere else is a bug.
#[test]
fn smollm2_default_path_diverges_only_at_near_ties() {
    let Some(gpu) = cuda_or_skip() else { return };
    let Some((file, prompt)) = smollm2() else {
        return;
    };
    let cpu = CpuBackend::new(0).unwrap();
    let want = greedy(&cpu, &file, &prompt, 32, CPU_FLOAT32, 64);
    let got = greedy(&gpu, &file, &prompt, 32, None, 64);
    let margins = cpu_margins(&file, &prompt, &want);
    let same = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
    eprintln!("default path: {same} of 32 tokens identical; cpu margins {margins:.3?}");
    if same < want.len() {
        assert!(
            margins[same] < 0.15,
            "diverged at step {same} where the CPU's top-2 margin is {:.3}",
            margins[same]
        );
    }
}

/// A synthetic model of SmolLM2-135M's exact layout in Q4_1 (llama
/// architecture, 30 layers, GQA 9/3): 32 greedy tokens are identical on the
/// `fdot` path (as for the real file), and the default path diverges, if
/// at all, only at a near-tie (see above).
#[test]
fn synthetic_smollm2_q4_1_greedy_32_tokens_match_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let file = synth_model(&preset(Arch::Llama, "smollm2-135m"), GgmlType::Q4_1, 3);
    let prompt: Vec<u32> = vec![1, 17, 230, 45, 99, 310, 8, 77, 150];
    let cpu = CpuBackend::new(0).unwrap();
    let want = greedy(&cpu, &file, &prompt, 32, CPU_FLOAT32, 64);
    let exact = greedy(&gpu, &file, &prompt, 32, Some("fdot"), 8);
    let fast = greedy(&gpu, &file, &prompt, 32, None, 64);
    let margins = cpu_margins(&file, &prompt, &want);
    let same = want.iter().zip(&fast).take_while(|(a, b)| a == b).count();
    eprintln!("cpu:  {want:?}\ncuda: {exact:?}\ndefault path: {same} of 32 identical");
    assert_eq!(exact, want);
    if same < want.len() {
        assert!(
            margins[same] < 0.15,
            "diverged at step {same}, margin {:.3}",
            margins[same]
        );
    }
}

fn logits_row<B: Backend>(b: &B, vals: &[f32]) -> B::Tensor {
    activations(b, vals, 1, vals.len())
}

fn draw<B: Backend>(
    b: &B,
    logits: &B::Tensor,
    vocab: usize,
    p: &SamplerParams,
    history: &[u32],
    n: usize,
) -> Vec<u32> {
    let mut s = b.new_sampler(p, vocab).unwrap();
    b.sampler_accept(&mut s, history).unwrap();
    let mut ids = b.alloc(DType::I32, 1, "ids").unwrap();
    (0..n)
        .map(|_| {
            b.sample(logits, 0, vocab, &mut s, &mut ids).unwrap();
            let mut id = [0i32];
            b.read_i32(&ids, 0, &mut id).unwrap();
            id[0] as u32
        })
        .collect()
}

/// The device sampler implements the host chain (penalties, top-k, top-p,
/// min-p, temperature, xoshiro256** draw): for the same seed and logits it
/// draws the same tokens, step after step (its penalty window and random
/// stream advance on the device). Exact equality is expected: the filters
/// choose the same sets, and a draw could only differ if the uniform lands
/// within rounding of a boundary of the cumulative weights.
#[test]
fn device_sampler_draws_what_the_host_sampler_draws() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    // Large enough that top-k of 5 and 40 take the two-phase path (top-k per
    // block first), while top-k 1000 and top-k off filter the whole vocabulary.
    let vocab = 60_000;
    let mut vals: Vec<f32> = randn(vocab, 42).iter().map(|v| v * 3.0).collect();
    vals[17] = vals[3]; // a tie
    vals[100] = f32::NAN; // NaN counts as -inf
    let lc = logits_row(&cpu, &vals);
    let lg = logits_row(&gpu, &vals);
    let history: Vec<u32> = (0..80).map(|i| (i * 37 % vocab) as u32).collect();
    let base = SamplerParams::default();
    let cases = [
        SamplerParams::greedy(),
        SamplerParams {
            repeat_penalty: 1.3,
            repeat_last_n: 64,
            ..SamplerParams::greedy()
        },
        base,
        SamplerParams { top_k: 0, ..base },
        SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..base
        },
        SamplerParams {
            top_k: 5,
            top_p: 0.5,
            temperature: 1.5,
            ..base
        },
        SamplerParams {
            top_k: 1000,
            min_p: 0.2,
            ..base
        },
        SamplerParams {
            repeat_penalty: 1.2,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..base
        },
    ];
    for (i, p) in cases.iter().enumerate() {
        for seed in 0..4u64 {
            let p = SamplerParams { seed, ..*p };
            let want = draw(&cpu, &lc, vocab, &p, &history, 12);
            let got = draw(&gpu, &lg, vocab, &p, &history, 12);
            assert_eq!(got, want, "case {i} seed {seed}: {p:?}");
        }
    }
}

/// The two-phase top-k (`sample_topk`: 0 < top_k <= 128 over a large
/// vocabulary; each of its 128 blocks keeps its own top-k, the last block
/// selects from those) draws what the host draws where the selection is
/// delicate: exact ties around the k-th logit, more of them than top_k in
/// one block and the rest spread over many; -0.0 and +0.0 tied (the host's
/// comparison holds them equal, the lower id first); +inf logits in several
/// blocks, more than top_k of them in one (the host keeps every +inf token,
/// equally likely); and every logit -inf or NaN but one. Top-k from 1 to
/// TOPK_MAX (128), flat and default settings.
#[test]
fn device_top_k_sampler_matches_host_on_ties_signed_zeros_and_infinities() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    // Qwen2.5's vocabulary: every top-k up to 128 takes the two-phase path,
    // whose blocks take 1,187 ids each.
    let vocab: usize = 151_936;
    let chunk = vocab.div_ceil(128);

    // Noise below 3.5 (mean -2, sd 1: the largest of 151,936 is about 2.5),
    // 20 distinct logits above, and 400 ties at exactly 3.5: 340 spread over
    // the vocabulary, 60 in one block (block 42).
    let mut ties: Vec<f32> = randn(vocab, 7).iter().map(|v| v - 2.0).collect();
    let mut tied_ids: Vec<usize> = (0..340)
        .map(|i| (i * 379 + 11) % vocab)
        .chain(50_000..50_060)
        .collect();
    tied_ids.sort_unstable();
    tied_ids.dedup();
    assert!(
        50_000 / chunk == 50_059 / chunk,
        "the cluster lies in one block"
    );
    for &i in &tied_ids {
        ties[i] = 3.5;
    }
    for i in 0..20 {
        ties[i * 7001 + 5] = 4.0 + 0.05 * i as f32;
    }
    assert_eq!(ties.iter().filter(|&&l| l == 3.5).count(), tied_ids.len());
    assert_eq!(ties.iter().filter(|&&l| l > 3.5).count(), 20);

    // Logits at most -1, 10 above zero, and 350 zeros of both signs: 300
    // spread, 50 in one block (block 75).
    let mut zeros: Vec<f32> = randn(vocab, 8).iter().map(|v| -(v.abs() + 1.0)).collect();
    for (n, i) in (0..300)
        .map(|i| (i * 503 + 7) % vocab)
        .chain(90_000..90_050)
        .enumerate()
    {
        zeros[i] = if n % 2 == 0 { -0.0 } else { 0.0 };
    }
    for i in 0..10 {
        zeros[i * 15_013 + 2] = 0.25 + 0.05 * i as f32;
    }
    assert!(90_000 / chunk == 90_049 / chunk);

    // +inf at 8 neighbouring ids of one block (block 2) and 3 elsewhere
    // (the last id among them), with NaN and -inf about.
    let mut infs: Vec<f32> = randn(vocab, 9).iter().map(|v| v * 3.0).collect();
    for i in (3000..3008).chain([70_001, 140_000, vocab - 1]) {
        infs[i] = f32::INFINITY;
    }
    assert!(3000 / chunk == 3007 / chunk);
    infs[3008] = f32::NAN;
    infs[100] = f32::NEG_INFINITY;

    // Every logit -inf or NaN but one.
    let mut one: Vec<f32> = (0..vocab)
        .map(|i| {
            if i % 3 == 0 {
                f32::NAN
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    one[123_456] = -5.0;

    let base = SamplerParams::default();
    let flat = SamplerParams {
        top_k: 40,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 1.5,
        ..base
    };
    let cases = [
        base,
        flat,
        SamplerParams {
            top_k: 5,
            top_p: 0.5,
            temperature: 1.5,
            ..base
        },
        SamplerParams {
            top_k: 128,
            top_p: 0.99,
            min_p: 0.01,
            temperature: 1.2,
            ..base
        },
        SamplerParams {
            top_k: 128,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 2.0,
            ..base
        },
        SamplerParams { top_k: 1, ..base },
        SamplerParams {
            repeat_penalty: 1.2,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..flat
        },
    ];
    let history: Vec<u32> = tied_ids.iter().take(40).map(|&i| i as u32).collect();
    for (name, vals) in [
        ("ties", &ties),
        ("signed zeros", &zeros),
        ("infinities", &infs),
        ("one finite", &one),
    ] {
        let lc = logits_row(&cpu, vals);
        let lg = logits_row(&gpu, vals);
        let mut drawn = Vec::new();
        for (i, p) in cases.iter().enumerate() {
            for seed in 0..4u64 {
                let p = SamplerParams { seed, ..*p };
                let want = draw(&cpu, &lc, vocab, &p, &history, 12);
                let got = draw(&gpu, &lg, vocab, &p, &history, 12);
                assert_eq!(got, want, "{name}: case {i} seed {seed}: {p:?}");
                drawn.extend(want);
            }
        }
        // The cases reach what they are about.
        let hit = |f: &dyn Fn(f32) -> bool| drawn.iter().any(|&t| f(vals[t as usize]));
        match name {
            "ties" => assert!(hit(&|l| l == 3.5), "no tied token drawn"),
            "signed zeros" => assert!(
                hit(&|l| l == 0.0 && l.is_sign_negative())
                    && hit(&|l| l == 0.0 && l.is_sign_positive()),
                "no -0.0 and +0.0 drawn"
            ),
            "infinities" => {
                assert!(drawn.iter().all(|&t| vals[t as usize] == f32::INFINITY));
                assert!(hit(&|l| l == f32::INFINITY) && drawn.contains(&(vocab as u32 - 1)));
            }
            _ => assert!(drawn.iter().all(|&t| t == 123_456)),
        }
    }
}
