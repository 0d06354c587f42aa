//! The metadata quorum's Raft: three voters, each the real
//! [`odradek_core::raft::Raft`] over a [`odradek_core::raft::MemStore`]
//! (see [`node`]), on a lossy, duplicating, unordered network, with crashes
//! that keep only what the store synced, and clients proposing entries at
//! the leader.
//!
//! Properties (over the nodes' logs and the model's ghost history, which
//! survives crashes):
//!
//! * `always` **election safety** — at most one leader per epoch, ever:
//!   no two nodes were leader in the same epoch (each node keeps the
//!   epochs it led, so a leader that stepped down still counts).
//! * `always` **log matching** — if two nodes' logs hold an entry with the
//!   same offset and epoch, the entries are identical, and so is every
//!   earlier entry both logs hold.
//! * `always` **state-machine safety** — no two nodes ever applied
//!   different entries at the same offset, and no node applied an entry
//!   out of order or, after a restart, a different entry where it had
//!   applied one before.
//! * `always` **leader completeness** — an entry a node applied while in
//!   epoch e (so committed in e or earlier) is in the log of every leader
//!   of an epoch after e (or under its snapshot).
//! * `always` **no node fails** — no store error, no store a node cannot
//!   restart from.
//! * `sometimes` **an entry committed** — an entry applied on a majority
//!   (a leader's no-op counts), and **a client's entry committed**; and
//!   **a later leader after a commit** — a leader of an epoch after one in
//!   which an entry was applied: where leader completeness has something
//!   to check.
//!
//! The network is stateright's: unordered and duplicating (a message once
//! sent can be delivered any number of times, at any later point), lossy
//! if asked (on a duplicating network loss adds no behaviour, as nothing
//! forces a delivery; it only adds states, so it is optional). Stateright's
//! duplicating network also remembers the last message delivered, which
//! tells apart states that are otherwise the same; [`RaftModel`] wraps the
//! actor model to forget it, so that a repeated delivery that changes
//! nothing leads back to a state already seen.
//!
//! Responses that no node will ever act on (from an epoch the receiver
//! has durably left) are taken off the network as they appear
//! ([`Config::drop_dead_responses`]): a loss that changes nothing, since
//! their delivery would be ignored, and that merges states otherwise
//! apart only by such dead messages (about a third as many states).
//!
//! The state space has no end (epochs and clocks only grow), so a run is
//! bounded: by BFS depth, by a fault budget (crashes), by the number of
//! client proposals, by a last epoch and, if asked, by a time budget
//! (ticks, all nodes together) ([`Config`]).

pub mod node;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use odradek_core::io::NodeId;
use odradek_core::raft::{self as core_raft, Body, EntryKind, Message};
use stateright::actor::{
    Actor, ActorModel, ActorModelAction, ActorModelState, Id, LossyNetwork, Network, Out,
};
use stateright::{Model, Property};

use crate::check::{self, Outcome, Search};
use node::{NodeState, RaftNode};

/// At most this many unsynced writes are offered to be kept by a crash.
pub const MAX_KEEP: u8 = 2;

/// What to model, and the limits that keep a run finite.
#[derive(Clone, Debug)]
pub struct Config {
    pub voters: usize,
    /// Messages may be lost.
    pub lossy: bool,
    /// Messages may be delivered more than once (stateright's duplicating
    /// network); otherwise each is delivered at most once.
    pub duplicating: bool,
    /// The fault budget: node crashes, all nodes together.
    pub max_crashes: u32,
    /// Client proposals at the leader, all nodes together.
    pub max_proposals: u32,
    /// States in which some node's epoch is past this are not explored.
    pub max_epoch: u64,
    /// The election timeout's range (inclusive). One value by default.
    /// Every node's clock jumps from deadline to deadline, and with one
    /// value a follower's lease (the range's minimum) ends exactly at its
    /// own election deadline; a wider range adds only the window between
    /// the two, in which a follower votes for another candidate before it
    /// starts a pre-vote of its own (which changes no epoch, vote or log),
    /// and many more states.
    pub election_timeout_ms: (u64, u64),
    pub heartbeat_ms: u64,
    /// Nodes may compact their logs into snapshots, so that leaders send
    /// snapshots to followers that are behind.
    pub compaction: bool,
    /// The time budget: ticks, all nodes together (none: only the depth
    /// bounds time).
    pub max_ticks: Option<u32>,
    /// At most this many entries per append message (Raft's
    /// `max_batch_entries`): 1 makes a leader replicate entry by entry, so
    /// that a follower can hold part of what was sent.
    pub max_batch_entries: usize,
    /// Take off the network the responses no node will ever act on (see
    /// the module's documentation): fewer states, the same behaviours.
    pub drop_dead_responses: bool,
}

impl Default for Config {
    /// Three voters, a lossy duplicating network, one crash, one proposal,
    /// epochs up to 3.
    fn default() -> Config {
        Config {
            voters: 3,
            lossy: true,
            duplicating: true,
            max_crashes: 1,
            max_proposals: 1,
            max_epoch: 3,
            election_timeout_ms: (150, 150),
            heartbeat_ms: 75,
            compaction: false,
            max_ticks: None,
            max_batch_entries: 64,
            drop_dead_responses: true,
        }
    }
}

impl Config {
    fn raft_config(&self, id: usize) -> core_raft::Config {
        let mut c = core_raft::Config::new(id as NodeId, (0..self.voters).map(|v| v as NodeId));
        c.election_timeout_min_ms = self.election_timeout_ms.0;
        c.election_timeout_max_ms = self.election_timeout_ms.1;
        c.heartbeat_ms = self.heartbeat_ms;
        c.max_batch_entries = self.max_batch_entries;
        c
    }
}

/// A message on the network: [`Message::encode`]'s bytes, decoded by the
/// receiver's [`core_raft::Raft::step_bytes`], as between processes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Wire(pub Vec<u8>);

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Message::decode(&self.0) {
            Ok(m) => write!(f, "{}", show(&m)),
            Err(e) => write!(f, "undecodable ({e})"),
        }
    }
}

/// A message in a line.
fn show(m: &Message) -> String {
    let e = m.epoch;
    match &m.body {
        Body::PreVote {
            last_epoch,
            log_end,
        } => format!("PreVote(e{e}, log ..{log_end}@e{last_epoch})"),
        Body::PreVoteResponse { granted } => format!("PreVoteResponse(e{e}, granted={granted})"),
        Body::Vote {
            last_epoch,
            log_end,
        } => format!("Vote(e{e}, log ..{log_end}@e{last_epoch})"),
        Body::VoteResponse { granted } => format!("VoteResponse(e{e}, granted={granted})"),
        Body::Append {
            start_offset,
            prev_epoch,
            entries,
            high_watermark,
        } => format!(
            "Append(e{e}, after {start_offset}@e{prev_epoch}, {entries:?}, hw {high_watermark})"
        ),
        Body::AppendResponse { success, end } => {
            format!("AppendResponse(e{e}, success={success}, end {end})")
        }
        Body::InstallSnapshot { snapshot } => format!("InstallSnapshot(e{e}, {snapshot:?})"),
        Body::InstallSnapshotResponse { end } => {
            format!("InstallSnapshotResponse(e{e}, end {end})")
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The node's clock jumps to its next deadline, and Raft ticks there.
    Tick,
    /// A client proposes an entry at the node, which leads.
    Propose,
    /// Power loss, keeping this many of the writes not yet synced; the node
    /// restarts from its store at once.
    Crash(u8),
    /// The node compacts its log up to what it has applied.
    Compact,
}

#[derive(Clone, Debug)]
pub struct Node(pub RaftNode);

impl Actor for Node {
    type Msg = Wire;
    type Timer = Timer;
    type State = NodeState;
    type Storage = ();
    type Random = ();

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        self.0.on_start(o)
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<NodeState>, src: Id, msg: Wire, o: &mut Out<Self>) {
        self.0.on_msg(state, src, msg, o)
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        self.0.on_timeout(state, *timer, o)
    }
}

pub type Actors = ActorModel<Node, Config, ()>;
pub type RaftState = ActorModelState<Node, ()>;
pub type Action = ActorModelAction<Wire, Timer, ()>;

/// The actor model, with the duplicating network's memory of the last
/// message delivered wiped from every state (see the module's
/// documentation). Everything else is the actor model's.
pub struct RaftModel {
    pub actors: Actors,
}

fn forget_last_delivery(state: &mut RaftState) {
    if let Network::UnorderedDuplicating(_, last) = &mut state.network {
        *last = None;
    }
}

/// Whether `msg`, addressed to `to`, can never have an effect there: a
/// response (to a vote, an append or a snapshot, or a granted pre-vote)
/// from an epoch the receiver has left behind for good. Raft ignores a
/// response from an earlier epoch, and a granted pre-vote unless it is for
/// the epoch after the receiver's; the receiver's epoch never goes back
/// below what its store holds durably, whatever crashes come. Taking such
/// a message off the network is the network losing it, which it may do
/// anyway, and loses no behaviour: its delivery would change nothing.
fn dead(to: &NodeState, msg: &Wire) -> bool {
    let Ok(m) = Message::decode(&msg.0) else {
        return false;
    };
    let floor = to.raft.store().durable().quorum.epoch;
    match m.body {
        Body::VoteResponse { .. }
        | Body::AppendResponse { .. }
        | Body::InstallSnapshotResponse { .. } => m.epoch < floor,
        Body::PreVoteResponse { granted: true } => m.epoch <= floor,
        _ => false,
    }
}

fn drop_dead_responses(state: &mut RaftState) {
    let nodes = &state.actor_states;
    let live = |dst: Id, msg: &Wire| !dead(&nodes[usize::from(dst)], msg);
    match &mut state.network {
        Network::UnorderedDuplicating(set, _) => set.retain(|e| live(e.dst, &e.msg)),
        Network::UnorderedNonDuplicating(bag) => bag.retain(|e, _| live(e.dst, &e.msg)),
        Network::Ordered(_) => {}
    }
}

impl Model for RaftModel {
    type State = RaftState;
    type Action = Action;

    fn init_states(&self) -> Vec<RaftState> {
        let mut states = self.actors.init_states();
        states.iter_mut().for_each(forget_last_delivery);
        states
    }

    fn actions(&self, state: &RaftState, actions: &mut Vec<Action>) {
        self.actors.actions(state, actions)
    }

    fn next_state(&self, state: &RaftState, action: Action) -> Option<RaftState> {
        let mut next = self.actors.next_state(state, action)?;
        forget_last_delivery(&mut next);
        if self.actors.cfg.drop_dead_responses {
            drop_dead_responses(&mut next);
        }
        Some(next)
    }

    fn format_action(&self, action: &Action) -> String {
        match action {
            ActorModelAction::Deliver { src, dst, msg } => format!(
                "deliver {} → {}: {msg:?}",
                usize::from(*src),
                usize::from(*dst)
            ),
            ActorModelAction::Drop(env) => format!(
                "lose {} → {}: {:?}",
                usize::from(env.src),
                usize::from(env.dst),
                env.msg
            ),
            ActorModelAction::Timeout(id, timer) => {
                format!("node {}: {timer:?}", usize::from(*id))
            }
            other => self.actors.format_action(other),
        }
    }

    fn format_step(&self, state: &RaftState, action: Action) -> Option<String> {
        self.actors.format_step(state, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ELECTION_SAFETY, |_, s| election_safety(s)),
            Property::always(LOG_MATCHING, |_, s| log_matching(s)),
            Property::always(STATE_MACHINE_SAFETY, |_, s| state_machine_safety(s)),
            Property::always(LEADER_COMPLETENESS, |_, s| leader_completeness(s)),
            Property::always(NO_NODE_FAILS, |_, s| nodes(s).all(|n| n.failed.is_none())),
            Property::sometimes(COMMITTED, |m, s| committed(m, s, false)),
            Property::sometimes(CLIENT_ENTRY_COMMITTED, |m, s| committed(m, s, true)),
            Property::sometimes(LEADER_AFTER_COMMIT, |_, s| leader_after_commit(s)),
        ]
    }

    fn within_boundary(&self, state: &RaftState) -> bool {
        let cfg = &self.actors.cfg;
        let (mut crashes, mut proposals, mut ticks) = (0, 0, 0);
        for n in nodes(state) {
            crashes += n.crashes;
            proposals += n.proposals;
            ticks += n.ticks;
            if n.raft.epoch() > cfg.max_epoch {
                return false;
            }
        }
        crashes <= cfg.max_crashes
            && proposals <= cfg.max_proposals
            && cfg.max_ticks.is_none_or(|m| ticks <= m)
    }
}

pub const ELECTION_SAFETY: &str = "election safety (at most one leader per epoch)";
pub const LOG_MATCHING: &str = "log matching";
pub const STATE_MACHINE_SAFETY: &str = "state-machine safety";
pub const LEADER_COMPLETENESS: &str = "leader completeness";
pub const NO_NODE_FAILS: &str = "no node fails";
pub const COMMITTED: &str = "an entry committed (applied on a majority)";
pub const CLIENT_ENTRY_COMMITTED: &str = "a client's entry committed (applied on a majority)";
pub const LEADER_AFTER_COMMIT: &str = "a later leader after a commit";

/// The `always` properties.
pub const SAFETY: [&str; 5] = [
    ELECTION_SAFETY,
    LOG_MATCHING,
    STATE_MACHINE_SAFETY,
    LEADER_COMPLETENESS,
    NO_NODE_FAILS,
];

/// The `sometimes` properties.
pub const REACHABLE: [&str; 3] = [COMMITTED, CLIENT_ENTRY_COMMITTED, LEADER_AFTER_COMMIT];

pub fn nodes(state: &RaftState) -> impl Iterator<Item = &NodeState> {
    state.actor_states.iter().map(|s| &**s)
}

fn pairs(state: &RaftState) -> Vec<(&NodeState, &NodeState)> {
    let all: Vec<&NodeState> = nodes(state).collect();
    let mut out = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            out.push((*a, *b));
        }
    }
    out
}

fn election_safety(state: &RaftState) -> bool {
    pairs(state)
        .into_iter()
        .all(|(a, b)| a.led.is_disjoint(&b.led))
}

fn log_matching(state: &RaftState) -> bool {
    pairs(state).into_iter().all(|(a, b)| {
        let (a, b) = (&a.raft, &b.raft);
        let from = a.log_start_offset().max(b.log_start_offset());
        let to = a.log_end_offset().min(b.log_end_offset());
        // The last offset both hold in the same epoch: everything both
        // hold up to it must be the same.
        let Some(last) = (from..to)
            .rev()
            .find(|&o| a.entry(o).map(|e| e.epoch) == b.entry(o).map(|e| e.epoch))
        else {
            return true;
        };
        (from..=last).all(|o| a.entry(o) == b.entry(o))
    })
}

fn state_machine_safety(state: &RaftState) -> bool {
    nodes(state).all(|n| {
        n.failed
            .as_deref()
            .is_none_or(|f| !f.starts_with("applied"))
    }) && pairs(state).into_iter().all(|(a, b)| {
        a.applied
            .iter()
            .all(|(o, x)| b.applied.get(o).is_none_or(|y| y.entry == x.entry))
    })
}

fn leader_completeness(state: &RaftState) -> bool {
    nodes(state).filter(|l| l.raft.is_leader()).all(|l| {
        let epoch = l.raft.epoch();
        nodes(state).all(|n| {
            n.applied.iter().all(|(&o, a)| {
                a.epoch >= epoch
                    || o < l.raft.log_start_offset()
                    || l.raft.entry(o) == Some(&a.entry)
            })
        })
    })
}

/// Some entry (a client's, if `data`) applied on a majority.
fn committed(model: &RaftModel, state: &RaftState, data: bool) -> bool {
    let quorum = model.actors.cfg.voters / 2 + 1;
    let mut offsets = BTreeSet::new();
    for n in nodes(state) {
        for (o, a) in &n.applied {
            if !data || a.entry.kind == EntryKind::Data {
                offsets.insert(*o);
            }
        }
    }
    offsets
        .into_iter()
        .any(|o| nodes(state).filter(|n| n.applied.contains_key(&o)).count() >= quorum)
}

fn leader_after_commit(state: &RaftState) -> bool {
    nodes(state).filter(|l| l.raft.is_leader()).any(|l| {
        let epoch = l.raft.epoch();
        nodes(state).any(|n| n.applied.values().any(|a| a.epoch < epoch))
    })
}

impl Config {
    pub fn into_model(self) -> RaftModel {
        let voters = self.voters;
        let nodes: Vec<Node> = (0..voters)
            .map(|id| {
                Node(RaftNode {
                    config: self.raft_config(id),
                    max_crashes: self.max_crashes,
                    max_proposals: self.max_proposals,
                    compaction: self.compaction,
                })
            })
            .collect();
        let network = if self.duplicating {
            Network::new_unordered_duplicating([])
        } else {
            Network::new_unordered_nonduplicating([])
        };
        let lossy = if self.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        };
        RaftModel {
            actors: ActorModel::new(self, ())
                .actors(nodes)
                .init_network(network)
                .lossy_network(lossy),
        }
    }
}

/// Breadth-first search of `cfg`'s model, single-threaded, checking every
/// state at most `depth` steps from the start. Stops early only once every
/// property has a discovery.
pub fn check(cfg: Config, depth: usize) -> Outcome {
    search(cfg, depth, Search::Bfs, 1, None)
}

/// `cfg`'s model searched to `depth` steps, stopping once about
/// `max_states` states have been generated, if given.
pub fn search(
    cfg: Config,
    depth: usize,
    how: Search,
    threads: usize,
    max_states: Option<usize>,
) -> Outcome {
    check::run(
        cfg.into_model(),
        depth,
        how,
        threads,
        max_states,
        check::until_all(),
    )
}

/// A search that stops as soon as any `always` property fails, or once
/// about `max_states` states have been generated (if given). Breadth
/// first with one thread, the counterexample is at most a step longer
/// than a shortest one (see [`Outcome::discoveries`]).
pub fn find_violation(
    cfg: Config,
    depth: usize,
    how: Search,
    threads: usize,
    max_states: Option<usize>,
) -> Outcome {
    check::run(
        cfg.into_model(),
        depth,
        how,
        threads,
        max_states,
        check::until_any(&SAFETY),
    )
}

/// What replaying a schedule found.
#[derive(Debug)]
pub struct Replay {
    /// The steps taken, as [`Model::format_action`] writes them.
    pub steps: Vec<String>,
    /// Each `always` property that failed, with the number of steps to the
    /// first state that broke it.
    pub violations: Vec<(&'static str, usize)>,
    /// Each `sometimes` property that held in some state, likewise.
    pub reached: Vec<(&'static str, usize)>,
    pub last: RaftState,
}

/// Runs `cfg`'s model along a given schedule: each line of `schedule` is
/// an action as [`Model::format_action`] writes it (as in the traces the
/// checker prints; a leading "N. " is ignored, and so are empty lines and
/// lines starting with `#`), and must be one the model offers at that
/// point. Checks every property in every state on the way. For schedules
/// too long for an exhaustive search to reach, such as Raft's Figure 8.
pub fn replay(cfg: Config, schedule: &str) -> Result<Replay, String> {
    let model = cfg.into_model();
    let properties = model.properties();
    let mut state = model
        .init_states()
        .pop()
        .ok_or("the model has no initial state")?;
    let mut out = Replay {
        steps: Vec::new(),
        violations: Vec::new(),
        reached: Vec::new(),
        last: state.clone(),
    };
    let note = |state: &RaftState, steps: usize, out: &mut Replay| {
        for p in &properties {
            let holds = (p.condition)(&model, state);
            let (list, hit) = match p.expectation {
                stateright::Expectation::Always => (&mut out.violations, !holds),
                _ => (&mut out.reached, holds),
            };
            if hit && !list.iter().any(|(n, _)| *n == p.name) {
                list.push((p.name, steps));
            }
        }
    };
    note(&state, 0, &mut out);
    for (n, line) in schedule.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let want = match line.split_once(". ") {
            Some((num, rest)) if num.chars().all(|c| c.is_ascii_digit()) => rest,
            _ => line,
        };
        let mut actions = Vec::new();
        model.actions(&state, &mut actions);
        let Some(action) = actions.into_iter().find(|a| model.format_action(a) == want) else {
            let mut offered = Vec::new();
            model.actions(&state, &mut offered);
            let offered: Vec<String> = offered.iter().map(|a| model.format_action(a)).collect();
            return Err(format!(
                "line {}: \"{want}\" is not on offer; the model offers:\n  {}",
                n + 1,
                offered.join("\n  ")
            ));
        };
        state = model
            .next_state(&state, action)
            .ok_or_else(|| format!("line {}: \"{want}\" changes nothing", n + 1))?;
        if !model.within_boundary(&state) {
            return Err(format!("line {}: \"{want}\" leaves the bounds", n + 1));
        }
        out.steps.push(want.to_string());
        note(&state, out.steps.len(), &mut out);
    }
    out.last = state;
    Ok(out)
}
