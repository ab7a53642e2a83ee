//! Synthetic models: GGUF files with the exact tensor names, shapes and
//! metadata of real models and random weights, for speed work and for
//! parity tests against reference implementations.

use std::path::Path;

use metallic_gguf::{quant, GgmlType, GgufWriter, Value, ValueType};

use crate::quantize::{self, FileType, MixOptions, ModelShape, TensorDesc};

use crate::config::Arch;
use crate::error::{Error, Result};
use crate::tokenizer::TokenizerSpec;

/// The shape of a real model.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// Rows of the embedding matrix (the tokenizer's tokens are padded to it).
    pub vocab: usize,
    pub context: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub tied: bool,
    pub qkv_bias: bool,
    /// Llama 3 frequency scaling: (factor, low_freq_factor, high_freq_factor, original context).
    pub llama3_rope: Option<(f32, f32, f32, usize)>,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        arch: Arch::Qwen2,
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 128,
        vocab: 151936,
        context: 4096,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        tied: true,
        qkv_bias: true,
        llama3_rope: None,
    },
    Preset {
        name: "qwen2.5-0.5b",
        arch: Arch::Qwen2,
        hidden: 896,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        ffn: 4864,
        vocab: 151936,
        context: 32768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        tied: true,
        qkv_bias: true,
        llama3_rope: None,
    },
    Preset {
        name: "qwen2.5-1.5b",
        arch: Arch::Qwen2,
        hidden: 1536,
        layers: 28,
        heads: 12,
        kv_heads: 2,
        ffn: 8960,
        vocab: 151936,
        context: 32768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        tied: true,
        qkv_bias: true,
        llama3_rope: None,
    },
    Preset {
        name: "qwen2.5-3b",
        arch: Arch::Qwen2,
        hidden: 2048,
        layers: 36,
        heads: 16,
        kv_heads: 2,
        ffn: 11008,
        vocab: 151936,
        context: 32768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        tied: true,
        qkv_bias: true,
        llama3_rope: None,
    },
    Preset {
        name: "smollm2-135m",
        arch: Arch::Llama,
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        ffn: 1536,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        tied: true,
        qkv_bias: false,
        llama3_rope: None,
    },
    Preset {
        name: "llama3.2-1b",
        arch: Arch::Llama,
        hidden: 2048,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128256,
        context: 131072,
        rope_theta: 500_000.0,
        rms_eps: 1e-5,
        tied: true,
        qkv_bias: false,
        llama3_rope: Some((32.0, 1.0, 4.0, 8192)),
    },
];

pub fn preset(arch: Arch, name: &str) -> Result<&'static Preset> {
    PRESETS
        .iter()
        .find(|p| {
            p.arch == arch && (p.name == name || p.name.trim_start_matches("qwen2.5-") == name)
        })
        .ok_or_else(|| {
            let names: Vec<_> = PRESETS
                .iter()
                .filter(|p| p.arch == arch)
                .map(|p| p.name)
                .collect();
            Error::InvalidArgument(format!(
                "no {} preset `{name}` (known: {})",
                arch.name(),
                names.join(", ")
            ))
        })
}

/// Deterministic normal samples: the engine's generator and Box-Muller.
struct Normal {
    rng: crate::rng::Xoshiro256,
    spare: Option<f32>,
}

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal {
            rng: crate::rng::Xoshiro256::new(seed),
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        // Centred in its 2^-53 bin: never 0, so ln() below is finite.
        ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the tensor name: each tensor's values depend only on the seed
    // and its name, not on the order tensors are written in.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn random(seed: u64, name: &str, len: usize, mean: f32, std: f32) -> Vec<f32> {
    let mut g = Normal::new(name_seed(seed, name));
    (0..len).map(|_| mean + std * g.sample()).collect()
}

/// The 1-D frequency divisors Llama 3.x GGUFs carry as `rope_freqs.weight`,
/// computed as llama.cpp's converter does.
pub fn llama3_rope_freqs(
    theta: f32,
    dim: usize,
    factor: f32,
    low: f32,
    high: f32,
    orig: usize,
) -> Vec<f32> {
    let low_wavelen = orig as f64 / low as f64;
    let high_wavelen = orig as f64 / high as f64;
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f64
            } else {
                let smooth = (orig as f64 / wavelen - low as f64) / (high as f64 - low as f64);
                1.0 / ((1.0 - smooth) / factor as f64 + smooth)
            };
            f as f32
        })
        .collect()
}

pub struct SynthOptions<'a> {
    pub preset: &'a Preset,
    /// The type of every matrix (llama-quantize's `--pure`): rows too short for its blocks
    /// fall back as llama.cpp's quantizer does. [`build_mix`] / [`write_mix`] take a file type
    /// (`Q4_K_M`, ...) instead, whose per-tensor types are llama.cpp's.
    pub dtype: GgmlType,
    pub tokenizer: &'a TokenizerSpec,
    pub chat_template: Option<&'a str>,
    pub seed: u64,
}

fn strings(v: impl IntoIterator<Item = String>) -> Value {
    Value::Array(
        ValueType::String,
        v.into_iter().map(Value::String).collect(),
    )
}

/// How a tensor's values are made.
enum Init {
    /// Seeded normal values (the seed and the tensor's name fix them).
    Normal { mean: f32, std: f32 },
    /// Fixed values.
    Values(Vec<f32>),
}

/// One tensor of the model, before its values exist.
struct Spec {
    name: String,
    dims: Vec<u64>,
    init: Init,
}

impl Spec {
    fn values(&self, seed: u64) -> Vec<f32> {
        let len = self.dims.iter().product::<u64>() as usize;
        match &self.init {
            Init::Normal { mean, std } => random(seed, &self.name, len, *mean, *std),
            Init::Values(v) => v.clone(),
        }
    }
}

/// The metadata (in a writer without tensors) and the tensors of the model.
fn layout(opts: &SynthOptions<'_>, ftype: FileType) -> Result<(GgufWriter<'static>, Vec<Spec>)> {
    let p = opts.preset;
    let tok = opts.tokenizer;
    if tok.tokens.len() > p.vocab {
        return Err(Error::InvalidArgument(format!(
            "the tokenizer has {} tokens, more than the {} preset's vocabulary of {}",
            tok.tokens.len(),
            p.name,
            p.vocab
        )));
    }
    let a = p.arch.name();
    let head_dim = p.hidden / p.heads;
    let mut w = GgufWriter::new();
    let mut meta = |k: &str, v: Value| {
        w.add_metadata(k, v);
    };
    meta("general.architecture", Value::String(a.into()));
    meta("general.type", Value::String("model".into()));
    meta(
        "general.name",
        Value::String(format!(
            "metallic synthetic {} (seed {})",
            p.name, opts.seed
        )),
    );
    meta(&format!("{a}.block_count"), Value::U32(p.layers as u32));
    meta(&format!("{a}.context_length"), Value::U32(p.context as u32));
    meta(
        &format!("{a}.embedding_length"),
        Value::U32(p.hidden as u32),
    );
    meta(
        &format!("{a}.feed_forward_length"),
        Value::U32(p.ffn as u32),
    );
    meta(
        &format!("{a}.attention.head_count"),
        Value::U32(p.heads as u32),
    );
    meta(
        &format!("{a}.attention.head_count_kv"),
        Value::U32(p.kv_heads as u32),
    );
    meta(&format!("{a}.rope.freq_base"), Value::F32(p.rope_theta));
    meta(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(p.rms_eps),
    );
    if p.arch == Arch::Llama {
        meta(&format!("{a}.vocab_size"), Value::U32(p.vocab as u32));
        meta(
            &format!("{a}.rope.dimension_count"),
            Value::U32(head_dim as u32),
        );
    }
    meta("general.file_type", Value::U32(ftype.id()));
    meta(
        "general.quantization_version",
        Value::U32(crate::quantize::QUANTIZATION_VERSION),
    );

    // Tokenizer, padded to the embedding rows as HF's converter does.
    let mut tokens = tok.tokens.clone();
    let mut types = tok.token_types.clone();
    for i in tokens.len()..p.vocab {
        tokens.push(format!("[PAD{i}]"));
        types.push(4);
    }
    meta("tokenizer.ggml.model", Value::String(tok.model.clone()));
    meta("tokenizer.ggml.pre", Value::String(tok.pre.clone()));
    meta("tokenizer.ggml.tokens", strings(tokens));
    meta(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    meta("tokenizer.ggml.merges", strings(tok.merges.iter().cloned()));
    for (key, id) in [
        ("bos_token_id", tok.bos_id),
        ("eos_token_id", tok.eos_id),
        ("eot_token_id", tok.eot_id),
        ("unknown_token_id", tok.unknown_id),
        ("padding_token_id", tok.padding_id),
    ] {
        if let Some(id) = id {
            meta(&format!("tokenizer.ggml.{key}"), Value::U32(id));
        }
    }
    meta("tokenizer.ggml.add_bos_token", Value::Bool(tok.add_bos));
    meta("tokenizer.ggml.add_eos_token", Value::Bool(tok.add_eos));
    if let Some(t) = opts.chat_template {
        meta("tokenizer.chat_template", Value::String(t.into()));
    }

    let matrix = |name: String, cols: usize, rows: usize, std: f32| Spec {
        name,
        dims: vec![cols as u64, rows as u64],
        init: Init::Normal { mean: 0.0, std },
    };
    let vector = |name: String, len: usize, mean: f32, std: f32| Spec {
        name,
        dims: vec![len as u64],
        init: Init::Normal { mean, std },
    };
    // Scales chosen so activations stay O(1) through the layers and the
    // logits spread enough that greedy choices are not near-ties.
    let std = 0.02f32;
    let emb_std = 0.05f32;
    let q_w = p.heads * head_dim;
    let kv_w = p.kv_heads * head_dim;
    let mut specs = vec![matrix(
        "token_embd.weight".into(),
        p.hidden,
        p.vocab,
        emb_std,
    )];
    if let Some((factor, low, high, orig)) = p.llama3_rope {
        let f = llama3_rope_freqs(p.rope_theta, head_dim, factor, low, high, orig);
        specs.push(Spec {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            init: Init::Values(f),
        });
    }
    for l in 0..p.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        specs.push(vector(n("attn_norm.weight"), p.hidden, 1.0, 0.1));
        specs.push(matrix(n("attn_q.weight"), p.hidden, q_w, std));
        specs.push(matrix(n("attn_k.weight"), p.hidden, kv_w, std));
        specs.push(matrix(n("attn_v.weight"), p.hidden, kv_w, std));
        if p.qkv_bias {
            specs.push(vector(n("attn_q.bias"), q_w, 0.0, 0.1));
            specs.push(vector(n("attn_k.bias"), kv_w, 0.0, 0.1));
            specs.push(vector(n("attn_v.bias"), kv_w, 0.0, 0.1));
        }
        specs.push(matrix(n("attn_output.weight"), q_w, p.hidden, std));
        specs.push(vector(n("ffn_norm.weight"), p.hidden, 1.0, 0.1));
        specs.push(matrix(n("ffn_gate.weight"), p.hidden, p.ffn, std));
        specs.push(matrix(n("ffn_up.weight"), p.hidden, p.ffn, std));
        specs.push(matrix(n("ffn_down.weight"), p.ffn, p.hidden, std));
    }
    specs.push(vector("output_norm.weight".into(), p.hidden, 1.0, 0.1));
    if !p.tied {
        specs.push(matrix("output.weight".into(), p.hidden, p.vocab, emb_std));
    }
    Ok((w, specs))
}

/// The type of each tensor: llama.cpp's choice for `ftype` (`pure`: one type for all).
fn types(opts: &SynthOptions<'_>, ftype: FileType, pure: bool, specs: &[Spec]) -> Vec<GgmlType> {
    let p = opts.preset;
    let shape = ModelShape {
        arch: p.arch.name().into(),
        n_layer: p.layers,
        n_head: p.heads,
        n_head_kv: p.kv_heads,
        n_expert: 0,
    };
    let descs: Vec<TensorDesc<'_>> = specs
        .iter()
        .map(|s| TensorDesc {
            name: &s.name,
            dims: &s.dims,
            ty: GgmlType::F32,
        })
        .collect();
    let mix = MixOptions {
        pure,
        ..MixOptions::default()
    };
    quantize::mix::plan(ftype, &shape, &mix, &descs)
}

/// The file type of `--dtype`: a single type (as llama-quantize `--pure`) or a file type.
fn pure_file_type(ty: GgmlType) -> Result<FileType> {
    FileType::of_type(ty).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{ty} is not a weight type a model file is written in (F32, F16, BF16, Q8_0, Q4_0,              Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, or a mix: {})",
            FileType::names()
        ))
    })
}

/// [`quant::quantize`] over pieces of whole blocks on the thread pool: blocks
/// are quantised independently, so the bytes are the same as one serial call,
/// and a 1.5B model's K-quant search takes seconds on a many-core host rather
/// than minutes.
fn quantize_parallel(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    // 64 K-quant super-blocks (or 512 legacy blocks) a task.
    let piece = ty.block_size() * (16384 / ty.block_size()).max(1);
    if values.len() <= piece {
        return Ok(quant::quantize(ty, values)?);
    }
    let parts: Vec<Vec<u8>> = values
        .par_chunks(piece)
        .map(|c| quant::quantize(ty, c))
        .collect::<std::result::Result<_, _>>()?;
    Ok(parts.concat())
}

fn build_impl(opts: &SynthOptions<'_>, ftype: FileType, pure: bool) -> Result<GgufWriter<'static>> {
    let (mut w, specs) = layout(opts, ftype)?;
    let types = types(opts, ftype, pure, &specs);
    for (s, ty) in specs.iter().zip(types) {
        let bytes = quantize_parallel(ty, &s.values(opts.seed))?;
        w.add_tensor(s.name.clone(), ty, &s.dims, bytes)?;
    }
    Ok(w)
}

fn write_impl(
    opts: &SynthOptions<'_>,
    ftype: FileType,
    pure: bool,
    path: &Path,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let (mut w, specs) = layout(opts, ftype)?;
    let types = types(opts, ftype, pure, &specs);
    for (s, &ty) in specs.iter().zip(&types) {
        w.add_tensor_info(s.name.clone(), ty, &s.dims)?;
    }
    // One tensor in memory at a time: a 1.5B model in F32 would not fit otherwise.
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut stream = w.stream_to(file)?;
    for (i, (s, &ty)) in specs.iter().zip(&types).enumerate() {
        stream.write(&quantize_parallel(ty, &s.values(opts.seed))?)?;
        on_tensor(i + 1, specs.len());
    }
    std::io::Write::flush(&mut stream.finish()?)?;
    Ok(())
}

/// Build the GGUF of a synthetic model whose matrices are all `opts.dtype`, in memory.
pub fn build(opts: &SynthOptions<'_>) -> Result<GgufWriter<'static>> {
    build_impl(opts, pure_file_type(opts.dtype)?, true)
}

/// Build and write a synthetic model whose matrices are all `opts.dtype`, tensor by tensor.
pub fn write(opts: &SynthOptions<'_>, path: &Path) -> Result<()> {
    write_impl(
        opts,
        pure_file_type(opts.dtype)?,
        true,
        path,
        &mut |_, _| {},
    )
}

/// [`build`] with llama.cpp's per-tensor types for `ftype` (`opts.dtype` is ignored).
pub fn build_mix(opts: &SynthOptions<'_>, ftype: FileType) -> Result<GgufWriter<'static>> {
    build_impl(opts, ftype, false)
}

/// [`write`] with llama.cpp's per-tensor types for `ftype` (`opts.dtype` is ignored).
pub fn write_mix(opts: &SynthOptions<'_>, ftype: FileType, path: &Path) -> Result<()> {
    write_impl(opts, ftype, false, path, &mut |_, _| {})
}

/// [`write`] (`mix` None) or [`write_mix`], calling `on_tensor(done, total)` after
/// each tensor is written (progress bars: making and quantising the random
/// weights is nearly all of the time).
pub fn write_with_progress(
    opts: &SynthOptions<'_>,
    mix: Option<FileType>,
    path: &Path,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    match mix {
        Some(ftype) => write_impl(opts, ftype, false, path, on_tensor),
        None => write_impl(opts, pure_file_type(opts.dtype)?, true, path, on_tensor),
    }
}
