//! The broker side: the real [`Coordinator`] of `odradek-core`, driven as
//! the broker drives it. Each request becomes a call at the node's current
//! time; the replies the call makes due (to this request or to requests
//! parked earlier) go out to whoever is waiting, the waiter being the
//! member's connection. Time passes by two timers, each of which can fire
//! between any two deliveries: `Tick` jumps the clock to the
//! coordinator's own [`Coordinator::next_deadline`] and calls
//! [`Coordinator::tick`] there, as the broker's driver does, so every
//! deadline can pass at any point of any interleaving; `Pass` moves it a
//! quantum short of the next deadline, so that members heartbeat, join and
//! sync at different times and their deadlines differ (one member's
//! session can run out while the other's does not).
//!
//! With failover on, the records the coordinator writes are kept
//! (compacted, as `__consumer_offsets` is), and the coordinator can crash
//! at any point and come back by loading them, as a new leader of the
//! partition would; the requests parked on the old one get
//! NOT_COORDINATOR (their connections drop). Requests still travelling to
//! the old one are delivered to the new one: more than can happen, which
//! can only add behaviours, never hide one.

use std::borrow::Cow;
use std::collections::BTreeMap;

use odradek_core::group::records::{Key, Value};
use odradek_core::group::{
    Coordinator, Effects, GroupConfig, JoinRequest, Reply, SyncRequest, TopicLookup, Waiter,
};
use stateright::actor::{model_timeout, Id, Out};

use super::{
    wire, Msg, Node, NodeState, Timer, GROUP, PROTOCOL, PROTOCOL_TYPE, REBALANCE_TIMEOUT_MS,
    SESSION_TIMEOUT_MS, TOPIC,
};

/// A deadline this far out is no deadline: offsets retention is not part
/// of the model, so its periodic check is put out of reach.
pub const NEVER: u64 = u64::MAX / 4;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorState {
    pub coordinator: Coordinator,
    /// The node's clock, in ms; it also serves as the wall clock.
    pub now: u64,
    pub restarts: u32,
    /// With failover on, the partition's log as written so far, compacted
    /// (the last value of each key) as `__consumer_offsets` is; empty
    /// otherwise.
    pub log: BTreeMap<Key, Option<Value>>,
}

/// How far the `Pass` timer moves the clock: less than the rebalance and
/// session timeouts, more than the initial rebalance delay.
pub const QUANTUM_MS: u64 = 4_000;

#[derive(Clone, Debug)]
pub struct CoordinatorNode {
    pub failover: bool,
    pub time_passes: bool,
}

struct NoTopics;

impl TopicLookup for NoTopics {
    fn by_name(&self, _: &str) -> Option<(u128, i32)> {
        None
    }
    fn name_of(&self, _: u128) -> Option<String> {
        None
    }
}

/// The group settings the model runs with: the broker defaults, with
/// offsets retention out of the way.
pub fn config() -> GroupConfig {
    GroupConfig {
        offsets_retention_check_interval_ms: NEVER,
        ..GroupConfig::default()
    }
}

fn waiter(src: Id, conn: u32) -> Waiter {
    ((usize::from(src) as u64) << 32) | u64::from(conn)
}

fn unwaiter(w: Waiter) -> (Id, u32) {
    (Id::from((w >> 32) as usize), (w & 0xffff_ffff) as u32)
}

fn client_id(src: Id) -> String {
    format!("m{}", usize::from(src))
}

impl CoordinatorNode {
    pub(super) fn on_start(&self, o: &mut Out<Node>) -> NodeState {
        let s = self.start(BTreeMap::new(), 0, 0);
        if self.failover {
            o.set_timer(Timer::Failover, model_timeout());
        }
        self.set_timers(&s, o);
        NodeState::Coordinator(s)
    }

    /// A coordinator that loads the partition's records at `now`; an
    /// incarnation other than the first gets a salt of its own, as another
    /// broker would: member ids must not repeat those handed out before.
    fn start(
        &self,
        log: BTreeMap<Key, Option<Value>>,
        now: u64,
        restarts: u32,
    ) -> CoordinatorState {
        let mut coordinator = Coordinator::new(config(), 1, u64::from(restarts));
        coordinator
            .load(0, log.clone(), now, now as i64)
            .expect("the coordinator's own records load");
        CoordinatorState {
            coordinator,
            now,
            restarts,
            log,
        }
    }

    pub(super) fn on_msg(&self, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Node>) {
        let mut fx = Effects::default();
        let s = coordinator_mut(state);
        let (now, wall) = (s.now, s.now as i64);
        match msg {
            Msg::Join { conn, member_id } => {
                let req = JoinRequest {
                    group: GROUP.into(),
                    member_id,
                    instance_id: None,
                    client_id: client_id(src),
                    client_host: format!("/10.0.0.{}", usize::from(src)),
                    session_timeout_ms: SESSION_TIMEOUT_MS,
                    rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
                    protocol_type: PROTOCOL_TYPE.into(),
                    protocols: vec![(PROTOCOL.into(), wire::subscription(TOPIC))],
                    require_known_member: true,
                };
                s.coordinator
                    .join(&req, waiter(src, conn), now, wall, &mut fx);
            }
            Msg::Sync {
                conn,
                member_id,
                generation,
                assignments,
            } => {
                let req = SyncRequest {
                    group: GROUP.into(),
                    generation,
                    member_id,
                    instance_id: None,
                    protocol_type: Some(PROTOCOL_TYPE.into()),
                    protocol: Some(PROTOCOL.into()),
                    assignments,
                };
                s.coordinator
                    .sync(&req, waiter(src, conn), now, wall, &mut fx);
            }
            Msg::Heartbeat {
                conn,
                member_id,
                generation,
            } => {
                let error = s
                    .coordinator
                    .heartbeat(GROUP, &member_id, None, generation, now);
                o.send(src, Msg::HeartbeatResp { conn, error });
            }
            Msg::Leave { member_id, .. } => {
                // Whatever it answers goes to a process that has exited.
                let _ = s
                    .coordinator
                    .leave(GROUP, &[(member_id, None)], now, wall, &mut fx);
            }
            Msg::JoinResp { .. }
            | Msg::SyncResp { .. }
            | Msg::HeartbeatResp { .. }
            | Msg::NotCoordinator { .. } => {}
        }
        self.effects(state, fx, o);
    }

    pub(super) fn on_timeout(&self, state: &mut Cow<NodeState>, timer: Timer, o: &mut Out<Node>) {
        let NodeState::Coordinator(cur) = &**state else {
            unreachable!("the coordinator node holds coordinator state")
        };
        if timer == Timer::Failover {
            // The broker dies, and the partition's next leader loads its
            // records, with the clock where it was. The requests parked on
            // the old one can no longer be answered (`unload` names them):
            // their connections drop, which their clients see as
            // NOT_COORDINATOR, and they retry.
            let (log, now, restarts) = (cur.log.clone(), cur.now, cur.restarts + 1);
            let s = coordinator_mut(state);
            for w in s.coordinator.unload(0) {
                let (dst, conn) = unwaiter(w);
                o.send(dst, Msg::NotCoordinator { conn });
            }
            *s = self.start(log, now, restarts);
            let NodeState::Coordinator(s) = &**state else {
                unreachable!("the coordinator node holds coordinator state")
            };
            self.set_timers(s, o);
            o.set_timer(Timer::Failover, model_timeout());
            return;
        }
        let deadline = cur.coordinator.next_deadline();
        if timer == Timer::Pass {
            if cur.now + QUANTUM_MS >= deadline || deadline >= NEVER {
                return;
            }
            let s = coordinator_mut(state);
            s.now += QUANTUM_MS;
            let NodeState::Coordinator(s) = &**state else {
                unreachable!("the coordinator node holds coordinator state")
            };
            self.set_timers(s, o);
            return;
        }
        if timer != Timer::Tick || deadline >= NEVER {
            return;
        }
        let mut fx = Effects::default();
        let s = coordinator_mut(state);
        s.now = s.now.max(deadline);
        s.coordinator.tick(s.now, s.now as i64, &NoTopics, &mut fx);
        self.effects(state, fx, o);
    }

    /// Sends the replies that are due, keeps the records, and sets the
    /// tick for the next deadline.
    fn effects(&self, state: &mut Cow<NodeState>, fx: Effects, o: &mut Out<Node>) {
        for (w, reply) in fx.replies {
            let (dst, conn) = unwaiter(w);
            let msg = match reply {
                Reply::Join(r) => Msg::JoinResp {
                    conn,
                    error: r.error,
                    generation: r.generation,
                    member_id: r.member_id,
                    leader: r.leader,
                    members: r.members.into_iter().map(|(id, _, _)| id).collect(),
                },
                Reply::Sync(r) => Msg::SyncResp {
                    conn,
                    error: r.error,
                    assignment: r.assignment,
                },
            };
            o.send(dst, msg);
        }
        if self.failover {
            // The records are durable before any reply of the same step can
            // be read, as the broker holds replies until the records before
            // them are synced.
            let s = coordinator_mut(state);
            for w in fx.records {
                s.log.insert(w.key, w.value);
            }
        }
        let NodeState::Coordinator(s) = &**state else {
            unreachable!("the coordinator node holds coordinator state")
        };
        self.set_timers(s, o);
    }

    /// `Tick` while there is a deadline; `Pass` while the next one is more
    /// than a quantum away.
    fn set_timers(&self, s: &CoordinatorState, o: &mut Out<Node>) {
        let deadline = s.coordinator.next_deadline();
        if deadline < NEVER {
            o.set_timer(Timer::Tick, model_timeout());
        } else {
            o.cancel_timer(Timer::Tick);
        }
        if self.time_passes && deadline < NEVER && s.now + QUANTUM_MS < deadline {
            o.set_timer(Timer::Pass, model_timeout());
        } else {
            o.cancel_timer(Timer::Pass);
        }
    }
}

fn coordinator_mut<'a>(state: &'a mut Cow<NodeState>) -> &'a mut CoordinatorState {
    match state.to_mut() {
        NodeState::Coordinator(c) => c,
        NodeState::Member(_) => unreachable!("the coordinator node holds coordinator state"),
    }
}
