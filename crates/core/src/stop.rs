//! Stop strings over streamed text.
//!
//! Decoded text arrives in chunks (one or a few tokens at a time), and a stop string can
//! be split across any number of them. [`StopMatcher`] emits text as soon as it is known
//! not to be part of a stop string, holds back the longest tail that could still begin
//! one, and on a match emits only the text before the stop string.
//!
//! The result does not depend on how the text is chunked: it is always the text before
//! the earliest occurrence of any stop string in the whole output. A complete match is
//! therefore not acted on while an unfinished stop string that starts earlier could still
//! complete (stops "b" and "abc" on "ab": wait for the next chunk).
//!
//! Why holding the longest such tail is enough: any occurrence of a stop string that
//! starts in text already emitted would, at the time it was emitted, have had a prefix at
//! the end of the buffer (and been held) or lain wholly inside it (and been found).

/// What one [`StopMatcher::push`] releases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopResult {
    /// Text that is safe to show: it cannot be part of a stop string.
    pub emit: String,
    /// A stop string was found; `emit` ends right before it and nothing more will come.
    pub stopped: bool,
}

/// Finds user stop strings in incrementally decoded text.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: a tail that may start a stop string.
    held: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        let stops: Vec<String> = stops
            .iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher {
            stops,
            held: String::with_capacity(longest * 2),
            matched: None,
        }
    }

    /// Whether a stop string has been found.
    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended the text, once [`stopped`](Self::stopped).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Feeds the next chunk of text and returns what can be released now.
    pub fn push(&mut self, text: &str) -> StopResult {
        let mut emit = String::new();
        let stopped = self.push_into(text, &mut emit);
        StopResult { emit, stopped }
    }

    /// [`push`](Self::push) that appends the released text to `out` instead of
    /// allocating, for the per-token loop. Returns whether a stop string was found.
    /// After a stop, further text is ignored.
    pub fn push_into(&mut self, text: &str, out: &mut String) -> bool {
        if self.stopped() {
            return true;
        }
        if self.stops.is_empty() {
            out.push_str(text);
            return false;
        }
        self.held.push_str(text);

        // A tail of the held text that is a proper prefix of a stop string may still
        // become a match; the longest such tail starts earliest.
        let pending = self.held.len() - self.longest_stop_prefix_suffix();
        match self.earliest_match() {
            // A complete match with no possible earlier one: stop.
            Some((at, i)) if at <= pending => {
                out.push_str(&self.held[..at]);
                self.held.clear();
                self.matched = Some(i);
                true
            }
            // Either no match, or a match that an incomplete stop string starting earlier
            // may still pre-empt: release only what precedes every candidate.
            _ => {
                out.push_str(&self.held[..pending]);
                self.held.drain(..pending);
                false
            }
        }
    }

    /// Releases the held text at the end of generation. A complete match that was
    /// waiting on a longer, earlier candidate now applies: only the text before it is
    /// released and [`stopped`](Self::stopped) turns true.
    pub fn finish(&mut self) -> String {
        if let Some((at, i)) = self.earliest_match() {
            self.held.truncate(at);
            self.matched = Some(i);
        }
        std::mem::take(&mut self.held)
    }

    /// Byte position and stop index of the earliest complete match in the held text
    /// (at the same position, the stop listed first).
    fn earliest_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min()
    }

    /// Length in bytes of the longest tail of `held` that is a proper prefix of some
    /// stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(held.len());
            for len in (best + 1..=max).rev() {
                if stop.is_char_boundary(len) && held.ends_with(&stop[..len]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` and returns (all emitted text, stopped, the stop that matched).
    fn feed(stops: &[&str], chunks: &[&str]) -> (String, bool, Option<String>) {
        let mut m = StopMatcher::new(stops);
        let mut out = String::new();
        let mut stopped = false;
        for c in chunks {
            let r = m.push(c);
            out.push_str(&r.emit);
            stopped = r.stopped;
            if stopped {
                break;
            }
        }
        if !stopped {
            out.push_str(&m.finish());
            stopped = m.stopped();
        }
        (out, stopped, m.matched().map(str::to_string))
    }

    #[test]
    fn no_stop_strings_pass_text_through() {
        let mut m = StopMatcher::new::<&str>(&[]);
        assert_eq!(
            m.push("hello "),
            StopResult {
                emit: "hello ".into(),
                stopped: false
            }
        );
        assert_eq!(m.push("world").emit, "world");
        assert_eq!(m.finish(), "");
        // Empty stop strings are ignored rather than matching everywhere.
        assert_eq!(feed(&[""], &["abc"]), ("abc".into(), false, None));
    }

    #[test]
    fn stop_split_across_many_chunks() {
        let chunks = ["Hello", " wor", "ld<", "|", "im", "_e", "nd", "|> trailing"];
        let (out, stopped, which) = feed(&["<|im_end|>"], &chunks);
        assert_eq!(out, "Hello world");
        assert!(stopped);
        assert_eq!(which.as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn text_is_held_only_while_it_could_start_a_stop() {
        let mut m = StopMatcher::new(&["STOP"]);
        assert_eq!(m.push("abc S").emit, "abc ");
        assert_eq!(m.push("T").emit, "");
        // "STx" can no longer become "STOP": release it.
        assert_eq!(m.push("x").emit, "STx");
        assert_eq!(m.push("ST").emit, "");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn overlapping_prefixes() {
        // "abab" inside "ababab": the earliest occurrence ends the text.
        assert_eq!(
            feed(&["abab"], &["ab", "ab", "ab"]),
            ("".into(), true, Some("abab".into()))
        );
        assert_eq!(
            feed(&["abab"], &["x", "a", "b", "a", "c", "ababab"]),
            ("xabac".into(), true, Some("abab".into()))
        );
        // "aab" in "aaab": one "a" is released once it cannot start the match.
        assert_eq!(
            feed(&["aab"], &["a", "a", "a", "b"]),
            ("a".into(), true, Some("aab".into()))
        );
        // A held tail that stops matching one stop string can still start another.
        assert_eq!(
            feed(&["abc", "bcd"], &["xab", "cd"]),
            ("x".into(), true, Some("abc".into()))
        );
        assert_eq!(
            feed(&["abx", "bcd"], &["xab", "cd"]),
            ("xa".into(), true, Some("bcd".into()))
        );
    }

    #[test]
    fn complete_match_waits_for_an_earlier_unfinished_one() {
        let mut m = StopMatcher::new(&["b", "abc"]);
        // "b" is complete, but "abc" starting one earlier may still complete.
        let r = m.push("xab");
        assert_eq!((r.emit.as_str(), r.stopped), ("x", false));
        let r = m.push("c");
        assert_eq!((r.emit.as_str(), r.stopped), ("", true));
        assert_eq!(m.matched(), Some("abc"));
        // If it breaks instead, the waiting match applies.
        assert_eq!(
            feed(&["b", "abc"], &["xab", "d"]),
            ("xa".into(), true, Some("b".into()))
        );
        // And at the end of generation too.
        assert_eq!(
            feed(&["b", "abc"], &["xab"]),
            ("xa".into(), true, Some("b".into()))
        );
    }

    #[test]
    fn earliest_match_wins_over_list_order() {
        assert_eq!(
            feed(&["world", "lo"], &["hello world"]),
            ("hel".into(), true, Some("lo".into()))
        );
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(
            feed(&["終わり"], &["これで", "終", "わ", "り", "です"]),
            ("これで".into(), true, Some("終わり".into()))
        );
        // A shared first character is held, then released when the next one differs.
        assert_eq!(
            feed(&["日本語"], &["日本", "人", "です"]),
            ("日本人です".into(), false, None)
        );
        assert_eq!(
            feed(&["🛑 stop"], &["go 🛑", " st", "op now"]),
            ("go ".into(), true, Some("🛑 stop".into()))
        );
    }

    /// Random texts over a tiny alphabet (so stop strings overlap a lot), cut into random
    /// chunks, against the obvious answer: everything before the first occurrence of
    /// any stop string in the whole text.
    #[test]
    fn chunked_matching_equals_whole_text_search() {
        struct Xorshift(u64);
        impl Xorshift {
            fn below(&mut self, n: usize) -> usize {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % n as u64) as usize
            }
            fn word(&mut self, len: usize) -> String {
                const ALPHABET: [char; 4] = ['a', 'b', 'é', '🛑'];
                (0..len).map(|_| ALPHABET[self.below(4)]).collect()
            }
        }
        let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..3000 {
            let n_stops = 1 + rng.below(3);
            let stops: Vec<String> = (0..n_stops)
                .map(|_| {
                    let len = 1 + rng.below(4);
                    rng.word(len)
                })
                .collect();
            let text_len = rng.below(30);
            let text = rng.word(text_len);
            let want = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
                .map_or(text.as_str(), |at| &text[..at]);

            let chars: Vec<char> = text.chars().collect();
            let mut chunks = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let len = (1 + rng.below(4)).min(chars.len() - i);
                chunks.push(chars[i..i + len].iter().collect::<String>());
                i += len;
            }
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let chunk_refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (got, stopped, _) = feed(&stop_refs, &chunk_refs);
            assert_eq!(got, want, "stops {stops:?} chunks {chunks:?}");
            assert_eq!(
                stopped,
                want.len() < text.len(),
                "stops {stops:?} text {text:?}"
            );
        }
    }

    #[test]
    fn nothing_more_after_a_stop() {
        let mut m = StopMatcher::new(&["END"]);
        assert!(m.push("aEND").stopped);
        let r = m.push("more");
        assert!(r.stopped && r.emit.is_empty());
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn push_into_appends_without_replacing() {
        let mut m = StopMatcher::new(&["</s>"]);
        let mut out = String::from("> ");
        assert!(!m.push_into("hi <", &mut out));
        assert!(m.push_into("/s>", &mut out));
        assert_eq!(out, "> hi ");
    }
}
