//! Errors of the core crate.

use thiserror::Error;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] metallic_gguf::GgufError),

    #[error("model metadata: {0}")]
    Config(String),

    #[error("model weights: tensor `{name}`: {reason}")]
    Weight { name: String, reason: String },

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("context is full: {needed} positions needed, the context holds {limit} (raise --ctx-size up to the model's {model_limit})")]
    ContextFull {
        needed: usize,
        limit: usize,
        model_limit: usize,
    },

    #[error("backend `{backend}`: {message}")]
    Backend { backend: String, message: String },

    #[error("out of device memory while allocating {what} ({bytes} bytes; {free} bytes free of {total})")]
    OutOfMemory {
        what: String,
        bytes: u64,
        free: u64,
        total: u64,
    },

    #[error("matmul implementation `{name}` cannot run {shape}")]
    MatmulUnsupported { name: String, shape: String },

    #[error("unknown matmul implementation `{name}` (known: {known})")]
    UnknownMatmulImpl { name: String, known: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),

    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),

    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),

    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn backend(backend: &str, message: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.to_string(),
            message: message.into(),
        }
    }
}
