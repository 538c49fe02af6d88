// SPDX-License-Identifier: GPL-2.0

//! Helpers of the KUnit tests of the DMA range types.

use crate::{
    bindings,
    prelude::*, //
};

/// A kernel PRNG (`prandom_u32_state()`) with a fixed seed, for reproducible randomized tests.
pub(crate) struct TestRng(bindings::rnd_state);

impl TestRng {
    /// Creates the generator and logs `seed`, so that a failure can be replayed.
    pub(crate) fn new(test: &str, seed: u64) -> Self {
        pr_info!("{test}: random seed {seed:#x}\n");
        let mut state = bindings::rnd_state::default();
        // SAFETY: `state` is a valid `struct rnd_state` that nothing else accesses.
        unsafe { bindings::prandom_seed_state(&mut state, seed) };
        Self(state)
    }

    /// Returns the next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        // SAFETY: `self.0` is a valid, seeded `struct rnd_state` that nothing else accesses.
        let high = unsafe { bindings::prandom_u32_state(&mut self.0) };
        // SAFETY: As above.
        let low = unsafe { bindings::prandom_u32_state(&mut self.0) };
        u64::from(high) << 32 | u64::from(low)
    }

    /// Returns a number in `low..=high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        match (high - low).checked_add(1) {
            Some(span) => low + self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}
