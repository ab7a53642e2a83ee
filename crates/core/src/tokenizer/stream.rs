//! Incremental decoding for generation: one token at a time, text out as soon as it is whole.
//! A byte-level token can end in the middle of a UTF-8 character (an emoji is often two or
//! three tokens), so bytes are held back until the character they start is complete.

use super::Tokenizer;

/// Streaming detokenizer from [`Tokenizer::stream_decoder`].
///
/// The concatenation of everything [`push`](Self::push) returns plus [`finish`](Self::finish)
/// equals [`Tokenizer::decode`] of all pushed ids. Allocates nothing per token once its buffers
/// have grown to the longest token.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete character at the end of the stream so far.
    pending: Vec<u8>,
    /// Text returned by the latest `push`.
    out: String,
}

impl<'a> StreamDecoder<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::with_capacity(16),
            out: String::with_capacity(64),
        }
    }

    /// Add one token; returns the text that became complete (empty while a character is
    /// still unfinished). Bytes that can never form a character (not merely unfinished ones)
    /// come out as U+FFFD right away, like lossy decoding. Unknown ids add nothing.
    pub fn push(&mut self, id: u32) -> &str {
        self.out.clear();
        if let Some(bytes) = self.tokenizer.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
        }
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    self.out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The prefix was just checked to be valid UTF-8.
                    if let Ok(s) = std::str::from_utf8(&self.pending[start..valid]) {
                        self.out.push_str(s);
                    }
                    match e.error_len() {
                        // Unfinished character at the end: wait for more bytes.
                        None => {
                            start = valid;
                            break;
                        }
                        Some(bad) => {
                            self.out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        &self.out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// End of generation: whatever is still held back, decoded lossily (an unfinished
    /// character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
