//! Query IDs and MX shuffling need unpredictable numbers, but no crate: a
//! SipHash (std's `DefaultHasher`) of a secret seed and a counter is a keyed
//! PRF, so IDs cannot be guessed from earlier ones. The seed comes from
//! std's `RandomState`, whose keys std draws from the OS once per thread.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, DefaultHasher, Hasher};

pub(super) struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    pub(super) fn from_os() -> Rng {
        Rng::with_seed(RandomState::new().hash_one(0x006d_6169_6c68_6f70_u64))
    }

    /// Tests pass a fixed seed so that IDs and shuffles repeat.
    pub(super) fn with_seed(seed: u64) -> Rng {
        Rng { seed, counter: 0 }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut h = DefaultHasher::new();
        h.write_u64(self.seed);
        h.write_u64(self.counter);
        h.finish()
    }

    pub(super) fn next_u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is negligible for small n.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates.
    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
