//! The in-memory view of the log: the latest snapshot (the compacted
//! prefix) and the entries after it. It mirrors what the store holds; the
//! store is written through and read only at start-up.

use super::{Entry, Snapshot};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct RaftLog {
    pub snapshot: Option<Snapshot>,
    /// `entries[i].offset == self.start() + i`.
    pub entries: Vec<Entry>,
}

impl RaftLog {
    /// The offset of the first entry held (the snapshot's end).
    pub fn start(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, Snapshot::end)
    }

    /// The log end offset: where the next entry goes.
    pub fn end(&self) -> u64 {
        self.start() + self.entries.len() as u64
    }

    /// The epoch of the last entry (or of the snapshot's last), 0 if none.
    pub fn last_epoch(&self) -> u64 {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => e.epoch,
            (None, Some(s)) => s.last_epoch,
            (None, None) => 0,
        }
    }

    /// The epoch of the entry at `offset`, if it is held or is the
    /// snapshot's last.
    pub fn epoch_at(&self, offset: u64) -> Option<u64> {
        if let Some(s) = &self.snapshot {
            if offset == s.last_offset {
                return Some(s.last_epoch);
            }
        }
        self.get(offset).map(|e| e.epoch)
    }

    /// The epoch of the entry just before `end`: 0 for the start of the log.
    pub fn epoch_before(&self, end: u64) -> Option<u64> {
        if end == 0 {
            Some(0)
        } else {
            self.epoch_at(end - 1)
        }
    }

    pub fn get(&self, offset: u64) -> Option<&Entry> {
        let i = offset.checked_sub(self.start())?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// The entries in `from..to`, clamped to what is held.
    pub fn slice(&self, from: u64, to: u64) -> &[Entry] {
        let start = self.start();
        let lo = from.clamp(start, self.end()) - start;
        let hi = to.clamp(start, self.end()) - start;
        if lo >= hi {
            return &[];
        }
        &self.entries[lo as usize..hi as usize]
    }

    /// Drops every entry at or after `end`.
    pub fn truncate(&mut self, end: u64) {
        let keep = end.saturating_sub(self.start()) as usize;
        self.entries.truncate(keep);
    }

    /// The first offset of the run of entries in the same epoch as the one
    /// at `offset`, not below the log's start.
    pub fn epoch_run_start(&self, offset: u64) -> u64 {
        let Some(epoch) = self.epoch_at(offset) else {
            return offset;
        };
        let mut o = offset;
        while o > self.start() && self.epoch_at(o - 1) == Some(epoch) {
            o -= 1;
        }
        o
    }

    /// Checks the invariants a recovered log must satisfy.
    pub fn check(&self) -> Result<(), String> {
        let mut prev = self.snapshot.as_ref().map_or(0, |s| s.last_epoch);
        for (i, e) in self.entries.iter().enumerate() {
            if e.offset != self.start() + i as u64 {
                return Err(format!(
                    "entry {i} has offset {}, expected {}",
                    e.offset,
                    self.start() + i as u64
                ));
            }
            if e.epoch < prev {
                return Err(format!(
                    "entry at {} has epoch {} after epoch {prev}",
                    e.offset, e.epoch
                ));
            }
            prev = e.epoch;
        }
        Ok(())
    }
}
