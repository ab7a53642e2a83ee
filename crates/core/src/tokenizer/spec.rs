//! The plain-data description of a tokenizer, in GGUF's terms: what `tokenizer.ggml.*`
//! metadata holds, and what `metallic synth` writes there from a tokenizer.json.

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    /// A special token: recognised in text only with special parsing on.
    pub const CONTROL: i32 = 3;
    /// An added, non-special token: always recognised in text.
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Everything needed to build a [`Tokenizer`](super::Tokenizer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`, llama.cpp's pre-tokenizer name (e.g. `"qwen2"`, `"smollm"`).
    pub pre: String,
    /// Vocabulary pieces by id, in the byte-level alphabet (`"Ġthe"`); added tokens verbatim.
    pub tokens: Vec<String>,
    /// One of [`token_type`] per token; empty means all NORMAL.
    pub token_types: Vec<i32>,
    /// Merges in rank order, as `"left right"`.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// End of turn (e.g. `<|im_end|>`), when the model names one.
    pub eot_id: Option<u32>,
    pub unknown_id: Option<u32>,
    pub padding_id: Option<u32>,
    /// Prepend BOS in [`Tokenizer::encode_with_bos`](super::Tokenizer::encode_with_bos).
    pub add_bos: bool,
    /// Append EOS in [`Tokenizer::encode_with_bos`](super::Tokenizer::encode_with_bos).
    pub add_eos: bool,
}
