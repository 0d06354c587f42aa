//! The client side of the classic protocol, as a Kafka consumer runs it
//! with the eager rebalance protocol and the range assignor
//! (`AbstractCoordinator` and `ConsumerCoordinator` in the Java client):
//!
//! * JoinGroup without a member id; MEMBER_ID_REQUIRED hands one back and
//!   the member joins again with it (KIP-394).
//! * The join completes with a generation; the leader gets the member
//!   list, computes the range assignment of the topic's partitions and
//!   sends it in its SyncGroup; followers send an empty SyncGroup and get
//!   their part back.
//! * Only a successful SyncGroup makes the member the owner of its
//!   partitions, for that generation. It then heartbeats; on
//!   REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID it
//!   gives up everything it owns (eager: `onJoinPrepare` revokes all) and
//!   joins again, forgetting its generation on ILLEGAL_GENERATION and its
//!   member id as well on UNKNOWN_MEMBER_ID.
//! * One request at a time, on a connection. A request may be given up at
//!   any moment (its message or reply lost, or just slow): the connection
//!   is dropped, so a late reply on it is never read, and the member
//!   retries on a new one — a JoinGroup by joining again, a SyncGroup by
//!   rejoining, a Heartbeat by heartbeating again (ownership kept, as the
//!   Java client keeps its partitions while the coordinator is away).
//! * A crash loses everything (a new process never reads a reply meant for
//!   an old connection); the member starts again with no member id and
//!   owns nothing. A close is the same with a LeaveGroup sent first, as
//!   `KafkaConsumer::close` does.
//!
//! [`ClientBug`] switches on deliberately wrong variants, to show that the
//! properties can fail.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use odradek_core::group::{assignor, error};
use stateright::actor::{model_timeout, Id, Out};

use super::{wire, ClientBug, Msg, Node, NodeState, Timer, TOPIC, TOPIC_ID};

/// Which phase of the protocol the member is in; every phase but `Stable`
/// has one request outstanding on the current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Joining,
    Syncing,
    Stable,
    Heartbeating,
}

/// Partitions a member believes it owns, and in which generation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ownership {
    pub generation: i32,
    pub partitions: BTreeSet<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberState {
    /// The connection requests go out on; replies on any other are stale.
    pub conn: u32,
    /// How many times this member has crashed and started again.
    pub restarts: u32,
    pub member_id: String,
    /// The generation of the last successful JoinGroup; -1 for none.
    pub generation: i32,
    pub phase: Phase,
    pub owned: Option<Ownership>,
}

#[derive(Clone, Debug)]
pub struct MemberNode {
    pub coordinator: Id,
    pub partitions: i32,
    pub bug: ClientBug,
    pub crashes: bool,
    pub leaves: bool,
}

fn member_mut<'a>(state: &'a mut Cow<NodeState>) -> &'a mut MemberState {
    match state.to_mut() {
        NodeState::Member(m) => m,
        NodeState::Coordinator(_) => unreachable!("a member node holds member state"),
    }
}

impl MemberNode {
    pub(super) fn on_start(&self, o: &mut Out<Node>) -> NodeState {
        NodeState::Member(self.start(0, 0, o))
    }

    /// A new process: nothing but the connection counter (and, for the
    /// bounds, the restart count) carries over.
    fn start(&self, conn: u32, restarts: u32, o: &mut Out<Node>) -> MemberState {
        let mut s = MemberState {
            conn,
            restarts,
            member_id: String::new(),
            generation: -1,
            phase: Phase::Joining,
            owned: None,
        };
        if self.crashes {
            o.set_timer(Timer::Crash, model_timeout());
        }
        if self.leaves {
            o.set_timer(Timer::Close, model_timeout());
        }
        self.send_join(&mut s, o);
        s
    }

    fn send_join(&self, s: &mut MemberState, o: &mut Out<Node>) {
        s.phase = Phase::Joining;
        o.cancel_timer(Timer::Heartbeat);
        o.set_timer(Timer::RequestTimeout, model_timeout());
        o.send(
            self.coordinator,
            Msg::Join {
                conn: s.conn,
                member_id: s.member_id.clone(),
            },
        );
    }

    /// `onJoinPrepare` and a new JoinGroup: the eager protocol revokes
    /// everything first.
    fn rejoin(&self, s: &mut MemberState, o: &mut Out<Node>) {
        if self.bug != ClientBug::KeepAcrossRejoin {
            s.owned = None;
        }
        self.send_join(s, o);
    }

    fn new_connection(&self, s: &mut MemberState) {
        s.conn += 1;
    }

    /// The range assignor over the members the leader was given.
    fn assign(&self, members: &[String]) -> Vec<(String, Vec<u8>)> {
        let subscriptions: BTreeMap<String, BTreeSet<u128>> = members
            .iter()
            .map(|m| (m.clone(), BTreeSet::from([TOPIC_ID])))
            .collect();
        let partitions = BTreeMap::from([(TOPIC_ID, self.partitions)]);
        let previous = assignor::Assignment::new();
        let out = assignor::range(&assignor::AssignorInput {
            subscriptions: &subscriptions,
            partitions: &partitions,
            previous: &previous,
        });
        members
            .iter()
            .map(|m| {
                let parts = out
                    .get(m)
                    .and_then(|t| t.get(&TOPIC_ID))
                    .cloned()
                    .unwrap_or_default();
                (m.clone(), wire::assignment(TOPIC, &parts))
            })
            .collect()
    }

    /// Whether a reply belongs to the request outstanding in `phase`.
    fn expects(&self, s: &MemberState, conn: u32, phase: Phase) -> bool {
        s.phase == phase && (conn == s.conn || self.bug == ClientBug::AcceptStaleReplies)
    }

    pub(super) fn on_msg(&self, state: &mut Cow<NodeState>, msg: Msg, o: &mut Out<Node>) {
        let NodeState::Member(cur) = &**state else {
            unreachable!("a member node holds member state")
        };
        match msg {
            Msg::JoinResp {
                conn,
                error,
                generation,
                member_id,
                leader,
                members,
            } => {
                if !self.expects(cur, conn, Phase::Joining) {
                    return;
                }
                let s = member_mut(state);
                match error {
                    error::NONE => {
                        s.generation = generation;
                        s.member_id = member_id;
                        if self.bug == ClientBug::KeepAcrossRejoin {
                            // Wrong: what it had carries over into the new
                            // generation until SyncGroup says otherwise.
                            if let Some(owned) = &mut s.owned {
                                owned.generation = generation;
                            }
                        }
                        let assignments = if leader == s.member_id {
                            self.assign(&members)
                        } else {
                            Vec::new()
                        };
                        s.phase = Phase::Syncing;
                        o.set_timer(Timer::RequestTimeout, model_timeout());
                        o.send(
                            self.coordinator,
                            Msg::Sync {
                                conn: s.conn,
                                member_id: s.member_id.clone(),
                                generation,
                                assignments,
                            },
                        );
                    }
                    error::MEMBER_ID_REQUIRED => {
                        s.member_id = member_id;
                        self.send_join(s, o);
                    }
                    error::UNKNOWN_MEMBER_ID | error::FENCED_INSTANCE_ID => {
                        s.member_id.clear();
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    error::ILLEGAL_GENERATION => {
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    _ => self.rejoin(s, o),
                }
            }
            Msg::SyncResp {
                conn,
                error,
                assignment,
            } => {
                if !self.expects(cur, conn, Phase::Syncing) {
                    return;
                }
                let s = member_mut(state);
                match error {
                    error::NONE => {
                        let partitions = wire::assigned(TOPIC, &assignment)
                            .expect("the leader's assignment parses");
                        s.owned = Some(Ownership {
                            generation: s.generation,
                            partitions,
                        });
                        s.phase = Phase::Stable;
                        o.cancel_timer(Timer::RequestTimeout);
                        o.set_timer(Timer::Heartbeat, model_timeout());
                    }
                    error::UNKNOWN_MEMBER_ID | error::FENCED_INSTANCE_ID => {
                        s.member_id.clear();
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    error::ILLEGAL_GENERATION => {
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    _ => self.rejoin(s, o),
                }
            }
            Msg::HeartbeatResp { conn, error } => {
                if !self.expects(cur, conn, Phase::Heartbeating) {
                    return;
                }
                let s = member_mut(state);
                match error {
                    error::NONE => {
                        s.phase = Phase::Stable;
                        o.cancel_timer(Timer::RequestTimeout);
                        o.set_timer(Timer::Heartbeat, model_timeout());
                    }
                    error::UNKNOWN_MEMBER_ID | error::FENCED_INSTANCE_ID => {
                        s.member_id.clear();
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    error::ILLEGAL_GENERATION => {
                        s.generation = -1;
                        self.rejoin(s, o);
                    }
                    _ => self.rejoin(s, o),
                }
            }
            Msg::NotCoordinator { conn } => {
                // The coordinator went away with the request: find it again
                // and retry, JoinGroup as it was, SyncGroup by rejoining.
                if self.expects(cur, conn, Phase::Joining) {
                    let s = member_mut(state);
                    self.send_join(s, o);
                } else if self.expects(cur, conn, Phase::Syncing) {
                    let s = member_mut(state);
                    self.rejoin(s, o);
                }
            }
            Msg::Join { .. } | Msg::Sync { .. } | Msg::Heartbeat { .. } | Msg::Leave { .. } => {}
        }
    }

    pub(super) fn on_timeout(&self, state: &mut Cow<NodeState>, timer: Timer, o: &mut Out<Node>) {
        let NodeState::Member(cur) = &**state else {
            unreachable!("a member node holds member state")
        };
        match (timer, cur.phase) {
            (Timer::Close, _) => {
                // `close()`: the consumer revokes what it owns, sends
                // LeaveGroup if it has a member id, and exits; a new
                // process takes its place (one step, as for a crash).
                if !cur.member_id.is_empty() {
                    o.send(
                        self.coordinator,
                        Msg::Leave {
                            conn: cur.conn,
                            member_id: cur.member_id.clone(),
                        },
                    );
                }
                let (conn, restarts) = (cur.conn + 1, cur.restarts + 1);
                let fresh = self.start(conn, restarts, o);
                o.cancel_timer(Timer::Heartbeat);
                *member_mut(state) = fresh;
            }
            (Timer::Crash, _) => {
                // The process dies and a new one starts in its place: what
                // the old one owned is gone with it, and any reply still
                // travelling to it is to a connection the new one never
                // opened. (Crash and restart are one step: a new process
                // that is slow to start is one whose first JoinGroup is
                // slow to arrive.)
                let (conn, restarts) = (cur.conn + 1, cur.restarts + 1);
                let fresh = self.start(conn, restarts, o);
                o.cancel_timer(Timer::Heartbeat);
                *member_mut(state) = fresh;
            }
            (Timer::Heartbeat, Phase::Stable) => {
                let s = member_mut(state);
                s.phase = Phase::Heartbeating;
                o.set_timer(Timer::RequestTimeout, model_timeout());
                o.send(
                    self.coordinator,
                    Msg::Heartbeat {
                        conn: s.conn,
                        member_id: s.member_id.clone(),
                        generation: s.generation,
                    },
                );
            }
            (Timer::RequestTimeout, Phase::Joining) => {
                let s = member_mut(state);
                self.new_connection(s);
                self.send_join(s, o);
            }
            (Timer::RequestTimeout, Phase::Syncing) => {
                let s = member_mut(state);
                self.new_connection(s);
                self.rejoin(s, o);
            }
            (Timer::RequestTimeout, Phase::Heartbeating) => {
                let s = member_mut(state);
                self.new_connection(s);
                s.phase = Phase::Stable;
                o.set_timer(Timer::Heartbeat, model_timeout());
            }
            _ => {}
        }
    }
}
