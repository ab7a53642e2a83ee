//! `metallic quantize` end to end: metadata kept, types chosen by llama.cpp's rules, an F32
//! rewrite of the SmolLM2 Q4_1 file equal to the reference dequantisation, and the errors bad
//! input must give.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use metallic_gguf::{quant, GgmlType, GgufFile};

use common::{
    assert_success as ok, fails_with, metallic, qwen2_tokenizer, repo, smollm2, synth_args,
    synth_tiny,
};

fn tmp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::temp_dir("quantize"))
}

/// A tiny synthetic Qwen2 in F16, written once; None without assets.
fn tiny_f16() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let tok = qwen2_tokenizer()?;
        let out = tmp_dir().join("tiny-f16.gguf");
        synth_tiny(&tok, "F16", None, &out);
        Some(out)
    })
    .as_deref()
}

/// Every metadata entry of `a` is in `b` with the same value, except the keys quantize sets.
fn assert_metadata_kept(a: &GgufFile, b: &GgufFile, file_type: u32) {
    for (k, v) in a.metadata() {
        if k == "general.file_type" || k == "general.quantization_version" {
            continue;
        }
        let w = b.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert!(v.bitwise_eq(w), "{k} changed");
    }
    assert_eq!(b.get_u32("general.file_type"), Some(file_type));
    assert_eq!(b.get_u32("general.quantization_version"), Some(2));
    assert_eq!(a.tensors().len(), b.tensors().len());
}

#[test]
fn q4_1_to_f32_equals_the_reference_dequantisation() {
    let Some(input) = smollm2() else { return };
    let out = tmp_dir().join("smollm2-f32.gguf");
    ok(&metallic(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "F32",
    ]));
    let a = GgufFile::open(&input).unwrap();
    let b = GgufFile::open(&out).unwrap();
    assert_metadata_kept(&a, &b, 0);
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!(
            (u.ggml_type, &u.dims),
            (GgmlType::F32, &t.dims),
            "{}",
            t.name
        );
        let want = quant::dequantize_to_vec(t.ggml_type, a.tensor_data(t)).unwrap();
        let got = quant::dequantize_to_vec(GgmlType::F32, b.tensor_data(u)).unwrap();
        assert!(
            want.iter()
                .zip(&got)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{} differs from the reference dequantisation",
            t.name
        );
    }
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn q4_k_m_keeps_metadata_and_picks_llama_cpps_types() {
    let Some(input) = tiny_f16() else { return };
    let out = tmp_dir().join("tiny-q4_k_m.gguf");
    ok(&metallic(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q4_K_M",
    ]));
    let a = GgufFile::open(input).unwrap();
    let b = GgufFile::open(&out).unwrap();
    assert_metadata_kept(&a, &b, 15);
    let ty = |n: &str| b.tensor(n).unwrap().ggml_type;
    // tiny: 64 columns (not a multiple of 256) and 2 layers, of which use_more_bits picks
    // layer 1 (i >= 7n/8) only.
    assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.attn_q.bias"), GgmlType::F32);
    // The data is the reference quantisation of the F16 values.
    let t = a.tensor("blk.0.attn_q.weight").unwrap();
    let values = quant::dequantize_to_vec(GgmlType::F16, a.tensor_data(t)).unwrap();
    let q = quant::quantize(GgmlType::Q5_0, &values).unwrap();
    assert!(q == b.tensor_data(b.tensor(&t.name).unwrap()));
}

#[test]
fn pure_gives_every_weight_the_one_type() {
    let Some(input) = tiny_f16() else { return };
    let out = tmp_dir().join("tiny-q8_0-pure.gguf");
    ok(&metallic(&[
        "quantize",
        "--pure",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q8_0",
    ]));
    let b = GgufFile::open(&out).unwrap();
    for t in b.tensors() {
        let want = if t.dims.len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(t.ggml_type, want, "{}", t.name);
    }
}

#[test]
fn requantizing_needs_the_flag() {
    let Some(input) = tiny_f16() else { return };
    let q8 = tmp_dir().join("tiny-q8_0.gguf");
    ok(&metallic(&[
        "quantize",
        input.to_str().unwrap(),
        q8.to_str().unwrap(),
        "Q8_0",
    ]));
    let q4 = tmp_dir().join("tiny-q4_0.gguf");
    let (q8s, q4s) = (q8.to_str().unwrap(), q4.to_str().unwrap());
    fails_with(
        &metallic(&["quantize", q8s, q4s, "Q4_0"]),
        "--allow-requantize",
    );
    assert!(!q4.exists(), "no output after a refusal");
    ok(&metallic(&[
        "quantize",
        "--allow-requantize",
        q8s,
        q4s,
        "Q4_0",
    ]));
    let b = GgufFile::open(&q4).unwrap();
    assert_eq!(
        b.tensor("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q4_0
    );
}

#[test]
fn bad_input_is_rejected_with_the_cause() {
    let Some(input) = tiny_f16() else { return };
    let i = input.to_str().unwrap();
    let out = tmp_dir().join("never.gguf");
    let o = out.to_str().unwrap();
    fails_with(&metallic(&["quantize", i, o, "Q9_K"]), "unknown TYPE");
    fails_with(&metallic(&["quantize", i, i, "Q8_0"]), "is the input file");
    fails_with(
        &metallic(&["quantize", "/nonexistent/model.gguf", o, "Q8_0"]),
        "is not a file",
    );
    fails_with(
        &metallic(&["quantize", "--output-tensor-type", "IQ2_XXS", i, o, "Q8_0"]),
        "--output-tensor-type",
    );
    // A type whose blocks do not divide the 64-wide rows.
    fails_with(
        &metallic(&["quantize", "--token-embedding-type", "Q4_K", i, o, "Q8_0"]),
        "token_embd.weight",
    );
    let not_gguf = tmp_dir().join("not.gguf");
    std::fs::write(&not_gguf, b"hello").unwrap();
    fails_with(
        &metallic(&["quantize", not_gguf.to_str().unwrap(), o, "Q8_0"]),
        "opening",
    );
    assert!(!out.exists());
}

#[test]
fn synth_q4_k_m_has_the_types_quantize_gives_its_f16_twin() {
    let Some(f16) = tiny_f16() else { return };
    let tok = repo("assets/qwen2/tokenizer.json");
    let direct = tmp_dir().join("tiny-synth-q4_k_m.gguf");
    let quantized = tmp_dir().join("tiny-quantized-q4_k_m.gguf");
    for (dtype, out) in [
        ("Q4_K_M", &direct),
        ("q5_k_m", &tmp_dir().join("tiny-synth-q5_k_m.gguf")),
    ] {
        synth_tiny(&tok, dtype, None, out);
    }
    ok(&metallic(&[
        "quantize",
        f16.to_str().unwrap(),
        quantized.to_str().unwrap(),
        "Q4_K_M",
    ]));
    let (a, b) = (
        GgufFile::open(&direct).unwrap(),
        GgufFile::open(&quantized).unwrap(),
    );
    assert_eq!(a.get_u32("general.file_type"), Some(15));
    let types = |f: &GgufFile| -> Vec<(String, GgmlType)> {
        f.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type))
            .collect()
    };
    assert_eq!(types(&a), types(&b));
    assert!(types(&a).iter().any(|(_, t)| *t == GgmlType::Q8_0));
    assert!(types(&a).iter().any(|(_, t)| *t == GgmlType::Q5_0));
    // A plain type stays one type for every matrix; --mix gives it llama.cpp's rules.
    let plain = tmp_dir().join("tiny-synth-q4_0.gguf");
    let mixed = tmp_dir().join("tiny-synth-q4_0-mix.gguf");
    for (extra, out) in [(None, &plain), (Some("--mix"), &mixed)] {
        let mut args = synth_args(&tok, "Q4_0", out);
        args.extend(extra);
        ok(&metallic(&args));
    }
    let emb = |p: &Path| {
        GgufFile::open(p)
            .unwrap()
            .tensor("token_embd.weight")
            .unwrap()
            .ggml_type
    };
    assert_eq!(emb(&plain), GgmlType::Q4_0);
    // The output rule: Q6_K, which 64 columns cannot hold, so Q8_0.
    assert_eq!(emb(&mixed), GgmlType::Q8_0);
    fails_with(
        &metallic(&synth_args(&tok, "Q4_K_X", &plain)),
        "unknown --dtype",
    );
}
