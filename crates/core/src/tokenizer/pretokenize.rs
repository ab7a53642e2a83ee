//! Pre-tokenizers: split text into the pieces BPE runs on, exactly as the Hugging Face
//! `tokenizers` regexes do (Oniguruma, leftmost alternative wins, backtracking), but as
//! hand-written matchers: each alternative of the regex is one branch below, in the regex's
//! order, and the backtracking each one would do is worked out by hand in its comment.
//!
//! The regexes (the first alternative that matches at the current position wins):
//!
//! Qwen2 (`\p{N}`) and Llama 3 (`\p{N}{1,3}`):
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!
//! GPT-2 (the ByteLevel pre-tokenizer's own regex, case-sensitive):
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!
//! SmolLM (StarCoder's): the `Digits(individual_digits)` pre-tokenizer isolates every numeric
//! character first, then the GPT-2 regex runs on each remaining stretch on its own (so a
//! stretch boundary acts as end of text for `(?!\S)`).
//!
//! Every position matches some alternative (each character is a letter, a number, whitespace
//! or "other"), and no alternative matches the empty string, so the pieces tile the text.

use super::error::TokenizerError;
use super::unicode_class::{char_at, class_of, DIGIT, LETTER, NUMBER, SPACE};

/// The GGUF `tokenizer.ggml.pre` names accepted, for error messages.
pub(super) const SUPPORTED_NAMES: &str = "qwen2, llama3, llama-v3, llama-bpe, falcon3, dbrx, \
     smaug-bpe, smollm, starcoder, gpt-2, gpt2";

/// Which splitting rule a vocabulary was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's ByteLevel regex.
    Gpt2,
    /// Qwen2: Llama-3-style regex with single digits; the text is NFC-normalised first, as
    /// Qwen2's tokenizer.json specifies.
    Qwen2,
    /// Llama 3: digits in groups of up to three; a word that is itself a vocabulary token is
    /// emitted whole (tokenizer.json `ignore_merges`, llama.cpp does the same).
    Llama3,
    /// SmolLM / StarCoder: every digit isolated, then GPT-2's regex.
    SmolLm,
}

impl PreTokenizerKind {
    /// Map a GGUF `tokenizer.ggml.pre` value (llama.cpp's names) to a kind.
    ///
    /// llama.cpp's `default` is not GPT-2: it is its own sequence of four regexes with no
    /// Hugging Face counterpart to check against, so it is rejected like any unknown name.
    pub fn from_gguf_name(name: &str) -> Result<Self, TokenizerError> {
        match name {
            "qwen2" => Ok(Self::Qwen2),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
                Ok(Self::Llama3)
            }
            "smollm" | "starcoder" => Ok(Self::SmolLm),
            "gpt-2" | "gpt2" => Ok(Self::Gpt2),
            other => Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        }
    }

    /// The canonical `tokenizer.ggml.pre` name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt-2",
            Self::Qwen2 => "qwen2",
            Self::Llama3 => "llama-bpe",
            Self::SmolLm => "smollm",
        }
    }

    /// Whether text is NFC-normalised before splitting.
    pub(super) fn normalizes_nfc(self) -> bool {
        self == Self::Qwen2
    }

    /// Whether a piece that is a whole vocabulary token skips the merges.
    pub(super) fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }

    /// The pieces of `text` (no normalisation applied), for inspection and tests.
    pub fn pieces(self, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        self.split(text, &mut |p| out.push(p));
        out
    }

    /// Call `f` with each piece of `text`, in order. The pieces concatenate to `text`.
    #[inline]
    pub(super) fn split<'a>(self, text: &'a str, f: &mut impl FnMut(&'a str)) {
        match self {
            Self::Gpt2 => split_with(text, f, gpt2_match),
            Self::Qwen2 => split_with(text, f, |s, i| llama3_match(s, i, 1)),
            Self::Llama3 => split_with(text, f, |s, i| llama3_match(s, i, 3)),
            Self::SmolLm => split_digits_then_gpt2(text, f),
        }
    }
}

#[inline]
fn split_with<'a>(text: &'a str, f: &mut impl FnMut(&'a str), next: impl Fn(&str, usize) -> usize) {
    let mut i = 0;
    while i < text.len() {
        let end = next(text, i);
        f(&text[i..end]);
        i = end;
    }
}

fn split_digits_then_gpt2<'a>(text: &'a str, f: &mut impl FnMut(&'a str)) {
    let mut stretch = 0;
    let mut i = 0;
    while i < text.len() {
        let (c, len) = char_at(text, i);
        if class_of(c) & DIGIT != 0 {
            if stretch < i {
                split_with(&text[stretch..i], f, gpt2_match);
            }
            f(&text[i..i + len]);
            stretch = i + len;
        }
        i += len;
    }
    if stretch < text.len() {
        split_with(&text[stretch..], f, gpt2_match);
    }
}

/// `[^\s\p{L}\p{N}]`: what the regexes treat as punctuation.
#[inline]
fn is_other(class: u8) -> bool {
    class & (LETTER | NUMBER | SPACE) == 0
}

/// End of the run of characters whose class satisfies `keep`, starting at `i`.
#[inline]
fn run_end(s: &str, mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < s.len() {
        let (c, len) = char_at(s, i);
        if !keep(class_of(c)) {
            break;
        }
        i += len;
    }
    i
}

/// The character after byte `i`, if any.
#[inline]
fn peek(s: &str, i: usize) -> Option<(char, usize)> {
    (i < s.len()).then(|| char_at(s, i))
}

/// `'s|'t|'re|'ve|'m|'ll|'d` after the apostrophe (which ends at `j`). With `fold`, matching
/// is case-insensitive the way Oniguruma folds: besides ASCII case, U+017F LONG S folds to
/// `s` (the only other code point that folds onto one of these letters).
#[inline]
fn contraction(s: &str, j: usize, fold: bool) -> Option<usize> {
    let (c, len) = peek(s, j)?;
    let lower = if fold {
        match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            '\u{17F}' => 's',
            _ => c,
        }
    } else {
        c
    };
    let second = |want: u8| {
        let b = *s.as_bytes().get(j + 1)?;
        let ok = if fold {
            b.to_ascii_lowercase() == want
        } else {
            b == want
        };
        ok.then_some(j + 2)
    };
    match lower {
        's' | 't' | 'm' | 'd' => Some(j + len),
        'r' | 'v' => second(b'e'),
        'l' => second(b'l'),
        _ => None,
    }
}

/// End of a whitespace run starting at `i` (whose first character is whitespace), resolved
/// the way `\s+(?!\S)|\s+` backtracks: the whole run if it reaches the end of the text,
/// otherwise the run minus its last character (which then prefixes the next word), unless that
/// would leave nothing, in which case `\s+` takes the single character.
/// With `newlines`, `\s*[\r\n]+` is tried first: it ends just after the last CR/LF in the run.
#[inline]
fn whitespace_end(s: &str, i: usize, newlines: bool) -> usize {
    let mut end = i;
    let mut last_start = i;
    let mut after_newline = None;
    while end < s.len() {
        let (c, len) = char_at(s, end);
        if class_of(c) & SPACE == 0 {
            break;
        }
        if newlines && (c == '\r' || c == '\n') {
            after_newline = Some(end + len);
        }
        last_start = end;
        end += len;
    }
    if let Some(e) = after_newline {
        return e;
    }
    if end == s.len() || last_start == i {
        end
    } else {
        last_start
    }
}

/// End of the piece starting at byte `i` under the Qwen2/Llama 3 regex.
fn llama3_match(s: &str, i: usize, max_digits: usize) -> usize {
    let (c0, l0) = char_at(s, i);
    let k0 = class_of(c0);
    let j = i + l0;

    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c0 == '\'' {
        if let Some(end) = contraction(s, j, true) {
            return end;
        }
    }

    // [^\r\n\p{L}\p{N}]?\p{L}+ : the optional prefix is taken when the next character is a
    // letter; a letter itself cannot be the prefix, so then the run starts at i.
    if k0 & LETTER != 0 {
        return run_end(s, j, |k| k & LETTER != 0);
    }
    let next = peek(s, j);
    if c0 != '\r' && c0 != '\n' && k0 & NUMBER == 0 {
        if let Some((c1, l1)) = next {
            if class_of(c1) & LETTER != 0 {
                return run_end(s, j + l1, |k| k & LETTER != 0);
            }
        }
    }

    // \p{N}{1,max_digits}
    if k0 & NUMBER != 0 {
        let mut end = j;
        let mut count = 1;
        while count < max_digits {
            match peek(s, end) {
                Some((c, len)) if class_of(c) & NUMBER != 0 => {
                    end += len;
                    count += 1;
                }
                _ => break,
            }
        }
        return end;
    }

    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let body = if is_other(k0) {
        Some(j)
    } else if c0 == ' ' {
        match next {
            Some((c1, l1)) if is_other(class_of(c1)) => Some(j + l1),
            _ => None,
        }
    } else {
        None
    };
    if let Some(body) = body {
        let end = run_end(s, body, is_other);
        let crlf = s.as_bytes()[end..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        return end + crlf;
    }

    // c0 is whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
    whitespace_end(s, i, true)
}

/// End of the piece starting at byte `i` under GPT-2's regex.
fn gpt2_match(s: &str, i: usize) -> usize {
    let (c0, l0) = char_at(s, i);
    let k0 = class_of(c0);
    let j = i + l0;

    // 's|'t|'re|'ve|'m|'ll|'d
    if c0 == '\'' {
        if let Some(end) = contraction(s, j, false) {
            return end;
        }
    }

    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: the three classes are disjoint, so the class of
    // the first non-space character picks the alternative.
    let (class, body) = if c0 == ' ' {
        match peek(s, j) {
            Some((c1, l1)) => (class_of(c1), j + l1),
            None => (k0, j),
        }
    } else {
        (k0, j)
    };
    if class & LETTER != 0 {
        return run_end(s, body, |k| k & LETTER != 0);
    }
    if class & NUMBER != 0 {
        return run_end(s, body, |k| k & NUMBER != 0);
    }
    if is_other(class) {
        return run_end(s, body, is_other);
    }

    // c0 (and the one after a leading space) is whitespace: \s+(?!\S) | \s+
    whitespace_end(s, i, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        kind.split(text, &mut |p| out.push(p.to_string()));
        out
    }

    #[test]
    fn qwen2_splits_like_its_regex() {
        let q = PreTokenizerKind::Qwen2;
        assert_eq!(pieces(q, "Hello world"), ["Hello", " world"]);
        assert_eq!(pieces(q, "DON'T we'Ve"), ["DON", "'T", " we", "'Ve"]);
        assert_eq!(pieces(q, "'ſx"), ["'ſ", "x"]);
        assert_eq!(pieces(q, "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(pieces(q, "a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces(q, "a  \n\n  b"), ["a", "  \n\n", " ", " b"]);
        assert_eq!(pieces(q, "x...\n\ny"), ["x", "...\n\n", "y"]);
        assert_eq!(pieces(q, "(hello) !!"), ["(hello", ")", " !!"]);
        assert_eq!(pieces(q, "end  "), ["end", "  "]);
        assert_eq!(pieces(q, "\tfoo"), ["\tfoo"]);
        assert_eq!(pieces(q, "\n"), ["\n"]);
    }

    #[test]
    fn llama3_groups_three_digits() {
        assert_eq!(
            pieces(PreTokenizerKind::Llama3, "x1234567"),
            ["x", "123", "456", "7"]
        );
    }

    #[test]
    fn gpt2_is_case_sensitive_and_has_no_newline_rule() {
        let g = PreTokenizerKind::Gpt2;
        assert_eq!(pieces(g, "DON'T don't"), ["DON", "'", "T", " don", "'t"]);
        assert_eq!(pieces(g, "a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(pieces(g, " 123 abc"), [" 123", " abc"]);
        assert_eq!(pieces(g, "\tfoo"), ["\t", "foo"]);
    }

    #[test]
    fn smollm_isolates_digits_before_gpt2() {
        let s = PreTokenizerKind::SmolLm;
        assert_eq!(pieces(s, "a 12b"), ["a", " ", "1", "2", "b"]);
        // The stretch before a digit ends there, so `(?!\S)` sees an end of text.
        assert_eq!(pieces(s, "a  1"), ["a", "  ", "1"]);
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(matches!(
            PreTokenizerKind::from_gguf_name("default"),
            Err(TokenizerError::UnsupportedPreTokenizer(_))
        ));
    }
}
