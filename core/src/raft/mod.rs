//! The metadata quorum's consensus core: a deterministic, sans-I/O Raft.
//!
//! In Kafka's vocabulary, as KRaft (KIP-595) uses it: an *epoch* is Raft's
//! term, an *offset* is a log index (0-based and dense), the *high
//! watermark* is the commit point (the offset of the first entry not yet
//! known committed), and a *log end offset* is the offset the next entry
//! will take. Every entry carries the leader epoch it was written in.
//!
//! [`Raft`] is a plain state machine stepped by its driver, like every
//! protocol in `core`: messages come in through [`Raft::step`], time through
//! [`Raft::tick`] at [`Raft::next_deadline`], commands through
//! [`Raft::propose`] and [`Raft::compact`]; what it wants done comes out of
//! [`Raft::take_ready`] (messages to send, entries and snapshots to apply).
//! Randomness (election timeouts) is handed in. Persistence goes through a
//! [`RaftStore`]: [`DiskStore`] over any [`crate::io::Disk`], or
//! [`MemStore`], an in-memory store that keeps written and synced state
//! apart so that a crash can drop what was never synced. Everything a
//! response promises is durable before the response is in the outbox.
//!
//! The design and its reasons are in `docs/ARCHITECTURE.md`, section
//! "Raft (`core/src/raft/`)".

mod codec;
mod disk_store;
mod log;
mod message;
mod node;
mod store;

#[cfg(test)]
mod tests;

pub use codec::DecodeError;
pub use disk_store::DiskStore;
pub use message::{Body, Message, MAX_SNAPSHOT_BYTES};
pub use node::{Ignored, Raft, Stepped};
pub use store::{MemStore, QuorumState, RaftStore, Recovered, StoreError};

use std::collections::BTreeSet;
use std::fmt;

use crate::io::NodeId;

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// The no-op a leader appends at the start of its epoch, so that entries
    /// of earlier epochs can commit (Raft §5.4.2; KRaft's LeaderChange
    /// control record). Applications skip it.
    LeaderChange,
    /// An application command, opaque to Raft.
    Data,
}

/// One log entry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub offset: u64,
    /// The leader epoch the entry was written in.
    pub epoch: u64,
    pub kind: EntryKind,
    pub data: Vec<u8>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@e{}:{:?}({}B)",
            self.offset,
            self.epoch,
            self.kind,
            self.data.len()
        )
    }
}

/// The application's state after applying every entry up to and including
/// `last_offset` (KIP-630), as opaque bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub last_offset: u64,
    /// The epoch of the entry at `last_offset`.
    pub last_epoch: u64,
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The offset of the first entry after the snapshot.
    pub fn end(&self) -> u64 {
        self.last_offset.saturating_add(1)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Snapshot(..={}@e{}, {}B)",
            self.last_offset,
            self.last_epoch,
            self.data.len()
        )
    }
}

/// Where a node stands in its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Follower,
    /// Asking whether a majority would vote for it, without changing its
    /// epoch (pre-vote).
    PreCandidate,
    Candidate,
    Leader,
}

/// The static configuration of one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub node_id: NodeId,
    /// Every voter, this node included. Static: no reconfiguration.
    pub voters: BTreeSet<NodeId>,
    /// Election timeouts are drawn uniformly from this range (inclusive).
    /// The lower bound is also the leader lease: a follower that heard from
    /// its leader within it refuses to vote, and a leader that did not hear
    /// from a majority within it steps down (check-quorum).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often a leader sends appends (heartbeats) to each follower.
    pub heartbeat_ms: u64,
    /// At most this many entries per append message.
    pub max_batch_entries: usize,
    /// At most about this many bytes of entry data per append message (at
    /// least one entry is always sent).
    pub max_batch_bytes: usize,
    /// The largest entry [`Raft::propose`] accepts.
    pub max_entry_bytes: usize,
    /// The largest snapshot [`Raft::compact`] accepts and a follower
    /// installs; a snapshot travels as one message.
    pub max_snapshot_bytes: usize,
}

impl Config {
    /// Defaults that suit a LAN: elections after 150–300 ms of silence,
    /// heartbeats every 50 ms.
    pub fn new(node_id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Config {
        Config {
            node_id,
            voters: voters.into_iter().collect(),
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_ms: 50,
            max_batch_entries: 64,
            max_batch_bytes: 1 << 20,
            max_entry_bytes: 1 << 20,
            max_snapshot_bytes: 16 << 20,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.voters.contains(&self.node_id) {
            return Err(format!(
                "node {} is not among the voters {:?}",
                self.node_id, self.voters
            ));
        }
        if self.election_timeout_min_ms == 0
            || self.election_timeout_min_ms > self.election_timeout_max_ms
        {
            return Err("election timeout range must be non-empty and positive".into());
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return Err("heartbeat must be positive and shorter than the election timeout".into());
        }
        if self.max_batch_entries == 0 {
            return Err("max_batch_entries must be positive".into());
        }
        // Everything must fit a message the decoder accepts.
        if self.max_snapshot_bytes > message::MAX_SNAPSHOT_BYTES
            || self.max_entry_bytes > message::MAX_SNAPSHOT_BYTES
        {
            return Err(format!(
                "entries and snapshots are limited to {} bytes",
                message::MAX_SNAPSHOT_BYTES
            ));
        }
        Ok(())
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// A message for another node. The driver encodes it with
/// [`Message::encode`] (or hands it over as is, in a model checker).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Outgoing {
    pub to: NodeId,
    pub msg: Message,
}

/// Something the application must apply, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Apply {
    /// Replace the application's state with this snapshot's: after a
    /// restart, or when the leader sent one because this node was too far
    /// behind. Entries after it follow.
    Restore(Snapshot),
    /// A committed entry, the next in offset order.
    Entry(Entry),
}

/// The output of the steps since the last [`Raft::take_ready`]: etcd's
/// `Ready`. Everything in it is already durable where it needs to be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ready {
    pub messages: Vec<Outgoing>,
    pub apply: Vec<Apply>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.apply.is_empty()
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftError {
    /// The store failed. The node is now poisoned.
    Store(StoreError),
    /// A store call failed earlier (a sync that failed may have dropped the
    /// data it was to write, so nothing the node remembers can be trusted
    /// to be durable). The driver must drop this `Raft` and open a new one
    /// from the store, as after a crash.
    Poisoned,
    /// The configuration is unusable.
    Config(String),
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::Store(e) => write!(f, "raft store: {e}"),
            RaftError::Poisoned => write!(f, "raft node poisoned by an earlier store failure"),
            RaftError::Config(m) => write!(f, "raft config: {m}"),
        }
    }
}

impl std::error::Error for RaftError {}

impl From<StoreError> for RaftError {
    fn from(e: StoreError) -> RaftError {
        RaftError::Store(e)
    }
}

/// Why [`Raft::propose`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader appends; `leader` is the one this node knows of.
    NotLeader {
        leader: Option<NodeId>,
    },
    TooLarge {
        len: usize,
        max: usize,
    },
    Failed(RaftError),
}

/// Why [`Raft::compact`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactError {
    /// A snapshot may cover only entries already handed out to apply.
    NotApplied {
        last_offset: u64,
        applied_end: u64,
    },
    TooLarge {
        len: usize,
        max: usize,
    },
    Failed(RaftError),
}
