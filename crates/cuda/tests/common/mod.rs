//! Shared by the GPU tests: opening the device (or skipping with a message),
//! synthetic models built in memory, host-written activations, error measures.
#![allow(dead_code)]

use std::sync::Arc;

use metallic::backend::{Backend, WeightView};
use metallic::config::Arch;
use metallic::synth::{self, Preset, SynthOptions};
use metallic::tokenizer::TokenizerSpec;
use metallic_cuda::CudaBackend;
use metallic_gguf::{quant, GgmlType, GgufFile, GgufWriter};

/// The CUDA backend, or `None` (with a message) where no GPU can be used.
/// Run the GPU tests on a machine with one: they pass vacuously elsewhere.
pub fn cuda() -> Option<CudaBackend> {
    if let Some(why) = CudaBackend::unavailable_reason() {
        eprintln!("skipped: no usable CUDA device ({why})");
        return None;
    }
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => panic!("a CUDA device is present but the backend failed to open: {e}"),
    }
}

/// Whether the GPU tests must not skip (set by the device check script, so a
/// missing GPU there is a failure rather than a silent pass).
pub fn gpu_required() -> bool {
    std::env::var_os("METALLIC_REQUIRE_GPU").is_some()
}

/// `cuda()`, failing instead of skipping when the GPU is required.
pub fn cuda_or_skip() -> Option<CudaBackend> {
    let b = cuda();
    assert!(
        b.is_some() || !gpu_required(),
        "METALLIC_REQUIRE_GPU is set but no CUDA device could be opened"
    );
    b
}

/// A byte-level-free tokenizer: enough for the model loader and detokenizer.
pub fn tokenizer_spec(pre: &str) -> TokenizerSpec {
    TokenizerSpec {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens: (0..512).map(|i| format!("t{i}_")).collect(),
        token_types: vec![1; 512],
        merges: Vec::new(),
        bos_id: None,
        eos_id: None,
        eot_id: None,
        unknown_id: None,
        padding_id: None,
        add_bos: false,
        add_eos: false,
    }
}

pub fn preset(arch: Arch, name: &str) -> Preset {
    synth::preset(arch, name).expect("preset exists").clone()
}

/// The `tiny` qwen2 preset widened to 256 so that k-quant blocks fit its rows.
pub fn tiny256() -> Preset {
    Preset {
        name: "tiny256",
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: 4096,
        ..preset(Arch::Qwen2, "tiny")
    }
}

/// A synthetic model, built in memory.
pub fn synth_model(p: &Preset, dtype: GgmlType, seed: u64) -> Arc<GgufFile> {
    let spec = tokenizer_spec(if p.arch == Arch::Qwen2 {
        "qwen2"
    } else {
        "smollm"
    });
    let w = synth::build(&SynthOptions {
        preset: p,
        dtype,
        tokenizer: &spec,
        chat_template: None,
        seed,
    })
    .expect("synthetic model builds");
    Arc::new(GgufFile::from_bytes(w.to_bytes().expect("serialises")).expect("parses"))
}

/// A synthetic model with llama.cpp's per-tensor types for `ftype`, in memory.
pub fn synth_mix_model(
    p: &Preset,
    ftype: metallic::quantize::FileType,
    seed: u64,
) -> Arc<GgufFile> {
    let spec = tokenizer_spec(if p.arch == Arch::Qwen2 {
        "qwen2"
    } else {
        "smollm"
    });
    let w = synth::build_mix(
        &SynthOptions {
            preset: p,
            dtype: ftype.default_type(),
            tokenizer: &spec,
            chat_template: None,
            seed,
        },
        ftype,
    )
    .expect("synthetic model builds");
    Arc::new(GgufFile::from_bytes(w.to_bytes().expect("serialises")).expect("parses"))
}

/// Deterministic pseudo-normal values.
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (u(), u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

/// A file holding the named tensors (`[cols, rows]`, f32 values quantised to `ty`).
pub fn tensor_file(tensors: &[(&str, GgmlType, usize, usize, Vec<f32>)]) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (name, ty, cols, rows, vals) in tensors {
        let bytes = quant::quantize(*ty, vals).expect("quantises");
        let dims: Vec<u64> = if *rows == 1 {
            vec![*cols as u64]
        } else {
            vec![*cols as u64, *rows as u64]
        };
        w.add_tensor(*name, *ty, &dims, bytes).expect("adds");
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes().expect("serialises")).expect("parses"))
}

pub fn view(file: &Arc<GgufFile>, name: &str) -> WeightView {
    WeightView::new(file.clone(), file.tensor(name).expect("tensor").clone())
}

/// A tensor of `rows x cols` f32 activations with the given values, written
/// through the backend's own ops (an f32 table, embedded row by row).
pub fn activations<B: Backend>(b: &B, vals: &[f32], rows: usize, cols: usize) -> B::Tensor {
    let f = tensor_file(&[("x", GgmlType::F32, cols, rows.max(2), {
        let mut v = vals.to_vec();
        v.resize(cols * rows.max(2), 0.0);
        v
    })]);
    let table = b.upload_linear(&[view(&f, "x")], None).expect("upload");
    let mut ids = b.alloc(metallic::backend::DType::I32, rows, "ids").unwrap();
    let idv: Vec<i32> = (0..rows as i32).collect();
    b.write_i32(&mut ids, 0, &idv).unwrap();
    let mut x = b
        .alloc(metallic::backend::DType::F32, rows * cols, "x")
        .unwrap();
    b.embed(&table, &ids, rows, &mut x).expect("embed");
    x
}

pub fn read<B: Backend>(b: &B, t: &B::Tensor, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    b.read_f32(t, 0, &mut out).expect("read");
    out
}

/// ||a - b|| / ||b||.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite result {x}");
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
