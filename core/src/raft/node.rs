//! The Raft node: elections with pre-vote and check-quorum, push-based
//! replication, the commit rule, snapshots.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;

use crate::io::{Disk, Instant, NodeId, Random};

use super::log::RaftLog;
use super::store::{QuorumState, RaftStore, StoreError};
use super::{
    Apply, Body, CompactError, Config, DiskStore, Entry, EntryKind, Message, Outgoing,
    ProposeError, RaftError, Ready, Role, Snapshot,
};

/// What [`Raft::step`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stepped {
    Handled,
    Ignored(Ignored),
}

/// Why a message was dropped. None of these is an error: the network may
/// deliver anything, late, twice, or from a confused peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// From a node that is not a voter, or from this node itself.
    NotVoter,
    /// A response from an earlier epoch or an earlier round.
    Stale,
    /// A vote request while this node knows a live leader (its lease).
    InLease,
    /// Not meant for a node in this role (a vote response to a follower).
    WrongRole,
    /// Contents that no correct peer sends.
    Invalid(&'static str),
}

/// What the leader knows of one follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Progress {
    /// The follower's log matches the leader's below this offset.
    match_end: u64,
    /// Where the next append starts.
    next_end: u64,
    state: ProgressState,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ProgressState {
    /// Where the follower's log diverges is unknown: one append per
    /// heartbeat or response, `next_end` moved only by responses.
    Probe,
    /// Appends stream: `next_end` advances as they are sent, and falls back
    /// to `match_end` at each heartbeat (resending what was not
    /// acknowledged, as the network may have lost it).
    Replicate,
    /// The follower needs the snapshot, last sent at `sent_at`.
    Snapshot { sent_at: Instant },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_at: Instant,
    check_quorum_at: Instant,
    /// Voters heard from since the last check-quorum.
    heard: BTreeSet<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RoleState {
    Follower,
    PreCandidate {
        granted: BTreeSet<NodeId>,
        rejected: BTreeSet<NodeId>,
    },
    Candidate {
        granted: BTreeSet<NodeId>,
        rejected: BTreeSet<NodeId>,
    },
    Leader(LeaderState),
}

/// One Raft node. `S` is where it persists ([`DiskStore`] over a disk, or
/// [`super::MemStore`]); with a `MemStore` the whole node is `Clone + Eq +
/// Hash`, so a model checker can keep it in its states.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Raft<S> {
    store: S,
    config: Config,
    /// The epoch and vote; `quorum_dirty` until the store has them. Every
    /// message and every append flushes them first.
    quorum: QuorumState,
    quorum_dirty: bool,
    log: RaftLog,
    /// Entries below this are committed.
    high_watermark: u64,
    /// Entries below this were handed out by `take_ready`.
    applied_end: u64,
    /// The snapshot must be handed out (restored) before any entry.
    restore_pending: bool,
    role: RoleState,
    leader: Option<NodeId>,
    /// When this follower last heard from `leader`.
    leader_heard_at: Option<Instant>,
    /// The current randomized election timeout and when it runs out.
    election_timeout_ms: u64,
    election_at: Instant,
    /// The latest time any call was given.
    now: Instant,
    outbox: Vec<Outgoing>,
    poisoned: bool,
}

impl<D: Disk> Raft<DiskStore<D>> {
    /// Opens (or creates) the node whose files are in `dir` on `disk`.
    pub fn open<R: RngCore>(
        disk: D,
        dir: &str,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, RaftError> {
        Raft::new(DiskStore::new(disk, dir), config, now, rng)
    }
}

impl<S: RaftStore> Raft<S> {
    /// Starts a node from whatever `store` holds (nothing, for a new node):
    /// a follower with no known leader, its election timer running.
    pub fn new<R: RngCore>(
        mut store: S,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, RaftError> {
        config.validate().map_err(RaftError::Config)?;
        let rec = store.load()?;
        let log = RaftLog {
            snapshot: rec.snapshot,
            entries: rec.entries,
        };
        log.check()
            .map_err(|m| RaftError::Store(StoreError::Corrupt(m)))?;
        if log.last_epoch() > rec.quorum.epoch {
            return Err(RaftError::Store(StoreError::Corrupt(format!(
                "log reaches epoch {} but the quorum state is at {}",
                log.last_epoch(),
                rec.quorum.epoch
            ))));
        }
        let start = log.start();
        let restore_pending = log.snapshot.is_some();
        let mut raft = Raft {
            store,
            config,
            quorum: rec.quorum,
            quorum_dirty: false,
            log,
            high_watermark: start,
            applied_end: 0,
            restore_pending,
            role: RoleState::Follower,
            leader: None,
            leader_heard_at: None,
            election_timeout_ms: 0,
            election_at: now,
            now,
            outbox: Vec::new(),
            poisoned: false,
        };
        raft.reset_election_timer(now, rng);
        Ok(raft)
    }

    // ----- queries -----

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The leader of the current epoch, if this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn epoch(&self) -> u64 {
        self.quorum.epoch
    }

    pub fn voted_for(&self) -> Option<NodeId> {
        self.quorum.voted_for
    }

    /// Entries below this offset are committed.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Where the next entry goes.
    pub fn log_end_offset(&self) -> u64 {
        self.log.end()
    }

    /// The first offset still in the log (the snapshot's end).
    pub fn log_start_offset(&self) -> u64 {
        self.log.start()
    }

    /// The epoch of the last entry (or of the snapshot's last), 0 if none.
    pub fn last_epoch(&self) -> u64 {
        self.log.last_epoch()
    }

    /// Entries below this offset have been handed out to apply.
    pub fn applied_end(&self) -> u64 {
        self.applied_end
    }

    pub fn entry(&self, offset: u64) -> Option<&Entry> {
        self.log.get(offset)
    }

    /// The entries held, from [`Raft::log_start_offset`] on.
    pub fn entries(&self) -> &[Entry] {
        &self.log.entries
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.log.snapshot.as_ref()
    }

    /// True after a store failure: drop the node and open it again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// When [`Raft::tick`] must next be called.
    pub fn next_deadline(&self) -> Instant {
        match &self.role {
            RoleState::Leader(ls) => ls.heartbeat_at.min(ls.check_quorum_at),
            _ => self.election_at,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Mutable access to the store, for fault injection in tests.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The store, for reopening after a simulated crash.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Whether [`Raft::take_ready`] has anything.
    pub fn has_ready(&self) -> bool {
        !self.poisoned
            && (!self.outbox.is_empty()
                || self.restore_pending
                || self.high_watermark > self.applied_end)
    }

    // ----- inputs -----

    /// Handles a message from voter `from` (the driver knows the sender from
    /// the connection, not from the message).
    pub fn step<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        msg: Message,
        rng: &mut R,
    ) -> Result<Stepped, RaftError> {
        self.guard(now, |r| r.on_message(now, from, msg, rng))
    }

    /// Decodes and handles a message; bytes that do not decode are ignored.
    pub fn step_bytes<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<Stepped, RaftError> {
        match Message::decode(bytes) {
            Ok(msg) => self.step(now, from, msg, rng),
            Err(_) => {
                if self.poisoned {
                    return Err(RaftError::Poisoned);
                }
                Ok(Stepped::Ignored(Ignored::Invalid("undecodable message")))
            }
        }
    }

    /// Lets time pass: elections, heartbeats, check-quorum.
    pub fn tick<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), RaftError> {
        self.guard(now, |r| r.on_tick(now, rng))
    }

    /// Starts an election now (with pre-vote, so it disrupts nothing if a
    /// majority still hears from a leader). For tests and operators; timers
    /// do this on their own.
    pub fn campaign<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), RaftError> {
        self.guard(now, |r| {
            if r.is_leader() {
                return Ok(());
            }
            r.start_pre_vote(now, rng)
        })
    }

    /// Appends `data` as a new entry, if this node is the leader; returns
    /// its offset. It is committed when the high watermark passes it with
    /// the entry still in this epoch (a new leader may overwrite it).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposeError> {
        if self.poisoned {
            return Err(ProposeError::Failed(RaftError::Poisoned));
        }
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if data.len() > self.config.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                len: data.len(),
                max: self.config.max_entry_bytes,
            });
        }
        let now = self.now;
        self.guard(now, |r| {
            let offset = r.log.end();
            r.append_local(vec![Entry {
                offset,
                epoch: r.quorum.epoch,
                kind: EntryKind::Data,
                data,
            }])?;
            for peer in r.peers() {
                let caught_up = r
                    .progress(peer)
                    .is_some_and(|p| p.state == ProgressState::Replicate && p.next_end == offset);
                if caught_up {
                    r.send_append(peer)?;
                }
            }
            r.maybe_commit();
            Ok(offset)
        })
        .map_err(ProposeError::Failed)
    }

    /// Replaces the log up to and including `last_offset` with the
    /// application's snapshot `data` of its state there. `last_offset` must
    /// have been handed out to apply already.
    pub fn compact(&mut self, last_offset: u64, data: Vec<u8>) -> Result<(), CompactError> {
        if self.poisoned {
            return Err(CompactError::Failed(RaftError::Poisoned));
        }
        if last_offset >= self.applied_end {
            return Err(CompactError::NotApplied {
                last_offset,
                applied_end: self.applied_end,
            });
        }
        if data.len() > self.config.max_snapshot_bytes {
            return Err(CompactError::TooLarge {
                len: data.len(),
                max: self.config.max_snapshot_bytes,
            });
        }
        if last_offset < self.log.start() {
            return Ok(());
        }
        let Some(last_epoch) = self.log.epoch_at(last_offset) else {
            // Unreachable: start <= last_offset < applied_end <= end.
            return Ok(());
        };
        let snapshot = Snapshot {
            last_offset,
            last_epoch,
            data,
        };
        let now = self.now;
        self.guard(now, |r| {
            let retained = r.log.slice(snapshot.end(), r.log.end()).to_vec();
            r.flush_quorum()?;
            r.store.save_snapshot(&snapshot, &retained)?;
            r.log = RaftLog {
                snapshot: Some(snapshot),
                entries: retained,
            };
            Ok(())
        })
        .map_err(CompactError::Failed)
    }

    /// Takes the messages to send and what to apply. Entries come in offset
    /// order, each once per process lifetime; after a restart, the snapshot
    /// and then the committed entries after it come again.
    pub fn take_ready(&mut self) -> Ready {
        if self.poisoned {
            return Ready::default();
        }
        let messages = std::mem::take(&mut self.outbox);
        let mut apply = Vec::new();
        if self.restore_pending {
            self.restore_pending = false;
            if let Some(s) = &self.log.snapshot {
                apply.push(Apply::Restore(s.clone()));
                self.applied_end = s.end();
            }
        }
        let from = self.applied_end.max(self.log.start());
        for e in self.log.slice(from, self.high_watermark) {
            apply.push(Apply::Entry(e.clone()));
        }
        self.applied_end = self.applied_end.max(self.high_watermark);
        Ready { messages, apply }
    }

    // ----- plumbing -----

    /// Runs `f`; the quorum state is flushed after it. A store failure
    /// poisons the node and discards everything not yet taken from it.
    fn guard<T>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, RaftError> {
        if self.poisoned {
            return Err(RaftError::Poisoned);
        }
        self.now = self.now.max(now);
        match f(self).and_then(|v| self.flush_quorum().map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.poisoned = true;
                self.outbox.clear();
                Err(RaftError::Store(e))
            }
        }
    }

    fn peers(&self) -> Vec<NodeId> {
        let me = self.config.node_id;
        self.config
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    fn quorum_size(&self) -> usize {
        self.config.quorum()
    }

    fn set_quorum(&mut self, epoch: u64, voted_for: Option<NodeId>) {
        let q = QuorumState { epoch, voted_for };
        if q != self.quorum {
            self.quorum = q;
            self.quorum_dirty = true;
        }
    }

    fn flush_quorum(&mut self) -> Result<(), StoreError> {
        if self.quorum_dirty {
            self.store.save_quorum_state(self.quorum)?;
            self.quorum_dirty = false;
        }
        Ok(())
    }

    /// Queues a message in the current epoch. The quorum state goes to the
    /// store first: no message leaves claiming an epoch or a vote that a
    /// crash could take back.
    fn send(&mut self, to: NodeId, body: Body) -> Result<(), StoreError> {
        let epoch = self.quorum.epoch;
        self.send_at(to, epoch, body)
    }

    fn send_at(&mut self, to: NodeId, epoch: u64, body: Body) -> Result<(), StoreError> {
        self.flush_quorum()?;
        self.outbox.push(Outgoing {
            to,
            msg: Message { epoch, body },
        });
        Ok(())
    }

    /// Appends to the local log and syncs.
    fn append_local(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        self.flush_quorum()?;
        self.store.append(&entries)?;
        self.store.sync()?;
        self.log.entries.extend(entries);
        Ok(())
    }

    fn reset_election_timer<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        self.election_timeout_ms = rng.between(
            self.config.election_timeout_min_ms,
            self.config.election_timeout_max_ms,
        );
        self.election_at = now.plus_millis(self.election_timeout_ms);
    }

    fn in_lease(&self, now: Instant) -> bool {
        match self.role {
            RoleState::Leader(_) => true,
            RoleState::Follower => {
                self.leader.is_some()
                    && self
                        .leader_heard_at
                        .is_some_and(|t| now < t.plus_millis(self.config.election_timeout_min_ms))
            }
            _ => false,
        }
    }

    /// Whether a candidate whose log ends at `log_end` in `last_epoch` is
    /// at least as up to date as this node (Raft §5.4.1).
    fn log_ok(&self, last_epoch: u64, log_end: u64) -> bool {
        (last_epoch, log_end) >= (self.log.last_epoch(), self.log.end())
    }

    fn progress(&mut self, peer: NodeId) -> Option<&mut Progress> {
        match &mut self.role {
            RoleState::Leader(ls) => ls.progress.get_mut(&peer),
            _ => None,
        }
    }

    // ----- roles -----

    fn become_follower<R: RngCore>(
        &mut self,
        now: Instant,
        epoch: u64,
        leader: Option<NodeId>,
        rng: &mut R,
    ) {
        if epoch > self.quorum.epoch {
            self.set_quorum(epoch, None);
        }
        self.role = RoleState::Follower;
        self.leader = leader;
        self.leader_heard_at = leader.map(|_| now);
        self.reset_election_timer(now, rng);
    }

    fn start_pre_vote<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), StoreError> {
        self.leader = None;
        self.leader_heard_at = None;
        self.role = RoleState::PreCandidate {
            granted: BTreeSet::from([self.config.node_id]),
            rejected: BTreeSet::new(),
        };
        self.reset_election_timer(now, rng);
        if self.quorum_size() <= 1 {
            return self.start_election(now, rng);
        }
        let proposed = self.quorum.epoch.saturating_add(1);
        let body = Body::PreVote {
            last_epoch: self.log.last_epoch(),
            log_end: self.log.end(),
        };
        for peer in self.peers() {
            self.send_at(peer, proposed, body.clone())?;
        }
        Ok(())
    }

    fn start_election<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), StoreError> {
        let epoch = self.quorum.epoch.saturating_add(1);
        self.set_quorum(epoch, Some(self.config.node_id));
        self.leader = None;
        self.leader_heard_at = None;
        self.role = RoleState::Candidate {
            granted: BTreeSet::from([self.config.node_id]),
            rejected: BTreeSet::new(),
        };
        self.reset_election_timer(now, rng);
        if self.quorum_size() <= 1 {
            return self.become_leader(now);
        }
        let body = Body::Vote {
            last_epoch: self.log.last_epoch(),
            log_end: self.log.end(),
        };
        for peer in self.peers() {
            self.send(peer, body.clone())?;
        }
        Ok(())
    }

    fn become_leader(&mut self, now: Instant) -> Result<(), StoreError> {
        let end = self.log.end();
        let progress = self
            .peers()
            .into_iter()
            .map(|p| {
                (
                    p,
                    Progress {
                        match_end: 0,
                        next_end: end,
                        state: ProgressState::Probe,
                    },
                )
            })
            .collect();
        self.role = RoleState::Leader(LeaderState {
            progress,
            heartbeat_at: now.plus_millis(self.config.heartbeat_ms),
            check_quorum_at: now.plus_millis(self.config.election_timeout_min_ms),
            heard: BTreeSet::new(),
        });
        self.leader = Some(self.config.node_id);
        self.leader_heard_at = None;
        self.append_local(vec![Entry {
            offset: end,
            epoch: self.quorum.epoch,
            kind: EntryKind::LeaderChange,
            data: Vec::new(),
        }])?;
        for peer in self.peers() {
            self.send_append(peer)?;
        }
        self.maybe_commit();
        Ok(())
    }

    // ----- timers -----

    fn on_tick<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), StoreError> {
        let quorum = self.quorum_size();
        let RoleState::Leader(ls) = &mut self.role else {
            if now >= self.election_at {
                self.start_pre_vote(now, rng)?;
            }
            return Ok(());
        };
        if now >= ls.check_quorum_at {
            if ls.heard.len() + 1 < quorum {
                // Check-quorum: no majority heard within a lease; stop
                // claiming leadership so clients look elsewhere.
                let epoch = self.quorum.epoch;
                self.become_follower(now, epoch, None, rng);
                return Ok(());
            }
            ls.heard.clear();
            ls.check_quorum_at = now.plus_millis(self.config.election_timeout_min_ms);
        }
        if now >= ls.heartbeat_at {
            ls.heartbeat_at = now.plus_millis(self.config.heartbeat_ms);
            self.heartbeat(now)?;
        }
        Ok(())
    }

    fn heartbeat(&mut self, now: Instant) -> Result<(), StoreError> {
        let retry_ms = self.config.election_timeout_min_ms;
        for peer in self.peers() {
            let Some(p) = self.progress(peer) else {
                continue;
            };
            match p.state {
                ProgressState::Replicate => {
                    p.next_end = p.match_end;
                    self.send_append(peer)?;
                }
                ProgressState::Probe => self.send_append(peer)?,
                ProgressState::Snapshot { sent_at } => {
                    if now >= sent_at.plus_millis(retry_ms) {
                        self.send_append(peer)?;
                    } else {
                        // Keep the follower from starting an election while
                        // the snapshot travels: an empty append at the
                        // log's start, whose rejection is ignored.
                        let start = self.log.start();
                        let body = Body::Append {
                            start_offset: start,
                            prev_epoch: self.log.epoch_before(start).unwrap_or(0),
                            entries: Vec::new(),
                            high_watermark: self.high_watermark,
                        };
                        self.send(peer, body)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `peer` what it needs next: entries from its `next_end`, or the
    /// snapshot if those were compacted away.
    fn send_append(&mut self, peer: NodeId) -> Result<(), StoreError> {
        let now = self.now;
        let log_start = self.log.start();
        let log_end = self.log.end();
        let Some(p) = self.progress(peer) else {
            return Ok(());
        };
        if p.next_end < log_start {
            p.state = ProgressState::Snapshot { sent_at: now };
            let Some(snapshot) = self.log.snapshot.clone() else {
                return Ok(()); // unreachable: log_start > 0 means a snapshot
            };
            return self.send(peer, Body::InstallSnapshot { snapshot });
        }
        let start = p.next_end.min(log_end);
        let mut bytes = 0usize;
        let mut entries = Vec::new();
        for e in self.log.slice(
            start,
            start.saturating_add(self.config.max_batch_entries as u64),
        ) {
            if !entries.is_empty() && bytes + e.data.len() > self.config.max_batch_bytes {
                break;
            }
            bytes += e.data.len();
            entries.push(e.clone());
        }
        let sent_end = start + entries.len() as u64;
        if let Some(p) = self.progress(peer) {
            if p.state == ProgressState::Replicate {
                p.next_end = sent_end;
            }
        }
        let body = Body::Append {
            start_offset: start,
            prev_epoch: self.log.epoch_before(start).unwrap_or(0),
            entries,
            high_watermark: self.high_watermark,
        };
        self.send(peer, body)
    }

    /// Advances the high watermark to what a majority holds, if that entry
    /// is of this epoch (Raft §5.4.2: entries of earlier epochs commit only
    /// under one of the current epoch).
    fn maybe_commit(&mut self) {
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        let mut ends: Vec<u64> = ls.progress.values().map(|p| p.match_end).collect();
        ends.push(self.log.end());
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&n) = ends.get(self.quorum_size() - 1) else {
            return;
        };
        if n > self.high_watermark && self.log.epoch_at(n - 1) == Some(self.quorum.epoch) {
            self.high_watermark = n;
        }
    }

    // ----- messages -----

    fn on_message<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        msg: Message,
        rng: &mut R,
    ) -> Result<Stepped, StoreError> {
        if from == self.config.node_id || !self.config.voters.contains(&from) {
            return Ok(Stepped::Ignored(Ignored::NotVoter));
        }
        if !msg.in_range() {
            return Ok(Stepped::Ignored(Ignored::Invalid(
                "offset or epoch out of range",
            )));
        }
        let Message { epoch, body } = msg;
        // Pre-votes never change the receiver's epoch: that is their point.
        if let Body::PreVote {
            last_epoch,
            log_end,
        } = body
        {
            return self.on_pre_vote(now, from, epoch, last_epoch, log_end);
        }
        if let Body::PreVoteResponse { granted } = body {
            return self.on_pre_vote_response(now, from, epoch, granted, rng);
        }
        if epoch > self.quorum.epoch {
            if matches!(body, Body::Vote { .. }) && self.in_lease(now) {
                // A live leader is known: do not let a rejoining node
                // disrupt it (the candidate got here without pre-vote, or
                // its pre-vote majority has since heard from the leader).
                return Ok(Stepped::Ignored(Ignored::InLease));
            }
            let leader =
                matches!(body, Body::Append { .. } | Body::InstallSnapshot { .. }).then_some(from);
            self.become_follower(now, epoch, leader, rng);
        } else if epoch < self.quorum.epoch {
            // Fencing: tell a stale leader or candidate the current epoch.
            return match body {
                Body::Append { .. } | Body::InstallSnapshot { .. } => {
                    let end = self.log.end();
                    self.send(
                        from,
                        Body::AppendResponse {
                            success: false,
                            end,
                        },
                    )?;
                    Ok(Stepped::Handled)
                }
                Body::Vote { .. } => {
                    self.send(from, Body::VoteResponse { granted: false })?;
                    Ok(Stepped::Handled)
                }
                _ => Ok(Stepped::Ignored(Ignored::Stale)),
            };
        }
        match body {
            Body::Vote {
                last_epoch,
                log_end,
            } => self.on_vote(now, from, last_epoch, log_end),
            Body::VoteResponse { granted } => self.on_vote_response(now, from, granted),
            Body::Append {
                start_offset,
                prev_epoch,
                entries,
                high_watermark,
            } => self.on_append(now, from, start_offset, prev_epoch, entries, high_watermark),
            Body::AppendResponse { success, end } => self.on_append_response(from, success, end),
            Body::InstallSnapshot { snapshot } => self.on_install_snapshot(now, from, snapshot),
            Body::InstallSnapshotResponse { end } => self.on_snapshot_response(from, end),
            Body::PreVote { .. } | Body::PreVoteResponse { .. } => {
                Ok(Stepped::Ignored(Ignored::WrongRole))
            }
        }
    }

    fn on_pre_vote(
        &mut self,
        now: Instant,
        from: NodeId,
        proposed: u64,
        last_epoch: u64,
        log_end: u64,
    ) -> Result<Stepped, StoreError> {
        let granted =
            proposed > self.quorum.epoch && !self.in_lease(now) && self.log_ok(last_epoch, log_end);
        let epoch = if granted { proposed } else { self.quorum.epoch };
        self.send_at(from, epoch, Body::PreVoteResponse { granted })?;
        Ok(Stepped::Handled)
    }

    fn on_pre_vote_response<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: u64,
        granted: bool,
        rng: &mut R,
    ) -> Result<Stepped, StoreError> {
        if !granted && epoch > self.quorum.epoch {
            self.become_follower(now, epoch, None, rng);
            return Ok(Stepped::Handled);
        }
        let quorum = self.quorum_size();
        let current = self.quorum.epoch;
        let RoleState::PreCandidate {
            granted: g,
            rejected,
        } = &mut self.role
        else {
            return Ok(Stepped::Ignored(Ignored::WrongRole));
        };
        if granted {
            if epoch != current.saturating_add(1) {
                return Ok(Stepped::Ignored(Ignored::Stale));
            }
            g.insert(from);
        } else {
            rejected.insert(from);
        }
        if g.len() >= quorum {
            self.start_election(now, rng)?;
        } else if rejected.len() >= quorum {
            self.role = RoleState::Follower;
        }
        Ok(Stepped::Handled)
    }

    fn on_vote(
        &mut self,
        now: Instant,
        from: NodeId,
        last_epoch: u64,
        log_end: u64,
    ) -> Result<Stepped, StoreError> {
        let can_vote = self.quorum.voted_for == Some(from)
            || (self.quorum.voted_for.is_none() && self.leader.is_none());
        let granted = can_vote && self.log_ok(last_epoch, log_end);
        if granted {
            self.set_quorum(self.quorum.epoch, Some(from));
            self.election_at = now.plus_millis(self.election_timeout_ms);
        }
        // `send` makes the vote durable before the response exists.
        self.send(from, Body::VoteResponse { granted })?;
        Ok(Stepped::Handled)
    }

    fn on_vote_response(
        &mut self,
        now: Instant,
        from: NodeId,
        granted: bool,
    ) -> Result<Stepped, StoreError> {
        let quorum = self.quorum_size();
        let RoleState::Candidate {
            granted: g,
            rejected,
        } = &mut self.role
        else {
            return Ok(Stepped::Ignored(Ignored::WrongRole));
        };
        if granted {
            g.insert(from);
        } else {
            rejected.insert(from);
        }
        if g.len() >= quorum {
            self.become_leader(now)?;
        } else if rejected.len() >= quorum {
            self.role = RoleState::Follower;
        }
        Ok(Stepped::Handled)
    }

    /// Common to Append and InstallSnapshot in this epoch: the sender is the
    /// leader. Returns false if that contradicts what this node knows.
    fn accept_leader(&mut self, now: Instant, from: NodeId) -> bool {
        match self.role {
            RoleState::Leader(_) => return false,
            RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                self.role = RoleState::Follower;
            }
            RoleState::Follower => {}
        }
        if self.leader.is_some_and(|l| l != from) {
            return false;
        }
        self.leader = Some(from);
        self.leader_heard_at = Some(now);
        self.election_at = now.plus_millis(self.election_timeout_ms);
        true
    }

    fn on_append(
        &mut self,
        now: Instant,
        from: NodeId,
        start: u64,
        prev_epoch: u64,
        entries: Vec<Entry>,
        high_watermark: u64,
    ) -> Result<Stepped, StoreError> {
        let epoch = self.quorum.epoch;
        // Check the message before letting it change anything.
        if prev_epoch > epoch {
            return Ok(Stepped::Ignored(Ignored::Invalid("prev epoch ahead")));
        }
        let mut last = prev_epoch;
        for (i, e) in entries.iter().enumerate() {
            if start.checked_add(i as u64) != Some(e.offset) || e.epoch < last || e.epoch > epoch {
                return Ok(Stepped::Ignored(Ignored::Invalid("inconsistent entries")));
            }
            last = e.epoch;
        }
        if !self.accept_leader(now, from) {
            return Ok(Stepped::Ignored(Ignored::Invalid("second leader in epoch")));
        }
        let log_end = self.log.end();
        if start > log_end {
            // A gap: an earlier append was lost or is late.
            self.send(
                from,
                Body::AppendResponse {
                    success: false,
                    end: log_end,
                },
            )?;
            return Ok(Stepped::Handled);
        }
        let log_start = self.log.start();
        let count = entries.len() as u64;
        let skip = log_start.saturating_sub(start);
        if start >= log_start && self.log.epoch_before(start) != Some(prev_epoch) {
            // The entry before `start` differs: everything from the start of
            // that entry's epoch here may differ too. Committed entries
            // cannot, so never hint below the high watermark.
            let hint = match start.checked_sub(1) {
                Some(prev) => self
                    .log
                    .epoch_run_start(prev)
                    .max(self.high_watermark)
                    .min(prev),
                None => 0,
            };
            self.send(
                from,
                Body::AppendResponse {
                    success: false,
                    end: hint,
                },
            )?;
            return Ok(Stepped::Handled);
        }
        // Entries below the snapshot are committed, so they match.
        let mut new = Vec::new();
        for e in entries.into_iter().skip(skip.min(count) as usize) {
            if !new.is_empty() {
                new.push(e);
                continue;
            }
            match self.log.epoch_at(e.offset) {
                Some(have) if have == e.epoch => {}
                Some(_) => {
                    if e.offset < self.high_watermark {
                        return Ok(Stepped::Ignored(Ignored::Invalid(
                            "conflicts with a committed entry",
                        )));
                    }
                    self.store.truncate(e.offset)?;
                    self.log.truncate(e.offset);
                    new.push(e);
                }
                None => new.push(e),
            }
        }
        if !new.is_empty() {
            // Synced before the response is queued.
            self.append_local(new)?;
        }
        let matched = (start + count).max(log_start);
        let hw = high_watermark.min(matched);
        if hw > self.high_watermark {
            self.high_watermark = hw;
        }
        self.send(
            from,
            Body::AppendResponse {
                success: true,
                end: matched,
            },
        )?;
        Ok(Stepped::Handled)
    }

    fn on_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        end: u64,
    ) -> Result<Stepped, StoreError> {
        let log_end = self.log.end();
        let RoleState::Leader(ls) = &mut self.role else {
            return Ok(Stepped::Ignored(Ignored::WrongRole));
        };
        ls.heard.insert(from);
        let Some(p) = ls.progress.get_mut(&from) else {
            return Ok(Stepped::Ignored(Ignored::NotVoter));
        };
        if success {
            if end > log_end {
                return Ok(Stepped::Ignored(Ignored::Invalid("matched beyond log end")));
            }
            p.match_end = p.match_end.max(end);
            p.next_end = p.next_end.max(p.match_end);
            p.state = ProgressState::Replicate;
            let more = p.next_end < log_end;
            self.maybe_commit();
            if more {
                self.send_append(from)?;
            }
        } else {
            if matches!(p.state, ProgressState::Snapshot { .. }) {
                return Ok(Stepped::Handled);
            }
            p.next_end = p
                .match_end
                .max(end.min(p.next_end.saturating_sub(1)))
                .min(log_end);
            p.state = ProgressState::Probe;
            self.send_append(from)?;
        }
        Ok(Stepped::Handled)
    }

    fn on_install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        snapshot: Snapshot,
    ) -> Result<Stepped, StoreError> {
        if snapshot.last_epoch > self.quorum.epoch {
            return Ok(Stepped::Ignored(Ignored::Invalid(
                "snapshot ahead of epoch",
            )));
        }
        if snapshot.data.len() > self.config.max_snapshot_bytes {
            return Ok(Stepped::Ignored(Ignored::Invalid("snapshot too large")));
        }
        if !self.accept_leader(now, from) {
            return Ok(Stepped::Ignored(Ignored::Invalid("second leader in epoch")));
        }
        let end = snapshot.end();
        if end <= self.high_watermark {
            // Already have all of it, committed: committed entries match
            // the leader's.
            let hw = self.high_watermark;
            self.send(from, Body::InstallSnapshotResponse { end: hw })?;
            return Ok(Stepped::Handled);
        }
        let retained = if self.log.epoch_at(snapshot.last_offset) == Some(snapshot.last_epoch) {
            self.log.slice(end, self.log.end()).to_vec()
        } else {
            Vec::new()
        };
        self.flush_quorum()?;
        self.store.save_snapshot(&snapshot, &retained)?;
        self.log = RaftLog {
            snapshot: Some(snapshot),
            entries: retained,
        };
        self.high_watermark = end;
        self.restore_pending = true;
        self.send(from, Body::InstallSnapshotResponse { end })?;
        Ok(Stepped::Handled)
    }

    fn on_snapshot_response(&mut self, from: NodeId, end: u64) -> Result<Stepped, StoreError> {
        let log_end = self.log.end();
        let RoleState::Leader(ls) = &mut self.role else {
            return Ok(Stepped::Ignored(Ignored::WrongRole));
        };
        ls.heard.insert(from);
        let Some(p) = ls.progress.get_mut(&from) else {
            return Ok(Stepped::Ignored(Ignored::NotVoter));
        };
        if end > log_end {
            return Ok(Stepped::Ignored(Ignored::Invalid("matched beyond log end")));
        }
        p.match_end = p.match_end.max(end);
        p.next_end = p.match_end;
        p.state = ProgressState::Replicate;
        self.maybe_commit();
        self.send_append(from)?;
        Ok(Stepped::Handled)
    }
}
