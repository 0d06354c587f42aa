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

/// Identifies a scheduled timer, for cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(Instant, u64);

/// Timers in deterministic order: by deadline, and among equal deadlines by
/// the order they were set — never by anything a hasher or a thread
/// scheduler decides. Protocol state machines keep their timeouts here and
/// report `next_deadline()` to their driver; the simulator's event loop is
/// one of these too.
#[derive(Debug)]
pub struct TimerQueue<T> {
    entries: std::collections::BTreeMap<TimerId, T>,
    seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            entries: std::collections::BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn schedule(&mut self, at: Instant, item: T) -> TimerId {
        self.seq += 1;
        let id = TimerId(at, self.seq);
        self.entries.insert(id, item);
        id
    }

    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.entries.remove(&id)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.keys().next().map(|id| id.0)
    }

    /// The earliest timer whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.next_deadline()? > now {
            return None;
        }
        self.pop_next()
    }

    /// The earliest timer, whenever it is due: a simulator jumps its clock
    /// straight to it.
    pub fn pop_next(&mut self) -> Option<(Instant, T)> {
        self.entries.pop_first().map(|(id, item)| (id.0, item))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_by_deadline_then_by_order_set() {
        let mut q = TimerQueue::new();
        q.schedule(Instant::from_millis(5), "b");
        let c = q.schedule(Instant::from_millis(1), "a");
        q.schedule(Instant::from_millis(5), "c");
        q.schedule(Instant::from_millis(3), "x");
        assert_eq!(q.cancel(c), Some("a"));
        assert_eq!(q.next_deadline(), Some(Instant::from_millis(3)));
        assert_eq!(q.pop_due(Instant::from_millis(2)), None);
        assert_eq!(
            q.pop_due(Instant::from_millis(3)),
            Some((Instant::from_millis(3), "x"))
        );
        assert_eq!(q.pop_next(), Some((Instant::from_millis(5), "b")));
        assert_eq!(q.pop_next(), Some((Instant::from_millis(5), "c")));
        assert!(q.is_empty());
        assert_eq!(q.pop_next(), None);
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_millis(10);
        assert_eq!(t - Instant::from_millis(20), 0);
        assert_eq!((t + 5).as_nanos(), 10_000_005);
        assert_eq!(Instant(u64::MAX) + 1, Instant(u64::MAX));
        let mut c = ManualClock::default();
        c.advance_millis(7);
        assert_eq!((c.now().as_millis(), c.wall_ms()), (7, 7));
    }
}
