//! Memo of BPE results per piece. Natural text repeats a small set of words, so most pieces
//! are answered by one hash lookup instead of a merge loop. Bounded: when full it is emptied
//! (cheap, and the working set refills it quickly).

use super::fx_hash::FxHashMap;

/// Pieces longer than this are not cached (they rarely repeat and would bloat the memo).
const MAX_KEY_LEN: usize = 64;
/// Entries kept before the memo is emptied.
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
pub(super) struct WordCache {
    /// piece -> (start, len) in `ids`.
    map: FxHashMap<Box<[u8]>, (u32, u32)>,
    ids: Vec<u32>,
}

impl WordCache {
    #[inline]
    pub(super) fn get(&self, piece: &[u8]) -> Option<&[u32]> {
        let &(start, len) = self.map.get(piece)?;
        self.ids.get(start as usize..(start + len) as usize)
    }

    #[inline]
    pub(super) fn insert(&mut self, piece: &[u8], ids: &[u32]) {
        if piece.len() > MAX_KEY_LEN {
            return;
        }
        if self.map.len() >= CAPACITY {
            self.map.clear();
            self.ids.clear();
        }
        let start = self.ids.len() as u32;
        self.ids.extend_from_slice(ids);
        self.map.insert(piece.into(), (start, ids.len() as u32));
    }
}
