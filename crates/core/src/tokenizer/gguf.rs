//! Reading `tokenizer.ggml.*` GGUF metadata into a [`TokenizerSpec`].

use metallic_gguf::{GgufFile, Value};

use super::error::TokenizerError;
use super::pretokenize::PreTokenizerKind;
use super::spec::TokenizerSpec;

fn malformed(field: &'static str, why: impl Into<String>) -> TokenizerError {
    TokenizerError::Malformed {
        field,
        why: why.into(),
    }
}

fn string(file: &GgufFile, key: &'static str) -> Result<Option<String>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| malformed(key, "not a string")),
    }
}

fn strings(file: &GgufFile, key: &'static str) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let items = v.as_array().ok_or_else(|| malformed(key, "not an array"))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| malformed(key, "has a non-string element"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn id(file: &GgufFile, key: &'static str) -> Result<Option<u32>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u32()
            .map(Some)
            .ok_or_else(|| malformed(key, "not a token id")),
    }
}

fn flag(file: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(malformed(key, "not a bool")),
    }
}

impl TokenizerSpec {
    /// Read the tokenizer a GGUF describes. Required: `tokenizer.ggml.model` (= `gpt2`),
    /// `.pre`, `.tokens` and `.merges`; the rest defaults (token types NORMAL, no special
    /// ids, add_eos false, add_bos false except for Llama 3 as in llama.cpp). Whether the
    /// pre-tokenizer is supported is checked by
    /// [`Tokenizer::from_spec`](super::Tokenizer::from_spec).
    pub fn from_gguf(file: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
        let model = string(file, "tokenizer.ggml.model")?
            .ok_or(TokenizerError::MissingField("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model));
        }
        // llama.cpp falls back to its "default" splitter when this is absent, which is not a
        // pre-tokenizer any reference implements; require it instead.
        let pre = string(file, "tokenizer.ggml.pre")?
            .ok_or(TokenizerError::MissingField("tokenizer.ggml.pre"))?;
        let tokens = strings(file, "tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::MissingField("tokenizer.ggml.tokens"))?;
        let merges = strings(file, "tokenizer.ggml.merges")?
            .ok_or(TokenizerError::MissingField("tokenizer.ggml.merges"))?;
        let token_types = match file.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| malformed("tokenizer.ggml.token_type", "not an array"))?
                .iter()
                .map(|t| {
                    t.as_i32()
                        .ok_or_else(|| malformed("tokenizer.ggml.token_type", "not integers"))
                })
                .collect::<Result<_, _>>()?,
        };
        // llama.cpp adds BOS for Llama 3 vocabularies unless the file says otherwise.
        let llama3 = PreTokenizerKind::from_gguf_name(&pre) == Ok(PreTokenizerKind::Llama3);
        Ok(TokenizerSpec {
            model,
            pre,
            tokens,
            token_types,
            merges,
            bos_id: id(file, "tokenizer.ggml.bos_token_id")?,
            eos_id: id(file, "tokenizer.ggml.eos_token_id")?,
            eot_id: id(file, "tokenizer.ggml.eot_token_id")?,
            unknown_id: id(file, "tokenizer.ggml.unknown_token_id")?,
            padding_id: id(file, "tokenizer.ggml.padding_token_id")?,
            add_bos: flag(file, "tokenizer.ggml.add_bos_token")?.unwrap_or(llama3),
            add_eos: flag(file, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }
}
