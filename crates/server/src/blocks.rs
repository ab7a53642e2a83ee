//! The paged KV cache's block allocator with prefix caching.
//!
//! Blocks are reference-counted: a sequence holds the blocks of its table;
//! a full block whose tokens are final is registered under the key of its
//! whole prefix (the chain of its predecessors' keys and its own tokens), so
//! a later prompt starting with the same tokens takes the same blocks
//! instead of recomputing them. A registered block nobody holds stays cached
//! until the allocator needs it (least recently released first); an
//! unregistered one goes straight back to the free list.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Key of a full block: its prefix (the previous block's key) and tokens.
pub type BlockKey = u64;

/// Key of the block holding `tokens` after the block keyed `parent` (0: first block).
pub fn block_key(parent: BlockKey, tokens: &[u32]) -> BlockKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    // 0 stands for "no parent"; keep real keys off it.
    h.finish().max(1)
}

struct Registered {
    key: BlockKey,
    parent: BlockKey,
    tokens: Vec<u32>,
}

pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    registered: Vec<Option<Registered>>,
    /// Unregistered blocks nobody holds.
    free: Vec<u32>,
    /// Registered blocks nobody holds, by release order (oldest evicted first).
    evictable: BTreeMap<u64, u32>,
    evict_tick: Vec<u64>,
    tick: u64,
    by_key: HashMap<BlockKey, u32>,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize) -> BlockPool {
        BlockPool {
            block_size,
            refs: vec![0; n_blocks],
            registered: (0..n_blocks).map(|_| None).collect(),
            // Popped from the end: hand out low block ids first.
            free: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            evict_tick: vec![0; n_blocks],
            tick: 0,
            by_key: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks some sequence holds.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Blocks an allocation can take (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Cached blocks nobody holds (reusable by a matching prefix).
    pub fn cached_idle(&self) -> usize {
        self.evictable.len()
    }

    /// A block for one holder, evicting the least recently released cached
    /// block when no free one is left.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(r) = self.registered[b as usize].take() {
                    self.by_key.remove(&r.key);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "block {b} released more often than held");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.registered[i].is_some() {
                self.tick += 1;
                self.evict_tick[i] = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Take the cached blocks holding the longest prefix of `tokens` made of
    /// whole blocks, at most `max_blocks` of them. Returns them and their keys.
    pub fn acquire_prefix(
        &mut self,
        tokens: &[u32],
        max_blocks: usize,
    ) -> (Vec<u32>, Vec<BlockKey>) {
        let (mut blocks, mut keys) = (Vec::new(), Vec::new());
        let mut parent = 0;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let key = block_key(parent, chunk);
            let Some(&b) = self.by_key.get(&key) else {
                break;
            };
            let r = self.registered[b as usize]
                .as_ref()
                .expect("keyed block is registered");
            // Compare contents: a hash collision must never hand out wrong KV.
            if r.parent != parent || r.tokens != chunk {
                break;
            }
            let i = b as usize;
            if self.refs[i] == 0 {
                self.evictable.remove(&self.evict_tick[i]);
            }
            self.refs[i] += 1;
            blocks.push(b);
            keys.push(key);
            parent = key;
        }
        (blocks, keys)
    }

    /// Register held block `b`, whose KV for `tokens` (a whole block after the
    /// block keyed `parent`) is now final. Returns its key. If another block
    /// already holds this prefix, `b` stays private (freed on release).
    pub fn register(&mut self, b: u32, parent: BlockKey, tokens: &[u32]) -> BlockKey {
        let key = block_key(parent, tokens);
        if self.registered[b as usize].is_none() && !self.by_key.contains_key(&key) {
            self.by_key.insert(key, b);
            self.registered[b as usize] = Some(Registered {
                key,
                parent,
                tokens: tokens.to_vec(),
            });
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_registered_blocks_are_reused_by_a_matching_prefix() {
        let mut p = BlockPool::new(4, 2);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        let k = p.register(a, 0, &[1, 2]);
        p.register(b, k, &[3, 4]);
        p.release(a);
        p.release(b);
        assert_eq!(p.used(), 0);
        assert_eq!(p.cached_idle(), 2);
        let (blocks, _) = p.acquire_prefix(&[1, 2, 3, 4, 5], 8);
        assert_eq!(blocks, vec![a, b]);
        assert_eq!(p.used(), 2);
        // A different first block shares nothing, even with the same second block.
        let (none, _) = p.acquire_prefix(&[9, 9, 3, 4], 8);
        assert!(none.is_empty());
    }

    #[test]
    fn allocation_evicts_the_oldest_cached_block_when_nothing_is_free() {
        let mut p = BlockPool::new(2, 1);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        p.register(a, 0, &[7]);
        p.register(b, 0, &[8]);
        p.release(a);
        p.release(b);
        assert_eq!(p.alloc(), Some(a));
        assert!(
            p.acquire_prefix(&[7], 1).0.is_empty(),
            "evicted block still matched"
        );
        assert_eq!(p.acquire_prefix(&[8], 1).0, vec![b]);
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn a_held_block_is_never_handed_out_twice() {
        let mut p = BlockPool::new(3, 4);
        let got: Vec<u32> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.alloc(), None);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        p.release(got[1]);
        assert_eq!(p.alloc(), Some(got[1]));
    }
}
