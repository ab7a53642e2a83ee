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

/// Typed access to `{arch}.*` metadata: a key that is present must have the expected type
/// (an integer stored as a float, or a string where a count belongs, is an error naming the
/// key, never a silent default).
struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'static str,
}

impl Meta<'_> {
    fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Error {
        let full = self.full(key);
        let got = self.file.get(&full).map(describe_value).unwrap_or_default();
        Error::Config(format!("`{full}` is {got}, expected {expected}"))
    }

    /// A non-negative integer that fits `usize`, if present.
    fn opt_count(&self, key: &str) -> Result<Option<usize>> {
        match self.file.get(&self.full(key)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer")),
        }
    }

    fn count(&self, key: &str) -> Result<usize> {
        self.opt_count(key)?
            .ok_or_else(|| Error::Config(format!("missing `{}`", self.full(key))))
    }

    /// A float (f32 or f64), if present. Integers are refused: a writer that stores
    /// `rope.freq_base` as an integer is broken, and guessing hides it.
    fn opt_float(&self, key: &str) -> Result<Option<f32>> {
        match self.file.get(&self.full(key)) {
            None => Ok(None),
            Some(v) => v
                .as_f32()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a float (f32 or f64)")),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.file.get(&self.full(key)) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a string")),
        }
    }
}

/// `u32 4096`, `str "2048"`, `f32 2048.5`: a value's type and (short) content for errors.
fn describe_value(v: &metallic_gguf::Value) -> String {
    use metallic_gguf::Value;
    let ty = v.value_type().name();
    match v {
        Value::String(s) => {
            let short: String = s.chars().take(32).collect();
            format!("{ty} {short:?}")
        }
        Value::Array(_, items) => format!("an array of {} elements", items.len()),
        Value::F32(x) => format!("{ty} {x}"),
        Value::F64(x) => format!("{ty} {x}"),
        Value::Bool(b) => format!("{ty} {b}"),
        other => match (other.as_i64(), other.as_u64()) {
            (Some(n), _) => format!("{ty} {n}"),
            (_, Some(n)) => format!("{ty} {n}"),
            _ => ty.to_string(),
        },
    }
}

/// Number of transformer blocks the tensors describe: one more than the largest `N` of a
/// `blk.N.*` tensor name (0 when there is none).
fn blocks_in_tensors(file: &GgufFile) -> usize {
    file.tensors()
        .iter()
        .filter_map(|t| {
            let rest = t.name.strip_prefix("blk.")?;
            let n = rest.split('.').next()?;
            n.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |n| n.saturating_add(1))
}

/// The shape of a tensor as (cols, rows) for a 2-D tensor.
fn matrix_dims(file: &GgufFile, name: &str) -> Result<(u64, u64)> {
    let t = file
        .tensor(name)
        .ok_or_else(|| Error::Config(format!("missing tensor {name}")))?;
    match t.dims.as_slice() {
        [k, n] => Ok((*k, *n)),
        dims => Err(Error::Weight {
            name: name.into(),
            reason: format!("shape {dims:?}, expected 2 dimensions"),
        }),
    }
}

impl ModelConfig {
    /// Reads and validates the hyper-parameters. Every count is checked against what the
    /// tensors imply before anything is sized by it: `block_count` against the `blk.N`
    /// tensors present, head counts and widths against `blk.0`'s projections, the
    /// vocabulary against the embedding rows and the tokenizer's token list.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch_name = match file.get("general.architecture") {
            None => return Err(Error::Config("missing general.architecture".into())),
            Some(v) => v.as_str().ok_or_else(|| {
                Error::Config(format!(
                    "`general.architecture` is {}, expected a string",
                    describe_value(v)
                ))
            })?,
        };
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "architecture `{arch_name}` (supported: qwen2, llama)"
            ))
        })?;
        let m = Meta {
            file,
            arch: arch.name(),
        };
        let a = arch.name();

        let hidden = m.count("embedding_length")?;
        let n_layers = m.count("block_count")?;
        let n_heads = m.count("attention.head_count")?;
        let n_kv_heads = m.opt_count("attention.head_count_kv")?.unwrap_or(n_heads);
        let ffn = m.count("feed_forward_length")?;
        let context_length = match m.opt_count("context_length")? {
            Some(0) => {
                return Err(Error::Config(format!(
                    "`{a}.context_length` is 0; a model needs at least one position"
                )))
            }
            Some(n) => n,
            None => 2048,
        };
        if hidden == 0 || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || ffn == 0 {
            return Err(Error::Config(
                "embedding_length, block_count, head counts and feed_forward_length must be non-zero"
                    .into(),
            ));
        }
        let blocks = blocks_in_tensors(file);
        if n_layers > blocks {
            return Err(Error::Config(format!(
                "`{a}.block_count` is {n_layers} but the file has tensors for {blocks} blocks \
                 (blk.0 .. blk.{})",
                blocks.saturating_sub(1)
            )));
        }
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Config(format!(
                "head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}"
            )));
        }
        let head_dim = match m.opt_count("attention.key_length")? {
            Some(d) => d,
            None => {
                if !hidden.is_multiple_of(n_heads) {
                    return Err(Error::Config(format!(
                        "embedding_length {hidden} is not a multiple of head_count {n_heads}"
                    )));
                }
                hidden / n_heads
            }
        };
        if let Some(v) = m.opt_count("attention.value_length")? {
            if v != head_dim {
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
        let rope_dim = m.opt_count("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rope.dimension_count {rope_dim} must be even and at most the head dimension {head_dim}"
            )));
        }
        let rope_theta = m.opt_float("rope.freq_base")?.unwrap_or(10000.0);
        let rms_eps = m
            .opt_float("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6);
        let rope_ok = rope_theta.is_finite() && rope_theta > 0.0;
        let eps_ok = rms_eps.is_finite() && rms_eps >= 0.0;
        if !rope_ok || !eps_ok {
            return Err(Error::Config(format!(
                "rope.freq_base {rope_theta} / layer_norm_rms_epsilon {rms_eps} out of range"
            )));
        }
        let rope_scaling = match m.opt_str("rope.scaling.type")? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = m.opt_float("rope.scaling.factor")?.unwrap_or(1.0);
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(Error::Config(format!("rope.scaling.factor {factor}")));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => {
                return Err(Error::Unsupported(format!("rope scaling `{other}`")));
            }
        };

        let (embd_k, embd_n) = matrix_dims(file, "token_embd.weight")?;
        if embd_k != hidden as u64 {
            return Err(Error::Weight {
                name: "token_embd.weight".into(),
                reason: format!("shape [{embd_k}, {embd_n}], expected [{hidden}, vocab]"),
            });
        }
        let vocab = usize::try_from(embd_n).map_err(|_| Error::Weight {
            name: "token_embd.weight".into(),
            reason: format!("{embd_n} rows do not fit this machine's address space"),
        })?;
        if vocab == 0 {
            return Err(Error::Weight {
                name: "token_embd.weight".into(),
                reason: "0 rows: the vocabulary is empty".into(),
            });
        }
        // llama.cpp sizes the embedding by the token list and refuses a mismatch; ids past
        // the tokens would decode to nothing, tokens past the rows would index out of range.
        if let Some(v) = file.get("tokenizer.ggml.tokens") {
            let n_tokens = v.as_array().map(<[_]>::len).ok_or_else(|| {
                Error::Config(format!(
                    "`tokenizer.ggml.tokens` is {}, expected an array of strings",
                    describe_value(v)
                ))
            })?;
            if n_tokens != vocab {
                return Err(Error::Config(format!(
                    "the tokenizer has {n_tokens} tokens but token_embd.weight has {vocab} rows \
                     (they must match: the file is inconsistent)"
                )));
            }
        }
        if let Some(n) = m.opt_count("vocab_size")? {
            if n != vocab {
                return Err(Error::Config(format!(
                    "`{a}.vocab_size` is {n} but token_embd.weight has {vocab} rows"
                )));
            }
        }
        // Widths against the first block's projections, with overflow checked, so nothing is
        // later sized by a head count the weights do not back.
        let width = |what: &str, heads: usize| {
            heads.checked_mul(head_dim).ok_or_else(|| {
                Error::Config(format!(
                    "{what} {heads} x head dimension {head_dim} overflows"
                ))
            })
        };
        let q_width = width("head_count", n_heads)?;
        let kv_width = width("head_count_kv", n_kv_heads)?;
        for (name, cols, rows) in [
            ("blk.0.attn_q.weight", hidden, q_width),
            ("blk.0.attn_k.weight", hidden, kv_width),
            ("blk.0.ffn_gate.weight", hidden, ffn),
        ] {
            let (k, n) = matrix_dims(file, name)?;
            if (k, n) != (cols as u64, rows as u64) {
                return Err(Error::Weight {
                    name: name.into(),
                    reason: format!(
                        "shape [{k}, {n}], expected [{cols}, {rows}] from the metadata \
                         (embedding_length, head counts x head dimension, feed_forward_length)"
                    ),
                });
            }
        }
        let tied_embeddings = file.tensor("output.weight").is_none();
        let qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();
        let has_rope_freqs = file.tensor("rope_freqs.weight").is_some();
        let name = match file.get("general.name") {
            None => arch_name.to_string(),
            Some(v) => v.as_str().unwrap_or(arch_name).to_string(),
        };
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
