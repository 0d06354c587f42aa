//! Classic groups: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, with the
//! assignment computed by the group's leader and passed through.
//!
//! The state machine is Kafka's: Empty → PreparingRebalance (members
//! rejoin) → CompletingRebalance (the leader assigns) → Stable, and back to
//! PreparingRebalance on any change of membership or subscription. Every
//! rebalance bumps the generation, and requests from another generation
//! are refused with ILLEGAL_GENERATION, so a member that missed a rebalance
//! cannot act on partitions that are now someone else's.

use std::collections::{BTreeMap, BTreeSet};

use super::records::{self, ClassicGroupValue, ClassicMemberValue, Key, Value};
use super::{
    error, CommitRequest, Description, Effects, GroupConfig, MemberDescription, Reply, Waiter,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassicMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
    pub join_waiter: Option<Waiter>,
    pub sync_waiter: Option<Waiter>,
    pub heartbeat_deadline: u64,
    pub is_new: bool,
}

impl ClassicMember {
    fn metadata(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassicGroup {
    pub state: ClassicState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, with the time by
    /// which the member must join with it.
    pub pending: BTreeMap<String, u64>,
    /// group.instance.id → member id
    pub statics: BTreeMap<String, String>,
    /// When the group entered its state (wall clock), for retention.
    pub state_timestamp: i64,
    /// PreparingRebalance: when the join phase ends whoever has rejoined.
    pub join_deadline: Option<u64>,
    /// The initial delay of an empty group's first rebalance: how much it
    /// may still grow while members keep arriving.
    pub initial_delay_left: Option<u64>,
    pub new_member_added: bool,
    /// Members of this generation yet to send SyncGroup, and by when.
    pub pending_sync: BTreeSet<String>,
    pub sync_deadline: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    /// v4+: an unknown member is given an id and asked to come back with it.
    pub require_known_member: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JoinReply {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// For the leader: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
}

impl JoinReply {
    pub fn error(code: i16, member_id: &str) -> JoinReply {
        JoinReply {
            error: code,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyncReply {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Vec<u8>,
}

impl SyncReply {
    pub fn error(code: i16) -> SyncReply {
        SyncReply {
            error: code,
            protocol_type: None,
            protocol: None,
            assignment: Vec::new(),
        }
    }
}

pub(super) fn validate_join(req: &JoinRequest, config: &GroupConfig) -> Result<(), i16> {
    if req.group.is_empty() {
        return Err(error::INVALID_GROUP_ID);
    }
    if req.session_timeout_ms < config.min_session_timeout_ms
        || req.session_timeout_ms > config.max_session_timeout_ms
    {
        return Err(error::INVALID_SESSION_TIMEOUT);
    }
    if req.protocol_type.is_empty() || req.protocols.is_empty() {
        return Err(error::INCONSISTENT_GROUP_PROTOCOL);
    }
    Ok(())
}

fn ms(v: i32) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl ClassicGroup {
    pub fn new(wall: i64) -> ClassicGroup {
        ClassicGroup {
            state: ClassicState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            statics: BTreeMap::new(),
            state_timestamp: wall,
            join_deadline: None,
            initial_delay_left: None,
            new_member_added: false,
            pending_sync: BTreeSet::new(),
            sync_deadline: None,
        }
    }

    /// A group as its last metadata record left it. Members get a session
    /// from `now`: they do not know the coordinator restarted.
    pub fn from_record(v: &ClassicGroupValue, now: u64) -> ClassicGroup {
        let mut g = ClassicGroup::new(v.state_timestamp);
        g.protocol_type = Some(v.protocol_type.clone()).filter(|s| !s.is_empty());
        g.protocol = v.protocol.clone();
        g.generation = v.generation;
        g.leader = v.leader.clone();
        for m in &v.members {
            let protocol = v.protocol.clone().unwrap_or_default();
            g.members.insert(
                m.member_id.clone(),
                ClassicMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocol_type: v.protocol_type.clone(),
                    protocols: vec![(protocol, m.subscription.clone())],
                    assignment: m.assignment.clone(),
                    join_waiter: None,
                    sync_waiter: None,
                    heartbeat_deadline: now + ms(m.session_timeout_ms),
                    is_new: false,
                },
            );
            if let Some(i) = &m.instance_id {
                g.statics.insert(i.clone(), m.member_id.clone());
            }
        }
        g.state = if g.members.is_empty() {
            ClassicState::Empty
        } else {
            ClassicState::Stable
        };
        g
    }

    fn record(&self) -> ClassicGroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        ClassicGroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .values()
                .map(|m| ClassicMemberValue {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    fn store(&self, group: &str, partition: i32, fx: &mut Effects) {
        fx.write(
            partition,
            Key::ClassicGroup {
                group: group.to_string(),
            },
            Some(Value::ClassicGroup(self.record())),
        );
    }

    pub fn waiters(&self) -> Vec<Waiter> {
        self.members
            .values()
            .flat_map(|m| m.join_waiter.into_iter().chain(m.sync_waiter))
            .collect()
    }

    pub(super) fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut out = BTreeSet::new();
        for m in self.members.values() {
            out.extend(records::subscribed_topics(&m.metadata(&protocol))?);
        }
        Some(out)
    }

    fn set_state(&mut self, s: ClassicState, wall: i64) {
        self.state = s;
        self.state_timestamp = wall;
    }

    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id {
            Some(i) => self.statics.get(i).is_some_and(|m| m != member_id),
            None => false,
        }
    }

    fn max_rebalance_timeout(&self) -> u64 {
        self.members
            .values()
            .map(|m| ms(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Option<BTreeSet<String>> = None;
        for m in self.members.values() {
            let names: BTreeSet<String> = m.protocols.iter().map(|(n, _)| n.clone()).collect();
            candidates = Some(match candidates {
                None => names,
                Some(c) => c.intersection(&names).cloned().collect(),
            });
        }
        let candidates = candidates?;
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.clone()).or_default() += 1;
            }
        }
        // Most votes; among equals the first in name order, deterministically.
        let best = votes.values().copied().max()?;
        votes.into_iter().find(|(_, v)| *v == best).map(|(n, _)| n)
    }

    /// Whether a joining member can be in the group with the others.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(n, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(x, _)| x == n))
        })
    }

    fn current_join_reply(&self, member_id: &str, for_leader: bool) -> JoinReply {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinReply {
            error: error::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members: if for_leader {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            m.instance_id.clone(),
                            m.metadata(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
        &mut self,
        group: &str,
        partition: i32,
        req: &JoinRequest,
        new_id: Option<String>,
        waiter: Waiter,
        now: u64,
        wall: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) {
        let reply = |fx: &mut Effects, r: JoinReply| fx.replies.push((waiter, Reply::Join(r)));
        let known = self.members.contains_key(&req.member_id);
        if !self.supports(&req.protocol_type, &req.protocols) {
            return reply(
                fx,
                JoinReply::error(error::INCONSISTENT_GROUP_PROTOCOL, &req.member_id),
            );
        }
        if let Some(new_id) = new_id {
            // An unknown member.
            if self.members.len() >= config.max_size {
                return reply(fx, JoinReply::error(error::GROUP_MAX_SIZE_REACHED, ""));
            }
            if let Some(instance) = &req.instance_id {
                if let Some(old) = self.statics.get(instance).cloned() {
                    return self.replace_static(
                        group, partition, req, &old, new_id, waiter, now, wall, fx,
                    );
                }
                self.add_member(req, new_id, waiter, now, wall, config);
                return self.after_member_change(group, partition, now, wall, config, fx);
            }
            if req.require_known_member {
                self.pending
                    .insert(new_id.clone(), now + ms(req.session_timeout_ms));
                return reply(fx, JoinReply::error(error::MEMBER_ID_REQUIRED, &new_id));
            }
            self.add_member(req, new_id, waiter, now, wall, config);
            return self.after_member_change(group, partition, now, wall, config, fx);
        }
        if self.pending.remove(&req.member_id).is_some() {
            self.add_member(req, req.member_id.clone(), waiter, now, wall, config);
            return self.after_member_change(group, partition, now, wall, config, fx);
        }
        if !known {
            return reply(
                fx,
                JoinReply::error(error::UNKNOWN_MEMBER_ID, &req.member_id),
            );
        }
        if self.is_fenced(&req.member_id, req.instance_id.as_deref()) {
            return reply(
                fx,
                JoinReply::error(error::FENCED_INSTANCE_ID, &req.member_id),
            );
        }
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        let m = self.members.get_mut(&req.member_id).expect("known");
        let unchanged = m.protocols == req.protocols;
        m.heartbeat_deadline = now + ms(req.session_timeout_ms);
        match self.state {
            ClassicState::CompletingRebalance | ClassicState::Stable
                if unchanged && !(self.state == ClassicState::Stable && is_leader) =>
            {
                // A repeated join (a lost response): the same answer again.
                let r = self.current_join_reply(&req.member_id, is_leader);
                reply(fx, r)
            }
            _ => {
                if let Some(old) = m.join_waiter.replace(waiter) {
                    if old != waiter {
                        fx.replies.push((
                            old,
                            Reply::Join(JoinReply::error(
                                error::REBALANCE_IN_PROGRESS,
                                &req.member_id,
                            )),
                        ));
                    }
                }
                m.protocols = req.protocols.clone();
                m.session_timeout_ms = req.session_timeout_ms;
                m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                m.client_id = req.client_id.clone();
                m.client_host = req.client_host.clone();
                self.after_member_change(group, partition, now, wall, config, fx)
            }
        }
    }

    fn add_member(
        &mut self,
        req: &JoinRequest,
        id: String,
        waiter: Waiter,
        now: u64,
        _wall: i64,
        _config: &GroupConfig,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(i) = &req.instance_id {
            self.statics.insert(i.clone(), id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        // Only a new group's first rebalance is stretched by arrivals.
        if self.state == ClassicState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        self.members.insert(
            id.clone(),
            ClassicMember {
                member_id: id,
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocol_type: req.protocol_type.clone(),
                protocols: req.protocols.clone(),
                assignment: Vec::new(),
                join_waiter: Some(waiter),
                sync_waiter: None,
                heartbeat_deadline: now + ms(req.session_timeout_ms),
                is_new: true,
            },
        );
    }

    /// A static member restarting under a new member id: the old id is
    /// fenced and the new one takes its place. In a stable group with the
    /// same subscription it gets the current generation back and no
    /// rebalance happens (KIP-345); otherwise the group rebalances.
    #[allow(clippy::too_many_arguments)]
    fn replace_static(
        &mut self,
        group: &str,
        partition: i32,
        req: &JoinRequest,
        old: &str,
        new_id: String,
        waiter: Waiter,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        let Some(mut m) = self.members.remove(old) else {
            self.statics
                .remove(req.instance_id.as_deref().unwrap_or_default());
            return;
        };
        // Whatever the old incarnation still waits for, it is fenced.
        if let Some(w) = m.join_waiter.take() {
            fx.replies.push((
                w,
                Reply::Join(JoinReply::error(error::FENCED_INSTANCE_ID, old)),
            ));
        }
        if let Some(w) = m.sync_waiter.take() {
            fx.replies
                .push((w, Reply::Sync(SyncReply::error(error::FENCED_INSTANCE_ID))));
        }
        let unchanged = m.protocols == req.protocols;
        m.member_id = new_id.clone();
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.heartbeat_deadline = now + ms(req.session_timeout_ms);
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old) {
            self.pending_sync.insert(new_id.clone());
        }
        if let Some(i) = &req.instance_id {
            self.statics.insert(i.clone(), new_id.clone());
        }
        let is_leader = self.leader.as_deref() == Some(new_id.as_str());
        if self.state == ClassicState::Stable && unchanged {
            self.members.insert(new_id.clone(), m);
            // The new id must be durable before the member uses it: a
            // coordinator restart would otherwise fence it.
            self.store(group, partition, fx);
            let mut r = self.current_join_reply(&new_id, is_leader);
            // KIP-814: a static leader rejoining gets the members but must
            // not reassign; the assignment stands.
            r.skip_assignment = is_leader;
            fx.replies.push((waiter, Reply::Join(r)));
            return;
        }
        m.protocols = req.protocols.clone();
        m.join_waiter = Some(waiter);
        self.members.insert(new_id, m);
        self.rebalance_or_complete(group, partition, now, wall, fx);
    }

    fn after_member_change(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) {
        if self.state == ClassicState::Empty {
            // The first members of an empty group wait a little for the
            // others (`group.initial.rebalance.delay.ms`), so a group
            // starting up rebalances once rather than once per member.
            let delay = ms(config.initial_rebalance_delay_ms).min(self.max_rebalance_timeout());
            self.prepare_rebalance(now, wall, fx);
            self.join_deadline = Some(now + delay);
            self.initial_delay_left = Some(self.max_rebalance_timeout().saturating_sub(delay));
            self.new_member_added = false;
            return;
        }
        self.rebalance_or_complete(group, partition, now, wall, fx);
    }

    fn rebalance_or_complete(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        if matches!(
            self.state,
            ClassicState::Stable | ClassicState::CompletingRebalance
        ) {
            self.prepare_rebalance(now, wall, fx);
        }
        self.try_complete_join(group, partition, now, wall, fx);
    }

    fn prepare_rebalance(&mut self, now: u64, wall: i64, fx: &mut Effects) {
        if self.state == ClassicState::CompletingRebalance {
            // The leader's assignment for this generation will never come
            // now: members waiting for it must rejoin.
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    fx.replies.push((
                        w,
                        Reply::Sync(SyncReply::error(error::REBALANCE_IN_PROGRESS)),
                    ));
                }
            }
        }
        for m in self.members.values_mut() {
            m.assignment.clear();
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        self.initial_delay_left = None;
        self.join_deadline = Some(now + self.max_rebalance_timeout());
        self.set_state(ClassicState::PreparingRebalance, wall);
    }

    fn try_complete_join(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        if self.state != ClassicState::PreparingRebalance || self.initial_delay_left.is_some() {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        if all_joined && self.pending.is_empty() {
            self.complete_join(group, partition, now, wall, fx);
        }
    }

    /// Ends the join phase: members that did not rejoin are out, the
    /// generation moves on and every member that did is told.
    fn complete_join(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id, fx);
        }
        self.join_deadline = None;
        self.initial_delay_left = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(ClassicState::Empty, wall);
            self.store(group, partition, fx);
            return;
        }
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(ClassicState::CompletingRebalance, wall);
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let r = self.current_join_reply(&id, id == leader);
            let m = self.members.get_mut(&id).expect("listed");
            m.is_new = false;
            m.heartbeat_deadline = now + ms(m.session_timeout_ms);
            if let Some(w) = m.join_waiter.take() {
                fx.replies.push((w, Reply::Join(r)));
            }
        }
    }

    fn remove_member(&mut self, id: &str, fx: &mut Effects) {
        if let Some(m) = self.members.remove(id) {
            if let Some(w) = m.join_waiter {
                fx.replies.push((
                    w,
                    Reply::Join(JoinReply::error(error::UNKNOWN_MEMBER_ID, id)),
                ));
            }
            if let Some(w) = m.sync_waiter {
                fx.replies
                    .push((w, Reply::Sync(SyncReply::error(error::UNKNOWN_MEMBER_ID))));
            }
            if let Some(i) = m.instance_id {
                if self.statics.get(&i).map(String::as_str) == Some(id) {
                    self.statics.remove(&i);
                }
            }
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn sync(
        &mut self,
        group: &str,
        partition: i32,
        req: &SyncRequest,
        waiter: Waiter,
        now: u64,
        wall: i64,
        _config: &GroupConfig,
        fx: &mut Effects,
    ) {
        let reply = |fx: &mut Effects, r: SyncReply| fx.replies.push((waiter, Reply::Sync(r)));
        if !self.members.contains_key(&req.member_id) {
            return reply(fx, SyncReply::error(error::UNKNOWN_MEMBER_ID));
        }
        if self.is_fenced(&req.member_id, req.instance_id.as_deref()) {
            return reply(fx, SyncReply::error(error::FENCED_INSTANCE_ID));
        }
        if req.generation != self.generation {
            return reply(fx, SyncReply::error(error::ILLEGAL_GENERATION));
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || req
                .protocol
                .as_ref()
                .is_some_and(|p| Some(p) != self.protocol.as_ref())
        {
            return reply(fx, SyncReply::error(error::INCONSISTENT_GROUP_PROTOCOL));
        }
        let m = self.members.get_mut(&req.member_id).expect("checked");
        m.heartbeat_deadline = now + ms(m.session_timeout_ms);
        match self.state {
            ClassicState::Empty => reply(fx, SyncReply::error(error::UNKNOWN_MEMBER_ID)),
            ClassicState::PreparingRebalance => {
                reply(fx, SyncReply::error(error::REBALANCE_IN_PROGRESS))
            }
            ClassicState::Stable => {
                self.pending_sync.remove(&req.member_id);
                let r = self.sync_ok(&req.member_id);
                reply(fx, r)
            }
            ClassicState::CompletingRebalance => {
                if let Some(old) = m.sync_waiter.replace(waiter) {
                    if old != waiter {
                        fx.replies.push((
                            old,
                            Reply::Sync(SyncReply::error(error::REBALANCE_IN_PROGRESS)),
                        ));
                    }
                }
                self.pending_sync.remove(&req.member_id);
                if self.leader.as_deref() != Some(req.member_id.as_str()) {
                    return;
                }
                let given: BTreeMap<&String, &Vec<u8>> =
                    req.assignments.iter().map(|(m, a)| (m, a)).collect();
                for m in self.members.values_mut() {
                    m.assignment = given
                        .get(&m.member_id)
                        .map(|a| (*a).clone())
                        .unwrap_or_default();
                }
                self.set_state(ClassicState::Stable, wall);
                self.store(group, partition, fx);
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let r = self.sync_ok(&id);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        fx.replies.push((w, Reply::Sync(r)));
                    }
                }
                if self.pending_sync.is_empty() {
                    self.sync_deadline = None;
                }
            }
        }
    }

    fn sync_ok(&self, member: &str) -> SyncReply {
        SyncReply {
            error: error::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub(super) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: u64,
    ) -> i16 {
        if self.state == ClassicState::Empty {
            return error::UNKNOWN_MEMBER_ID;
        }
        if self.is_fenced(member_id, instance_id) {
            return error::FENCED_INSTANCE_ID;
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return error::UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return error::ILLEGAL_GENERATION;
        }
        m.heartbeat_deadline = now + ms(m.session_timeout_ms);
        if self.state == ClassicState::PreparingRebalance {
            error::REBALANCE_IN_PROGRESS
        } else {
            error::NONE
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn leave(
        &mut self,
        group: &str,
        partition: i32,
        members: &[(String, Option<String>)],
        now: u64,
        wall: i64,
        _config: &GroupConfig,
        fx: &mut Effects,
    ) -> Vec<i16> {
        let mut codes = Vec::new();
        let mut changed = false;
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(i) => match self.statics.get(i) {
                    None => {
                        codes.push(error::UNKNOWN_MEMBER_ID);
                        continue;
                    }
                    Some(m) if !member_id.is_empty() && m != member_id => {
                        codes.push(error::FENCED_INSTANCE_ID);
                        continue;
                    }
                    Some(m) => m.clone(),
                },
                None => member_id.clone(),
            };
            if self.pending.remove(&id).is_some() {
                codes.push(error::NONE);
                changed = true;
                continue;
            }
            if !self.members.contains_key(&id) {
                codes.push(error::UNKNOWN_MEMBER_ID);
                continue;
            }
            self.remove_member(&id, fx);
            changed = true;
            codes.push(error::NONE);
        }
        if changed {
            self.rebalance_or_complete(group, partition, now, wall, fx);
        }
        codes
    }

    /// Kafka 4's order: the member and its generation first, then the
    /// state, so a fenced member hears that it is fenced.
    pub(super) fn validate_commit(&mut self, req: &CommitRequest, now: u64) -> Result<(), i16> {
        if req.generation_or_epoch < 0 && self.state == ClassicState::Empty {
            // Not managed by the group protocol (assign() and commit, or
            // an admin resetting offsets): allowed while nobody is in it.
            return Ok(());
        }
        if req.generation_or_epoch >= 0 || !req.member_id.is_empty() || req.instance_id.is_some() {
            if self.is_fenced(&req.member_id, req.instance_id.as_deref()) {
                return Err(error::FENCED_INSTANCE_ID);
            }
            let Some(m) = self.members.get_mut(&req.member_id) else {
                return Err(error::UNKNOWN_MEMBER_ID);
            };
            if req.generation_or_epoch != self.generation {
                return Err(error::ILLEGAL_GENERATION);
            }
            m.heartbeat_deadline = now + ms(m.session_timeout_ms);
        } else {
            return Err(error::UNKNOWN_MEMBER_ID);
        }
        if self.state == ClassicState::CompletingRebalance {
            return Err(error::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    pub(super) fn describe(&self) -> Description {
        let stable = self.state == ClassicState::Stable;
        let protocol = self.protocol.clone().unwrap_or_default();
        Description {
            error: error::NONE,
            state: self.state.name().into(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    // As Kafka: metadata and assignment only once stable.
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Vec::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        let mut at: Option<u64> = None;
        let mut consider = |d: u64| at = Some(at.map_or(d, |a: u64| a.min(d)));
        if let Some(d) = self.join_deadline {
            consider(d);
        }
        if let Some(d) = self.sync_deadline {
            consider(d);
        }
        for d in self.pending.values() {
            consider(*d);
        }
        for m in self.members.values() {
            if m.join_waiter.is_none() && m.sync_waiter.is_none() {
                consider(m.heartbeat_deadline);
            }
        }
        at
    }

    pub(super) fn tick(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) {
        let _ = config;
        let mut changed = false;
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.pending.remove(&id);
            changed = true;
        }
        // Members awaiting a join or sync response are kept alive: they
        // cannot heartbeat while they wait.
        let dead: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none())
            .filter(|m| m.heartbeat_deadline <= now)
            .map(|m| m.member_id.clone())
            .collect();
        for id in dead {
            self.remove_member(&id, fx);
            changed = true;
        }
        if self.sync_deadline.is_some_and(|d| d <= now) {
            self.sync_deadline = None;
            // The leader (or a follower) never synced within the
            // rebalance timeout: those members are dropped and the rest
            // rebalance without them.
            let late: Vec<String> = self.pending_sync.iter().cloned().collect();
            for id in late {
                self.remove_member(&id, fx);
                changed = true;
            }
        }
        if self.state == ClassicState::PreparingRebalance
            && self.join_deadline.is_some_and(|d| d <= now)
        {
            match self.initial_delay_left {
                Some(left) if self.new_member_added && left > 0 => {
                    let step = ms(config.initial_rebalance_delay_ms).min(left).max(1);
                    self.new_member_added = false;
                    self.initial_delay_left = Some(left - step);
                    self.join_deadline = Some(now + step);
                }
                _ => {
                    self.initial_delay_left = None;
                    self.complete_join(group, partition, now, wall, fx);
                }
            }
            return;
        }
        if changed {
            if self.members.is_empty() && self.state != ClassicState::PreparingRebalance {
                if self.state != ClassicState::Empty {
                    self.prepare_rebalance(now, wall, fx);
                    self.complete_join(group, partition, now, wall, fx);
                }
                return;
            }
            self.rebalance_or_complete(group, partition, now, wall, fx);
        }
    }
}
