//! Reading a Hugging Face `tokenizer.json` (byte-level BPE) into a [`TokenizerSpec`], the way
//! llama.cpp's converter lays it out in GGUF: tokens by id with gaps filled, token types from
//! the added tokens, merges as `"left right"`, and the pre-tokenizer recognised by name.

use serde_json::Value;

use super::error::TokenizerError;
use super::spec::{token_type, TokenizerSpec};

/// Qwen2's split regex, as tokenizer.json spells it.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn malformed(field: &'static str, why: impl Into<String>) -> TokenizerError {
    TokenizerError::Malformed {
        field,
        why: why.into(),
    }
}

fn as_id(v: &Value, field: &'static str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| malformed(field, format!("{v} is not a token id")))
}

/// `ByteLevel` with `add_prefix_space: false`, using its own GPT-2 regex or not.
fn is_byte_level(v: &Value, use_regex: bool) -> bool {
    v["type"] == "ByteLevel"
        && v["add_prefix_space"].as_bool() != Some(true)
        && v["use_regex"].as_bool().unwrap_or(true) == use_regex
}

/// `Split` with the given regex, isolating matches.
fn is_split(v: &Value, regex: &str) -> bool {
    v["type"] == "Split"
        && v["pattern"]["Regex"] == regex
        && v["behavior"] == "Isolated"
        && v["invert"].as_bool() != Some(true)
}

/// The GGUF `tokenizer.ggml.pre` name for a tokenizer.json pre-tokenizer.
fn detect_pre(pre: &Value) -> Result<&'static str, TokenizerError> {
    let steps: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let name = match steps.as_slice() {
        [split, bl] if is_split(split, QWEN2_REGEX) && is_byte_level(bl, false) => Some("qwen2"),
        [split, bl] if is_split(split, LLAMA3_REGEX) && is_byte_level(bl, false) => {
            Some("llama-bpe")
        }
        [digits, bl]
            if digits["type"] == "Digits"
                && digits["individual_digits"] == true
                && is_byte_level(bl, true) =>
        {
            Some("smollm")
        }
        [bl] if is_byte_level(bl, true) => Some("gpt-2"),
        _ => None,
    };
    name.ok_or_else(|| {
        let mut shown = pre.to_string();
        if shown.len() > 300 {
            let cut = (0..=300)
                .rev()
                .find(|&i| shown.is_char_boundary(i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push('…');
        }
        TokenizerError::UnsupportedPreTokenizer(shown)
    })
}

/// `(bos, eos)` a TemplateProcessing post-processor wraps single sequences in.
fn template_specials(post: &Value) -> (Option<u32>, Option<u32>) {
    match post["type"].as_str() {
        Some("Sequence") => post["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(template_specials)
            .fold((None, None), |acc, x| (acc.0.or(x.0), acc.1.or(x.1))),
        Some("TemplateProcessing") => {
            let id_of = |name: &Value| {
                post["special_tokens"][name.as_str().unwrap_or("")]["ids"][0].as_u64()
            };
            let (mut bos, mut eos, mut seen_sequence) = (None, None, false);
            for item in post["single"].as_array().into_iter().flatten() {
                if item.get("Sequence").is_some() {
                    seen_sequence = true;
                } else if let Some(special) = item.get("SpecialToken") {
                    let id = id_of(&special["id"]).and_then(|n| u32::try_from(n).ok());
                    if seen_sequence {
                        eos = eos.or(id);
                    } else {
                        bos = bos.or(id);
                    }
                }
            }
            (bos, eos)
        }
        _ => (None, None),
    }
}

impl TokenizerSpec {
    /// Read a Hugging Face tokenizer.json (byte-level BPE). `max_id` drops added tokens with a
    /// larger id (Qwen2.5 uses the Qwen2 tokenizer.json with specials only up to 151664).
    ///
    /// Tokens are ordered by id; ids no token uses become `"[PAD{id}]"` of type UNUSED, as
    /// llama.cpp's converter writes them. Added special tokens become CONTROL, other added
    /// tokens USER_DEFINED, the rest NORMAL. BOS/EOS come from a TemplateProcessing
    /// post-processor when there is one; otherwise they are left unset (tokenizer_config.json
    /// holds them: see [`apply_hf_config`](Self::apply_hf_config)).
    ///
    /// The normalizer is not recorded (GGUF has no key for it): the pre-tokenizer kind implies
    /// it (Qwen2 applies NFC).
    pub fn from_hf_json(json: &str, max_id: Option<u32>) -> Result<TokenizerSpec, TokenizerError> {
        let root: Value =
            serde_json::from_str(json).map_err(|e| TokenizerError::Json(e.to_string()))?;
        let model = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or(TokenizerError::MissingField("model"))?;
        if let Some(kind) = model["type"].as_str() {
            if kind != "BPE" {
                return Err(TokenizerError::UnsupportedModel(kind.to_string()));
            }
        }
        let pre = detect_pre(&root["pre_tokenizer"])?;

        let vocab = model["vocab"]
            .as_object()
            .ok_or(TokenizerError::MissingField("model.vocab"))?;
        let mut slots: Vec<Option<(String, i32)>> = Vec::new();
        let mut place = |id: u32, piece: &str, ty: i32, overwrite: bool| {
            let i = id as usize;
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            match &slots[i] {
                Some((existing, _)) if !overwrite && existing != piece => Err(malformed(
                    "model.vocab",
                    format!("id {id} is both {existing:?} and {piece:?}"),
                )),
                _ => {
                    slots[i] = Some((piece.to_string(), ty));
                    Ok(())
                }
            }
        };
        for (piece, id) in vocab {
            place(as_id(id, "model.vocab")?, piece, token_type::NORMAL, false)?;
        }
        for added in root["added_tokens"].as_array().into_iter().flatten() {
            let id = as_id(&added["id"], "added_tokens.id")?;
            if max_id.is_some_and(|m| id > m) {
                continue;
            }
            let content = added["content"]
                .as_str()
                .ok_or_else(|| malformed("added_tokens.content", "not a string"))?;
            let ty = if added["special"].as_bool().unwrap_or(false) {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
            place(id, content, ty, true)?;
        }
        if slots.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        let (tokens, token_types) = slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| slot.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED)))
            .unzip();

        let merges = model["merges"]
            .as_array()
            .ok_or(TokenizerError::MissingField("model.merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                    _ => Err(malformed("model.merges", format!("bad merge {m}"))),
                },
                _ => Err(malformed("model.merges", format!("bad merge {m}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (bos_id, eos_id) = template_specials(&root["post_processor"]);
        Ok(TokenizerSpec {
            model: "gpt2".to_string(),
            pre: pre.to_string(),
            tokens,
            token_types,
            merges,
            bos_id,
            eos_id,
            eot_id: None,
            unknown_id: None,
            padding_id: None,
            add_bos: bos_id.is_some(),
            add_eos: eos_id.is_some(),
        })
    }

    /// Take BOS/EOS/UNK/PAD and the add-BOS/EOS flags from a tokenizer_config.json, where
    /// Hugging Face keeps them. Fields it does not set are left as they are.
    pub fn apply_hf_config(&mut self, config_json: &str) -> Result<(), TokenizerError> {
        let root: Value =
            serde_json::from_str(config_json).map_err(|e| TokenizerError::Json(e.to_string()))?;
        let lookup = |field: &'static str| -> Result<Option<u32>, TokenizerError> {
            let text = match &root[field] {
                Value::String(s) => s.as_str(),
                Value::Object(o) => match o.get("content") {
                    Some(Value::String(s)) => s.as_str(),
                    _ => return Ok(None),
                },
                _ => return Ok(None),
            };
            let id =
                self.tokens.iter().position(|t| t == text).ok_or_else(|| {
                    malformed(field, format!("{text:?} is not in the vocabulary"))
                })?;
            Ok(Some(id as u32))
        };
        let bos = lookup("bos_token")?;
        let eos = lookup("eos_token")?;
        let unk = lookup("unk_token")?;
        let pad = lookup("pad_token")?;
        self.bos_id = bos.or(self.bos_id);
        self.eos_id = eos.or(self.eos_id);
        self.unknown_id = unk.or(self.unknown_id);
        self.padding_id = pad.or(self.padding_id);
        if let Some(b) = root["add_bos_token"].as_bool() {
            self.add_bos = b;
        }
        if let Some(b) = root["add_eos_token"].as_bool() {
            self.add_eos = b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(pre: &str) -> String {
        format!(
            r#"{{"added_tokens":[{{"id":5,"content":"<|s|>","special":true}},{{"id":7,"content":"<u>","special":false}}],
               "pre_tokenizer":{pre},
               "post_processor":null,
               "model":{{"type":"BPE","vocab":{{"a":0,"b":1,"ab":2}},"merges":[["a","b"]]}}}}"#
        )
    }

    #[test]
    fn tokenizer_json_becomes_gguf_layout() {
        let pre =
            r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#;
        let spec = TokenizerSpec::from_hf_json(&tiny(pre), None).unwrap();
        assert_eq!(spec.pre, "gpt-2");
        assert_eq!(
            spec.tokens,
            ["a", "b", "ab", "[PAD3]", "[PAD4]", "<|s|>", "[PAD6]", "<u>"]
        );
        assert_eq!(spec.token_types, [1, 1, 1, 5, 5, 3, 5, 4]);
        assert_eq!(spec.merges, ["a b"]);
        let capped = TokenizerSpec::from_hf_json(&tiny(pre), Some(6)).unwrap();
        assert_eq!(capped.tokens.len(), 6);
    }

    #[test]
    fn unknown_pre_tokenizer_is_rejected() {
        let pre = r#"{"type":"Whitespace"}"#;
        assert!(matches!(
            TokenizerSpec::from_hf_json(&tiny(pre), None),
            Err(TokenizerError::UnsupportedPreTokenizer(_))
        ));
    }
}
