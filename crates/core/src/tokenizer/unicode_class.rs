//! Character classes the pre-tokenizer regexes use, with Oniguruma's semantics as Hugging Face
//! `tokenizers` applies them. The tables are generated from the reference library itself (see
//! `scripts/reference/gen_unicode_classes.py`), so `\p{L}`, `\p{N}` and `\s` agree with it code
//! point for code point, whatever Unicode version Rust's std carries.

use super::unicode_tables::{BLOCKS, BLOCK_INDEX, BLOCK_SHIFT};

/// `\p{L}`
pub(super) const LETTER: u8 = 1;
/// `\p{N}`
pub(super) const NUMBER: u8 = 2;
/// `\s`
pub(super) const SPACE: u8 = 4;
/// What the `Digits` pre-tokenizer isolates (Rust `char::is_numeric` in the reference build).
pub(super) const DIGIT: u8 = 8;

const BLOCK_MASK: u32 = (1 << BLOCK_SHIFT) - 1;

/// Class bits of `c`: any of LETTER, NUMBER, SPACE, DIGIT. Zero means "other"
/// (`[^\s\p{L}\p{N}]`), which is what the regexes treat as punctuation.
#[inline]
pub(super) fn class_of(c: char) -> u8 {
    let cp = c as u32;
    // `char` is at most 0x10FFFF, so the block index is always inside BLOCK_INDEX, and every
    // entry there names a block inside BLOCKS (the generator asserts both).
    let block = BLOCK_INDEX[(cp >> BLOCK_SHIFT) as usize] as usize;
    BLOCKS[(block << BLOCK_SHIFT) | (cp & BLOCK_MASK) as usize]
}

/// Decode the character starting at byte `i` of `s`, returning it and its byte length.
/// `i` must be a char boundary inside `s`.
#[inline]
pub(super) fn char_at(s: &str, i: usize) -> (char, usize) {
    let b = s.as_bytes();
    let b0 = b[i];
    if b0 < 0x80 {
        return (b0 as char, 1);
    }
    // Valid UTF-8 is guaranteed by `&str`; the fallback keeps this total without unsafe.
    let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
    (c, c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_oniguruma_not_ascii_only() {
        assert_eq!(class_of('a'), LETTER);
        assert_eq!(class_of('é'), LETTER);
        assert_eq!(class_of('中'), LETTER);
        assert_eq!(class_of('7'), NUMBER | DIGIT);
        assert_eq!(class_of('٣'), NUMBER | DIGIT);
        assert_eq!(class_of('½'), NUMBER | DIGIT);
        assert_eq!(class_of(' '), SPACE);
        assert_eq!(class_of('\u{a0}'), SPACE);
        assert_eq!(class_of('\u{3000}'), SPACE);
        assert_eq!(class_of('\u{85}'), SPACE);
        assert_eq!(class_of('\u{2028}'), SPACE);
        assert_eq!(class_of('\u{b}'), SPACE);
        // Not whitespace for Oniguruma even though some definitions include them.
        assert_eq!(class_of('\u{200b}'), 0);
        assert_eq!(class_of('\u{feff}'), 0);
        assert_eq!(class_of('\u{1c}'), 0);
        assert_eq!(class_of('\u{301}'), 0);
        assert_eq!(class_of('!'), 0);
        assert_eq!(class_of('\u{10ffff}'), 0);
    }

    #[test]
    fn char_at_decodes_multibyte() {
        let s = "a€😀";
        assert_eq!(char_at(s, 0), ('a', 1));
        assert_eq!(char_at(s, 1), ('€', 3));
        assert_eq!(char_at(s, 4), ('😀', 4));
    }
}
