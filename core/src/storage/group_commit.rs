//! Group commit: appends wait for durability together, and one sync
//! releases every append it covers.
//!
//! The log's `append` returns as soon as the batch is in the page cache;
//! its `durable_end()` moves when a `flush` completes. A driver keeps each
//! acknowledgement that must wait for durability (acks for a produce under
//! `flush.messages=1`, a replica's fetch position, a benchmark's writer)
//! here under the append's last offset, syncs once for everything queued,
//! and releases every waiter the new durable end covers — many appends, one
//! fsync.

use std::collections::VecDeque;

/// Waiters in offset order (appends come back from the log in offset order,
/// so pushes are at the back and releases from the front).
#[derive(Debug)]
pub struct PendingAcks<T> {
    waiting: VecDeque<(i64, T)>,
}

impl<T> Default for PendingAcks<T> {
    fn default() -> Self {
        PendingAcks {
            waiting: VecDeque::new(),
        }
    }
}

impl<T> PendingAcks<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for offset `last_offset` to become durable. Offsets must not go
    /// down between pushes except after a [`PendingAcks::truncate`].
    pub fn push(&mut self, last_offset: i64, waiter: T) {
        debug_assert!(self.waiting.back().is_none_or(|(o, _)| *o <= last_offset));
        self.waiting.push_back((last_offset, waiter));
    }

    /// Everything the durable end (the first offset not yet durable) now
    /// covers, oldest first.
    pub fn release(&mut self, durable_end: i64) -> Vec<T> {
        let n = self.waiting.partition_point(|(o, _)| *o < durable_end);
        self.waiting.drain(..n).map(|(_, w)| w).collect()
    }

    /// The log was cut at `end`: waiters beyond it will never be durable
    /// and are returned to be failed.
    pub fn truncate(&mut self, end: i64) -> Vec<T> {
        let n = self.waiting.partition_point(|(o, _)| *o < end);
        self.waiting.drain(n..).map(|(_, w)| w).collect()
    }

    /// The log went offline: nobody waiting will be durable through it.
    pub fn fail_all(&mut self) -> Vec<T> {
        self.waiting.drain(..).map(|(_, w)| w).collect()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buggify::Buggify;
    use crate::io::disk::mem::MemDisk;
    use crate::storage::batch::BatchBuilder;
    use crate::storage::{FlushPolicy, Log, LogConfig};

    #[test]
    fn one_sync_releases_everything_it_covers() {
        let disk = MemDisk::new();
        let cfg = LogConfig {
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        };
        let mut log = Log::open(disk, "p", cfg, Buggify::disabled()).unwrap();
        let mut acks = PendingAcks::new();
        for writer in 0..5 {
            let b = BatchBuilder::new(0)
                .add(None, Some(b"v"), 0)
                .add(None, Some(b"w"), 0)
                .build();
            let info = log.append(&b, 0).unwrap();
            acks.push(info.last_offset, writer);
        }
        assert!(
            acks.release(log.durable_end()).is_empty(),
            "nothing is durable before the sync"
        );
        log.flush().unwrap();
        assert_eq!(acks.release(log.durable_end()), vec![0, 1, 2, 3, 4]);
        assert!(acks.is_empty());
    }

    #[test]
    fn partial_release_truncation_and_failure() {
        let mut acks = PendingAcks::new();
        for (last, w) in [(1, 'a'), (3, 'b'), (3, 'c'), (7, 'd'), (9, 'e')] {
            acks.push(last, w);
        }
        assert_eq!(acks.release(3), vec!['a']);
        assert_eq!(acks.release(4), vec!['b', 'c']);
        assert_eq!(acks.truncate(8), vec!['e']);
        assert_eq!(acks.len(), 1);
        acks.push(8, 'f');
        assert_eq!(acks.fail_all(), vec!['d', 'f']);
        assert!(acks.release(i64::MAX).is_empty());
    }
}
