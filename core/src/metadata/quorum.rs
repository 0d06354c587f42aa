//! A metadata quorum member: Raft, the metadata image it applies, and the
//! controller while it leads. The simulator and the server drive this one
//! struct; neither knows how the three fit together.
//!
//! * Committed entries are decoded and applied to the image in order; a
//!   restore replaces the image with a snapshot's.
//! * The controller exists only on the leader, and only once an entry of
//!   the leader's own epoch has been applied: every entry of earlier epochs
//!   is then in the image (Raft's leader completeness), so it decides from
//!   the whole committed history. Losing leadership drops it, and every
//!   proposal still waiting fails with NOT_CONTROLLER: its outcome is
//!   unknown, as for any request whose answer was lost, and clients retry.
//! * After `snapshot_every` applied entries the image is written as a
//!   snapshot and the log before it is dropped (KIP-630).

use std::collections::BTreeMap;

use rand_core::RngCore;

use super::controller::Refusal;
use super::controller::{Controller, ControllerConfig};
use super::image::MetadataImage;
use super::records::{decode_batch, encode_batch, MetadataRecord};
use super::rpc::{self, Request, Response};
use crate::io::{Address, Envelope, Instant, NodeId};
use crate::raft::{self, Apply, EntryKind, ProposeError, Raft, RaftError, RaftStore};

/// Kafka's NOT_CONTROLLER: the request went to a node that is not (or no
/// longer) the active controller.
pub const NOT_CONTROLLER: i16 = 41;
const UNKNOWN_SERVER_ERROR: i16 = -1;
const INVALID_REQUEST: i16 = 42;
const REQUEST_TIMED_OUT: i16 = 7;

/// The first byte of every node-to-node payload says which protocol it
/// belongs to, so later protocols share the connection.
pub const CHANNEL_RAFT: u8 = 0;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuorumConfig {
    pub raft: raft::Config,
    pub controller: ControllerConfig,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
}

/// Who waits for a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Waiter<W> {
    Driver(W),
    Rpc(Box<RpcWaiter>),
    /// The node's own proposals (fencing on a tick).
    Nobody,
}

/// A controller request waiting for its records: where the answer goes,
/// and the items already decided (refused ones) beside those in the batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RpcWaiter {
    to: NodeId,
    correlation: u64,
    kind: RpcKind,
    /// Per item: `Some` if refused before proposing.
    items: Vec<Option<Refusal>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RpcKind {
    /// The broker id and the incarnation registering.
    Register(i32, u128),
    Heartbeat(i32),
    Items,
    ProducerIds(i64),
}

/// What became of a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Committed and applied at this offset.
    Committed(u64),
    /// Committed but refused by the image (it no longer fitted).
    Refused(String),
    /// Leadership was lost first; it may or may not commit.
    NotController,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuorumNode<S: RaftStore, W> {
    pub config: QuorumConfig,
    raft: Raft<S>,
    image: MetadataImage,
    controller: Option<Controller>,
    /// Proposals waiting for their entry to be applied: offset → the epoch
    /// they were proposed in, and who waits.
    pending: BTreeMap<u64, (u64, Waiter<W>)>,
    done: Vec<(W, Outcome)>,
    /// Epoch of the last applied entry.
    applied_epoch: u64,
    since_snapshot: u64,
    outbox: Vec<Envelope>,
}

impl<S: RaftStore, W> QuorumNode<S, W> {
    pub fn new<R: RngCore>(
        store: S,
        config: QuorumConfig,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, RaftError> {
        let raft = Raft::new(store, config.raft.clone(), now, rng)?;
        let mut node = QuorumNode {
            config,
            raft,
            image: MetadataImage::new(),
            controller: None,
            pending: BTreeMap::new(),
            done: Vec::new(),
            applied_epoch: 0,
            since_snapshot: 0,
            outbox: Vec::new(),
        };
        node.drain(now)?;
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.raft.node_id()
    }

    pub fn raft(&self) -> &Raft<S> {
        &self.raft
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The active controller, if this node is it.
    pub fn controller(&self) -> Option<&Controller> {
        self.controller.as_ref()
    }

    pub fn controller_mut(&mut self) -> Option<&mut Controller> {
        self.controller.as_mut()
    }

    /// The node this one believes leads the quorum.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader()
    }

    pub fn next_deadline(&self) -> Instant {
        let raft = self.raft.next_deadline();
        match self.controller.as_ref().and_then(Controller::next_deadline) {
            Some(ms) => raft.min(Instant::from_millis(ms)),
            None => raft,
        }
    }

    /// A payload from node `from` on the Raft channel.
    pub fn step<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        payload: &[u8],
        rng: &mut R,
    ) -> Result<(), RaftError> {
        match payload.split_first() {
            Some((&CHANNEL_RAFT, msg)) => {
                self.raft.step_bytes(now, from, msg, rng)?;
            }
            Some((&rpc::CHANNEL_CONTROLLER, _)) => {
                if let Ok(rpc::Frame::Request(correlation, req)) = rpc::decode(payload) {
                    self.serve(now, from, correlation, req, rng);
                }
                // Responses are for the broker side, not the quorum; and
                // bytes that do not decode are dropped, as any bad message.
            }
            _ => {}
        }
        self.drain(now)
    }

    /// Lets time pass: Raft's timers, and the controller fencing brokers
    /// whose session ran out.
    pub fn tick<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> Result<(), RaftError> {
        self.raft.tick(now, rng)?;
        self.drain(now)?;
        let fences = match self.controller.as_mut() {
            Some(c) => c.tick(now.as_millis()),
            None => Vec::new(),
        };
        if !fences.is_empty() {
            // Not proposed (leadership just went) means the next
            // controller fences them after a full session of its own.
            let _ = self.submit(now, fences, Waiter::Nobody);
        }
        Ok(())
    }

    /// Proposes a controller batch; `waiter` hears the outcome through
    /// [`QuorumNode::take_done`]. Refused at once if this node is not the
    /// active controller (the leader it knows of is returned).
    pub fn propose(
        &mut self,
        now: Instant,
        batch: Vec<MetadataRecord>,
        waiter: W,
    ) -> Result<u64, (i16, Option<NodeId>)> {
        self.submit(now, batch, Waiter::Driver(waiter))
    }

    fn submit(
        &mut self,
        now: Instant,
        batch: Vec<MetadataRecord>,
        waiter: Waiter<W>,
    ) -> Result<u64, (i16, Option<NodeId>)> {
        let Some(controller) = self.controller.as_mut() else {
            return Err((NOT_CONTROLLER, self.raft.leader()));
        };
        match self.raft.propose(encode_batch(&batch)) {
            Ok(offset) => {
                controller.proposed(offset as i64, &batch);
                self.pending.insert(offset, (self.raft.epoch(), waiter));
                // A single voter commits at once.
                if self.drain(now).is_err() {
                    return Err((NOT_CONTROLLER, None));
                }
                Ok(offset)
            }
            Err(ProposeError::NotLeader { leader }) => Err((NOT_CONTROLLER, leader)),
            Err(_) => Err((NOT_CONTROLLER, None)),
        }
    }

    /// Outcomes of proposals since the last call.
    pub fn take_done(&mut self) -> Vec<(W, Outcome)> {
        std::mem::take(&mut self.done)
    }

    /// Messages for other nodes since the last call.
    pub fn take_messages(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.outbox)
    }

    fn settle(&mut self, w: Waiter<W>, outcome: Outcome) {
        match w {
            Waiter::Driver(w) => self.done.push((w, outcome)),
            Waiter::Nobody => {}
            Waiter::Rpc(rw) => {
                let resp = self.rpc_response(&rw, &outcome);
                self.reply(rw.to, rw.correlation, &resp);
            }
        }
    }

    fn rpc_response(&self, rw: &RpcWaiter, outcome: &Outcome) -> Response {
        let status = match outcome {
            Outcome::Committed(_) => (0, String::new()),
            Outcome::Refused(m) => (UNKNOWN_SERVER_ERROR, m.clone()),
            Outcome::NotController => {
                return Response::NotController(self.raft.leader());
            }
        };
        let failed = status.0 != 0;
        match rw.kind {
            RpcKind::Register(id, incarnation) => {
                // Only this process's own registration counts: a committed
                // one of an earlier incarnation is not it.
                let epoch = self
                    .image
                    .brokers
                    .get(&id)
                    .filter(|b| b.incarnation == incarnation)
                    .map_or(-1, |b| b.epoch);
                if failed || epoch == -1 {
                    // A retry of a registration still on its way to commit.
                    let status = if failed {
                        status
                    } else {
                        (
                            REQUEST_TIMED_OUT,
                            "the registration is not committed yet".into(),
                        )
                    };
                    return Response::Register { status, epoch: -1 };
                }
                Response::Register { status, epoch }
            }
            RpcKind::Heartbeat(id) => Response::Heartbeat {
                fenced: self.image.brokers.get(&id).is_none_or(|b| b.fenced),
                status,
            },
            RpcKind::Items => Response::Items(
                rw.items
                    .iter()
                    .map(|i| i.clone().unwrap_or_else(|| status.clone()))
                    .collect(),
            ),
            RpcKind::ProducerIds(first) => Response::ProducerIds {
                first: if failed { -1 } else { first },
                count: if failed {
                    0
                } else {
                    self.config.controller.producer_id_block
                },
                status,
            },
        }
    }

    fn reply(&mut self, to: NodeId, correlation: u64, resp: &Response) {
        self.outbox.push(Envelope {
            from: Address::Node(self.raft.node_id()),
            to: Address::Node(to),
            payload: rpc::encode_response(correlation, resp),
        });
    }

    /// A controller request from node `from`: decided on the controller's
    /// image, proposed, and answered once applied (or at once when there is
    /// nothing to write or it is refused).
    fn serve<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        correlation: u64,
        req: Request,
        rng: &mut R,
    ) {
        if let Request::FetchMetadata { after } = req {
            let resp = self.metadata_since(after);
            return self.reply(from, correlation, &resp);
        }
        let Some(c) = self.controller.as_mut() else {
            let leader = self.raft.leader();
            return self.reply(from, correlation, &Response::NotController(leader));
        };
        let now_ms = now.as_millis();
        let refused = |e: Refusal| Some((e.0, e.1));
        let (batch, kind, items): (Vec<MetadataRecord>, RpcKind, Vec<Option<Refusal>>) = match &req
        {
            Request::Register(r) => match c.register(r, now_ms) {
                Ok(b) => (b, RpcKind::Register(r.id, r.incarnation), vec![]),
                Err(e) => return self.reply(from, correlation, &Response::failed(&req, e)),
            },
            Request::Heartbeat(h) => match c.heartbeat(h, now_ms) {
                Ok((b, _)) => (b, RpcKind::Heartbeat(h.id), vec![]),
                Err(e) => return self.reply(from, correlation, &Response::failed(&req, e)),
            },
            Request::CreateTopics(ts) => {
                let mut batch = Vec::new();
                let mut items = Vec::new();
                let mut seen = std::collections::BTreeSet::new();
                for t in ts {
                    if !seen.insert(t.name.as_str()) {
                        items.push(Some((
                            INVALID_REQUEST,
                            format!("Topic {} is listed more than once.", t.name),
                        )));
                        continue;
                    }
                    match c.create_topic(t, rng) {
                        Ok(b) => {
                            batch.extend(b);
                            items.push(None);
                        }
                        Err(e) => items.push(refused(e)),
                    }
                }
                (batch, RpcKind::Items, items)
            }
            Request::DeleteTopics(names) => {
                let mut batch = Vec::new();
                let mut items = Vec::new();
                let mut seen = std::collections::BTreeSet::new();
                for n in names {
                    match c.delete_topic(n) {
                        Ok(b) if seen.insert(n.as_str()) => {
                            batch.extend(b);
                            items.push(None);
                        }
                        Ok(_) => items.push(Some((
                            INVALID_REQUEST,
                            format!("Topic {n} is listed more than once."),
                        ))),
                        Err(e) => items.push(refused(e)),
                    }
                }
                (batch, RpcKind::Items, items)
            }
            Request::CreatePartitions {
                topic,
                count,
                assignments,
            } => match c.create_partitions(topic, *count, assignments.as_deref(), rng) {
                Ok(b) => (b, RpcKind::Items, vec![None]),
                Err(e) => (vec![], RpcKind::Items, vec![refused(e)]),
            },
            Request::AlterConfigs { resource, changes } => {
                match c.alter_configs(resource, changes) {
                    Ok(b) => (b, RpcKind::Items, vec![None]),
                    Err(e) => (vec![], RpcKind::Items, vec![refused(e)]),
                }
            }
            Request::AllocateProducerIds { broker } => {
                let (b, first) = c.allocate_producer_ids(*broker);
                (b, RpcKind::ProducerIds(first), vec![])
            }
            Request::FetchMetadata { after } => {
                let resp = self.metadata_since(*after);
                return self.reply(from, correlation, &resp);
            }
        };
        let rw = RpcWaiter {
            to: from,
            correlation,
            kind,
            items,
        };
        if batch.is_empty() {
            // Nothing to write: decided on what the controller has.
            let resp = self.rpc_response(&rw, &Outcome::Committed(0));
            return self.reply(from, correlation, &resp);
        }
        if let Err((code, _)) = self.submit(now, batch, Waiter::Rpc(Box::new(rw))) {
            let resp = Response::failed(&req, (code, "not the controller".into()));
            self.reply(from, correlation, &resp);
        }
    }

    /// What a following broker at offset `after` needs next: the applied
    /// (so committed) entries after it, a bounded run at a time, or this
    /// node's image when they were compacted away. A follower ahead of
    /// this node (it talked to a voter further along) gets nothing, so its
    /// image never goes back.
    fn metadata_since(&self, after: i64) -> Response {
        const MAX_ENTRIES: usize = 500;
        const MAX_BYTES: usize = 1 << 20;
        let leader = self.raft.leader();
        let applied = self.image.offset;
        let first = after.saturating_add(1);
        if first <= applied && first < self.raft.log_start_offset() as i64 {
            return Response::Metadata {
                leader,
                update: rpc::MetadataUpdate::Snapshot(self.image.encode_snapshot()),
            };
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut at = first.max(0);
        while at <= applied && entries.len() < MAX_ENTRIES && bytes < MAX_BYTES {
            let Some(e) = self.raft.entry(at as u64) else {
                break;
            };
            let batch = match e.kind {
                EntryKind::Data => {
                    bytes += e.data.len();
                    Some(e.data.clone())
                }
                EntryKind::LeaderChange => None,
            };
            entries.push((at, batch));
            at += 1;
        }
        Response::Metadata {
            leader,
            update: rpc::MetadataUpdate::Entries(entries),
        }
    }

    /// Applies what Raft committed, queues its messages, starts or stops
    /// the controller, and snapshots when due.
    fn drain(&mut self, now: Instant) -> Result<(), RaftError> {
        let ready = self.raft.take_ready();
        let me = self.raft.node_id();
        for m in ready.messages {
            let mut payload = vec![CHANNEL_RAFT];
            payload.extend(m.msg.encode());
            self.outbox.push(Envelope {
                from: Address::Node(me),
                to: Address::Node(m.to),
                payload,
            });
        }
        for a in ready.apply {
            match a {
                Apply::Restore(s) => {
                    // A snapshot this node wrote or was sent: it decodes,
                    // or the store is corrupt.
                    self.image = MetadataImage::decode_snapshot(&s.data).map_err(|e| {
                        RaftError::Store(raft::StoreError::Corrupt(format!(
                            "metadata snapshot at {}: {e}",
                            s.last_offset
                        )))
                    })?;
                    self.applied_epoch = s.last_epoch;
                    self.since_snapshot = 0;
                    // Anything waiting at or below it is settled elsewhere.
                    let settled: Vec<u64> = self
                        .pending
                        .range(..=s.last_offset)
                        .map(|(o, _)| *o)
                        .collect();
                    for o in settled {
                        if let Some((_, w)) = self.pending.remove(&o) {
                            self.settle(w, Outcome::NotController);
                        }
                    }
                }
                Apply::Entry(e) => {
                    let offset = e.offset as i64;
                    let result = match e.kind {
                        EntryKind::LeaderChange => {
                            self.image.skip(offset);
                            Ok(())
                        }
                        EntryKind::Data => match decode_batch(&e.data) {
                            Ok(batch) => {
                                let r = self.image.apply(offset, &batch);
                                if r.is_err() {
                                    self.image.skip(offset);
                                }
                                r
                            }
                            Err(err) => {
                                self.image.skip(offset);
                                Err(format!("undecodable batch: {err}"))
                            }
                        },
                    };
                    self.applied_epoch = e.epoch;
                    self.since_snapshot += 1;
                    if let Some((epoch, w)) = self.pending.remove(&e.offset) {
                        let outcome = if epoch != e.epoch {
                            Outcome::NotController
                        } else {
                            match result {
                                Ok(()) => Outcome::Committed(e.offset),
                                Err(m) => Outcome::Refused(m),
                            }
                        };
                        self.settle(w, outcome);
                    }
                }
            }
        }
        self.follow_leadership(now);
        if self.since_snapshot >= self.config.snapshot_every.max(1) && self.image.offset >= 0 {
            let at = self.image.offset as u64;
            if self.raft.compact(at, self.image.encode_snapshot()).is_ok() {
                self.since_snapshot = 0;
            }
        }
        Ok(())
    }

    fn follow_leadership(&mut self, now: Instant) {
        let leading = self.raft.is_leader();
        if !leading {
            if self.controller.take().is_some() || !self.pending.is_empty() {
                for (_, (_, w)) in std::mem::take(&mut self.pending) {
                    self.settle(w, Outcome::NotController);
                }
            }
            return;
        }
        if self.controller.is_none() && self.applied_epoch == self.raft.epoch() {
            self.controller = Some(Controller::new(
                self.config.controller.clone(),
                self.image.clone(),
                now.as_millis(),
            ));
        }
    }
}
