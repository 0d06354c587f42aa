//! The classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat):
//! the real [`odradek_core::group::Coordinator`] as one actor, Kafka-style
//! consumers as the others, over a lossy, reordering network, with member
//! crashes (and, as an option, coordinator failover).
//!
//! Properties (a member is the process now running: one that crashed owns
//! nothing):
//!
//! * `always` **single owner per generation** — no partition is owned by
//!   two members that both believe they are in the same generation. This
//!   is the design brief's guarantee ("a partition is owned by at most one
//!   member of a consumer group per generation").
//! * `always` **single owner in the current generation** — no two members
//!   that the coordinator lists in its current generation, and that both
//!   own partitions in it, own the same partition: the same guarantee
//!   stated against the coordinator's view. (Members that own partitions
//!   in an older generation may well overlap with the current one: a
//!   member cut off from the coordinator keeps its partitions until it
//!   hears of the rebalance, as in Kafka; it is fenced by its generation.)
//! * `always` **owners agree with the coordinator** — a member that owns
//!   partitions in generation g, while the coordinator is Stable in g and
//!   lists it, owns exactly the assignment the coordinator holds for it.
//! * `sometimes` **stable group** — the coordinator is Stable and both
//!   members own, in its current generation, disjoint partitions that
//!   cover the topic: the protocol can get somewhere. Also **after a
//!   member restarted**.
//! * `sometimes` **an expelled member still holds partitions given to
//!   another** — Kafka's zombie, fenced by its generation: the search
//!   reaches the states where the per-generation qualifier matters.
//!
//! The state space has no end (generations, member ids, connections and
//! the clock only grow), so a run is bounded: by BFS depth, by a fault
//! budget and by a last generation ([`Config`]).

pub mod coordinator;
pub mod member;
pub mod wire;

use std::borrow::Cow;
use std::collections::BTreeSet;

use odradek_core::group::{ClassicState, Kind};
use stateright::actor::{Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out};
use stateright::Expectation;

use crate::check;
pub use crate::check::{Outcome, Search};

use coordinator::{CoordinatorNode, CoordinatorState};
use member::{MemberNode, MemberState};

pub const GROUP: &str = "g";
pub const TOPIC: &str = "t";
/// The topic's id for the range assignor (any will do).
pub const TOPIC_ID: u128 = 1;
pub const PROTOCOL_TYPE: &str = "consumer";
pub const PROTOCOL: &str = "range";
/// The members' `session.timeout.ms`; longer than the rebalance timeout,
/// so that both the session expiry and the rebalance timeouts (join and
/// sync phases) are reachable as the first deadline.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
/// The members' rebalance timeout (`max.poll.interval.ms`); longer than
/// the broker's default initial rebalance delay (3 s), so that delay is
/// extended when a second member arrives.
pub const REBALANCE_TIMEOUT_MS: i32 = 6_000;

/// The coordinator is actor 0; members are 1..=n.
pub const COORDINATOR: usize = 0;

/// Deliberately wrong clients, to show the properties have teeth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientBug {
    /// The client as Kafka's is.
    None,
    /// Keeps its partitions when it rejoins and carries them into the
    /// new generation once JoinGroup answers (cooperative rebalancing
    /// without the revocation round).
    KeepAcrossRejoin,
    /// Reads replies that arrive on connections it has given up (no
    /// correlation of replies with requests).
    AcceptStaleReplies,
}

/// What to model, and the limits that keep a run finite.
#[derive(Clone, Debug)]
pub struct Config {
    pub members: usize,
    pub partitions: i32,
    pub bug: ClientBug,
    pub lossy: bool,
    /// Time may pass short of the next deadline (see `coordinator`);
    /// without it the clock only jumps from deadline to deadline.
    pub time_passes: bool,
    /// Members may crash (and a new process starts with nothing).
    pub member_crashes: bool,
    /// Members may close, leaving the group (and a new process starts with
    /// nothing).
    pub member_leaves: bool,
    /// The coordinator may crash too, and the next one loads its records.
    pub coordinator_failover: bool,
    /// The fault budget of a run: requests given up, member crashes and
    /// closes, and coordinator failovers, all members together. States past it are
    /// not explored. (Messages lost need no budget: a lost message is one
    /// never delivered, and the network may hold any message forever.)
    pub max_faults: u32,
    /// States past this generation are not explored.
    pub max_generation: i32,
}

impl Default for Config {
    /// Two members, two partitions, a lossy network and member crashes;
    /// the clock jumps from deadline to deadline.
    fn default() -> Config {
        Config {
            members: 2,
            partitions: 2,
            bug: ClientBug::None,
            lossy: true,
            time_passes: false,
            member_crashes: true,
            member_leaves: false,
            coordinator_failover: false,
            max_faults: 2,
            max_generation: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Join {
        conn: u32,
        member_id: String,
    },
    Sync {
        conn: u32,
        member_id: String,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    },
    Heartbeat {
        conn: u32,
        member_id: String,
        generation: i32,
    },
    /// From a closing consumer; nobody reads the answer.
    Leave {
        conn: u32,
        member_id: String,
    },
    JoinResp {
        conn: u32,
        error: i16,
        generation: i32,
        member_id: String,
        leader: String,
        /// The member list, for the leader only.
        members: Vec<String>,
    },
    SyncResp {
        conn: u32,
        error: i16,
        assignment: Vec<u8>,
    },
    HeartbeatResp {
        conn: u32,
        error: i16,
    },
    /// The coordinator a request was parked on is gone (its connection
    /// dropped).
    NotCoordinator {
        conn: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's clock reaches its next deadline.
    Tick,
    /// The coordinator's clock moves on, short of its next deadline.
    Pass,
    /// A stable member's next heartbeat is due.
    Heartbeat,
    /// A member gives up its outstanding request.
    RequestTimeout,
    /// A member's process crashes and a new one starts.
    Crash,
    /// A member's process closes (LeaveGroup) and a new one starts.
    Close,
    /// The coordinator's broker crashes and the partition's next leader
    /// loads the group from its records.
    Failover,
}

#[derive(Clone, Debug)]
pub enum Node {
    Coordinator(CoordinatorNode),
    Member(MemberNode),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    Coordinator(CoordinatorState),
    Member(MemberState),
}

impl Actor for Node {
    type Msg = Msg;
    type Timer = Timer;
    type State = NodeState;
    type Storage = ();
    type Random = ();

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        match self {
            Node::Coordinator(c) => c.on_start(o),
            Node::Member(m) => m.on_start(o),
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match self {
            Node::Coordinator(c) => c.on_msg(state, src, msg, o),
            Node::Member(m) => m.on_msg(state, msg, o),
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        match self {
            Node::Coordinator(c) => c.on_timeout(state, *timer, o),
            Node::Member(m) => m.on_timeout(state, *timer, o),
        }
    }
}

pub type GroupModel = ActorModel<Node, Config, ()>;
pub type GroupState = ActorModelState<Node, ()>;

pub const SINGLE_OWNER_PER_GENERATION: &str = "single owner per generation";
pub const SINGLE_OWNER_IN_CURRENT_GENERATION: &str = "single owner in the current generation";
pub const OWNERS_AGREE_WITH_COORDINATOR: &str = "owners agree with the coordinator";
pub const STABLE_GROUP: &str = "stable group";
pub const STABLE_AFTER_RESTART: &str = "stable group after a member restarted";
pub const EXPELLED_OWNER: &str = "an expelled member still holds partitions given to another";

/// The `always` properties.
pub const SAFETY: [&str; 3] = [
    SINGLE_OWNER_PER_GENERATION,
    SINGLE_OWNER_IN_CURRENT_GENERATION,
    OWNERS_AGREE_WITH_COORDINATOR,
];

pub fn coordinator(state: &GroupState) -> Option<&CoordinatorState> {
    match &*state.actor_states[COORDINATOR] {
        NodeState::Coordinator(c) => Some(c),
        NodeState::Member(_) => None,
    }
}

/// The members (each the process now running), with their actor index.
pub fn live_members(state: &GroupState) -> impl Iterator<Item = (usize, &MemberState)> {
    state
        .actor_states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &**s {
            NodeState::Member(m) => Some((i, m)),
            NodeState::Coordinator(_) => None,
        })
}

/// The classic group's generation, state and member ids, as the
/// coordinator has them.
pub fn group_view(c: &CoordinatorState) -> Option<(i32, ClassicState, BTreeSet<&str>)> {
    match &c.coordinator.group(GROUP)?.kind {
        Kind::Classic(g) => Some((
            g.generation,
            g.state,
            g.members.keys().map(String::as_str).collect(),
        )),
        Kind::Consumer(_) => None,
    }
}

fn pairs(state: &GroupState) -> Vec<(&MemberState, &MemberState)> {
    let live: Vec<&MemberState> = live_members(state).map(|(_, m)| m).collect();
    let mut out = Vec::new();
    for (i, a) in live.iter().enumerate() {
        for b in &live[i + 1..] {
            out.push((*a, *b));
        }
    }
    out
}

fn single_owner_per_generation(_: &GroupModel, state: &GroupState) -> bool {
    pairs(state)
        .into_iter()
        .all(|(a, b)| match (&a.owned, &b.owned) {
            (Some(x), Some(y)) if x.generation == y.generation => {
                x.partitions.is_disjoint(&y.partitions)
            }
            _ => true,
        })
}

fn single_owner_in_current_generation(_: &GroupModel, state: &GroupState) -> bool {
    let Some((generation, _, members)) = coordinator(state).and_then(group_view) else {
        return true;
    };
    let current = |m: &MemberState| {
        members.contains(m.member_id.as_str())
            && m.owned.as_ref().is_some_and(|o| o.generation == generation)
    };
    pairs(state).into_iter().all(|(a, b)| {
        !(current(a) && current(b))
            || match (&a.owned, &b.owned) {
                (Some(x), Some(y)) => x.partitions.is_disjoint(&y.partitions),
                _ => true,
            }
    })
}

fn owners_agree_with_coordinator(_: &GroupModel, state: &GroupState) -> bool {
    let Some(c) = coordinator(state) else {
        return true;
    };
    let Some(Kind::Classic(g)) = c.coordinator.group(GROUP).map(|g| &g.kind) else {
        return true;
    };
    if g.state != ClassicState::Stable {
        return true;
    }
    live_members(state).all(|(_, m)| {
        let Some(owned) = m.owned.as_ref().filter(|o| o.generation == g.generation) else {
            return true;
        };
        match g.members.get(&m.member_id) {
            Some(cm) => wire::assigned(TOPIC, &cm.assignment).as_ref() == Some(&owned.partitions),
            None => true,
        }
    })
}

fn stable_group(model: &GroupModel, state: &GroupState) -> bool {
    let Some((generation, ClassicState::Stable, members)) = coordinator(state).and_then(group_view)
    else {
        return false;
    };
    let live: Vec<&MemberState> = live_members(state).map(|(_, m)| m).collect();
    if live.len() != model.cfg.members {
        return false;
    }
    let mut covered = BTreeSet::new();
    for m in live {
        let Some(o) = &m.owned else { return false };
        if o.generation != generation || !members.contains(m.member_id.as_str()) {
            return false;
        }
        for p in &o.partitions {
            if !covered.insert(*p) {
                return false;
            }
        }
    }
    covered == (0..model.cfg.partitions).collect()
}

fn stable_after_restart(model: &GroupModel, state: &GroupState) -> bool {
    stable_group(model, state) && live_members(state).any(|(_, m)| m.restarts > 0)
}

/// The zombie of Kafka's classic protocol: a member the group has dropped
/// (its session ran out, or it missed a rebalance) still believes it owns
/// partitions of an older generation that the Stable group has given to
/// another member. Legitimate, and fenced by the generation; reaching it
/// shows the search gets to where generations matter.
fn expelled_owner(_: &GroupModel, state: &GroupState) -> bool {
    let Some((generation, ClassicState::Stable, members)) = coordinator(state).and_then(group_view)
    else {
        return false;
    };
    pairs(state).into_iter().any(|(a, b)| {
        [(a, b), (b, a)]
            .into_iter()
            .any(|(old, new)| match (&old.owned, &new.owned) {
                (Some(x), Some(y)) => {
                    x.generation < generation
                        && !members.contains(old.member_id.as_str())
                        && y.generation == generation
                        && !x.partitions.is_disjoint(&y.partitions)
                }
                _ => false,
            })
    })
}

fn within_bounds(cfg: &Config, state: &GroupState) -> bool {
    let mut faults = 0;
    for s in &state.actor_states {
        match &**s {
            NodeState::Coordinator(c) => {
                faults += c.restarts;
                if group_view(c).is_some_and(|(g, _, _)| g > cfg.max_generation) {
                    return false;
                }
            }
            // Every request given up and every restart takes a connection.
            NodeState::Member(m) => faults += m.conn,
        }
    }
    faults <= cfg.max_faults
}

impl Config {
    pub fn into_model(self) -> GroupModel {
        let coordinator = Id::from(COORDINATOR);
        let (partitions, bug, crashes, leaves) = (
            self.partitions,
            self.bug,
            self.member_crashes,
            self.member_leaves,
        );
        let members: Vec<Node> = (0..self.members)
            .map(|_| {
                Node::Member(MemberNode {
                    coordinator,
                    partitions,
                    bug,
                    crashes,
                    leaves,
                })
            })
            .collect();
        let failover = self.coordinator_failover;
        let time_passes = self.time_passes;
        let lossy = if self.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        };
        ActorModel::new(self, ())
            .actor(Node::Coordinator(CoordinatorNode {
                failover,
                time_passes,
            }))
            .actors(members)
            .init_network(Network::new_unordered_nonduplicating([]))
            .lossy_network(lossy)
            .property(
                Expectation::Always,
                SINGLE_OWNER_PER_GENERATION,
                single_owner_per_generation,
            )
            .property(
                Expectation::Always,
                SINGLE_OWNER_IN_CURRENT_GENERATION,
                single_owner_in_current_generation,
            )
            .property(
                Expectation::Always,
                OWNERS_AGREE_WITH_COORDINATOR,
                owners_agree_with_coordinator,
            )
            .property(Expectation::Sometimes, STABLE_GROUP, stable_group)
            .property(
                Expectation::Sometimes,
                STABLE_AFTER_RESTART,
                stable_after_restart,
            )
            .property(Expectation::Sometimes, EXPELLED_OWNER, expelled_owner)
            .within_boundary(within_bounds)
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

/// Breadth-first search, single-threaded, that stops as soon as
/// `property` has a discovery (for an `always` property, a counterexample:
/// one of the shortest).
pub fn find(cfg: Config, depth: usize, property: &'static str) -> Outcome {
    check::run(
        cfg.into_model(),
        depth,
        Search::Bfs,
        1,
        None,
        check::until(property),
    )
}
