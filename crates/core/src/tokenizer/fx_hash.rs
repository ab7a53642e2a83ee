//! A small fast hasher for the BPE tables (merge pairs and cached words). The keys are not
//! attacker-chosen collision material in any way that matters more than speed here: the merge
//! table is fixed at load, and the word cache is bounded and cleared.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// A multiply-fold finish so both halves of the state reach the low bits the hash table
    /// indexes with (plain Fx leaves pair keys that differ only in the high word colliding).
    #[inline]
    fn finish(&self) -> u64 {
        let full = (self.hash as u128).wrapping_mul(MIX as u128);
        (full as u64) ^ ((full >> 64) as u64)
    }
}

pub(super) type FxBuild = BuildHasherDefault<FxHasher>;
pub(super) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
