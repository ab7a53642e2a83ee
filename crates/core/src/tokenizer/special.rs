//! Added-token recognition in raw text, with Hugging Face's semantics: all added tokens are
//! searched together, leftmost-longest (its Aho-Corasick `LeftmostLongest`), before any
//! normalisation or pre-tokenisation. A match of a special token while special parsing is off
//! stays plain text, and the search resumes after it (the skipped text is not searched again
//! for shorter tokens), exactly as `encode_special_tokens` does there.

/// One stretch of the input: plain text for BPE, or an added token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Clone, Copy)]
struct Added {
    id: u32,
    /// Special (CONTROL/UNKNOWN) tokens are only recognised with special parsing on;
    /// USER_DEFINED ones always are.
    special: bool,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    token: Option<Added>,
}

/// A byte trie over the added tokens' text.
#[derive(Debug, Clone)]
pub(super) struct SpecialMatcher {
    nodes: Vec<Node>,
    /// Bytes some added token starts with, to skip the trie on ordinary text.
    starts: [bool; 256],
}

impl SpecialMatcher {
    /// Build from `(text, id, special)`; empty texts are ignored, and for duplicate texts the
    /// first one wins.
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32, bool)>) -> Self {
        let mut nodes = vec![Node::default()];
        let mut starts = [false; 256];
        for (text, id, special) in tokens {
            let Some(&first) = text.as_bytes().first() else {
                continue;
            };
            starts[first as usize] = true;
            let mut node = 0usize;
            for &b in text.as_bytes() {
                node = match nodes[node].children.binary_search_by_key(&b, |&(k, _)| k) {
                    Ok(pos) => nodes[node].children[pos].1 as usize,
                    Err(pos) => {
                        let child = nodes.len();
                        nodes.push(Node::default());
                        nodes[node].children.insert(pos, (b, child as u32));
                        child
                    }
                };
            }
            nodes[node].token.get_or_insert(Added { id, special });
        }
        Self { nodes, starts }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The longest added token starting at byte `i`, as (end, token).
    #[inline]
    fn longest_at(&self, bytes: &[u8], i: usize) -> Option<(usize, Added)> {
        let mut node = 0usize;
        let mut best = None;
        for (k, &b) in bytes[i..].iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&b, |&(c, _)| c) {
                Ok(pos) => node = children[pos].1 as usize,
                Err(_) => break,
            }
            if let Some(t) = self.nodes[node].token {
                best = Some((i + k + 1, t));
            }
        }
        best
    }

    /// Call `f` with the text stretches and recognised tokens of `text`, in order.
    pub(super) fn split<'a>(
        &self,
        text: &'a str,
        parse_special: bool,
        f: &mut impl FnMut(Segment<'a>),
    ) {
        if self.is_empty() {
            if !text.is_empty() {
                f(Segment::Text(text));
            }
            return;
        }
        let bytes = text.as_bytes();
        let mut text_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if !self.starts[bytes[i] as usize] {
                i += 1;
                continue;
            }
            match self.longest_at(bytes, i) {
                // Token texts are valid UTF-8, so a match starts and ends on char boundaries.
                Some((end, tok)) if parse_special || !tok.special => {
                    if text_start < i {
                        f(Segment::Text(&text[text_start..i]));
                    }
                    f(Segment::Token(tok.id));
                    text_start = end;
                    i = end;
                }
                Some((end, _)) => i = end,
                None => i += 1,
            }
        }
        if text_start < bytes.len() {
            f(Segment::Text(&text[text_start..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(m: &SpecialMatcher, text: &str, parse: bool) -> Vec<String> {
        let mut out = Vec::new();
        m.split(text, parse, &mut |s| {
            out.push(match s {
                Segment::Text(t) => format!("T:{t}"),
                Segment::Token(id) => format!("#{id}"),
            })
        });
        out
    }

    #[test]
    fn longest_match_wins_and_specials_can_be_text() {
        let m = SpecialMatcher::new([("<|a|>", 1, true), ("<|a|>x", 2, false), ("<t>", 3, false)]);
        assert_eq!(segments(&m, "q<|a|>r", true), ["T:q", "#1", "T:r"]);
        assert_eq!(segments(&m, "q<|a|>xr", true), ["T:q", "#2", "T:r"]);
        assert_eq!(segments(&m, "q<|a|>r<t>", false), ["T:q<|a|>r", "#3"]);
        assert_eq!(segments(&m, "<|a", true), ["T:<|a"]);
        assert_eq!(segments(&m, "", true), Vec::<String>::new());
    }
}
