//! Byte-level BPE tokenizer, built from a GGUF's `tokenizer.ggml.*` metadata or a Hugging Face
//! tokenizer.json, producing the same ids as Hugging Face `tokenizers`.
//!
//! Encoding: added tokens are cut out of the raw text first ([`special`]), the rest is
//! NFC-normalised where the vocabulary asks for it ([`normalize`]), split by the
//! vocabulary's pre-tokenizer ([`pretokenize`]), and each piece is BPE-merged ([`bpe`]),
//! through a memo of recent pieces ([`word_cache`]).
//! Decoding: each id's bytes ([`byte_level`]) concatenated; [`StreamDecoder`] does it one
//! token at a time.

mod bpe;
mod byte_level;
mod error;
mod fx_hash;
mod gguf;
mod hf_json;
mod normalize;
mod pretokenize;
mod spec;
mod special;
mod stream;
mod unicode_class;
mod unicode_tables;
mod word_cache;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, TryLockError};

pub use error::TokenizerError;
pub use pretokenize::PreTokenizerKind;
pub use spec::{token_type, TokenizerSpec};
pub use stream::StreamDecoder;

/// The vocabulary piece of byte `b` in byte-level BPE (GPT-2's byte-to-unicode map: `Ġ` for
/// a space), for building vocabularies.
pub fn byte_piece(b: u8) -> String {
    byte_level::BYTE_TO_CHAR[b as usize].to_string()
}

use bpe::{Bpe, BpeScratch};
use fx_hash::FxHashMap;
use special::{Segment, SpecialMatcher};
use word_cache::WordCache;

/// Texts llama.cpp recognises as end-of-turn tokens when the metadata names none, in the order
/// tried here. `<|endoftext|>` is left out: it is usually the EOS of the base model.
const EOT_TEXTS: [&str; 6] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<EOT>",
];

/// A loaded tokenizer. Cloning shares it (an `Arc`), and it is `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    pieces: Vec<String>,
    piece_ids: HashMap<String, u32>,
    token_types: Vec<i32>,
    /// Bytes of token `i` are `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    bpe: Bpe,
    pre: PreTokenizerKind,
    added: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unknown: Option<u32>,
    padding: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Memo and buffers for encoding; an encode that finds it busy uses fresh local ones.
    state: Mutex<EncodeState>,
}

#[derive(Default)]
struct EncodeState {
    cache: WordCache,
    scratch: BpeScratch,
}

/// CONTROL and UNKNOWN tokens are special: recognised in text only with special parsing.
fn is_special_type(ty: i32) -> bool {
    ty == token_type::CONTROL || ty == token_type::UNKNOWN
}

/// Tokens whose text is literal rather than spelled in the byte alphabet.
fn is_literal_type(ty: i32) -> bool {
    matches!(
        ty,
        token_type::UNKNOWN | token_type::CONTROL | token_type::USER_DEFINED | token_type::UNUSED
    )
}

impl Tokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.*`).
    ///
    /// A model's vocabulary must hold the byte-level pieces of printable ASCII and the
    /// newline: byte-level BPE starts every word from them, and text made of bytes without
    /// a token would encode to nothing, silently. (Real vocabularies may lack a few control
    /// bytes: SmolLM2's lacks 21.)
    pub fn from_gguf(file: &metallic_gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        let tok = Self::from_spec(TokenizerSpec::from_gguf(file)?)?;
        let missing: Vec<u8> = (0x20..=0x7Eu8)
            .chain([b'\n'])
            .filter(|&b| tok.byte_id(b).is_none())
            .collect();
        if let Some(first) = missing.first() {
            return Err(TokenizerError::Malformed {
                field: "tokenizer.ggml.tokens",
                why: format!(
                    "the byte-level vocabulary lacks the byte tokens of {} printable ASCII \
                     characters or the newline (the first for byte 0x{first:02X}); text with \
                     them would encode to nothing",
                    missing.len()
                ),
            });
        }
        Ok(tok)
    }

    /// Build from a spec: validates ids and lengths, resolves merges to id pairs (merges that
    /// name pieces outside the vocabulary are skipped), and picks the pre-tokenizer.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(spec.model));
        }
        let pre = PreTokenizerKind::from_gguf_name(&spec.pre)?;
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= u32::MAX as usize {
            return Err(TokenizerError::Malformed {
                field: "tokens",
                why: format!("{n} tokens do not fit u32 ids"),
            });
        }
        let token_types = if spec.token_types.is_empty() {
            vec![token_type::NORMAL; n]
        } else if spec.token_types.len() == n {
            spec.token_types
        } else {
            return Err(TokenizerError::LengthMismatch {
                field: "token_types",
                expected: n,
                got: spec.token_types.len(),
            });
        };
        let check = |field: &'static str, id: Option<u32>| match id {
            Some(id) if id as usize >= n => Err(TokenizerError::IdOutOfRange {
                field,
                id,
                vocab_size: n,
            }),
            _ => Ok(id),
        };
        let bos = check("bos_id", spec.bos_id)?;
        let eos = check("eos_id", spec.eos_id)?;
        let eot = check("eot_id", spec.eot_id)?;
        let unknown = check("unknown_id", spec.unknown_id)?;
        let padding = check("padding_id", spec.padding_id)?;
        if spec.add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialId("add_bos"));
        }
        if spec.add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialId("add_eos"));
        }

        let pieces = spec.tokens;
        let mut piece_ids: HashMap<String, u32> = HashMap::with_capacity(n);
        for (id, piece) in pieces.iter().enumerate() {
            piece_ids.entry(piece.clone()).or_insert(id as u32);
        }

        let mut bytes = Vec::with_capacity(n * 6);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (piece, &ty) in pieces.iter().zip(&token_types) {
            match (!is_literal_type(ty))
                .then(|| byte_level::piece_to_bytes(piece))
                .flatten()
            {
                Some(b) => bytes.extend_from_slice(&b),
                None => bytes.extend_from_slice(piece.as_bytes()),
            }
            let end = u32::try_from(bytes.len()).map_err(|_| TokenizerError::Malformed {
                field: "tokens",
                why: "vocabulary text exceeds 4 GiB".to_string(),
            })?;
            offsets.push(end);
        }

        // BPE works on ordinary vocabulary entries only: added tokens are matched whole.
        let bpe_id = |piece: &str| {
            piece_ids
                .get(piece)
                .copied()
                .filter(|&id| !is_literal_type(token_types[id as usize]))
        };
        let mut byte_ids = [u32::MAX; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let piece = byte_level::BYTE_TO_CHAR[b].to_string();
            if let Some(id) = bpe_id(&piece) {
                *slot = id;
            }
        }
        let mut joined = String::new();
        let merges = spec.merges.iter().filter_map(|m| {
            // llama.cpp splits at the first space after the first character, so a merge of a
            // literal-space piece still parses.
            let first_len = m.chars().next()?.len_utf8();
            let split = first_len + m[first_len..].find(' ')?;
            let (left, right) = (&m[..split], &m[split + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            Some((bpe_id(left)?, bpe_id(right)?, bpe_id(&joined)?))
        });
        let merges: Vec<_> = merges.collect();
        let whole = pre.ignores_merges().then(|| {
            let mut map: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
            for (id, &ty) in token_types.iter().enumerate() {
                if !is_literal_type(ty) {
                    let b = &bytes[offsets[id] as usize..offsets[id + 1] as usize];
                    map.entry(b.into()).or_insert(id as u32);
                }
            }
            map
        });
        let bpe = Bpe::new(byte_ids, merges, whole);

        let added = SpecialMatcher::new(pieces.iter().zip(&token_types).enumerate().filter_map(
            |(id, (piece, &ty))| {
                (is_special_type(ty) || ty == token_type::USER_DEFINED).then_some((
                    piece.as_str(),
                    id as u32,
                    is_special_type(ty),
                ))
            },
        ));

        let eot = eot.or_else(|| {
            EOT_TEXTS.iter().find_map(|t| {
                let id = *piece_ids.get(*t)?;
                is_literal_type(token_types[id as usize]).then_some(id)
            })
        });

        Ok(Tokenizer {
            inner: Arc::new(Inner {
                pieces,
                piece_ids,
                token_types,
                bytes,
                offsets,
                bpe,
                pre,
                added,
                bos,
                eos,
                eot,
                unknown,
                padding,
                add_bos: spec.add_bos,
                add_eos: spec.add_eos,
                state: Mutex::new(EncodeState::default()),
            }),
        })
    }

    /// Token ids of `text`, with no BOS/EOS added. With `parse_special`, special tokens
    /// written in the text (`<|im_start|>`) become their ids; without it they are encoded as
    /// plain text. Non-special added tokens (GGUF USER_DEFINED) are recognised either way, as
    /// in Hugging Face `tokenizers`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, parse_special, &mut out);
        out
    }

    /// Whether `text` contains the text of a special (control) token, which
    /// [`encode`](Self::encode) with `parse_special` would turn into that token.
    pub fn contains_special_text(&self, text: &str) -> bool {
        let mut found = false;
        self.inner.added.split(text, true, &mut |segment| {
            if let Segment::Token(id) = segment {
                found |= self.is_special(id);
            }
        });
        found
    }

    /// Like [`encode`](Self::encode), plus BOS/EOS as the vocabulary's add_bos/add_eos say.
    pub fn encode_with_bos(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let inner = &*self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if let (true, Some(bos)) = (inner.add_bos, inner.bos) {
            out.push(bos);
        }
        self.encode_into(text, parse_special, &mut out);
        if let (true, Some(eos)) = (inner.add_eos, inner.eos) {
            out.push(eos);
        }
        out
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let inner = &*self.inner;
        let mut local = None;
        let mut guard = match inner.state.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let state: &mut EncodeState = match guard.as_deref_mut() {
            Some(s) => s,
            None => local.insert(EncodeState::default()),
        };
        inner
            .added
            .split(text, parse_special, &mut |segment| match segment {
                Segment::Token(id) => out.push(id),
                Segment::Text(t) => {
                    if inner.pre.normalizes_nfc() {
                        inner.encode_text(&normalize::nfc(t), out, state);
                    } else {
                        inner.encode_text(t, out, state);
                    }
                }
            });
    }

    /// Text of `ids`: their bytes concatenated, invalid UTF-8 replaced by U+FFFD. Exact for
    /// any sequence `encode` produced (up to NFC where the vocabulary normalises). Special
    /// tokens decode to their text; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A decoder that turns ids into text one at a time, holding back partial characters.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The raw bytes token `id` stands for.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let inner = &*self.inner;
        let i = id as usize;
        let start = *inner.offsets.get(i)? as usize;
        let end = *inner.offsets.get(i + 1)? as usize;
        inner.bytes.get(start..end)
    }

    /// The token of a single raw byte, if the vocabulary has one (byte-level vocabularies
    /// usually have all 256; SmolLM2's lacks 21, which encoding then drops).
    pub fn byte_id(&self, b: u8) -> Option<u32> {
        self.inner.bpe.byte_id(b)
    }

    /// The vocabulary entry of `id` as stored (byte-level spelling, e.g. `"Ġthe"`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.pieces.get(id as usize).map(String::as_str)
    }

    /// GGUF token type of `id` (see [`token_type`]).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.inner.token_types.get(id as usize).copied()
    }

    /// The id whose vocabulary entry is exactly `piece` (byte-level spelling for ordinary
    /// tokens, literal text for added ones).
    pub fn id_of(&self, piece: &str) -> Option<u32> {
        self.inner.piece_ids.get(piece).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// A 64-bit FNV-1a digest of the vocabulary (every token's bytes), the
    /// pre-tokenizer and the BOS/EOS settings: two tokenizers with the same
    /// fingerprint map a text to the same ids. Saved log-probabilities carry it
    /// so that they are never compared across vocabularies.
    pub fn fingerprint(&self) -> u64 {
        let inner = &*self.inner;
        let mut h = crate::hash::Fnv64::new();
        h.write_u64(inner.offsets.len() as u64);
        for &o in &inner.offsets {
            h.write_u32(o);
        }
        h.write(&inner.bytes);
        h.write(format!("{:?}", inner.pre).as_bytes());
        for id in [inner.bos, inner.eos] {
            h.write_u32(id.map_or(u32::MAX, |i| i));
        }
        h.write(&[inner.add_bos as u8, inner.add_eos as u8]);
        h.finish()
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// End-of-turn token: from the metadata, else the first of `<|eot_id|>`, `<|im_end|>`,
    /// `<|end|>`, `<end_of_turn>`, `<|end_of_turn|>`, `<EOT>` that is an added token.
    pub fn eot_id(&self) -> Option<u32> {
        self.inner.eot
    }

    pub fn unknown_id(&self) -> Option<u32> {
        self.inner.unknown
    }

    pub fn padding_id(&self) -> Option<u32> {
        self.inner.padding
    }

    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.inner.add_eos
    }

    /// Whether `id` is a special (CONTROL or UNKNOWN) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id).is_some_and(is_special_type)
    }

    /// The pre-tokenizer in use.
    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.inner.pre
    }

    /// Number of usable merge rules.
    pub fn merge_count(&self) -> usize {
        self.inner.bpe.merge_count()
    }
}

impl Inner {
    fn encode_text(&self, text: &str, out: &mut Vec<u32>, state: &mut EncodeState) {
        let EncodeState { cache, scratch } = state;
        self.pre.split(text, &mut |piece| {
            let piece = piece.as_bytes();
            if let [b] = piece {
                if let Some(id) = self.bpe.byte_id(*b) {
                    out.push(id);
                }
                return;
            }
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
            let start = out.len();
            self.bpe.encode(piece, out, scratch);
            cache.insert(piece, &out[start..]);
        });
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.inner.pre)
            .field("merges", &self.merge_count())
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .finish()
    }
}
