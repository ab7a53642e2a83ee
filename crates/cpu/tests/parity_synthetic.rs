//! Synthetic Qwen2 models on the CPU against Hugging Face transformers.
//!
//! The test builds, in memory, the same GGUF that
//! `scripts/reference/synth_goldens.sh` writes with `metallic synth` (same
//! preset, dtype, tokenizer and seed, hence the same bytes) and compares its
//! logits with the goldens that transformers produced from that file.
//!
//! Tolerances, for the reference matmul (`gemv`: f32 dot products over
//! dequantised rows): transformers dequantises Q8_0 to exactly the values we
//! use, so F32 and Q8_0 differ from it only in float32 summation order. For the
//! two-layer tiny model that measured 9.5e-7 on logits of magnitude ~1: we
//! allow 1e-4 and cosine >= 0.99999 (100x margin for other SIMD widths and
//! thread splits). The 24-layer Qwen2.5-0.5B F16 model accumulates more
//! rounding (hidden 896, FFN 4864; measured 8.9e-6): we allow 5e-4. A wrong
//! bias, rope pairing or GQA mapping moves logits by orders of magnitude more.
//!
//! llama.cpp's Q4_K_M mix (`synth --dtype Q4_K_M`: Q5_0, Q8_0, Q4_K and Q6_K
//! tensors on Qwen2.5-0.5B's and SmolLM2's 896- and 576-wide rows): the gguf
//! package dequantises every one of those types to the values our reference
//! dequantisation gives, so the same f32 tolerance applies as for F16.

use std::sync::Arc;

use metallic::backend::Backend;
use metallic::chat::builtin;
use metallic::config::Arch;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::eval::{argmax, logits_rows};
use metallic::exec::Exec;
use metallic::model::{Model, State};
use metallic::synth::{self, SynthOptions};
use metallic::tokenizer::TokenizerSpec;
use metallic_cpu::CpuBackend;
use metallic_gguf::{GgmlType, GgufFile};
use metallic_test_support::logits::{self as golden, check_row, Golden, Tolerance};
use metallic_test_support::repo_path;

/// Builds the synthetic model as `metallic synth --arch qwen2 --tokenizer
/// assets/qwen2/tokenizer.json --seed 1` does; None when assets are missing.
fn synth_qwen2(preset: &str, dtype: GgmlType) -> Option<Arc<GgufFile>> {
    let dir = repo_path("assets/qwen2");
    let Ok(json) = std::fs::read_to_string(dir.join("tokenizer.json")) else {
        eprintln!("skipping: assets/qwen2/tokenizer.json missing (run scripts/fetch-assets.sh)");
        return None;
    };
    let mut spec = TokenizerSpec::from_hf_json(&json, Some(151_664)).unwrap();
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    spec.apply_hf_config(&config).unwrap();
    let opts = SynthOptions {
        preset: synth::preset(Arch::Qwen2, preset).unwrap(),
        dtype,
        tokenizer: &spec,
        chat_template: Some(builtin::QWEN2_5),
        seed: 1,
    };
    let bytes = synth::build(&opts).unwrap().to_bytes().unwrap();
    Some(Arc::new(GgufFile::from_bytes(bytes).unwrap()))
}

fn check_against(golden_file: &str, file: &Arc<GgufFile>, tol: Tolerance) {
    let g = Golden::load(golden_file);
    let b = CpuBackend::new(0).unwrap();
    let model = Model::load(&b, file).unwrap();
    assert_eq!(model.config.vocab, g.vocab);
    let reference = DispatchConfig {
        all: Some("gemv".into()),
        per_op: Vec::new(),
        ..Default::default()
    };
    let mut ex = Exec::new(
        &b,
        MatmulDispatch::new(b.matmul_impls(), &reference).unwrap(),
    );
    let mut worst = golden::Diff::best();
    for (pi, p) in g.prompts.iter().enumerate() {
        let n = p.prompt.len();
        let mut st = State::new(&b, &model.config, 64, n, n).unwrap();
        let logits = logits_rows(&mut ex, &model, &mut st, &p.prompt).unwrap();
        worst.fold(golden::check_prompt_rows(pi, &logits, p, &g, tol));
        // Greedy decode: our own argmax feeds the next step and must agree
        // with the reference's greedy token at every step.
        let mut next = argmax(&logits[(n - 1) * g.vocab..]) as u32;
        assert_eq!(next, p.greedy[0], "prompt {pi}: first greedy token");
        for (s, want) in p.decode.iter().enumerate() {
            let step = logits_rows(&mut ex, &model, &mut st, &[next]).unwrap();
            let d = check_row(
                &format!("prompt {pi} decode {s}"),
                &step,
                want,
                &g.sample_ids,
                tol,
            );
            worst.fold(d);
            next = argmax(&step) as u32;
            assert_eq!(
                next,
                p.greedy[s + 1],
                "prompt {pi}: greedy token after step {s}"
            );
        }
    }
    eprintln!("{golden_file}: worst {worst:?}");
}

const TINY_TOL: Tolerance = Tolerance {
    max_abs: 1e-4,
    min_cosine: 0.99999,
};

#[test]
fn tiny_qwen2_f32_logits_match_transformers() {
    let Some(f) = synth_qwen2("tiny", GgmlType::F32) else {
        return;
    };
    check_against("tiny_qwen2_f32_logits.json", &f, TINY_TOL);
}

#[test]
fn tiny_qwen2_q8_0_logits_match_transformers() {
    let Some(f) = synth_qwen2("tiny", GgmlType::Q8_0) else {
        return;
    };
    check_against("tiny_qwen2_q8_0_logits.json", &f, TINY_TOL);
}

/// Builds a 1 GB model in memory: run with `--include-ignored` (release).
#[test]
#[ignore]
fn qwen25_05b_f16_logits_match_transformers() {
    let Some(f) = synth_qwen2("qwen2.5-0.5b", GgmlType::F16) else {
        return;
    };
    let tol = Tolerance {
        max_abs: 5e-4,
        min_cosine: 0.99999,
    };
    check_against("qwen25_05b_f16_logits.json", &f, tol);
}

/// A synthetic model with llama.cpp's per-tensor types for `ftype`, as
/// `metallic synth --arch ARCH --preset PRESET --dtype FTYPE --seed 1` writes
/// it (Qwen2: assets/qwen2/tokenizer.json; Llama: the SmolLM2 GGUF's
/// tokenizer); None when assets are missing.
fn synth_mix(
    arch: Arch,
    preset: &str,
    ftype: metallic::quantize::FileType,
) -> Option<Arc<GgufFile>> {
    let spec = if arch == Arch::Qwen2 {
        let dir = repo_path("assets/qwen2");
        let Ok(json) = std::fs::read_to_string(dir.join("tokenizer.json")) else {
            eprintln!(
                "skipping: assets/qwen2/tokenizer.json missing (run scripts/fetch-assets.sh)"
            );
            return None;
        };
        let mut spec = TokenizerSpec::from_hf_json(&json, Some(151_664)).unwrap();
        let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
        spec.apply_hf_config(&config).unwrap();
        spec
    } else {
        let path = repo_path("assets/SmolLM2-135M-Instruct.Q4_1.gguf");
        let Ok(file) = GgufFile::open(&path) else {
            eprintln!(
                "skipping: {} missing (run scripts/fetch-assets.sh)",
                path.display()
            );
            return None;
        };
        TokenizerSpec::from_gguf(&file).unwrap()
    };
    let opts = SynthOptions {
        preset: synth::preset(arch, preset).unwrap(),
        dtype: ftype.default_type(),
        tokenizer: &spec,
        chat_template: None,
        seed: 1,
    };
    let bytes = synth::build_mix(&opts, ftype).unwrap().to_bytes().unwrap();
    Some(Arc::new(GgufFile::from_bytes(bytes).unwrap()))
}

const MIX_TOL: Tolerance = Tolerance {
    max_abs: 5e-4,
    min_cosine: 0.99999,
};

#[test]
fn smollm2_q4_k_m_logits_match_transformers() {
    use metallic::quantize::FileType;
    let Some(f) = synth_mix(Arch::Llama, "smollm2-135m", FileType::Q4_K_M) else {
        return;
    };
    let types: std::collections::BTreeSet<_> = f.tensors().iter().map(|t| t.ggml_type).collect();
    assert!(types.contains(&GgmlType::Q5_0) && types.contains(&GgmlType::Q6_K));
    check_against("smollm2_135m_q4_k_m_logits.json", &f, MIX_TOL);
}

/// Builds a 400 MB model in memory: run with `--include-ignored` (release).
#[test]
#[ignore]
fn qwen25_05b_q4_k_m_logits_match_transformers() {
    use metallic::quantize::FileType;
    let Some(f) = synth_mix(Arch::Qwen2, "qwen2.5-0.5b", FileType::Q4_K_M) else {
        return;
    };
    check_against("qwen25_05b_q4_k_m_logits.json", &f, MIX_TOL);
}

/// llama.cpp's Q5_K_M mix of Qwen2.5-0.5B: Q5_1 where Q5_K's 256-value
/// super-blocks do not divide the 896-wide rows, Q5_K/Q6_K down projections,
/// Q8_0 pieces. Builds a 400 MB model in memory: run with
/// `--include-ignored` (release).
#[test]
#[ignore]
fn qwen25_05b_q5_k_m_logits_match_transformers() {
    use metallic::quantize::FileType;
    let Some(f) = synth_mix(Arch::Qwen2, "qwen2.5-0.5b", FileType::Q5_K_M) else {
        return;
    };
    let types: std::collections::BTreeSet<_> = f.tensors().iter().map(|t| t.ggml_type).collect();
    assert!(types.contains(&GgmlType::Q5_1) && types.contains(&GgmlType::Q5_K));
    check_against("qwen25_05b_q5_k_m_logits.json", &f, MIX_TOL);
}

/// llama.cpp's Q4_K_M mix of Qwen2.5-1.5B (hidden 1536: the K-quants apply
/// to most tensors). Builds a 940 MB model in memory: run with
/// `--include-ignored` (release).
#[test]
#[ignore]
fn qwen25_15b_q4_k_m_logits_match_transformers() {
    use metallic::quantize::FileType;
    let Some(f) = synth_mix(Arch::Qwen2, "qwen2.5-1.5b", FileType::Q4_K_M) else {
        return;
    };
    let types: std::collections::BTreeSet<_> = f.tensors().iter().map(|t| t.ggml_type).collect();
    assert!(types.contains(&GgmlType::Q4_K) && types.contains(&GgmlType::Q6_K));
    check_against("qwen25_15b_q4_k_m_logits.json", &f, MIX_TOL);
}
