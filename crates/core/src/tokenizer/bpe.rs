//! Byte-level BPE over one pre-tokenized piece: start from one symbol per byte and repeatedly
//! merge the adjacent pair with the lowest merge rank, leftmost first, until no pair has a
//! merge. That is the order Hugging Face's `Word::merge_all` applies (its heap is keyed by
//! (rank, position)).
//!
//! Short pieces use a flat array scan (cheap for the usual few-byte word); long ones use a
//! linked list of symbols and a binary heap of candidate pairs, so a 100 kB run of one
//! character costs O(n log n), not O(n^2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::fx_hash::FxHashMap;

/// Marks "no token" in [`Bpe::byte_ids`] and "no symbol" in the linked list.
const NONE: u32 = u32::MAX;

/// Pieces up to this many bytes take the array path.
const SHORT: usize = 48;

/// The merge rules of a vocabulary.
pub(super) struct Bpe {
    /// Token id of each single byte.
    byte_ids: [u32; 256],
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    merges: FxHashMap<u64, u64>,
    /// Pieces that are whole tokens, when merges are skipped for them (Llama 3).
    whole: Option<FxHashMap<Box<[u8]>, u32>>,
}

/// Reused buffers, so encoding allocates nothing per piece once warm.
#[derive(Default)]
pub(super) struct BpeScratch {
    ids: Vec<u32>,
    ranks: Vec<u32>,
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<u64>>,
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

impl Bpe {
    /// `byte_ids[b]` is the id of byte `b` (or `u32::MAX` if the vocabulary lacks it, in which
    /// case that byte is dropped, as Hugging Face does without an unknown token).
    /// `merges` are (left, right, merged) ids in rank order; a later duplicate of a pair
    /// overrides the earlier one, as Hugging Face's map-building does.
    pub(super) fn new(
        byte_ids: [u32; 256],
        merges: impl IntoIterator<Item = (u32, u32, u32)>,
        whole: Option<FxHashMap<Box<[u8]>, u32>>,
    ) -> Self {
        let mut table = FxHashMap::default();
        for (rank, (a, b, merged)) in merges.into_iter().enumerate() {
            table.insert(pair_key(a, b), ((rank as u64) << 32) | merged as u64);
        }
        Self {
            byte_ids,
            merges: table,
            whole,
        }
    }

    pub(super) fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// (rank, merged id) of a pair.
    #[inline]
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges
            .get(&pair_key(left, right))
            .map(|&v| ((v >> 32) as u32, v as u32))
    }

    #[inline]
    fn rank(&self, left: u32, right: u32) -> u32 {
        self.merge(left, right).map_or(NONE, |(r, _)| r)
    }

    /// Id of a single byte, if the vocabulary has it.
    #[inline]
    pub(super) fn byte_id(&self, b: u8) -> Option<u32> {
        let id = self.byte_ids[b as usize];
        (id != NONE).then_some(id)
    }

    /// Append the ids of `word` to `out`.
    pub(super) fn encode(&self, word: &[u8], out: &mut Vec<u32>, scratch: &mut BpeScratch) {
        if let Some(whole) = &self.whole {
            if let Some(&id) = whole.get(word) {
                out.push(id);
                return;
            }
        }
        if word.len() <= SHORT {
            self.encode_short(word, out, scratch);
        } else {
            self.encode_long(word, out, scratch);
        }
    }

    fn encode_short(&self, word: &[u8], out: &mut Vec<u32>, scratch: &mut BpeScratch) {
        let ids = &mut scratch.ids;
        ids.clear();
        ids.extend(word.iter().filter_map(|&b| self.byte_id(b)));
        if ids.len() < 2 {
            out.extend_from_slice(ids);
            return;
        }
        let ranks = &mut scratch.ranks;
        ranks.clear();
        ranks.extend(ids.windows(2).map(|w| self.rank(w[0], w[1])));
        loop {
            // Lowest rank, leftmost on ties (equal ranks are the same pair).
            let mut best = NONE;
            let mut at = 0;
            for (k, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = k;
                }
            }
            if best == NONE {
                break;
            }
            let Some((_, merged)) = self.merge(ids[at], ids[at + 1]) else {
                break;
            };
            ids[at] = merged;
            ids.remove(at + 1);
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.rank(ids[at - 1], merged);
            }
            if at < ranks.len() {
                ranks[at] = self.rank(merged, ids[at + 1]);
            }
        }
        out.extend_from_slice(ids);
    }

    fn encode_long(&self, word: &[u8], out: &mut Vec<u32>, scratch: &mut BpeScratch) {
        let symbols = &mut scratch.symbols;
        symbols.clear();
        for &b in word {
            if let Some(id) = self.byte_id(b) {
                let n = symbols.len() as u32;
                symbols.push(Symbol {
                    id,
                    prev: n.wrapping_sub(1),
                    next: n + 1,
                });
            }
        }
        let Some(last) = symbols.last_mut() else {
            return;
        };
        last.next = NONE;

        // Heap entries are (rank << 32 | position of the left symbol): popping the minimum
        // gives the lowest rank, leftmost first.
        let heap = &mut scratch.heap;
        heap.clear();
        for k in 0..symbols.len() - 1 {
            let r = self.rank(symbols[k].id, symbols[k + 1].id);
            if r != NONE {
                heap.push(Reverse(((r as u64) << 32) | k as u64));
            }
        }
        while let Some(Reverse(entry)) = heap.pop() {
            let rank = (entry >> 32) as u32;
            let pos = entry as u32 as usize;
            let left = symbols[pos];
            // A merged-away symbol has id NONE; a stale entry's pair no longer has this rank.
            if left.id == NONE || left.next == NONE {
                continue;
            }
            let right = symbols[left.next as usize];
            let Some((r, merged)) = self.merge(left.id, right.id) else {
                continue;
            };
            if r != rank {
                continue;
            }
            symbols[pos].id = merged;
            symbols[pos].next = right.next;
            symbols[left.next as usize].id = NONE;
            if right.next != NONE {
                symbols[right.next as usize].prev = pos as u32;
                let r = self.rank(merged, symbols[right.next as usize].id);
                if r != NONE {
                    heap.push(Reverse(((r as u64) << 32) | pos as u64));
                }
            }
            if left.prev != NONE {
                let p = left.prev as usize;
                let r = self.rank(symbols[p].id, merged);
                if r != NONE {
                    heap.push(Reverse(((r as u64) << 32) | p as u64));
                }
            }
        }
        let mut k = 0u32;
        while k != NONE {
            let s = symbols[k as usize];
            out.push(s.id);
            k = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vocabulary: bytes a=0 b=1 c=2, then ab=3, bc=4, abc=5, aa=6, aaaa=7.
    fn toy() -> Bpe {
        let mut bytes = [NONE; 256];
        bytes[b'a' as usize] = 0;
        bytes[b'b' as usize] = 1;
        bytes[b'c' as usize] = 2;
        Bpe::new(
            bytes,
            [(1, 2, 4), (0, 1, 3), (0, 4, 5), (0, 0, 6), (6, 6, 7)],
            None,
        )
    }

    fn both(bpe: &Bpe, word: &[u8]) -> Vec<u32> {
        let mut scratch = BpeScratch::default();
        let (mut short, mut long) = (Vec::new(), Vec::new());
        bpe.encode_short(word, &mut short, &mut scratch);
        bpe.encode_long(word, &mut long, &mut scratch);
        assert_eq!(short, long, "paths disagree on {word:?}");
        short
    }

    #[test]
    fn lowest_rank_merges_first_and_paths_agree() {
        let bpe = toy();
        // bc (rank 0) beats ab (rank 1), then a+bc.
        assert_eq!(both(&bpe, b"abc"), [5]);
        assert_eq!(both(&bpe, b"ab"), [3]);
        assert_eq!(both(&bpe, b"aaa"), [6, 0]);
        assert_eq!(both(&bpe, b"aaaaa"), [7, 0]);
        // A byte missing from the vocabulary is dropped and its neighbours become adjacent.
        assert_eq!(both(&bpe, b"axb"), [3]);
        let long: Vec<u8> = b"abcaab".iter().cycle().take(1000).copied().collect();
        both(&bpe, &long);
    }
}
