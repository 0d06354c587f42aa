//! Where a Raft node keeps what must survive a crash, and an in-memory
//! implementation that models the difference between written and synced.

use std::fmt;

use crate::io::{DiskError, NodeId};

use super::{Entry, Snapshot};

/// The durable part of the election state: KRaft's `quorum-state` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuorumState {
    pub epoch: u64,
    pub voted_for: Option<NodeId>,
}

/// What a store holds when it is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub quorum: QuorumState,
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot (or from offset 0), contiguous.
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    Disk(DiskError),
    /// Stored data failed its checks somewhere a crash cannot explain
    /// (a torn tail is cut silently; this is not that).
    Corrupt(String),
    /// A call the store's contract forbids (a bug in the caller), or a call
    /// after a failure that left the store unusable until reopened.
    Invalid(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Disk(e) => write!(f, "{e}"),
            StoreError::Corrupt(m) => write!(f, "corrupt: {m}"),
            StoreError::Invalid(m) => write!(f, "invalid store call: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<DiskError> for StoreError {
    fn from(e: DiskError) -> StoreError {
        StoreError::Disk(e)
    }
}

/// Persistence for one Raft node.
///
/// The contract, which [`MemStore`] models exactly and [`super::DiskStore`]
/// implements on a [`crate::io::Disk`]:
///
/// * [`RaftStore::save_quorum_state`] and [`RaftStore::save_snapshot`] are
///   durable and atomic when they return: after a crash the store holds the
///   old value or the new, whole.
/// * [`RaftStore::append`] and [`RaftStore::truncate`] are durable only
///   after the next [`RaftStore::sync`] returns. A crash before that keeps
///   the synced log plus some prefix (possibly empty) of the later calls,
///   in order.
/// * After any error the store may refuse every call until it is loaded
///   again; the caller must not assume anything it wrote since the last
///   successful sync is durable.
/// * [`RaftStore::load`] returns what the store holds and makes it
///   durable: nothing a node reads at start-up can vanish in a later crash.
pub trait RaftStore {
    fn load(&mut self) -> Result<Recovered, StoreError>;
    fn save_quorum_state(&mut self, state: QuorumState) -> Result<(), StoreError>;
    /// Appends entries that continue the log exactly.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Drops every entry at or after `end`.
    fn truncate(&mut self, end: u64) -> Result<(), StoreError>;
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Replaces the snapshot and the whole log: afterwards the log is
    /// `retained`, which starts right after the snapshot.
    fn save_snapshot(&mut self, snapshot: &Snapshot, retained: &[Entry]) -> Result<(), StoreError>;
}

/// One complete state of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemImage {
    pub quorum: QuorumState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl MemImage {
    fn end(&self) -> u64 {
        self.entries.last().map_or_else(
            || self.snapshot.as_ref().map_or(0, Snapshot::end),
            |e| e.offset + 1,
        )
    }

    fn apply(&mut self, op: &PendingOp) {
        match op {
            PendingOp::Append(entries) => self.entries.extend_from_slice(entries),
            PendingOp::Truncate(end) => self.entries.retain(|e| e.offset < *end),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PendingOp {
    Append(Vec<Entry>),
    Truncate(u64),
}

/// An in-memory store that keeps, separately, what the node has written
/// (`visible`) and what would survive a crash (`durable`), with the writes
/// in between as a list of pending operations. [`MemStore::crash`] keeps a
/// chosen prefix of them, so a test or a model checker decides what a crash
/// loses; a node that answered before syncing is caught when the answer
/// outlives the data. Hashable, so that a model checker can hold it in its
/// states.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemStore {
    durable: MemImage,
    visible: MemImage,
    pending: Vec<PendingOp>,
    /// The next sync (or atomic save) fails, dropping the pending writes
    /// for good while leaving them visible (Linux's fsync behaviour).
    fail_next_sync: bool,
    /// A write failed; every call fails until `load`.
    broken: bool,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Makes the next sync or atomic save fail.
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// How many writes are not yet synced.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn durable(&self) -> &MemImage {
        &self.durable
    }

    pub fn visible(&self) -> &MemImage {
        &self.visible
    }

    /// Power loss: what survives is the durable image plus the first `keep`
    /// pending writes (in order; fewer if there are fewer).
    pub fn crash(&mut self, keep: usize) {
        let mut image = self.durable.clone();
        for op in self.pending.iter().take(keep) {
            image.apply(op);
        }
        self.durable = image.clone();
        self.visible = image;
        self.pending.clear();
        self.broken = false;
        self.fail_next_sync = false;
    }

    fn usable(&self) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::Invalid("store failed; load it again".into()));
        }
        Ok(())
    }

    fn failing(&mut self) -> bool {
        if self.fail_next_sync {
            self.fail_next_sync = false;
            self.broken = true;
            self.pending.clear();
            true
        } else {
            false
        }
    }

    fn injected() -> StoreError {
        StoreError::Disk(DiskError::Io("injected sync failure".into()))
    }
}

impl RaftStore for MemStore {
    fn load(&mut self) -> Result<Recovered, StoreError> {
        self.broken = false;
        self.pending.clear();
        self.durable = self.visible.clone();
        Ok(Recovered {
            quorum: self.visible.quorum,
            snapshot: self.visible.snapshot.clone(),
            entries: self.visible.entries.clone(),
        })
    }

    fn save_quorum_state(&mut self, state: QuorumState) -> Result<(), StoreError> {
        self.usable()?;
        if self.failing() {
            return Err(MemStore::injected());
        }
        self.durable.quorum = state;
        self.visible.quorum = state;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.usable()?;
        let end = self.visible.end();
        if let Some((i, e)) = entries
            .iter()
            .enumerate()
            .find(|(i, e)| e.offset != end + *i as u64)
        {
            return Err(StoreError::Invalid(format!(
                "entry {i} of an append at {end} has offset {}",
                e.offset
            )));
        }
        let op = PendingOp::Append(entries.to_vec());
        self.visible.apply(&op);
        self.pending.push(op);
        Ok(())
    }

    fn truncate(&mut self, end: u64) -> Result<(), StoreError> {
        self.usable()?;
        let op = PendingOp::Truncate(end);
        self.visible.apply(&op);
        self.pending.push(op);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        if self.failing() {
            return Err(MemStore::injected());
        }
        for op in std::mem::take(&mut self.pending) {
            self.durable.apply(&op);
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, retained: &[Entry]) -> Result<(), StoreError> {
        self.usable()?;
        if retained
            .iter()
            .enumerate()
            .any(|(i, e)| e.offset != snapshot.end() + i as u64)
        {
            return Err(StoreError::Invalid(
                "retained entries do not follow the snapshot".into(),
            ));
        }
        if self.failing() {
            return Err(MemStore::injected());
        }
        let image = MemImage {
            quorum: self.visible.quorum,
            snapshot: Some(snapshot.clone()),
            entries: retained.to_vec(),
        };
        self.durable = image.clone();
        self.visible = image;
        self.pending.clear();
        Ok(())
    }
}
