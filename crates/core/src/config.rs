//! Model hyper-parameters, read once from GGUF metadata into a plain struct.

use metallic_gguf::GgufFile;

use crate::error::{Error, Result};

/// The transformer families this engine runs. They share one forward pass and
/// differ in rotary pairing, biases and weight permutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "qwen2" => Some(Arch::Qwen2),
            "llama" => Some(Arch::Llama),
            _ => None,
        }
    }
}

/// How rotary embedding pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions (2i, 2i+1) rotate together. llama.cpp's converter permutes
    /// Llama's Q/K rows so that this pairing reproduces HF's rotate_half.
    Normal,
    /// Dimensions (i, i + d/2) rotate together (GPT-NeoX, Qwen2).
    Neox,
}

/// Context-extension scaling of the rotary frequencies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    /// Leading dimensions of each head that rotate; the rest pass through.
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub rope_scaling: RopeScaling,
    /// Per-frequency divisors (`rope_freqs.weight`, Llama 3.x long-context scaling).
    pub has_rope_freqs: bool,
    pub rms_eps: f32,
    /// No `output.weight`: the logits come from the token embedding matrix.
    pub tied_embeddings: bool,
    /// Q/K/V projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch_name = file
            .get_str("general.architecture")
            .ok_or_else(|| Error::Config("missing general.architecture".into()))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "architecture `{arch_name}` (supported: qwen2, llama)"
            ))
        })?;
        let a = arch.name();
        let req = |key: &str| -> Result<u64> {
            let full = format!("{a}.{key}");
            file.get(&full)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| Error::Config(format!("missing or non-integer `{full}`")))
        };
        let opt_u = |key: &str| file.get(&format!("{a}.{key}")).and_then(|v| v.as_u64());
        let opt_f = |key: &str| file.get(&format!("{a}.{key}")).and_then(|v| v.as_f32());

        let hidden = req("embedding_length")? as usize;
        let n_layers = req("block_count")? as usize;
        let n_heads = req("attention.head_count")? as usize;
        let n_kv_heads = opt_u("attention.head_count_kv").unwrap_or(n_heads as u64) as usize;
        let ffn = req("feed_forward_length")? as usize;
        let context_length = opt_u("context_length").unwrap_or(2048) as usize;
        if hidden == 0 || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || ffn == 0 {
            return Err(Error::Config(
                "embedding_length, block_count, head counts and feed_forward_length must be non-zero"
                    .into(),
            ));
        }
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Config(format!(
                "head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}"
            )));
        }
        let head_dim = match opt_u("attention.key_length") {
            Some(d) => d as usize,
            None => {
                if !hidden.is_multiple_of(n_heads) {
                    return Err(Error::Config(format!(
                        "embedding_length {hidden} is not a multiple of head_count {n_heads}"
                    )));
                }
                hidden / n_heads
            }
        };
        if let Some(v) = opt_u("attention.value_length") {
            if v as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "value_length {v} different from key_length {head_dim}"
                )));
            }
        }
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 256 {
            return Err(Error::Unsupported(format!(
                "head dimension {head_dim} (must be even and at most 256)"
            )));
        }
        let rope_dim = opt_u("rope.dimension_count").unwrap_or(head_dim as u64) as usize;
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rope.dimension_count {rope_dim} must be even and at most the head dimension {head_dim}"
            )));
        }
        let rope_theta = opt_f("rope.freq_base").unwrap_or(10000.0);
        let rms_eps = opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
        let rope_ok = rope_theta.is_finite() && rope_theta > 0.0;
        let eps_ok = rms_eps.is_finite() && rms_eps >= 0.0;
        if !rope_ok || !eps_ok {
            return Err(Error::Config(format!(
                "rope.freq_base {rope_theta} / layer_norm_rms_epsilon {rms_eps} out of range"
            )));
        }
        let rope_scaling = match file.get_str(&format!("{a}.rope.scaling.type")) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = opt_f("rope.scaling.factor").unwrap_or(1.0);
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(Error::Config(format!("rope.scaling.factor {factor}")));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => {
                return Err(Error::Unsupported(format!("rope scaling `{other}`")));
            }
        };

        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Config("missing tensor token_embd.weight".into()))?;
        let vocab = match embd.dims.as_slice() {
            [k, n] if *k as usize == hidden => *n as usize,
            dims => {
                return Err(Error::Weight {
                    name: "token_embd.weight".into(),
                    reason: format!("shape {dims:?}, expected [{hidden}, vocab]"),
                })
            }
        };
        let tied_embeddings = file.tensor("output.weight").is_none();
        let qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();
        let has_rope_freqs = file.tensor("rope_freqs.weight").is_some();
        let name = file
            .get_str("general.name")
            .unwrap_or(arch_name)
            .to_string();
        Ok(ModelConfig {
            arch,
            name,
            hidden,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn,
            vocab,
            context_length,
            rope_theta,
            rope_dim,
            rope_style: match arch {
                Arch::Qwen2 => RopeStyle::Neox,
                Arch::Llama => RopeStyle::Normal,
            },
            rope_scaling,
            has_rope_freqs,
            rms_eps,
            tied_embeddings,
            qkv_bias,
        })
    }

    /// Width of the fused Q|K|V projection output.
    pub fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
