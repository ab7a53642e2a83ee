//! GPT-2's reversible byte <-> character mapping. Byte-level BPE vocabularies spell every byte
//! as a printable character so that tokens are valid strings: bytes that are already printable
//! and not a space keep their Latin-1 code point, the other 68 are moved to U+0100.. in order.

/// The character each byte is spelled as in a byte-level vocabulary.
pub(super) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

const fn is_printable_latin1(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let code = if is_printable_latin1(b as u8) {
            b as u32
        } else {
            let c = 256 + next;
            next += 1;
            c
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

/// Number of bytes that are not printable and get moved to U+0100 and up.
const MOVED_COUNT: usize = 68;

/// The moved bytes in increasing order: `MOVED[n]` is spelled U+0100 + n.
const MOVED: [u8; MOVED_COUNT] = build_moved();

const fn build_moved() -> [u8; MOVED_COUNT] {
    let mut table = [0u8; MOVED_COUNT];
    let mut next = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !is_printable_latin1(b as u8) {
            table[next] = b as u8;
            next += 1;
        }
        b += 1;
    }
    table
}

/// The byte a vocabulary character stands for, if it is one of the 256 byte characters.
#[inline]
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        is_printable_latin1(b).then_some(b)
    } else {
        MOVED.get((cp - 256) as usize).copied()
    }
}

/// The raw bytes a byte-level vocabulary piece stands for, or `None` if the piece uses a
/// character outside the byte alphabet (then it is literal text, as Hugging Face's ByteLevel
/// decoder treats it).
pub(super) fn piece_to_bytes(piece: &str) -> Option<Vec<u8>> {
    piece.chars().map(char_to_byte).collect()
}

/// Spell raw bytes in the byte alphabet (the inverse of [`piece_to_bytes`]).
#[cfg(test)]
pub(super) fn bytes_to_piece(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_a_bijection_matching_gpt2() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(piece_to_bytes(&bytes_to_piece(&all)), Some(all));
        assert_eq!(piece_to_bytes("a b"), None);
    }
}
