use thiserror::Error;

/// Why a tokenizer could not be built. Encoding and decoding never fail: every valid UTF-8
/// string encodes, and unknown ids decode to nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a vocabulary kind other than byte-level BPE (`gpt2`).
    #[error("unsupported tokenizer model {0:?}: only byte-level BPE (\"gpt2\") is implemented")]
    UnsupportedModel(String),

    /// `tokenizer.ggml.pre` (or a tokenizer.json pre-tokenizer) this implementation does not
    /// reproduce. Guessing would silently produce different token ids than the model was
    /// trained on.
    #[error("unsupported pre-tokenizer {0:?} (supported: {supported})", supported = super::pretokenize::SUPPORTED_NAMES)]
    UnsupportedPreTokenizer(String),

    /// A required GGUF metadata key or tokenizer.json field is absent.
    #[error("missing tokenizer field {0}")]
    MissingField(&'static str),

    /// A GGUF metadata key or tokenizer.json field has the wrong type or shape.
    #[error("tokenizer field {field} is malformed: {why}")]
    Malformed { field: &'static str, why: String },

    /// The vocabulary has no tokens.
    #[error("the tokenizer vocabulary is empty")]
    EmptyVocab,

    /// Parallel per-token arrays disagree in length.
    #[error("{field} has {got} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        field: &'static str,
        expected: usize,
        got: usize,
    },

    /// A special-token id (bos, eos, ...) points outside the vocabulary.
    #[error("{field} = {id} is outside the vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        field: &'static str,
        id: u32,
        vocab_size: usize,
    },

    /// `add_bos`/`add_eos` is set but the matching token id is not.
    #[error("{0} is requested but its token id is not set")]
    MissingSpecialId(&'static str),

    /// tokenizer.json is not valid JSON or not a tokenizer description.
    #[error("tokenizer.json: {0}")]
    Json(String),
}
