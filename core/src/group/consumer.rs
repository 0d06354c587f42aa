//! KIP-848 consumer groups: members heartbeat with what they own, and the
//! coordinator computes the assignment.
//!
//! The group has an epoch, bumped by every change of membership,
//! subscription or subscribed topic metadata, and a target assignment
//! computed for that epoch by a server-side assignor. Each member moves
//! towards its target on its own (Kafka's reconciliation): partitions it
//! must give up are revoked first, and it enters the new epoch only once
//! it has confirmed the revocation; a partition is handed to a member only
//! once no other member holds it. So at every moment a partition is held
//! by at most one member, across epochs as well as within one.

use std::collections::{BTreeMap, BTreeSet};

use super::assignor::{self, Assignment, AssignorInput};
use super::records::{ConsumerGroupValue, ConsumerMemberValue, Key, Value};
use super::{
    error, CommitRequest, Description, Effects, GroupConfig, MemberDescription, TopicLookup,
};

pub const STABLE: i8 = 0;
pub const UNREVOKED_PARTITIONS: i8 = 1;
pub const UNRELEASED_PARTITIONS: i8 = 2;

pub type Partitions = BTreeMap<u128, BTreeSet<i32>>;

/// The member epoch of a static member that left for now (Kafka's
/// `LEAVE_GROUP_STATIC_MEMBER_EPOCH`).
pub const LEAVING_STATIC: i32 = -2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub version: i16,
    pub group: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topics: Option<Vec<String>>,
    pub regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the member owns now; `None` when unchanged since its last
    /// heartbeat.
    pub owned: Option<Partitions>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment, when it has something to learn.
    pub assignment: Option<Partitions>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerMember {
    pub value: ConsumerMemberValue,
    pub heartbeat_deadline: u64,
    pub revoke_deadline: Option<u64>,
    /// What the member was last told it has, to know when to tell again.
    pub told: Option<(i32, Partitions)>,
}

impl ConsumerMember {
    pub fn assigned(&self) -> Partitions {
        to_sets(&self.value.assigned)
    }
    pub fn revoking(&self) -> Partitions {
        to_sets(&self.value.revoking)
    }
}

fn to_sets(m: &BTreeMap<u128, Vec<i32>>) -> Partitions {
    m.iter()
        .map(|(t, ps)| (*t, ps.iter().copied().collect()))
        .filter(|(_, ps): &(u128, BTreeSet<i32>)| !ps.is_empty())
        .collect()
}

fn to_vecs(m: &Partitions) -> BTreeMap<u128, Vec<i32>> {
    m.iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(t, ps)| (*t, ps.iter().copied().collect()))
        .collect()
}

fn minus(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(x) => ps.difference(x).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in a {
        if let Some(x) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(x).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn union(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = a.clone();
    for (t, ps) in b {
        out.entry(*t).or_default().extend(ps);
    }
    out
}

fn count(a: &Partitions) -> usize {
    a.values().map(BTreeSet::len).sum()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerGroup {
    pub epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    pub target: Assignment,
    pub target_epoch: i32,
    /// Subscribed topic id → partition count when the epoch last moved.
    pub metadata: BTreeMap<u128, i32>,
    pub empty_since: i64,
    pub assignor: String,
}

pub(super) fn validate(req: &HeartbeatRequest) -> Result<(), (i16, String)> {
    let bad = |m: &str| Err((error::INVALID_REQUEST, m.to_string()));
    if req.group.is_empty() {
        return bad("GroupId can't be empty.");
    }
    if req.instance_id.as_deref() == Some("") {
        return bad("InstanceId can't be empty.");
    }
    if req.rack.as_deref() == Some("") {
        return bad("RackId can't be empty.");
    }
    if let Some(a) = &req.server_assignor {
        if !assignor::ASSIGNORS.contains(&a.as_str()) {
            return Err((
                error::UNSUPPORTED_ASSIGNOR,
                format!(
                    "ServerAssignor {a} is not supported. Supported assignors: uniform, range."
                ),
            ));
        }
    }
    if req.regex.as_deref().is_some_and(|r| !r.is_empty()) {
        return bad(
            "SubscribedTopicRegex is not supported by this broker; subscribe to topic names.",
        );
    }
    match req.member_epoch {
        0 => {
            if req.version >= 1 && req.member_id.is_empty() {
                return bad("MemberId can't be empty.");
            }
            if req.rebalance_timeout_ms < 0 {
                return bad("RebalanceTimeoutMs must be provided in first request.");
            }
            if req.subscribed_topics.is_none() {
                return bad("SubscribedTopicNames must be set in first request.");
            }
            if req.owned.as_ref().is_some_and(|o| count(o) > 0) {
                return bad("TopicPartitions must be empty when (re-)joining.");
            }
        }
        -2 if req.instance_id.is_none() => {
            return bad("InstanceId can't be null when leaving with epoch -2.");
        }
        e if e < -2 => return bad(&format!("MemberEpoch {e} is invalid.")),
        _ => {
            if req.member_id.is_empty() {
                return bad("MemberId can't be empty.");
            }
        }
    }
    Ok(())
}

impl ConsumerGroup {
    pub fn new(epoch: i32, wall: i64) -> ConsumerGroup {
        ConsumerGroup {
            epoch,
            members: BTreeMap::new(),
            target: Assignment::new(),
            target_epoch: -1,
            metadata: BTreeMap::new(),
            empty_since: wall,
            assignor: "uniform".into(),
        }
    }

    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.target_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.value.epoch != self.target_epoch || m.value.state != STABLE)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub(super) fn load_member(
        &mut self,
        id: String,
        v: ConsumerMemberValue,
        now: u64,
        config: &GroupConfig,
    ) {
        let revoke_deadline = (v.state == UNREVOKED_PARTITIONS)
            .then(|| now + u64::try_from(v.rebalance_timeout_ms).unwrap_or(0));
        self.members.insert(
            id,
            ConsumerMember {
                value: v,
                heartbeat_deadline: now + session(config),
                revoke_deadline,
                told: None,
            },
        );
    }

    /// After a load, the target is recomputed on the next heartbeat, in a
    /// new epoch (topic metadata may have changed while nobody served).
    pub(super) fn after_load(&mut self) {
        self.target_epoch = -1;
        self.metadata.clear();
    }

    /// Who holds a partition (assigned or still revoking), other than `me`.
    fn held_by_others(&self, me: &str) -> Partitions {
        let mut out = Partitions::new();
        for (id, m) in &self.members {
            if id != me {
                out = union(&out, &m.assigned());
                out = union(&out, &m.revoking());
            }
        }
        out
    }

    fn subscribed_metadata(&self, topics: &dyn TopicLookup) -> BTreeMap<u128, i32> {
        let mut out = BTreeMap::new();
        for m in self.members.values() {
            for t in &m.value.subscribed_topics {
                if let Some((id, n)) = topics.by_name(t) {
                    out.insert(id, n);
                }
            }
        }
        out
    }

    fn bump(&mut self, group: &str, partition: i32, topics: &dyn TopicLookup, fx: &mut Effects) {
        self.epoch += 1;
        self.metadata = self.subscribed_metadata(topics);
        fx.write(
            partition,
            Key::ConsumerGroup {
                group: group.to_string(),
            },
            Some(Value::ConsumerGroup(ConsumerGroupValue {
                epoch: self.epoch,
            })),
        );
        self.compute_target(topics);
    }

    fn compute_target(&mut self, topics: &dyn TopicLookup) {
        let subscriptions: BTreeMap<String, BTreeSet<u128>> = self
            .members
            .iter()
            .map(|(id, m)| {
                let ids = m
                    .value
                    .subscribed_topics
                    .iter()
                    .filter_map(|t| topics.by_name(t).map(|(id, _)| id))
                    .collect();
                (id.clone(), ids)
            })
            .collect();
        // The assignor most members ask for; uniform when none does.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.value.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max().unwrap_or(0);
        self.assignor = votes
            .iter()
            .find(|(_, v)| **v == best)
            .map(|(a, _)| a.to_string())
            .unwrap_or_else(|| "uniform".into());
        let input = AssignorInput {
            subscriptions: &subscriptions,
            partitions: &self.metadata,
            previous: &self.target,
        };
        self.target = assignor::assign(&self.assignor, &input);
        self.target_epoch = self.epoch;
    }

    /// Moves a member towards its target (Kafka's CurrentAssignmentBuilder).
    fn reconcile(&mut self, id: &str, owned: Option<&Partitions>, now: u64) {
        let others = self.held_by_others(id);
        let target_epoch = self.target_epoch;
        let target = self.target.get(id).cloned().unwrap_or_default();
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if m.value.state == UNREVOKED_PARTITIONS {
            let released = owned.is_some_and(|o| count(&intersect(o, &m.revoking())) == 0);
            if !released {
                return;
            }
            m.value.revoking.clear();
            m.value.state = STABLE;
            m.revoke_deadline = None;
        }
        let assigned = m.assigned();
        if m.value.epoch == target_epoch && m.value.state == STABLE {
            return;
        }
        let keep = intersect(&assigned, &target);
        let revoke = minus(&assigned, &target);
        if count(&revoke) > 0 {
            m.value.assigned = to_vecs(&keep);
            m.value.revoking = to_vecs(&revoke);
            m.value.state = UNREVOKED_PARTITIONS;
            m.revoke_deadline =
                Some(now + u64::try_from(m.value.rebalance_timeout_ms).unwrap_or(0));
            return;
        }
        let wanted = minus(&target, &assigned);
        let addable = minus(&wanted, &others);
        m.value.assigned = to_vecs(&union(&keep, &addable));
        if m.value.epoch != target_epoch {
            m.value.previous_epoch = m.value.epoch;
            m.value.epoch = target_epoch;
        }
        m.value.state = if count(&addable) < count(&wanted) {
            UNRELEASED_PARTITIONS
        } else {
            STABLE
        };
    }

    fn store_member(&self, group: &str, partition: i32, id: &str, fx: &mut Effects) {
        let key = Key::ConsumerMember {
            group: group.to_string(),
            member: id.to_string(),
        };
        let value = self
            .members
            .get(id)
            .map(|m| Value::ConsumerMember(m.value.clone()));
        fx.write(partition, key, value);
    }

    fn remove(&mut self, group: &str, partition: i32, id: &str, wall: i64, fx: &mut Effects) {
        if self.members.remove(id).is_some() {
            self.store_member(group, partition, id, fx);
            if self.members.is_empty() {
                self.empty_since = wall;
            }
        }
    }

    /// A static member's temporary leave (KIP-848, epoch -2): it keeps its
    /// place and its partitions, so that when it restarts under the same
    /// instance id nothing else moves. Its session still runs: if it does
    /// not come back in time, it is removed then.
    fn leave_for_now(&mut self, group: &str, partition: i32, id: &str, fx: &mut Effects) {
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        // Whatever it was giving up, it gave up when it closed.
        m.value.revoking.clear();
        m.value.state = STABLE;
        m.revoke_deadline = None;
        if m.value.epoch != LEAVING_STATIC {
            m.value.previous_epoch = m.value.epoch;
            m.value.epoch = LEAVING_STATIC;
        }
        m.told = None;
        self.store_member(group, partition, id, fx);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn heartbeat(
        &mut self,
        group: &str,
        partition: i32,
        member_id: &str,
        req: &HeartbeatRequest,
        topics: &dyn TopicLookup,
        config: &GroupConfig,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) -> Result<HeartbeatReply, (i16, String)> {
        let interval = config.consumer_heartbeat_interval_ms;
        if req.member_epoch < 0 {
            let id = match (&req.instance_id, self.members.contains_key(member_id)) {
                (_, true) => member_id.to_string(),
                (Some(i), false) => self
                    .members
                    .iter()
                    .find(|(_, m)| m.value.instance_id.as_ref() == Some(i))
                    .map(|(id, _)| id.clone())
                    .ok_or((
                        error::UNKNOWN_MEMBER_ID,
                        format!("no member has instance id {i}"),
                    ))?,
                (None, false) => {
                    return Err((
                        error::UNKNOWN_MEMBER_ID,
                        format!("group {group} has no member {member_id}"),
                    ))
                }
            };
            if req.member_epoch == LEAVING_STATIC {
                if self.members[&id].value.instance_id != req.instance_id {
                    return Err((
                        error::FENCED_INSTANCE_ID,
                        format!(
                            "member {id} does not have instance id {:?}",
                            req.instance_id
                        ),
                    ));
                }
                self.leave_for_now(group, partition, &id, fx);
            } else {
                self.remove(group, partition, &id, wall, fx);
                self.bump(group, partition, topics, fx);
            }
            return Ok(HeartbeatReply {
                member_id: member_id.to_string(),
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                assignment: None,
            });
        }
        let mut joined = false;
        let mut replaced = None;
        if req.member_epoch == 0 {
            if self.members.contains_key(member_id) {
                // A member rejoining after being fenced: it starts over.
                self.remove(group, partition, member_id, wall, fx);
            }
            if let Some(i) = &req.instance_id {
                if let Some((other, m)) = self
                    .members
                    .iter()
                    .find(|(_, m)| m.value.instance_id.as_ref() == Some(i))
                {
                    if m.value.epoch != LEAVING_STATIC {
                        return Err((
                            error::UNRELEASED_INSTANCE_ID,
                            format!("instance id {i} is still in use by member {other}"),
                        ));
                    }
                    replaced = Some(other.clone());
                }
            }
            let mut subscribed = Vec::new();
            if let Some(old) = &replaced {
                // The restarted static member takes its predecessor's
                // place and target, so nothing else moves.
                if let Some(m) = self.members.remove(old) {
                    subscribed = m.value.subscribed_topics;
                }
                self.store_member(group, partition, old, fx);
                if let Some(t) = self.target.remove(old) {
                    self.target.insert(member_id.to_string(), t);
                }
            } else if self.members.len() >= config.consumer_max_size {
                return Err((
                    error::GROUP_MAX_SIZE_REACHED,
                    format!("group {group} has reached its maximum size"),
                ));
            }
            self.members.insert(
                member_id.to_string(),
                ConsumerMember {
                    value: ConsumerMemberValue {
                        instance_id: req.instance_id.clone(),
                        rack: req.rack.clone(),
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        rebalance_timeout_ms: req.rebalance_timeout_ms,
                        server_assignor: req.server_assignor.clone(),
                        subscribed_topics: subscribed,
                        epoch: 0,
                        previous_epoch: -1,
                        state: STABLE,
                        assigned: BTreeMap::new(),
                        revoking: BTreeMap::new(),
                    },
                    heartbeat_deadline: now,
                    revoke_deadline: None,
                    told: None,
                },
            );
            joined = true;
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return Err((
                error::UNKNOWN_MEMBER_ID,
                format!("group {group} has no member {member_id}"),
            ));
        };
        if !joined {
            if req.instance_id.is_some() && req.instance_id != m.value.instance_id {
                return Err((
                    error::FENCED_INSTANCE_ID,
                    format!(
                        "member {member_id} does not have instance id {:?}",
                        req.instance_id
                    ),
                ));
            }
            if req.member_epoch != m.value.epoch {
                // A member that missed our last response may still be one
                // epoch behind, holding nothing it should not.
                let behind_ok = req.member_epoch == m.value.previous_epoch
                    && req
                        .owned
                        .as_ref()
                        .is_some_and(|o| count(&minus(o, &m.assigned())) == 0);
                if !behind_ok {
                    return Err((
                        error::FENCED_MEMBER_EPOCH,
                        format!(
                            "member {member_id} sent epoch {} but is at epoch {}",
                            req.member_epoch, m.value.epoch
                        ),
                    ));
                }
            }
        }
        let before = m.value.clone();
        m.heartbeat_deadline = now + session(config);
        if req.rebalance_timeout_ms >= 0 {
            m.value.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if req.rack.is_some() {
            m.value.rack = req.rack.clone();
        }
        if req.server_assignor.is_some() {
            m.value.server_assignor = req.server_assignor.clone();
        }
        m.value.client_id = req.client_id.clone();
        m.value.client_host = req.client_host.clone();
        let mut subscription_changed = false;
        if let Some(topics) = &req.subscribed_topics {
            let mut t: Vec<String> = topics.clone();
            t.sort();
            t.dedup();
            if t != m.value.subscribed_topics {
                m.value.subscribed_topics = t;
                subscription_changed = true;
            }
        }
        let assignor_changed = before.server_assignor != m.value.server_assignor;
        if (joined && replaced.is_none())
            || subscription_changed
            || assignor_changed
            || self.subscribed_metadata(topics) != self.metadata
        {
            self.bump(group, partition, topics, fx);
        } else if self.target_epoch < self.epoch {
            self.compute_target(topics);
        }
        self.reconcile(member_id, req.owned.as_ref(), now);
        let m = self.members.get_mut(member_id).expect("present");
        let changed = m.value != before;
        let now_told = (m.value.epoch, m.assigned());
        let tell = joined
            || m.told.as_ref() != Some(&now_told)
            || req.owned.as_ref().is_some_and(|o| *o != now_told.1);
        m.told = Some(now_told.clone());
        let reply = HeartbeatReply {
            member_id: member_id.to_string(),
            member_epoch: m.value.epoch,
            heartbeat_interval_ms: interval,
            assignment: tell.then_some(now_told.1),
        };
        if changed || joined {
            self.store_member(group, partition, member_id, fx);
        }
        Ok(reply)
    }

    pub(super) fn validate_commit(&self, req: &CommitRequest) -> Result<(), i16> {
        if req.generation_or_epoch < 0 && req.member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let Some(m) = self.members.get(&req.member_id) else {
            return Err(error::UNKNOWN_MEMBER_ID);
        };
        if req.generation_or_epoch != m.value.epoch {
            if !req.epoch_aware {
                return Err(error::ILLEGAL_GENERATION);
            }
            return Err(if req.generation_or_epoch > m.value.epoch {
                error::FENCED_MEMBER_EPOCH
            } else {
                error::STALE_MEMBER_EPOCH
            });
        }
        Ok(())
    }

    pub(super) fn validate_fetch(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        let Some(m) = self.members.get(member_id) else {
            return Err(error::UNKNOWN_MEMBER_ID);
        };
        if epoch != m.value.epoch {
            return Err(error::STALE_MEMBER_EPOCH);
        }
        Ok(())
    }

    pub(super) fn describe_classic(&self) -> Description {
        Description {
            error: error::NONE,
            state: self.state_name().into(),
            protocol_type: "consumer".into(),
            protocol: String::new(),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.value.instance_id.clone(),
                    client_id: m.value.client_id.clone(),
                    client_host: m.value.client_host.clone(),
                    metadata: Vec::new(),
                    assignment: Vec::new(),
                })
                .collect(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.members
            .values()
            .flat_map(|m| std::iter::once(m.heartbeat_deadline).chain(m.revoke_deadline))
            .min()
    }

    /// Fences members whose session ran out, or who held on to partitions
    /// they were asked to give up for longer than their rebalance timeout.
    pub(super) fn tick(
        &mut self,
        group: &str,
        partition: i32,
        now: u64,
        wall: i64,
        topics: &dyn TopicLookup,
        fx: &mut Effects,
    ) {
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.heartbeat_deadline <= now || m.revoke_deadline.is_some_and(|d| d <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        for id in dead {
            self.remove(group, partition, &id, wall, fx);
        }
        self.bump(group, partition, topics, fx);
    }
}

fn session(config: &GroupConfig) -> u64 {
    u64::try_from(config.consumer_session_timeout_ms).unwrap_or(0)
}
