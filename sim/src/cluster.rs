//! The cluster workload: 3 or 5 combined broker and controller nodes, each
//! a metadata quorum member (`odradek_core::metadata::quorum::QuorumNode`:
//! Raft, the metadata image it applies, the controller while it leads) on
//! its own simulated disk (`DiskStore<SimDisk>`), talking over the
//! simulated network, in one thread, seeded.
//!
//! * **Brokers**: each node runs a broker that registers with the active
//!   controller (a new incarnation at every process start) and heartbeats
//!   with its node's own image offset, so the controller unfences it once
//!   it has caught up, and fences it when its session runs out; now and
//!   then it asks for a block of producer ids. It speaks the core's
//!   controller channel (`metadata::rpc`, node-to-node channel 1) over the
//!   simulated network, to the node it believes leads (NOT_CONTROLLER
//!   names another), and the quorum node that receives a request serves it
//!   itself: decides on the controller's image, proposes, answers once
//!   applied.
//! * **Clients**: one to three admins create and delete topics from a
//!   small pool of names (so creations collide and deletions miss), with
//!   1–4 partitions and a replication factor of 1–3, through whichever
//!   running broker they reach, which forwards the request on the
//!   controller channel (the client-to-broker hop is not simulated).
//! * **Faults** (safety phase, rates drawn per seed): partitions (halves,
//!   the leader isolated, a bridge, one way), message loss, duplication,
//!   reordering and delay; crashes (power loss: the node's disk drops its
//!   unsynced writes, or tears them), kills, restarts, a power cut of the
//!   whole cluster; process pauses (nothing read, sent or timed out until
//!   the node resumes); clocks that run fast or slow per node and start
//!   from a new origin at every process start, and wall-clock jumps; disk
//!   faults: ENOSPC and failed syncs (the Raft node is poisoned and is
//!   reopened from disk, as after a crash), transient read flips and latent
//!   rot (the store must detect them; a node whose store cannot be opened
//!   again because the disk rotted it stays down, excused from liveness
//!   but not from safety). Misdirected writes are off: see
//!   `docs/ARCHITECTURE.md`.
//!
//! Invariants, checked after every step of every node and named as the
//! checker reports them:
//! * `two-leaders`: two nodes were leader in the same epoch;
//! * `log-mismatch`: two logs hold an entry at the same offset and epoch
//!   with different contents, or different entries before it (Raft's log
//!   matching);
//! * `leader-incomplete`: a leader lacks an entry committed in an earlier
//!   epoch (leader completeness);
//! * `state-divergence`: two nodes' images at the same offset differ
//!   (state-machine safety: every node applies the same prefix);
//! * `committed-entry-changed`: an offset known committed holds an entry
//!   of another epoch on some node (committed entries never lost or
//!   reordered), or a node that recovered lacks one;
//! * `lost-on-restart`: a node came back from a crash or kill without
//!   state it had synced (its log, snapshot, epoch or vote);
//! * `vote-changed`, `epoch-regressed`: a node voted for two candidates
//!   in one epoch, or its epoch went back, across restarts too;
//! * `hw-regressed`, `metadata-regressed`: within one process life a
//!   node's high watermark, image offset, a partition's leader or
//!   partition epoch, or a broker's epoch went back (a restarted node
//!   re-applies from its snapshot);
//! * `lost-write`: an acknowledged registration whose epoch is not the
//!   offset of a committed entry registering that very process, or an
//!   acknowledged topic creation no committed entry made;
//!   `duplicate-producer-ids`: two acknowledged producer id blocks overlap;
//! * `spurious-corruption`: a store refused to open as corrupt with no
//!   damage on its disk to explain it;
//! * `liveness`: once faults stop, within 20 s of simulated time, a leader
//!   is not elected, the images of the nodes that can run do not converge
//!   to the same offset, or a topic creation does not commit and reach
//!   every one of them.

use crate::disk::SimDisk;
use crate::net::SimNetwork;
use crate::rng::{self, Stream};
use crate::trace::Trace;
use crate::{FaultKind, RunOptions, RunReport, Workload};
use odradek_core::io::{Address, Envelope, Instant, NodeId, Random, TimerQueue};
use odradek_core::metadata::controller::{code, Heartbeat, NewTopic, Registration};
use odradek_core::metadata::quorum::{QuorumConfig, QuorumNode};
use odradek_core::metadata::rpc::{self, Frame, Request, Response, CHANNEL_CONTROLLER};
use odradek_core::metadata::{
    decode_batch, ControllerConfig, Endpoint, MetadataImage, MetadataRecord,
};
use odradek_core::raft::{self, DiskStore, EntryKind, RaftError, Role, StoreError};
use odradek_nemesis::{ClusterSwarm, Fault, NetFaults, Schedule};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

const MS: u64 = 1_000_000;
const RAFT_DIR: &str = "raft";
const CLUSTER_ID: &str = "sim-cluster";
/// How long after faults stop the cluster has to elect, converge and
/// commit a topic creation.
const LIVENESS_MS: u64 = 20_000;
/// How often the liveness phase looks for convergence.
const CHECK_EVERY_MS: u64 = 20;
/// A request not answered in this long is given up and sent again.
const BROKER_TIMEOUT_MS: u64 = 1_000;
const ADMIN_TIMEOUT_MS: u64 = 2_000;
/// A run with this many events is not converging but spinning (a typical
/// run has a few thousand).
const MAX_EVENTS: u64 = 1_000_000;
/// Simulated wall clock at time zero: 2026-01-01T00:00:00Z.
const EPOCH_WALL_MS: i64 = 1_767_225_600_000;

type Quorum = QuorumNode<DiskStore<SimDisk>, ()>;

/// Who waits for the answer to a controller request sent from `node` in
/// its process life `life` (an answer reaching a later life is dropped, as
/// the connection it was for died with the process).
#[derive(Clone, Debug)]
struct Pending {
    node: NodeId,
    life: u64,
    who: Who,
}

#[derive(Clone, Debug)]
enum Who {
    Broker,
    /// An admin's request, forwarded by the broker on `node`.
    Admin(usize, AdminOp),
}

/// Every field shows in the trace.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum AdminOp {
    Create(String),
    Delete(String),
    /// The liveness phase's topic creation.
    Final(String),
}

/// A short form of a controller request, for the trace.
fn describe_request(req: &Request) -> String {
    match req {
        Request::Register(r) => format!("Register(b{} inc {:08x})", r.id, r.incarnation as u32),
        Request::Heartbeat(h) => format!(
            "Heartbeat(b{} epoch {} at {}{})",
            h.id,
            h.epoch,
            h.metadata_offset,
            if h.want_fence { " want fence" } else { "" }
        ),
        Request::CreateTopics(ts) => {
            let names: Vec<String> = ts
                .iter()
                .map(|t| format!("{}[{}x{}]", t.name, t.partitions, t.replication_factor))
                .collect();
            format!("CreateTopics({})", names.join(", "))
        }
        Request::DeleteTopics(ns) => format!("DeleteTopics({})", ns.join(", ")),
        Request::AllocateProducerIds { broker } => format!("AllocateProducerIds(b{broker})"),
        other => format!("{other:?}"),
    }
}

// ---- nodes ------------------------------------------------------------------

/// A node's monotonic clock: `local = base_local + (global - base_global) ×
/// (1 + ppm/10⁶)`, rebased when the rate changes, and started from a new
/// origin by every process start.
#[derive(Clone, Copy, Debug)]
struct NodeClock {
    base_global: u64,
    base_local: u64,
    ppm: i64,
}

impl NodeClock {
    fn local(&self, global: u64) -> u64 {
        let d = global.saturating_sub(self.base_global) as i128;
        self.base_local + (d * (1_000_000 + self.ppm as i128) / 1_000_000) as u64
    }

    /// The first global time at which the local clock reads `local`.
    fn global(&self, local: u64) -> u64 {
        if local <= self.base_local {
            return self.base_global;
        }
        let d = (local - self.base_local) as i128;
        let rate = 1_000_000 + self.ppm as i128;
        self.base_global + ((d * 1_000_000 + rate - 1) / rate) as u64
    }

    fn set_rate(&mut self, now: u64, ppm: i64) {
        self.base_local = self.local(now);
        self.base_global = now;
        self.ppm = ppm;
    }
}

/// A client that creates and deletes topics, one request at a time,
/// through any broker (which forwards it to the controller).
#[derive(Default)]
struct Admin {
    /// Correlation id and send time of the request in flight.
    outstanding: Option<(u64, u64)>,
}

#[derive(Default)]
struct Broker {
    incarnation: u128,
    /// The broker epoch of its registration, once registered.
    epoch: Option<i64>,
    fenced: bool,
    outstanding: Option<(u64, u64)>,
}

/// What the checker saw of one node in its current process life.
#[derive(Default)]
struct Seen {
    hw: u64,
    image_offset: i64,
    image_hashed_at: Option<i64>,
    leader_epochs: BTreeMap<(u128, i32), (i32, i32)>,
    broker_epochs: BTreeMap<i32, i64>,
    /// Offset → epoch of the log entries already checked against the
    /// others' (unchanged entries need no second look).
    checked: BTreeMap<u64, u64>,
    /// The epoch in which this node was last checked as a new leader.
    led: Option<u64>,
    snapshot: Option<(u64, u64)>,
    status: String,
}

/// A node's store as the node saw it after its last successful call.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoreView {
    epoch: u64,
    vote: Option<NodeId>,
    snapshot: Option<(u64, u64)>,
    entries: Vec<(u64, u64)>,
}

impl StoreView {
    fn of(q: &Quorum) -> StoreView {
        let r = q.raft();
        StoreView {
            epoch: r.epoch(),
            vote: r.voted_for(),
            snapshot: r.snapshot().map(|s| (s.last_offset, s.last_epoch)),
            entries: r.entries().iter().map(|e| (e.offset, e.epoch)).collect(),
        }
    }

    fn describe(&self) -> String {
        let range = match (self.entries.first(), self.entries.last()) {
            (Some(a), Some(b)) => format!("{}..={} (last e{})", a.0, b.0, b.1),
            _ => "empty".into(),
        };
        format!(
            "epoch {} vote {:?} snapshot {:?} log {range}",
            self.epoch, self.vote, self.snapshot
        )
    }
}

struct SimNode {
    id: NodeId,
    disk: SimDisk,
    q: Option<Quorum>,
    rng: ChaCha8Rng,
    /// Bumped at every process start; events of an earlier life are stale.
    life: u64,
    /// The store cannot be opened again and the disk damaged it: the node
    /// stays down, excused from liveness.
    beyond_repair: bool,
    open_failures: u32,
    restart_queued: bool,
    paused_until: Option<u64>,
    inbox: VecDeque<Envelope>,
    busy_until: u64,
    tick_at: Option<u64>,
    clock: NodeClock,
    wall_offset_ms: i64,
    broker: Broker,
    /// The controller this node's broker last heard of (a NOT_CONTROLLER
    /// answer names it).
    hint: Option<NodeId>,
    seen: Seen,
    /// The highest epoch, and the vote in it, the node had made durable.
    promised_epoch: u64,
    promised_vote: Option<(u64, NodeId)>,
    /// The store as of the node's last successful call before it stopped;
    /// `None` if its last call failed (what reached the disk is unknown).
    synced: Option<StoreView>,
}

impl SimNode {
    fn up(&self) -> bool {
        self.q.is_some()
    }

    fn runnable(&self) -> bool {
        self.q.is_some() && self.paused_until.is_none()
    }
}

// ---- the checker's global state ---------------------------------------------

struct KnownEntry {
    prev_epoch: u64,
    kind: EntryKind,
    data: Vec<u8>,
}

struct Committed {
    epoch: u64,
    /// The epoch of the leader whose commit was first seen: leaders of
    /// later epochs must hold the entry.
    by: u64,
}

// ---- the run ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    /// Faults off: waiting for a leader and converged images.
    Converge,
    /// The final topic creation is on its way.
    Create,
    /// It committed: waiting for every node to apply it.
    Apply,
    Done,
}

#[derive(Clone, Debug)]
enum Ev {
    Fault(usize),
    Restart(NodeId),
    Resume(NodeId, u64),
    BrokerTick(NodeId, u64),
    /// Power loss of a node in a given life, and its restart after so many
    /// milliseconds (a new leader's, see `Fault::CrashNewLeader`).
    CrashNode(NodeId, u64, u64),
    AdminTick(usize),
    EndSafety,
    Check,
    Deadline,
}

struct Params {
    nodes: usize,
    election_min_ms: u64,
    max_batch_entries: usize,
    snapshot_every: u64,
    heartbeat_ms: u64,
    session_ms: u64,
    admin_gap_ms: u64,
    admins: usize,
    pool: u64,
    racks: u64,
    safety_ms: u64,
}

struct Run {
    seed: u64,
    trace: Trace,
    now: u64,
    p: Params,
    swarm: ClusterSwarm,
    schedule: Schedule,
    rng: ChaCha8Rng,
    net: SimNetwork,
    nodes: BTreeMap<NodeId, SimNode>,
    queue: TimerQueue<Ev>,
    phase: Phase,
    violation: Option<String>,
    // The controller channel.
    next_correlation: u64,
    pending: BTreeMap<u64, Pending>,
    admins: Vec<Admin>,
    final_attempt: u64,
    /// Crashes armed for the next leaders elected: (within ms, down ms).
    new_leader_crashes: VecDeque<(u64, u64)>,
    // checker
    leaders: BTreeMap<u64, NodeId>,
    known: BTreeMap<(u64, u64), KnownEntry>,
    committed: BTreeMap<u64, Committed>,
    images: BTreeMap<i64, u64>,
    producer_blocks: BTreeMap<i64, i64>,
    /// Names of the topics committed entries created.
    committed_topics: BTreeSet<String>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    steps: u64,
    ticks: u64,
    crashes: u64,
    kills: u64,
    starts: u64,
    pauses: u64,
    elections: u64,
    creates: u64,
    deletes: u64,
    acked: u64,
}

/// FNV-1a as a `Hasher`, for image fingerprints that are the same in every
/// run (std's hashers promise nothing across releases).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn image_hash(image: &MetadataImage) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    image.hash(&mut h);
    h.finish()
}

/// The kind of a Raft message from its header, for the trace.
fn raft_kind(payload: &[u8]) -> (&'static str, u64) {
    let kind = match payload.get(2) {
        Some(1) => "PreVote",
        Some(2) => "PreVoteResponse",
        Some(3) => "Vote",
        Some(4) => "VoteResponse",
        Some(5) => "Append",
        Some(6) => "AppendResponse",
        Some(7) => "InstallSnapshot",
        Some(8) => "InstallSnapshotResponse",
        _ => "?",
    };
    let epoch = payload
        .get(3..11)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
    (kind, epoch)
}

/// The seed's swarm, less the kinds the run's overrides turn off.
fn draw_swarm(opts: &RunOptions, rng: &mut ChaCha8Rng, ids: &[NodeId]) -> ClusterSwarm {
    let off = |k: FaultKind| opts.overrides.disables(k);
    let mut swarm = ClusterSwarm::draw(rng, ids);
    // A write the disk puts elsewhere can leave a hole that reads as a
    // torn tail, which no log can tell from a crash: see ARCHITECTURE.md.
    swarm.node.disk.misdirect = 0.0;
    let disk = &mut swarm.node.disk;
    for (k, rate) in [
        (FaultKind::ReadFlip, &mut disk.read_flip),
        (FaultKind::LatentRot, &mut disk.latent_rot),
        (FaultKind::NoSpace, &mut disk.no_space),
        (FaultKind::SyncError, &mut disk.sync_error),
    ] {
        if off(k) {
            *rate = 0.0;
        }
    }
    for (k, every) in [
        (FaultKind::Crash, &mut swarm.node.crash_every_ms),
        (FaultKind::Crash, &mut swarm.crash_new_leader_every_ms),
        (FaultKind::Kill, &mut swarm.node.kill_every_ms),
        (FaultKind::ClockJump, &mut swarm.node.clock_jump_every_ms),
        (FaultKind::Partition, &mut swarm.partition_every_ms),
        (FaultKind::Pause, &mut swarm.pause_every_ms),
    ] {
        if off(k) {
            *every = None;
        }
    }
    if off(FaultKind::ClockSkew) {
        swarm.clock_skew_ppm = None;
    }
    if off(FaultKind::NetLoss) {
        swarm.net.loss = 0.0;
    }
    if off(FaultKind::NetDup) {
        swarm.net.duplicate = 0.0;
    }
    swarm
}

/// Runs the cluster workload for one seed.
pub fn run(opts: &RunOptions) -> RunReport {
    let seed = opts.seed;
    let mut swarm_rng = rng::stream(seed, Stream::Swarm);
    let drawn_nodes = if swarm_rng.chance(0.5) { 3 } else { 5 };
    let n = opts.nodes.unwrap_or(drawn_nodes).clamp(1, 9);
    let ids: Vec<NodeId> = (1..=n as NodeId).collect();
    let swarm = draw_swarm(opts, &mut swarm_rng, &ids);
    let election_min_ms = swarm_rng.between(100, 300);
    let heartbeat_ms = swarm_rng.between(50, 500);
    let drawn_safety_ms = swarm_rng.between(5_000, 20_000);
    let admins = swarm_rng.between(1, 3);
    let p = Params {
        nodes: n,
        election_min_ms,
        // Small batches make a new leader's appends arrive one entry at a
        // time, which is where commit-rule bugs show.
        max_batch_entries: [1, 1, 2, 3, 8, 64][swarm_rng.below(6) as usize],
        snapshot_every: [2, 3, 5, 10, 20, 100, 1000][swarm_rng.below(7) as usize],
        heartbeat_ms,
        session_ms: heartbeat_ms * swarm_rng.between(3, 10),
        admin_gap_ms: swarm_rng.between(5, 200),
        admins: admins as usize,
        pool: swarm_rng.between(2, 8),
        racks: swarm_rng.between(0, 3),
        safety_ms: opts
            .overrides
            .safety_ms
            .map_or(drawn_safety_ms, |ms| ms.min(drawn_safety_ms)),
    };
    let mut schedule_rng = rng::stream(seed, Stream::Schedule);
    let schedule = Schedule::generate_cluster(&mut schedule_rng, &swarm, &ids, p.safety_ms);
    let net = SimNetwork::new(rng::stream(seed, Stream::Network), swarm.net);
    let mut nodes = BTreeMap::new();
    for &id in &ids {
        let mut faults = swarm.node.disk;
        if !swarm.rot_nodes.contains(&id) {
            faults.latent_rot = 0.0;
        }
        nodes.insert(
            id,
            SimNode {
                id,
                disk: SimDisk::new(rng::node_stream(seed, Stream::Disk, id), faults),
                q: None,
                rng: rng::node_stream(seed, Stream::Node, id),
                life: 0,
                beyond_repair: false,
                open_failures: 0,
                restart_queued: false,
                paused_until: None,
                inbox: VecDeque::new(),
                busy_until: 0,
                tick_at: None,
                clock: NodeClock {
                    base_global: 0,
                    base_local: 0,
                    ppm: 0,
                },
                wall_offset_ms: 0,
                broker: Broker::default(),
                hint: None,
                seen: Seen::default(),
                promised_epoch: 0,
                promised_vote: None,
                synced: None,
            },
        );
    }
    let mut run = Run {
        seed,
        trace: Trace::new(opts.trace),
        now: 0,
        p,
        swarm,
        schedule,
        rng: rng::stream(seed, Stream::Workload),
        net,
        nodes,
        queue: TimerQueue::new(),
        phase: Phase::Safety,
        violation: None,
        next_correlation: 0,
        pending: BTreeMap::new(),
        admins: (0..admins).map(|_| Admin::default()).collect(),
        final_attempt: 0,
        new_leader_crashes: VecDeque::new(),
        leaders: BTreeMap::new(),
        known: BTreeMap::new(),
        committed: BTreeMap::new(),
        images: BTreeMap::new(),
        producer_blocks: BTreeMap::new(),
        committed_topics: BTreeSet::new(),
        stats: Stats::default(),
    };
    run.main();
    let violation = run.violation.clone();
    RunReport {
        seed,
        workload: Workload::Cluster,
        ok: violation.is_none(),
        trace_hash: run.trace.hash(),
        events: run.trace.events(),
        simulated_ms: run.now / MS,
        violation,
        trace: run.trace.into_lines(),
    }
}

macro_rules! trace {
    ($run:expr, $($arg:tt)*) => {
        $run.trace.record($run.now, format_args!($($arg)*))
    };
}

impl Run {
    fn at(&mut self, at: u64, ev: Ev) {
        self.queue.schedule(Instant(at), ev);
    }

    fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("a node of the cluster")
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn quorum_size(&self) -> usize {
        self.p.nodes / 2 + 1
    }

    fn faults_on(&self) -> bool {
        self.phase == Phase::Safety
    }

    fn fail(&mut self, kind: &str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        let v = format!("{kind}: {detail}");
        for id in self.ids() {
            let damage = self.node(id).disk.damage();
            for d in damage {
                trace!(
                    self,
                    "n{id} disk damage: {} at {}.{:06}ms in {}",
                    d.kind,
                    d.at_ns / MS,
                    d.at_ns % MS,
                    d.path
                );
            }
        }
        trace!(self, "VIOLATION {v}");
        self.violation = Some(v);
    }

    fn main(&mut self) {
        trace!(
            self,
            "seed {} nodes={} election_min_ms={} max_batch_entries={} snapshot_every={} broker_heartbeat_ms={} session_ms={} admins={} admin_gap_ms={} topics={} racks={} safety_ms={} swarm[{}]",
            self.seed,
            self.p.nodes,
            self.p.election_min_ms,
            self.p.max_batch_entries,
            self.p.snapshot_every,
            self.p.heartbeat_ms,
            self.p.session_ms,
            self.p.admins,
            self.p.admin_gap_ms,
            self.p.pool,
            self.p.racks,
            self.p.safety_ms,
            self.swarm
        );
        for i in 0..self.schedule.faults.len() {
            let at = self.schedule.faults[i].0 * MS;
            self.at(at, Ev::Fault(i));
        }
        for id in self.ids() {
            self.at(0, Ev::Restart(id));
        }
        for c in 0..self.p.admins {
            self.at(MS, Ev::AdminTick(c));
        }
        self.at(self.p.safety_ms * MS, Ev::EndSafety);
        let mut same_time = 0u64;
        loop {
            if self.violation.is_some() || self.phase == Phase::Done {
                break;
            }
            // The next thing to happen: a delivery, a node's work (its
            // inbox, then its timers, once its disk is free), or an event.
            let t_net = self.net.next_delivery().map(|i| i.0);
            let mut t_node: Option<(u64, NodeId)> = None;
            for n in self.nodes.values() {
                if !n.runnable() {
                    continue;
                }
                let want = if !n.inbox.is_empty() {
                    Some(self.now)
                } else {
                    n.tick_at
                };
                if let Some(t) = want {
                    let t = t.max(n.busy_until);
                    if t_node.is_none_or(|(best, _)| t < best) {
                        t_node = Some((t, n.id));
                    }
                }
            }
            let t_queue = self.queue.next_deadline().map(|i| i.0);
            let best = [t_net, t_node.map(|(t, _)| t), t_queue]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = best else {
                trace!(self, "nothing left to happen");
                break;
            };
            if self.trace.events() > MAX_EVENTS {
                let what = self.describe_cluster();
                self.fail(
                    "liveness",
                    format!("more than {MAX_EVENTS} events: a message storm? {what}"),
                );
                break;
            }
            if t <= self.now {
                same_time += 1;
                if same_time > 1_000_000 {
                    let what = self.describe_cluster();
                    self.fail(
                        "stuck",
                        format!("simulated time stopped at {} ns: {what}", self.now),
                    );
                    break;
                }
            } else {
                same_time = 0;
            }
            self.now = self.now.max(t);
            if t_net == Some(t) {
                self.deliver();
            } else if t_queue == Some(t) {
                let (_, ev) = self.queue.pop_next().expect("due");
                self.on_event(ev);
            } else if let Some((_, id)) = t_node {
                self.node_work(id);
            }
        }
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Fault(i) => {
                if self.faults_on() {
                    let fault = self.schedule.faults[i].1.clone();
                    self.apply_fault(fault);
                }
            }
            Ev::Restart(id) => {
                self.node_mut(id).restart_queued = false;
                self.open(id);
            }
            Ev::Resume(id, life) => {
                let n = self.node_mut(id);
                if n.life == life && n.paused_until.is_some() {
                    n.paused_until = None;
                    let waiting = n.inbox.len();
                    trace!(self, "n{id} resumes ({waiting} messages waiting)");
                }
            }
            Ev::BrokerTick(id, life) => self.broker_tick(id, life),
            Ev::CrashNode(id, life, down_ms) => {
                let n = self.node(id);
                // Armed in the safety phase; the liveness phase has no faults.
                if self.faults_on() && n.life == life && n.up() {
                    self.stats.crashes += 1;
                    self.stop(id, true, "power loss of a new leader");
                    self.node_mut(id).restart_queued = true;
                    self.at(self.now + down_ms * MS, Ev::Restart(id));
                }
            }
            Ev::AdminTick(c) => self.admin_tick(c),
            Ev::EndSafety => self.end_safety(),
            Ev::Check => self.liveness_check(),
            Ev::Deadline => {
                if self.phase != Phase::Done {
                    let why = self.describe_cluster();
                    let stage = match self.phase {
                        Phase::Converge => "no leader with converged images",
                        Phase::Create => "the final topic creation never committed",
                        Phase::Apply => "the final topic creation did not reach every node",
                        _ => "the cluster did not settle",
                    };
                    self.fail(
                        "liveness",
                        format!("{stage} within {LIVENESS_MS} ms of faults stopping: {why}"),
                    );
                }
            }
        }
    }

    fn describe_cluster(&self) -> String {
        let mut parts = Vec::new();
        for n in self.nodes.values() {
            let s = match &n.q {
                None if n.beyond_repair => "beyond repair".to_string(),
                None => "down".to_string(),
                Some(q) => {
                    let r = q.raft();
                    format!(
                        "{:?} e{} leader {:?} hw {} end {} image {}{}{}",
                        r.role(),
                        r.epoch(),
                        r.leader(),
                        r.high_watermark(),
                        r.log_end_offset(),
                        q.image().offset,
                        if q.controller().is_some() {
                            " controller"
                        } else {
                            ""
                        },
                        if n.paused_until.is_some() {
                            " paused"
                        } else {
                            ""
                        }
                    )
                }
            };
            parts.push(format!("n{} {s}", n.id));
        }
        parts.join("; ")
    }

    // ---- processes ---------------------------------------------------------

    fn config(&self, id: NodeId) -> QuorumConfig {
        let mut raft = raft::Config::new(id, self.nodes.keys().copied());
        raft.election_timeout_min_ms = self.p.election_min_ms;
        raft.election_timeout_max_ms = self.p.election_min_ms * 2;
        raft.heartbeat_ms = (self.p.election_min_ms / 3).max(1);
        raft.max_batch_entries = self.p.max_batch_entries;
        QuorumConfig {
            raft,
            controller: ControllerConfig {
                cluster_id: CLUSTER_ID.into(),
                broker_session_timeout_ms: self.p.session_ms,
                default_partitions: 1,
                default_replication_factor: 1,
                producer_id_block: 100,
                // The workload has no partition data: it exercises the
                // controller's ISR logic as it will run with replication.
                new_isr_leader_only: false,
            },
            snapshot_every: self.p.snapshot_every,
        }
    }

    /// Starts the node's process: opens its store and schedules its broker.
    fn open(&mut self, id: NodeId) {
        let faults_on = self.faults_on();
        let config = self.config(id);
        let now = self.now;
        let n = self.node_mut(id);
        if n.up() || n.beyond_repair {
            return;
        }
        // A new process: a new origin for its monotonic clock.
        let origin = n.rng.between(1_000, 1_000_000) * MS;
        n.clock.base_global = now;
        n.clock.base_local = origin;
        let local = n.clock.local(now);
        n.disk.set_now(now);
        let store = DiskStore::new(n.disk.clone(), RAFT_DIR);
        let result = Quorum::new(store, config, Instant(local), &mut n.rng);
        let busy = n.disk.take_busy_ns();
        let q = match result {
            Ok(q) => q,
            Err(e) => return self.open_failed(id, e, faults_on, busy),
        };
        n.life += 1;
        n.open_failures = 0;
        n.busy_until = now + busy;
        let loaded = StoreView::of(&q);
        let synced = n.synced.take();
        n.seen = Seen {
            hw: q.raft().high_watermark(),
            image_offset: q.image().offset,
            ..Seen::default()
        };
        n.inbox.clear();
        n.paused_until = None;
        let incarnation = (u128::from(n.rng.next_u64()) << 64) | u128::from(n.rng.next_u64());
        n.broker = Broker {
            incarnation,
            ..Broker::default()
        };
        n.q = Some(q);
        let life = n.life;
        self.stats.starts += 1;
        trace!(
            self,
            "n{id} started (life {life}, clock at {}ms): {}",
            local / MS,
            loaded.describe()
        );
        if let Some(before) = synced {
            if loaded != before {
                return self.fail(
                    "lost-on-restart",
                    format!(
                        "n{id} had synced {} but came back with {}",
                        before.describe(),
                        loaded.describe()
                    ),
                );
            }
        }
        self.after_step(id, Ok(()), busy);
        let at = self.now + self.rng.between(1, self.p.heartbeat_ms) * MS;
        self.at(at, Ev::BrokerTick(id, life));
    }

    fn open_failed(&mut self, id: NodeId, e: RaftError, faults_on: bool, busy: u64) {
        let now = self.now;
        let n = self.node_mut(id);
        n.open_failures += 1;
        let failures = n.open_failures;
        let damaged = !n.disk.damage().is_empty();
        let corrupt = matches!(e, RaftError::Store(StoreError::Corrupt(_)));
        trace!(
            self,
            "n{id} cannot open its store (attempt {failures}): {e}"
        );
        if corrupt && damaged && (failures >= 3 || !faults_on) {
            // The disk rotted what the store needs, and the store said so
            // rather than serve it: this node is out for good.
            self.node_mut(id).beyond_repair = true;
            trace!(
                self,
                "n{id} is beyond repair (its disk damaged synced data): it stays down, excused from liveness"
            );
            return;
        }
        if corrupt && (!faults_on || failures > 20) {
            return self.fail(
                "spurious-corruption",
                format!("n{id}'s store refused as corrupt with no disk damage: {e}"),
            );
        }
        if !faults_on {
            return self.fail(
                "liveness",
                format!("n{id} cannot open its store with faults off: {e}"),
            );
        }
        self.node_mut(id).restart_queued = true;
        self.at(now + busy + 20 * MS, Ev::Restart(id));
    }

    /// Stops the node's process. `power_loss`: the machine too (the disk
    /// drops or tears what was not synced); otherwise the page cache lives.
    fn stop(&mut self, id: NodeId, power_loss: bool, why: &str) {
        let n = self.node_mut(id);
        if let Some(q) = n.q.take() {
            if why != "failed" {
                n.synced = Some(StoreView::of(&q));
            }
        }
        n.inbox.clear();
        n.paused_until = None;
        n.tick_at = None;
        n.broker = Broker::default();
        n.hint = None;
        if power_loss {
            n.disk.crash();
        } else {
            n.disk.kill_process();
        }
        trace!(self, "n{id} stopped ({why})");
    }

    /// After any call into a node: its messages leave once its disk is done,
    /// finished proposals are answered, a failed store has the process
    /// restarted, and the checker looks at what changed.
    fn after_step(&mut self, id: NodeId, result: Result<(), RaftError>, busy: u64) {
        let now = self.now;
        let Some(q) = self.node_mut(id).q.as_mut() else {
            return;
        };
        let msgs = q.take_messages();
        // The driver proposes nothing itself: requests come through the
        // controller channel and are answered by the node.
        let _ = q.take_done();
        let poisoned = q.raft().is_poisoned();
        if let Err(e) = &result {
            trace!(self, "n{id} store failed: {e}");
        }
        if result.is_err() || poisoned {
            // Poisoned: what the node remembers may not be on disk. It is
            // dropped and opened again from its disk, as after a crash; what
            // it was about to send dies with it.
            self.node_mut(id).synced = None;
            self.stop(id, false, "failed");
            self.node_mut(id).restart_queued = true;
            self.at(now + busy + 10 * MS, Ev::Restart(id));
            return;
        }
        for env in msgs {
            self.net.submit(Instant(now + busy), env);
        }
        let n = self.node_mut(id);
        n.busy_until = now + busy;
        let q = n.q.as_ref().expect("up");
        let deadline = q.next_deadline().0;
        n.tick_at = Some(n.clock.global(deadline));
        self.observe(id);
    }

    fn node_work(&mut self, id: NodeId) {
        let now = self.now;
        let n = self.node_mut(id);
        n.disk.set_now(now);
        let local = Instant(n.clock.local(now));
        if let Some(env) = n.inbox.pop_front() {
            let Address::Node(from) = env.from else {
                return;
            };
            let frame = if env.payload.first() == Some(&CHANNEL_CONTROLLER) {
                rpc::decode(&env.payload).ok()
            } else {
                None
            };
            match frame {
                // An answer for this node's broker (or a client it forwarded
                // for): the broker's business, not the quorum's.
                Some(Frame::Response(correlation, resp)) => {
                    self.on_response(id, from, correlation, resp);
                }
                _ => {
                    match &frame {
                        Some(Frame::Request(c, req)) => trace!(
                            self,
                            "n{id}<-n{from} controller request #{c} {}",
                            describe_request(req)
                        ),
                        _ => {
                            let (kind, epoch) = raft_kind(&env.payload);
                            trace!(
                                self,
                                "n{id}<-n{from} {kind} e{epoch} {}B",
                                env.payload.len()
                            );
                        }
                    }
                    self.stats.steps += 1;
                    let n = self.node_mut(id);
                    let q = n.q.as_mut().expect("runnable");
                    let r = q.step(local, from, &env.payload, &mut n.rng);
                    let busy = n.disk.take_busy_ns();
                    self.after_step(id, r, busy);
                }
            }
            return;
        }
        // Timers.
        let q = n.q.as_mut().expect("runnable");
        if q.next_deadline() > local {
            let deadline = q.next_deadline().0;
            n.tick_at = Some(n.clock.global(deadline).max(now + 1));
            return;
        }
        let r = q.tick(local, &mut n.rng);
        let busy = n.disk.take_busy_ns();
        self.stats.ticks += 1;
        self.after_step(id, r, busy);
    }

    fn deliver(&mut self) {
        let now = self.now;
        for env in self.net.deliver_due(Instant(now)) {
            match env.to {
                Address::Node(to) => {
                    let n = self.node_mut(to);
                    if n.up() {
                        n.inbox.push_back(env);
                    }
                }
                // Clients talk to their broker, which the simulator runs
                // inside the node: nothing is addressed to them.
                Address::Client(_) => {}
            }
        }
    }

    // ---- faults ------------------------------------------------------------

    fn apply_fault(&mut self, fault: Fault) {
        trace!(self, "nemesis {fault}");
        match fault {
            Fault::Crash { node } => {
                self.stats.crashes += 1;
                if self.node(node).up() {
                    self.stop(node, true, "power loss");
                } else {
                    self.node(node).disk.crash();
                }
            }
            Fault::Kill { node } => {
                if self.node(node).up() {
                    self.stats.kills += 1;
                    self.stop(node, false, "killed");
                }
            }
            Fault::Restart { node } => {
                let n = self.node(node);
                if !n.up() && !n.restart_queued {
                    self.open(node);
                }
            }
            Fault::Pause { node, millis } => {
                let now = self.now;
                let n = self.node_mut(node);
                if n.up() && n.paused_until.is_none() {
                    n.paused_until = Some(now + millis * MS);
                    let life = n.life;
                    self.stats.pauses += 1;
                    self.at(now + millis * MS, Ev::Resume(node, life));
                }
            }
            Fault::ClockJump { node, delta_ms } => {
                // Nothing in the quorum reads the wall clock today; the jump
                // is kept (and traced) for the broker code that will.
                self.node_mut(node).wall_offset_ms += delta_ms;
                let wall = EPOCH_WALL_MS + (self.now / MS) as i64 + self.node(node).wall_offset_ms;
                trace!(self, "n{node} wall clock now {wall}");
            }
            Fault::ClockRate { node, ppm } => {
                let now = self.now;
                let n = self.node_mut(node);
                n.clock.set_rate(now, ppm);
                if let Some(q) = &n.q {
                    n.tick_at = Some(n.clock.global(q.next_deadline().0));
                }
            }
            Fault::CrashLeader { down_ms } => match self.current_leader() {
                Some(l) => {
                    self.stats.crashes += 1;
                    self.stop(l, true, "power loss of the leader");
                    let at = self.now + down_ms * MS;
                    self.node_mut(l).restart_queued = true;
                    self.at(at, Ev::Restart(l));
                }
                None => trace!(self, "no leader to crash"),
            },
            Fault::CrashNewLeader { within_ms, down_ms } => {
                self.new_leader_crashes.push_back((within_ms, down_ms));
            }
            Fault::IsolateLeader => {
                let leader = self.current_leader();
                match leader {
                    Some(l) => {
                        let others: Vec<NodeId> =
                            self.ids().into_iter().filter(|&i| i != l).collect();
                        trace!(self, "isolating n{l}");
                        self.net.partition(&[l], &others);
                    }
                    None => trace!(self, "no leader to isolate"),
                }
            }
            Fault::Disk { node, faults } => self.node(node).disk.set_faults(faults),
            other => {
                self.net.apply(&other);
            }
        }
    }

    /// The leader of the highest epoch among the running nodes.
    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.q.as_ref())
            .filter(|q| q.raft().role() == Role::Leader)
            .max_by_key(|q| q.raft().epoch())
            .map(|q| q.node_id())
    }

    fn end_safety(&mut self) {
        self.phase = Phase::Converge;
        trace!(
            self,
            "safety phase over: faults off, liveness phase begins (stats {:?}, net {:?})",
            self.stats,
            self.net.stats()
        );
        self.net.heal();
        self.net.set_faults(NetFaults {
            delay_us: NetFaults::none().delay_us,
            ..self.swarm.net.quiet()
        });
        for id in self.ids() {
            let quiet = self.node(id).disk.faults().quiet();
            self.node(id).disk.set_faults(quiet);
            let n = self.node_mut(id);
            if n.paused_until.is_some() {
                n.paused_until = None;
                trace!(self, "n{id} resumes");
            }
            let n = self.node(id);
            if !n.up() && !n.beyond_repair {
                self.open(id);
            }
        }
        for a in &mut self.admins {
            *a = Admin::default();
        }
        let now = self.now;
        self.at(now + CHECK_EVERY_MS * MS, Ev::Check);
        self.at(now + LIVENESS_MS * MS, Ev::Deadline);
    }

    // ---- the liveness phase ------------------------------------------------

    fn healthy(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| !n.beyond_repair)
            .map(|n| n.id)
            .collect()
    }

    /// The leader every runnable node follows, with images that agree and
    /// nothing left uncommitted.
    fn converged(&self) -> Option<(NodeId, i64)> {
        let healthy = self.healthy();
        let mut leader = None;
        for &id in &healthy {
            let q = self.node(id).q.as_ref()?;
            if q.controller().is_some() {
                leader = Some((id, q.raft().epoch()));
            }
        }
        let (l, epoch) = leader?;
        let lq = self.node(l).q.as_ref()?;
        let hw = lq.raft().high_watermark();
        if hw != lq.raft().log_end_offset() || hw == 0 {
            return None;
        }
        let offset = hw as i64 - 1;
        let hash = image_hash(lq.image());
        for &id in &healthy {
            let q = self.node(id).q.as_ref()?;
            let r = q.raft();
            if r.leader() != Some(l)
                || r.epoch() != epoch
                || q.image().offset != offset
                || image_hash(q.image()) != hash
            {
                return None;
            }
        }
        Some((l, offset))
    }

    fn liveness_check(&mut self) {
        let healthy = self.healthy();
        if healthy.len() < self.quorum_size() {
            trace!(
                self,
                "liveness excused: only {} of {} stores can be opened (the others' disks rotted them)",
                healthy.len(),
                self.p.nodes
            );
            self.finish();
            return;
        }
        match self.phase {
            Phase::Converge => {
                if let Some((l, offset)) = self.converged() {
                    trace!(
                        self,
                        "converged: n{l} leads, every image at offset {offset}"
                    );
                    self.phase = Phase::Create;
                    self.admin_tick(0);
                }
            }
            Phase::Apply => {
                let name = self.final_name();
                let everywhere = healthy.iter().all(|&id| {
                    self.node(id)
                        .q
                        .as_ref()
                        .is_some_and(|q| q.image().topic(&name).is_some())
                });
                if everywhere {
                    trace!(self, "the final topic creation ({name}) reached every node");
                    self.final_checks();
                    self.finish();
                    return;
                }
            }
            _ => {}
        }
        let at = self.now + CHECK_EVERY_MS * MS;
        self.at(at, Ev::Check);
    }

    fn finish(&mut self) {
        if self.violation.is_none() {
            trace!(
                self,
                "run complete: stats {:?}, net {:?}",
                self.stats,
                self.net.stats()
            );
        }
        self.phase = Phase::Done;
    }

    /// At the end: every runnable node holds every committed entry below
    /// its high watermark that it has not compacted, in the committed epoch.
    fn final_checks(&mut self) {
        for id in self.healthy() {
            let Some(q) = self.node(id).q.as_ref() else {
                continue;
            };
            let r = q.raft();
            let start = r.log_start_offset();
            let mut problem = None;
            for (&o, c) in self.committed.range(start..r.high_watermark()) {
                match r.entry(o) {
                    Some(e) if e.epoch == c.epoch => {}
                    other => {
                        problem = Some(format!(
                            "n{id} holds {:?} at committed offset {o} (committed in e{})",
                            other.map(|e| e.epoch),
                            c.epoch
                        ));
                        break;
                    }
                }
            }
            if let Some(p) = problem {
                return self.fail("committed-entry-changed", p);
            }
        }
    }

    fn final_name(&self) -> String {
        format!("final-{}", self.final_attempt)
    }

    // ---- the checker -------------------------------------------------------

    fn observe(&mut self, id: NodeId) {
        if self.violation.is_some() {
            return;
        }
        let mut v: Option<(&'static str, String)> = None;
        let mut new_commits: Vec<(u64, u64)> = Vec::new();
        let mut new_leader: Option<u64> = None;
        {
            let n = self.nodes.get_mut(&id).expect("node");
            let q = n.q.as_ref().expect("up");
            let r = q.raft();
            let epoch = r.epoch();
            // Durable promises: the epoch and the vote.
            if epoch < n.promised_epoch {
                v = Some((
                    "epoch-regressed",
                    format!("n{id} is in epoch {epoch} after e{}", n.promised_epoch),
                ));
            } else if let Some((e, c)) = n.promised_vote {
                if e == epoch && r.voted_for() != Some(c) {
                    v = Some((
                        "vote-changed",
                        format!(
                            "n{id} voted for n{c} in epoch {e} and now has {:?}",
                            r.voted_for()
                        ),
                    ));
                }
            }
            n.promised_epoch = epoch;
            if let Some(c) = r.voted_for() {
                n.promised_vote = Some((epoch, c));
            }
            // One leader per epoch.
            if v.is_none() && r.role() == Role::Leader {
                match self.leaders.get(&epoch) {
                    Some(&other) if other != id => {
                        v = Some((
                            "two-leaders",
                            format!("n{other} and n{id} both led epoch {epoch}"),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(epoch, id);
                        self.stats.elections += 1;
                    }
                }
                if n.seen.led != Some(epoch) {
                    n.seen.led = Some(epoch);
                    new_leader = Some(epoch);
                }
            }
            // Log matching, against every entry any node ever held.
            let snap = r.snapshot().map(|s| (s.last_offset, s.last_epoch));
            let hw = r.high_watermark();
            if v.is_none() {
                let mut prev = snap.map_or(0, |s| s.1);
                let mut verify_rest = false;
                for e in r.entries() {
                    if !verify_rest && n.seen.checked.get(&e.offset) == Some(&e.epoch) {
                        prev = e.epoch;
                        continue;
                    }
                    verify_rest = true;
                    match self.known.get(&(e.offset, e.epoch)) {
                        Some(k) => {
                            if k.prev_epoch != prev || k.kind != e.kind || k.data != e.data {
                                v = Some((
                                    "log-mismatch",
                                    format!(
                                        "n{id} holds {e:?} after an entry of e{prev}; another log held {}@e{} as {:?}({}B) after one of e{}",
                                        e.offset,
                                        e.epoch,
                                        k.kind,
                                        k.data.len(),
                                        k.prev_epoch
                                    ),
                                ));
                                break;
                            }
                        }
                        None => {
                            self.known.insert(
                                (e.offset, e.epoch),
                                KnownEntry {
                                    prev_epoch: prev,
                                    kind: e.kind,
                                    data: e.data.clone(),
                                },
                            );
                        }
                    }
                    if e.offset < hw {
                        if let Some(c) = self.committed.get(&e.offset) {
                            if c.epoch != e.epoch {
                                v = Some((
                                    "committed-entry-changed",
                                    format!(
                                        "n{id} holds {e:?} below its high watermark {hw}; e{} was committed there",
                                        c.epoch
                                    ),
                                ));
                                break;
                            }
                        }
                    }
                    n.seen.checked.insert(e.offset, e.epoch);
                    prev = e.epoch;
                }
                if verify_rest {
                    let end = r.log_end_offset();
                    let start = r.log_start_offset();
                    n.seen.checked.retain(|o, _| *o >= start && *o < end);
                }
            }
            // The snapshot covers committed entries only.
            if v.is_none() && snap != n.seen.snapshot {
                if let Some((o, e)) = snap {
                    if let Some(c) = self.committed.get(&o) {
                        if c.epoch != e {
                            v = Some((
                                "committed-entry-changed",
                                format!(
                                    "n{id}'s snapshot ends at {o}@e{e}; e{} was committed there",
                                    c.epoch
                                ),
                            ));
                        }
                    }
                }
                n.seen.snapshot = snap;
            }
            // The high watermark: never back within a life; what it passes
            // is committed, in the epoch it has here.
            if v.is_none() {
                if hw < n.seen.hw {
                    v = Some((
                        "hw-regressed",
                        format!("n{id}'s high watermark went from {} to {hw}", n.seen.hw),
                    ));
                } else {
                    // Entries applied and compacted in this very step are
                    // gone from the log; the snapshot's last entry and the
                    // chain of epochs every log held before it (log
                    // matching, checked above) say what they were.
                    let mut compacted = BTreeMap::new();
                    if let Some((so, se)) = snap {
                        let mut at = (so, se);
                        while at.0 >= n.seen.hw && r.entry(at.0).is_none() {
                            compacted.insert(at.0, at.1);
                            match self.known.get(&at) {
                                Some(k) if at.0 > 0 => at = (at.0 - 1, k.prev_epoch),
                                _ => break,
                            }
                        }
                    }
                    for o in n.seen.hw..hw {
                        let e = match (r.entry(o), compacted.get(&o)) {
                            (Some(e), _) => e.epoch,
                            (None, Some(&e)) => e,
                            _ => continue,
                        };
                        match self.committed.get(&o) {
                            Some(c) if c.epoch != e => {
                                v = Some((
                                    "committed-entry-changed",
                                    format!(
                                        "n{id} commits {o}@e{e}; {o}@e{} was committed before",
                                        c.epoch
                                    ),
                                ));
                                break;
                            }
                            Some(_) => {}
                            None => {
                                self.committed.insert(
                                    o,
                                    Committed {
                                        epoch: e,
                                        by: epoch,
                                    },
                                );
                                new_commits.push((o, epoch));
                                if let Some(k) = self.known.get(&(o, e)) {
                                    if k.kind == EntryKind::Data {
                                        for rec in decode_batch(&k.data).unwrap_or_default() {
                                            if let MetadataRecord::Topic { name, .. } = rec {
                                                self.committed_topics.insert(name);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    n.seen.hw = hw;
                }
            }
            // The image: the same at the same offset everywhere, and its
            // epochs never back within a life.
            if v.is_none() {
                let image = q.image();
                if image.offset < n.seen.image_offset {
                    v = Some((
                        "metadata-regressed",
                        format!(
                            "n{id}'s image went from offset {} to {}",
                            n.seen.image_offset, image.offset
                        ),
                    ));
                }
                n.seen.image_offset = image.offset;
                if v.is_none() && n.seen.image_hashed_at != Some(image.offset) {
                    n.seen.image_hashed_at = Some(image.offset);
                    let h = image_hash(image);
                    match self.images.get(&image.offset) {
                        Some(&other) if other != h => {
                            v = Some((
                                "state-divergence",
                                format!(
                                    "n{id}'s image at offset {} differs from another node's there",
                                    image.offset
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            self.images.insert(image.offset, h);
                        }
                    }
                    for t in image.topics.values() {
                        for p in t.partitions.values() {
                            let now = (p.leader_epoch, p.partition_epoch);
                            let before = n.seen.leader_epochs.insert((t.id, p.partition), now);
                            if let Some(b) = before {
                                if now.0 < b.0 || now.1 < b.1 {
                                    v = Some((
                                        "metadata-regressed",
                                        format!(
                                            "n{id}: {}-{} went from leader/partition epoch {b:?} to {now:?}",
                                            t.name, p.partition
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    for b in image.brokers.values() {
                        let before = n.seen.broker_epochs.insert(b.id, b.epoch);
                        if before.is_some_and(|e| b.epoch < e) {
                            v = Some((
                                "metadata-regressed",
                                format!(
                                    "n{id}: broker {} went from epoch {:?} to {}",
                                    b.id, before, b.epoch
                                ),
                            ));
                        }
                    }
                }
            }
            // A readable line when anything the reader cares about moved.
            let status = format!(
                "{:?} e{} leader {:?} hw {hw} log {}..{} image {}{}",
                r.role(),
                epoch,
                r.leader(),
                r.log_start_offset(),
                r.log_end_offset(),
                q.image().offset,
                if q.controller().is_some() {
                    " controller"
                } else {
                    ""
                }
            );
            if status != n.seen.status {
                n.seen.status = status.clone();
                self.trace.record(self.now, format_args!("n{id}: {status}"));
            }
        }
        if let Some((kind, detail)) = v {
            return self.fail(kind, detail);
        }
        // Leader completeness: a new leader holds everything committed in
        // earlier epochs; a new commit is held by every later leader.
        if let Some(epoch) = new_leader {
            let offsets: Vec<u64> = self
                .committed
                .iter()
                .filter(|(_, c)| c.by < epoch)
                .map(|(o, _)| *o)
                .collect();
            if let Some(p) = self.missing(id, &offsets) {
                return self.fail("leader-incomplete", p);
            }
            if self.faults_on() {
                if let Some((within_ms, down_ms)) = self.new_leader_crashes.pop_front() {
                    let life = self.node(id).life;
                    trace!(
                        self,
                        "n{id} leads epoch {epoch}: power loss in {within_ms}ms"
                    );
                    self.at(self.now + within_ms * MS, Ev::CrashNode(id, life, down_ms));
                }
            }
        }
        if !new_commits.is_empty() {
            let leaders: Vec<(NodeId, u64)> = self
                .nodes
                .values()
                .filter_map(|n| n.q.as_ref())
                .filter(|q| q.raft().role() == Role::Leader)
                .map(|q| (q.node_id(), q.raft().epoch()))
                .collect();
            for (l, e) in leaders {
                let offsets: Vec<u64> = new_commits
                    .iter()
                    .filter(|(_, by)| *by < e)
                    .map(|(o, _)| *o)
                    .collect();
                if let Some(p) = self.missing(l, &offsets) {
                    return self.fail("leader-incomplete", p);
                }
            }
        }
    }

    /// Which of the committed `offsets` leader `id` lacks, if any.
    fn missing(&self, id: NodeId, offsets: &[u64]) -> Option<String> {
        let q = self.node(id).q.as_ref()?;
        let r = q.raft();
        let snap = r.snapshot().map(|s| (s.last_offset, s.last_epoch));
        for &o in offsets {
            let c = &self.committed[&o];
            let held = match r.entry(o) {
                Some(e) => e.epoch == c.epoch,
                None => snap.is_some_and(|(so, se)| o < so || (o == so && se == c.epoch)),
            };
            if !held {
                return Some(format!(
                    "n{id} leads epoch {} without {o}@e{} (committed under e{}); it holds {:?}",
                    r.epoch(),
                    c.epoch,
                    c.by,
                    r.entry(o).map(|e| e.epoch)
                ));
            }
        }
        None
    }

    // ---- the controller channel --------------------------------------------

    /// Sends a controller request from node `from`'s broker to the node it
    /// believes is the controller (any node, when it knows of none).
    fn send_request(&mut self, from: NodeId, req: Request, who: Who) -> u64 {
        let now = self.now;
        let pick = self.rng.below(self.p.nodes as u64) as NodeId + 1;
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let n = self.node(from);
        let leader = n.q.as_ref().and_then(|q| q.leader());
        let to = leader.or(n.hint).unwrap_or(pick);
        let life = n.life;
        trace!(
            self,
            "n{from} -> n{to} controller request #{correlation} {}",
            describe_request(&req)
        );
        self.pending.insert(
            correlation,
            Pending {
                node: from,
                life,
                who,
            },
        );
        self.net.submit(
            Instant(now),
            Envelope {
                from: Address::Node(from),
                to: Address::Node(to),
                payload: rpc::encode_request(correlation, &req),
            },
        );
        correlation
    }

    /// An answer from the controller channel reached node `id`.
    fn on_response(&mut self, id: NodeId, from: NodeId, correlation: u64, resp: Response) {
        trace!(
            self,
            "n{id}<-n{from} controller answer #{correlation} {resp:?}"
        );
        let Some(p) = self.pending.get(&correlation).cloned() else {
            return;
        };
        if p.node != id || self.node(id).life != p.life {
            return;
        }
        self.pending.remove(&correlation);
        if let Response::NotController(leader) = resp {
            self.node_mut(id).hint = leader;
        }
        match p.who {
            Who::Broker => self.on_broker_answer(id, correlation, resp),
            Who::Admin(c, op) => self.on_admin_answer(c, correlation, op, resp),
        }
    }

    // ---- brokers -----------------------------------------------------------

    fn broker_tick(&mut self, id: NodeId, life: u64) {
        let now = self.now;
        let hb = self.p.heartbeat_ms;
        let (current, paused) = {
            let n = self.node(id);
            (n.life == life && n.up(), n.paused_until.is_some())
        };
        if !current {
            return;
        }
        self.at(now + hb * MS, Ev::BrokerTick(id, life));
        if paused {
            return;
        }
        let want_ids = self.rng.chance(0.03);
        let racks = self.p.racks;
        let n = self.node_mut(id);
        if let Some((_, sent)) = n.broker.outstanding {
            if now < sent + BROKER_TIMEOUT_MS * MS {
                return;
            }
            n.broker.outstanding = None;
            n.hint = None;
        }
        let image_offset = n.q.as_ref().expect("up").image().offset;
        let req = match n.broker.epoch {
            None => Request::Register(Registration {
                id,
                cluster_id: CLUSTER_ID.into(),
                incarnation: n.broker.incarnation,
                endpoints: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: format!("n{id}"),
                    port: 9092,
                }],
                rack: (racks > 0).then(|| format!("r{}", id as u64 % racks)),
            }),
            Some(_) if want_ids && !n.broker.fenced => Request::AllocateProducerIds { broker: id },
            Some(epoch) => Request::Heartbeat(Heartbeat {
                id,
                epoch,
                metadata_offset: image_offset,
                want_fence: false,
            }),
        };
        let correlation = self.send_request(id, req, Who::Broker);
        self.node_mut(id).broker.outstanding = Some((correlation, now));
    }

    fn on_broker_answer(&mut self, id: NodeId, correlation: u64, resp: Response) {
        let n = self.node_mut(id);
        if n.broker.outstanding.map(|(c, _)| c) != Some(correlation) {
            return;
        }
        n.broker.outstanding = None;
        let incarnation = n.broker.incarnation;
        match resp {
            Response::Register { status, epoch } if status.0 == 0 => {
                n.broker.epoch = Some(epoch);
                n.broker.fenced = true;
                self.check_registration(id, incarnation, epoch);
            }
            Response::Heartbeat { status, fenced } => match status.0 {
                0 => n.broker.fenced = fenced,
                code::STALE_BROKER_EPOCH | code::BROKER_ID_NOT_REGISTERED => {
                    n.broker.epoch = None;
                }
                _ => {}
            },
            Response::ProducerIds {
                status,
                first,
                count,
            } if status.0 == 0 => self.check_producer_ids(id, first, count),
            _ => {}
        }
    }

    /// A registration answered with broker epoch `epoch` is the committed
    /// entry at that offset, and it registers this broker process.
    fn check_registration(&mut self, id: NodeId, incarnation: u128, epoch: i64) {
        let Ok(o) = u64::try_from(epoch) else {
            return self.fail(
                "lost-write",
                format!("b{id}'s registration was acknowledged with epoch {epoch}"),
            );
        };
        let Some(c) = self.committed.get(&o) else {
            return self.fail(
                "lost-write",
                format!(
                    "b{id}'s registration was acknowledged at {o}, which is not known committed"
                ),
            );
        };
        let Some(k) = self.known.get(&(o, c.epoch)) else {
            return;
        };
        let registers = decode_batch(&k.data).is_ok_and(|batch| {
            batch.iter().any(|r| {
                matches!(r, MetadataRecord::RegisterBroker(b) if b.id == id && b.incarnation == incarnation)
            })
        });
        if !registers {
            self.fail(
                "lost-write",
                format!(
                    "b{id} (incarnation {incarnation:032x}) was told it registered at {o}, but the entry committed there does not register it"
                ),
            );
        }
    }

    /// Producer id blocks acknowledged to brokers never overlap.
    fn check_producer_ids(&mut self, id: NodeId, first: i64, count: i64) {
        let end = first + count;
        let overlap = self
            .producer_blocks
            .range(..end)
            .next_back()
            .filter(|(_, e)| **e > first)
            .map(|(f, e)| (*f, *e));
        if let Some((f, e)) = overlap {
            return self.fail(
                "duplicate-producer-ids",
                format!("b{id} was granted producer ids {first}..{end}, overlapping {f}..{e} granted before"),
            );
        }
        self.producer_blocks.insert(first, end);
    }

    // ---- the admin clients -------------------------------------------------

    fn admin_tick(&mut self, c: usize) {
        let now = self.now;
        match self.phase {
            Phase::Safety => {
                let gap = self.rng.between(1, 2 * self.p.admin_gap_ms) * MS;
                self.at(now + gap, Ev::AdminTick(c));
            }
            Phase::Create if c == 0 => {
                self.at(now + 100 * MS, Ev::AdminTick(c));
            }
            _ => return,
        }
        if let Some((_, sent)) = self.admins[c].outstanding {
            if now < sent + ADMIN_TIMEOUT_MS * MS {
                return;
            }
            trace!(self, "c{c}: request timed out");
            self.admins[c].outstanding = None;
        }
        // The broker the client is connected to this time.
        let up: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.runnable())
            .map(|n| n.id)
            .collect();
        if up.is_empty() {
            return;
        }
        let via = up[self.rng.below(up.len() as u64) as usize];
        let (req, op) = if self.phase == Phase::Create {
            self.final_attempt += 1;
            let name = self.final_name();
            (
                Request::CreateTopics(vec![NewTopic {
                    name: name.clone(),
                    partitions: 1,
                    replication_factor: 1,
                    assignments: BTreeMap::new(),
                    configs: BTreeMap::new(),
                }]),
                AdminOp::Final(name),
            )
        } else {
            let name = format!("t{}", self.rng.below(self.p.pool));
            if self.rng.chance(0.7) {
                self.stats.creates += 1;
                let rf = self.rng.between(1, 3.min(self.p.nodes as u64)) as i16;
                let partitions = self.rng.between(1, 4) as i32;
                (
                    Request::CreateTopics(vec![NewTopic {
                        name: name.clone(),
                        partitions,
                        replication_factor: rf,
                        assignments: BTreeMap::new(),
                        configs: BTreeMap::new(),
                    }]),
                    AdminOp::Create(name),
                )
            } else {
                self.stats.deletes += 1;
                (
                    Request::DeleteTopics(vec![name.clone()]),
                    AdminOp::Delete(name),
                )
            }
        };
        trace!(self, "c{c} asks n{via}: {op:?}");
        let correlation = self.send_request(via, req, Who::Admin(c, op));
        self.admins[c].outstanding = Some((correlation, now));
    }

    fn on_admin_answer(&mut self, c: usize, correlation: u64, op: AdminOp, resp: Response) {
        if self.admins[c].outstanding.map(|(r, _)| r) != Some(correlation) {
            return;
        }
        self.admins[c].outstanding = None;
        let ok = matches!(&resp, Response::Items(items) if items.first().is_some_and(|s| s.0 == 0));
        trace!(self, "c{c}: {op:?} answered {resp:?}");
        if !ok {
            return;
        }
        self.stats.acked += 1;
        match op {
            AdminOp::Create(name) | AdminOp::Final(name) => {
                // Answered once applied on the controller: a committed entry
                // created it.
                if !self.committed_topics.contains(&name) {
                    return self.fail(
                        "lost-write",
                        format!("the creation of topic {name} was acknowledged, but no committed entry creates it"),
                    );
                }
                if self.phase == Phase::Create && name == self.final_name() {
                    self.phase = Phase::Apply;
                }
            }
            AdminOp::Delete(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_convert_both_ways_at_any_rate() {
        for ppm in [-200_000, -1, 0, 1, 7, 150_000] {
            let mut c = NodeClock {
                base_global: 5 * MS,
                base_local: 123_456_789,
                ppm,
            };
            for g in [5 * MS, 5 * MS + 1, 17 * MS + 3, 9_000 * MS] {
                let l = c.local(g);
                assert!(c.global(l) <= g, "ppm {ppm} g {g}");
                assert!(c.local(c.global(l)) >= l);
                assert!(c.local(c.global(l + 1)) > l);
            }
            let before = c.local(50 * MS);
            c.set_rate(50 * MS, -ppm);
            assert_eq!(c.local(50 * MS), before, "a rate change does not jump");
        }
    }
}
