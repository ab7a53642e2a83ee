//! Synthetic models: GGUF files with the exact tensor names, shapes and
//! metadata of real models and random weights, for speed work and for
//! parity tests against reference implementations.

use std::path::Path;

use metallic_gguf::{quant, GgmlType, GgufWriter, Value, ValueType};

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

/// llama.cpp's fallback when a row does not divide into the type's blocks.
pub fn fallback_type(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let fb = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(fb.block_size()) {
        fb
    } else {
        GgmlType::F16
    }
}

/// ggml's `general.file_type` code of a model whose big tensors are `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 12,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
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

/// Build the GGUF of a synthetic model.
pub fn build(opts: &SynthOptions<'_>) -> Result<GgufWriter<'static>> {
    build_with(opts, &mut |_, _| {})
}

/// [`build`], calling `on_layer(done, total)` after each layer (progress bars:
/// the layers' random weights and quantisation are nearly all of the time).
pub fn build_with(
    opts: &SynthOptions<'_>,
    on_layer: &mut dyn FnMut(usize, usize),
) -> Result<GgufWriter<'static>> {
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
    meta("general.file_type", Value::U32(file_type(opts.dtype)));
    meta("general.quantization_version", Value::U32(2));

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

    let seed = opts.seed;
    let matrix =
        |w: &mut GgufWriter, name: &str, cols: usize, rows: usize, std: f32| -> Result<()> {
            let ty = fallback_type(opts.dtype, cols);
            let data = random(seed, name, cols * rows, 0.0, std);
            let bytes = quant::quantize(ty, &data)?;
            w.add_tensor(name, ty, &[cols as u64, rows as u64], bytes)?;
            Ok(())
        };
    let vector = |w: &mut GgufWriter, name: &str, len: usize, mean: f32, std: f32| -> Result<()> {
        let data = random(seed, name, len, mean, std);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(name, GgmlType::F32, &[len as u64], bytes)?;
        Ok(())
    };

    // Scales chosen so activations stay O(1) through the layers and the
    // logits spread enough that greedy choices are not near-ties.
    let std = 0.02f32;
    let emb_std = 0.05f32;
    let q_w = p.heads * head_dim;
    let kv_w = p.kv_heads * head_dim;
    matrix(&mut w, "token_embd.weight", p.hidden, p.vocab, emb_std)?;
    if let Some((factor, low, high, orig)) = p.llama3_rope {
        let f = llama3_rope_freqs(p.rope_theta, head_dim, factor, low, high, orig);
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor("rope_freqs.weight", GgmlType::F32, &[f.len() as u64], bytes)?;
    }
    for l in 0..p.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        vector(&mut w, &n("attn_norm.weight"), p.hidden, 1.0, 0.1)?;
        matrix(&mut w, &n("attn_q.weight"), p.hidden, q_w, std)?;
        matrix(&mut w, &n("attn_k.weight"), p.hidden, kv_w, std)?;
        matrix(&mut w, &n("attn_v.weight"), p.hidden, kv_w, std)?;
        if p.qkv_bias {
            vector(&mut w, &n("attn_q.bias"), q_w, 0.0, 0.1)?;
            vector(&mut w, &n("attn_k.bias"), kv_w, 0.0, 0.1)?;
            vector(&mut w, &n("attn_v.bias"), kv_w, 0.0, 0.1)?;
        }
        matrix(&mut w, &n("attn_output.weight"), q_w, p.hidden, std)?;
        vector(&mut w, &n("ffn_norm.weight"), p.hidden, 1.0, 0.1)?;
        matrix(&mut w, &n("ffn_gate.weight"), p.hidden, p.ffn, std)?;
        matrix(&mut w, &n("ffn_up.weight"), p.hidden, p.ffn, std)?;
        matrix(&mut w, &n("ffn_down.weight"), p.ffn, p.hidden, std)?;
        on_layer(l + 1, p.layers);
    }
    vector(&mut w, "output_norm.weight", p.hidden, 1.0, 0.1)?;
    if !p.tied {
        matrix(&mut w, "output.weight", p.hidden, p.vocab, emb_std)?;
    }
    Ok(w)
}

/// Build and write a synthetic model.
pub fn write(opts: &SynthOptions<'_>, path: &Path) -> Result<()> {
    write_with(opts, path, &mut |_, _| {})
}

/// [`write`] with [`build_with`]'s progress callback.
pub fn write_with(
    opts: &SynthOptions<'_>,
    path: &Path,
    on_layer: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let w = build_with(opts, on_layer)?;
    w.write_file(path)?;
    Ok(())
}
