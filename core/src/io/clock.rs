//! Time as the core sees it.
//!
//! Protocol code never sleeps and never reads a system clock. It reads
//! [`Clock::now`] (monotonic, for timeouts and intervals) and
//! [`Clock::wall_ms`] (Kafka timestamps, retention by age, which may jump or
//! be skewed between nodes), and asks its driver to wake it at a deadline by
//! returning that deadline from its `poll_timeout`-style method. The driver
//! owns timers: tokio's in production, the simulator's event queue in `sim/`.

use std::fmt;
use std::ops::{Add, Sub};

/// A monotonic instant in nanoseconds since an arbitrary, per-process origin.
///
/// Deliberately not the standard library's `Instant`: the simulator must make
/// one out of thin air, and two of them must compare the same in every run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub fn from_millis(ms: u64) -> Instant {
        Instant(ms.saturating_mul(1_000_000))
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Nanoseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_nanos_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn plus_millis(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }
}

impl Add<u64> for Instant {
    type Output = Instant;
    /// Adds nanoseconds.
    fn add(self, nanos: u64) -> Instant {
        Instant(self.0.saturating_add(nanos))
    }
}

impl Sub<Instant> for Instant {
    type Output = u64;
    /// Nanoseconds between two instants, saturating at zero.
    fn sub(self, rhs: Instant) -> u64 {
        self.saturating_nanos_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Where the core reads time from.
pub trait Clock {
    /// Monotonic time: never goes backwards within one process lifetime.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch, as Kafka timestamps use.
    /// May jump in either direction (NTP, operator, simulated skew).
    fn wall_ms(&self) -> i64;
}

/// A clock that is whatever it was last set to: for unit tests and for
/// drivers that step state machines with an explicit time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ManualClock {
    pub now: Instant,
    pub wall_ms: i64,
}

impl ManualClock {
    pub fn advance_millis(&mut self, ms: u64) {
        self.now = self.now.plus_millis(ms);
        self.wall_ms = self.wall_ms.saturating_add(ms as i64);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.now
    }
    fn wall_ms(&self) -> i64 {
        self.wall_ms
    }
}
