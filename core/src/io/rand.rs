//! Randomness as the core sees it: always handed in, never taken from the OS,
//! so that one seed decides every choice a run makes.

/// A source of random numbers. Any `rand_core::RngCore` is one; the simulator
/// hands in a ChaCha generator derived from the run's seed, production a
/// generator seeded once at start-up.
pub trait Random {
    fn next_u64(&mut self) -> u64;

    /// Uniform in `0..n`; `n` must be non-zero.
    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the tiny bias is irrelevant for testing.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p` (clamped to 0..=1). Always draws, even
    /// for 0 and 1, so that turning a fault's rate to zero (as a shrink
    /// does) leaves every later draw of the stream where it was.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<R: rand_core::RngCore> Random for R {
    fn next_u64(&mut self) -> u64 {
        rand_core::RngCore::next_u64(self)
    }
}
