//! The group coordinator: consumer groups and their committed offsets.
//!
//! Sans I/O and deterministic, like the rest of `core`. The state of every
//! group lives in the partition of `__consumer_offsets` that
//! [`partition_for`] picks for its id; the coordinator of a group is the
//! leader of that partition. Every change the coordinator makes comes out
//! as records for that partition ([`Effects::records`]), which the broker
//! appends; loading a partition ([`Coordinator::load`]) replays its records
//! to rebuild the same state, so when leadership moves to another broker
//! (the cluster issue) the new leader loads the partition and carries on.
//!
//! The coordinator changes its memory at once and hands back the replies;
//! the broker holds every reply until the records appended before it are
//! durable, so no client is ever told of state a crash could take back.
//! If an append or a sync fails, the broker unloads the partition
//! ([`Coordinator::unload`]): memory goes back to what the log says at the
//! next load.
//!
//! Two kinds of group share the id space, as in Kafka 4: classic groups
//! (JoinGroup/SyncGroup/Heartbeat, client-side assignment; [`classic`]) and
//! KIP-848 consumer groups (ConsumerGroupHeartbeat, server-side
//! assignment; [`consumer`]). An empty classic group holding only offsets
//! becomes a consumer group when a KIP-848 member joins it.

pub mod assignor;
pub mod classic;
pub mod consumer;
pub mod records;

use std::collections::{BTreeMap, BTreeSet};

use records::{Key, OffsetValue, Value};

pub use classic::{ClassicGroup, ClassicState, JoinReply, JoinRequest, SyncReply, SyncRequest};
pub use consumer::{ConsumerGroup, HeartbeatReply, HeartbeatRequest};

/// Who is waiting for a delayed reply; the broker uses connection ids.
pub type Waiter = u64;

pub mod error {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_REQUEST: i16 = 42;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
}

/// The group coordinator's settings, by Kafka's broker config names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`
    pub max_size: usize,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in ms
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
    /// `group.consumer.session.timeout.ms`
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`
    pub consumer_max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_max_size: i32::MAX as usize,
        }
    }
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`, with Java's String
/// hash over UTF-16 code units, so a group lands on the partition a Kafka
/// cluster would put it on.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// A change to append to a partition of `__consumer_offsets`: a value, or
/// `None` for a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Write {
    pub partition: i32,
    pub key: Key,
    pub value: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    Join(JoinReply),
    Sync(SyncReply),
}

/// What a call did beyond its return value: records to append, and
/// replies now due to waiters parked by earlier calls (or this one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub records: Vec<Write>,
    pub replies: Vec<(Waiter, Reply)>,
}

impl Effects {
    pub(crate) fn write(&mut self, partition: i32, key: Key, value: Option<Value>) {
        self.records.push(Write {
            partition,
            key,
            value,
        });
    }

    /// Takes the reply for `w`, if one is due.
    pub fn take_reply(&mut self, w: Waiter) -> Option<Reply> {
        let i = self.replies.iter().position(|(x, _)| *x == w)?;
        Some(self.replies.remove(i).1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Classic(ClassicGroup),
    Consumer(ConsumerGroup),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    pub id: String,
    pub partition: i32,
    pub kind: Kind,
    pub offsets: BTreeMap<(String, i32), OffsetValue>,
}

impl Group {
    fn new_classic(id: &str, partition: i32, wall: i64) -> Group {
        Group {
            id: id.to_string(),
            partition,
            kind: Kind::Classic(ClassicGroup::new(wall)),
            offsets: BTreeMap::new(),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match &self.kind {
            Kind::Classic(c) => c.state.name(),
            Kind::Consumer(c) => c.state_name(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Classic(_) => "classic",
            Kind::Consumer(_) => "consumer",
        }
    }

    pub fn protocol_type(&self) -> String {
        match &self.kind {
            Kind::Classic(c) => c.protocol_type.clone().unwrap_or_default(),
            Kind::Consumer(_) => "consumer".into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.kind {
            Kind::Classic(c) => c.members.is_empty(),
            Kind::Consumer(c) => c.members.is_empty(),
        }
    }

    /// Topics the members consume, for OffsetDelete; `None` if the group
    /// has members whose subscriptions cannot be read (not the consumer
    /// protocol), so no offset of it can be deleted.
    fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        match &self.kind {
            Kind::Classic(c) => c.subscribed_topics(),
            Kind::Consumer(c) => Some(
                c.members
                    .values()
                    .flat_map(|m| m.value.subscribed_topics.iter().cloned())
                    .collect(),
            ),
        }
    }
}

/// One offset to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    pub group: String,
    pub generation_or_epoch: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// v2–v4's `retention_time_ms`; -1 for the broker's.
    pub retention_ms: i64,
    /// Consumer-group epochs are checked as epochs (v9+) rather than
    /// generations.
    pub epoch_aware: bool,
    pub entries: Vec<CommitEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    pub id: String,
    pub protocol_type: String,
    pub state: &'static str,
    pub group_type: &'static str,
}

/// What `DescribeGroups` says about a classic group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    pub error: i16,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// The group state of the partitions this broker leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    pub config: GroupConfig,
    /// Partitions of `__consumer_offsets`.
    pub num_partitions: i32,
    loaded: BTreeSet<i32>,
    groups: BTreeMap<String, Group>,
    /// Mixed into member ids with a counter, so ids differ across brokers
    /// and restarts without a source of randomness.
    salt: u64,
    seq: u64,
    next_expiry: u64,
}

impl Coordinator {
    pub fn new(config: GroupConfig, num_partitions: i32, salt: u64) -> Coordinator {
        Coordinator {
            next_expiry: config.offsets_retention_check_interval_ms,
            config,
            num_partitions: num_partitions.max(1),
            loaded: BTreeSet::new(),
            groups: BTreeMap::new(),
            salt,
            seq: 0,
        }
    }

    pub fn partition_for(&self, group: &str) -> i32 {
        partition_for(group, self.num_partitions)
    }

    pub fn is_loaded(&self, partition: i32) -> bool {
        self.loaded.contains(&partition)
    }

    /// Whether this coordinator serves `group` now.
    pub fn owns(&self, group: &str) -> bool {
        self.is_loaded(self.partition_for(group))
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Rebuilds a partition's groups from its records, in log order, and
    /// starts serving them. Members get a full session from `now` to show
    /// they are still there.
    pub fn load(
        &mut self,
        partition: i32,
        records: impl IntoIterator<Item = (Key, Option<Value>)>,
        now: u64,
        wall: i64,
    ) -> Result<(), records::BadRecord> {
        self.unload(partition);
        let mut staged: BTreeMap<String, Group> = BTreeMap::new();
        for (key, value) in records {
            let gid = key.group().to_string();
            if partition_for(&gid, self.num_partitions) != partition {
                return Err(records::BadRecord(format!(
                    "group {gid:?} found in partition {partition}, where it does not belong"
                )));
            }
            match (key, value) {
                (
                    Key::Offset {
                        topic,
                        partition: p,
                        ..
                    },
                    Some(Value::Offset(v)),
                ) => {
                    staged
                        .entry(gid.clone())
                        .or_insert_with(|| Group::new_classic(&gid, partition, wall))
                        .offsets
                        .insert((topic, p), v);
                }
                (
                    Key::Offset {
                        topic,
                        partition: p,
                        ..
                    },
                    None,
                ) => {
                    if let Some(g) = staged.get_mut(&gid) {
                        g.offsets.remove(&(topic, p));
                    }
                }
                (Key::ClassicGroup { .. }, Some(Value::ClassicGroup(v))) => {
                    let g = staged
                        .entry(gid.clone())
                        .or_insert_with(|| Group::new_classic(&gid, partition, wall));
                    g.kind = Kind::Classic(ClassicGroup::from_record(&v, now));
                }
                (Key::ClassicGroup { .. }, None) => {
                    if let Some(g) = staged.get_mut(&gid) {
                        if matches!(g.kind, Kind::Classic(_)) {
                            g.kind = Kind::Classic(ClassicGroup::new(wall));
                        }
                    }
                    drop_if_bare(&mut staged, &gid);
                }
                (Key::ConsumerGroup { .. }, Some(Value::ConsumerGroup(v))) => {
                    let g = staged
                        .entry(gid.clone())
                        .or_insert_with(|| Group::new_classic(&gid, partition, wall));
                    match &mut g.kind {
                        Kind::Consumer(c) => c.epoch = v.epoch,
                        Kind::Classic(_) => {
                            g.kind = Kind::Consumer(ConsumerGroup::new(v.epoch, wall))
                        }
                    }
                }
                (Key::ConsumerGroup { .. }, None) => {
                    if let Some(g) = staged.get_mut(&gid) {
                        if matches!(g.kind, Kind::Consumer(_)) {
                            g.kind = Kind::Classic(ClassicGroup::new(wall));
                        }
                    }
                    drop_if_bare(&mut staged, &gid);
                }
                (Key::ConsumerMember { member, .. }, Some(Value::ConsumerMember(v))) => {
                    let g = staged
                        .entry(gid.clone())
                        .or_insert_with(|| Group::new_classic(&gid, partition, wall));
                    if let Kind::Classic(_) = g.kind {
                        g.kind = Kind::Consumer(ConsumerGroup::new(0, wall));
                    }
                    if let Kind::Consumer(c) = &mut g.kind {
                        c.load_member(member, v, now, &self.config);
                    }
                }
                (Key::ConsumerMember { member, .. }, None) => {
                    if let Some(Group {
                        kind: Kind::Consumer(c),
                        ..
                    }) = staged.get_mut(&gid)
                    {
                        c.members.remove(&member);
                    }
                }
                (key, Some(value)) => {
                    return Err(records::BadRecord(format!(
                        "value {value:?} does not belong with key {key:?}"
                    )))
                }
            }
        }
        for (id, mut g) in staged {
            if let Kind::Consumer(c) = &mut g.kind {
                c.after_load();
            }
            self.groups.insert(id, g);
        }
        self.loaded.insert(partition);
        Ok(())
    }

    /// Stops serving a partition's groups and forgets them; returns the
    /// waiters they held, whose requests can no longer be answered.
    pub fn unload(&mut self, partition: i32) -> Vec<Waiter> {
        self.loaded.remove(&partition);
        let ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.partition == partition)
            .map(|g| g.id.clone())
            .collect();
        let mut waiters = Vec::new();
        for id in ids {
            if let Some(Group {
                kind: Kind::Classic(c),
                ..
            }) = self.groups.remove(&id)
            {
                waiters.extend(c.waiters());
            }
        }
        waiters
    }

    /// A member id: the client id, a dash and a UUID-shaped suffix.
    fn fresh_member_id(&mut self, client_id: &str, group: &str) -> String {
        loop {
            self.seq += 1;
            let mut h = crc32c::crc32c(&self.salt.to_be_bytes());
            h = crc32c::crc32c_append(h, &self.seq.to_be_bytes());
            let h2 = crc32c::crc32c_append(h, group.as_bytes());
            let h3 = crc32c::crc32c_append(h2, client_id.as_bytes());
            let h4 = crc32c::crc32c_append(h3, &self.salt.to_le_bytes());
            let id = format!(
                "{client_id}-{h:08x}-{:04x}-{:04x}-{:04x}-{h4:08x}{:04x}",
                h2 >> 16,
                h2 & 0xffff,
                h3 >> 16,
                self.seq & 0xffff
            );
            let taken = match self.groups.get(group).map(|g| &g.kind) {
                Some(Kind::Classic(c)) => {
                    c.members.contains_key(&id) || c.pending.contains_key(&id)
                }
                Some(Kind::Consumer(c)) => c.members.contains_key(&id),
                None => false,
            };
            if !taken {
                return id;
            }
        }
    }

    // ---- offsets -----------------------------------------------------------

    /// OffsetCommit: per-entry error codes, or a group-level error for
    /// every entry. `known_partition` says whether a topic-partition exists.
    pub fn commit(
        &mut self,
        req: &CommitRequest,
        known_partition: &dyn Fn(&str, i32) -> bool,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) -> Result<Vec<i16>, i16> {
        if req.group.is_empty() {
            return Err(error::INVALID_GROUP_ID);
        }
        let partition = self.partition_for(&req.group);
        if !self.groups.contains_key(&req.group) {
            if req.generation_or_epoch >= 0 {
                return Err(if req.epoch_aware {
                    error::GROUP_ID_NOT_FOUND
                } else {
                    error::ILLEGAL_GENERATION
                });
            }
            self.groups.insert(
                req.group.clone(),
                Group::new_classic(&req.group, partition, wall),
            );
        }
        let g = self.groups.get_mut(&req.group).expect("inserted above");
        match &mut g.kind {
            Kind::Classic(c) => c.validate_commit(req, now)?,
            Kind::Consumer(c) => c.validate_commit(req)?,
        }
        let expire = if req.retention_ms >= 0 {
            wall.saturating_add(req.retention_ms)
        } else {
            -1
        };
        let mut codes = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let meta = e.metadata.clone().unwrap_or_default();
            if meta.len() > self.config.offset_metadata_max_bytes {
                codes.push(error::OFFSET_METADATA_TOO_LARGE);
                continue;
            }
            if !known_partition(&e.topic, e.partition) {
                codes.push(error::UNKNOWN_TOPIC_OR_PARTITION);
                continue;
            }
            let v = OffsetValue {
                offset: e.offset,
                leader_epoch: e.leader_epoch,
                metadata: meta,
                commit_timestamp: wall,
                expire_timestamp: expire,
            };
            g.offsets.insert((e.topic.clone(), e.partition), v.clone());
            fx.write(
                partition,
                Key::Offset {
                    group: req.group.clone(),
                    topic: e.topic.clone(),
                    partition: e.partition,
                },
                Some(Value::Offset(v)),
            );
            codes.push(error::NONE);
        }
        Ok(codes)
    }

    /// OffsetFetch: committed offsets of the given partitions (all the
    /// group has, for `None`). v9 callers in a consumer group name
    /// themselves and their epoch; those are checked.
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<&[(String, i32)]>,
        member: Option<(&str, i32)>,
    ) -> Result<Vec<(String, i32, Option<OffsetValue>)>, i16> {
        let g = self.groups.get(group);
        if let (
            Some(Group {
                kind: Kind::Consumer(c),
                ..
            }),
            Some((id, epoch)),
        ) = (g, member)
        {
            c.validate_fetch(id, epoch)?;
        }
        Ok(match partitions {
            Some(ps) => ps
                .iter()
                .map(|(t, p)| {
                    let v = g.and_then(|g| g.offsets.get(&(t.clone(), *p)).cloned());
                    (t.clone(), *p, v)
                })
                .collect(),
            None => g
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), v)| (t.clone(), *p, Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// OffsetDelete: per-partition errors, or a group-level error.
    pub fn delete_offsets(
        &mut self,
        group: &str,
        partitions: &[(String, i32)],
        fx: &mut Effects,
    ) -> Result<Vec<i16>, i16> {
        let Some(g) = self.groups.get_mut(group) else {
            return Err(error::GROUP_ID_NOT_FOUND);
        };
        let subscribed = if g.is_empty() {
            BTreeSet::new()
        } else {
            g.subscribed_topics().ok_or(error::NON_EMPTY_GROUP)?
        };
        let mut codes = Vec::new();
        for (t, p) in partitions {
            if subscribed.contains(t) {
                codes.push(error::GROUP_SUBSCRIBED_TO_TOPIC);
                continue;
            }
            if g.offsets.remove(&(t.clone(), *p)).is_some() {
                fx.write(
                    g.partition,
                    Key::Offset {
                        group: group.to_string(),
                        topic: t.clone(),
                        partition: *p,
                    },
                    None,
                );
            }
            codes.push(error::NONE);
        }
        Ok(codes)
    }

    /// Forgets a deleted topic's committed offsets, as Kafka does when a
    /// topic is deleted.
    pub fn topic_deleted(&mut self, topic: &str, fx: &mut Effects) {
        for g in self.groups.values_mut() {
            let gone: Vec<(String, i32)> = g
                .offsets
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            for k in gone {
                g.offsets.remove(&k);
                fx.write(
                    g.partition,
                    Key::Offset {
                        group: g.id.clone(),
                        topic: k.0,
                        partition: k.1,
                    },
                    None,
                );
            }
        }
    }

    // ---- admin -------------------------------------------------------------

    pub fn list(&self, states: &[String], types: &[String]) -> Vec<GroupSummary> {
        self.groups
            .values()
            .filter(|g| self.loaded.contains(&g.partition))
            .filter(|g| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state_name()))
            })
            .filter(|g| {
                types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(g.type_name()))
            })
            .map(|g| GroupSummary {
                id: g.id.clone(),
                protocol_type: g.protocol_type(),
                state: g.state_name(),
                group_type: g.type_name(),
            })
            .collect()
    }

    /// DescribeGroups for one group: a classic group as Kafka describes
    /// it; an unknown one as `Dead`, or GROUP_ID_NOT_FOUND from v6.
    pub fn describe(&self, group: &str, version: i16) -> Description {
        match self.groups.get(group).map(|g| &g.kind) {
            Some(Kind::Classic(c)) => c.describe(),
            Some(Kind::Consumer(_)) if version >= 6 => Description {
                error: error::GROUP_ID_NOT_FOUND,
                state: "Dead".into(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
            Some(Kind::Consumer(c)) => c.describe_classic(),
            None => Description {
                error: if version >= 6 {
                    error::GROUP_ID_NOT_FOUND
                } else {
                    error::NONE
                },
                state: "Dead".into(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// DeleteGroups for one group.
    pub fn delete_group(&mut self, group: &str, fx: &mut Effects) -> i16 {
        let Some(g) = self.groups.get(group) else {
            return error::GROUP_ID_NOT_FOUND;
        };
        if !g.is_empty() {
            return error::NON_EMPTY_GROUP;
        }
        let g = self.groups.remove(group).expect("checked above");
        write_group_tombstones(&g, fx);
        error::NONE
    }

    // ---- time --------------------------------------------------------------

    /// The earliest time [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> u64 {
        let mut at = self.next_expiry;
        for g in self.groups.values() {
            let d = match &g.kind {
                Kind::Classic(c) => c.next_deadline(),
                Kind::Consumer(c) => c.next_deadline(),
            };
            if let Some(d) = d {
                at = at.min(d);
            }
        }
        at
    }

    /// Expires sessions, completes rebalances whose time is up, and
    /// expires old offsets.
    pub fn tick(&mut self, now: u64, wall: i64, topics: &dyn TopicLookup, fx: &mut Effects) {
        let config = self.config.clone();
        for g in self.groups.values_mut() {
            let (id, partition) = (g.id.clone(), g.partition);
            match &mut g.kind {
                Kind::Classic(c) => c.tick(&id, partition, now, wall, &config, fx),
                Kind::Consumer(c) => c.tick(&id, partition, now, wall, topics, fx),
            }
        }
        if now >= self.next_expiry {
            self.next_expiry = now + config.offsets_retention_check_interval_ms.max(1);
            self.expire_offsets(wall, fx);
        }
    }

    /// KIP-211: a group's offsets expire once it has been empty for the
    /// retention period; a group without a protocol (commits from
    /// `assign()`-only consumers) expires each offset by its own commit
    /// time. A group left with nothing is deleted.
    fn expire_offsets(&mut self, wall: i64, fx: &mut Effects) {
        let retention = self.config.offsets_retention_ms;
        let mut dead = Vec::new();
        for g in self.groups.values_mut() {
            if !g.is_empty() {
                continue;
            }
            let (protocol, empty_since) = match &g.kind {
                Kind::Classic(c) => (c.protocol_type.is_some(), c.state_timestamp),
                Kind::Consumer(c) => (true, c.empty_since),
            };
            let gone: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, v)| {
                    if v.expire_timestamp >= 0 {
                        return v.expire_timestamp <= wall;
                    }
                    let base = if protocol {
                        empty_since
                    } else {
                        v.commit_timestamp
                    };
                    base.saturating_add(retention) <= wall
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                g.offsets.remove(&k);
                fx.write(
                    g.partition,
                    Key::Offset {
                        group: g.id.clone(),
                        topic: k.0,
                        partition: k.1,
                    },
                    None,
                );
            }
            if g.offsets.is_empty() {
                dead.push(g.id.clone());
            }
        }
        for id in dead {
            if let Some(g) = self.groups.remove(&id) {
                write_group_tombstones(&g, fx);
            }
        }
    }

    // ---- the protocols -----------------------------------------------------

    /// JoinGroup. The reply comes in `fx` for `waiter`, now or later.
    pub fn join(
        &mut self,
        req: &JoinRequest,
        waiter: Waiter,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        if let Err(code) = classic::validate_join(req, &self.config) {
            fx.replies
                .push((waiter, Reply::Join(JoinReply::error(code, &req.member_id))));
            return;
        }
        let partition = self.partition_for(&req.group);
        if !self.groups.contains_key(&req.group) {
            if !req.member_id.is_empty() {
                fx.replies.push((
                    waiter,
                    Reply::Join(JoinReply::error(error::UNKNOWN_MEMBER_ID, &req.member_id)),
                ));
                return;
            }
            self.groups.insert(
                req.group.clone(),
                Group::new_classic(&req.group, partition, wall),
            );
        }
        let new_id = if req.member_id.is_empty() {
            Some(self.fresh_member_id(&req.client_id, &req.group))
        } else {
            None
        };
        let config = self.config.clone();
        let g = self.groups.get_mut(&req.group).expect("present");
        match &mut g.kind {
            Kind::Classic(c) => c.join(
                &req.group, partition, req, new_id, waiter, now, wall, &config, fx,
            ),
            Kind::Consumer(_) => fx.replies.push((
                waiter,
                Reply::Join(JoinReply::error(
                    error::INCONSISTENT_GROUP_PROTOCOL,
                    &req.member_id,
                )),
            )),
        }
    }

    /// SyncGroup. The reply comes in `fx` for `waiter`, now or later.
    pub fn sync(
        &mut self,
        req: &SyncRequest,
        waiter: Waiter,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) {
        let config = self.config.clone();
        match self.groups.get_mut(&req.group) {
            Some(Group {
                kind: Kind::Classic(c),
                partition,
                id,
                ..
            }) => c.sync(id, *partition, req, waiter, now, wall, &config, fx),
            Some(_) => fx.replies.push((
                waiter,
                Reply::Sync(SyncReply::error(error::INCONSISTENT_GROUP_PROTOCOL)),
            )),
            None => fx.replies.push((
                waiter,
                Reply::Sync(SyncReply::error(error::UNKNOWN_MEMBER_ID)),
            )),
        }
    }

    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: u64,
    ) -> i16 {
        match self.groups.get_mut(group).map(|g| &mut g.kind) {
            Some(Kind::Classic(c)) => c.heartbeat(member_id, instance_id, generation, now),
            Some(Kind::Consumer(_)) => error::INCONSISTENT_GROUP_PROTOCOL,
            None => error::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: a top-level error, or one per member.
    pub fn leave(
        &mut self,
        group: &str,
        members: &[(String, Option<String>)],
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) -> Result<Vec<i16>, i16> {
        let config = self.config.clone();
        match self.groups.get_mut(group) {
            Some(Group {
                kind: Kind::Classic(c),
                partition,
                id,
                ..
            }) => Ok(c.leave(id, *partition, members, now, wall, &config, fx)),
            Some(_) => Err(error::INCONSISTENT_GROUP_PROTOCOL),
            None => Err(error::UNKNOWN_MEMBER_ID),
        }
    }

    /// ConsumerGroupHeartbeat (KIP-848).
    pub fn consumer_heartbeat(
        &mut self,
        req: &HeartbeatRequest,
        topics: &dyn TopicLookup,
        now: u64,
        wall: i64,
        fx: &mut Effects,
    ) -> Result<HeartbeatReply, (i16, String)> {
        consumer::validate(req)?;
        let partition = self.partition_for(&req.group);
        let joining = req.member_epoch == 0;
        match self.groups.get(&req.group).map(|g| &g.kind) {
            None if !joining => {
                return Err((
                    error::UNKNOWN_MEMBER_ID,
                    format!("group {} has no member {}", req.group, req.member_id),
                ))
            }
            None => {}
            Some(Kind::Classic(c)) if !c.members.is_empty() || !c.pending.is_empty() => {
                return Err((
                    error::GROUP_ID_NOT_FOUND,
                    format!(
                        "group {} is a classic group with members, not a consumer group",
                        req.group
                    ),
                ))
            }
            Some(_) => {}
        }
        let member_id = if joining && req.member_id.is_empty() {
            self.fresh_member_id("", &req.group)
                .trim_start_matches('-')
                .to_string()
        } else {
            req.member_id.clone()
        };
        let config = self.config.clone();
        let g = self
            .groups
            .entry(req.group.clone())
            .or_insert_with(|| Group::new_classic(&req.group, partition, wall));
        if let Kind::Classic(_) = g.kind {
            // An empty classic group (offsets only) becomes a consumer
            // group; its offsets stay.
            fx.write(
                partition,
                Key::ClassicGroup {
                    group: req.group.clone(),
                },
                None,
            );
            g.kind = Kind::Consumer(ConsumerGroup::new(0, wall));
        }
        let Kind::Consumer(c) = &mut g.kind else {
            unreachable!("converted above")
        };
        c.heartbeat(
            &req.group, partition, &member_id, req, topics, &config, now, wall, fx,
        )
    }

    pub fn consumer_group(&self, group: &str) -> Option<&ConsumerGroup> {
        match self.groups.get(group).map(|g| &g.kind) {
            Some(Kind::Consumer(c)) => Some(c),
            _ => None,
        }
    }
}

/// Resolves topics for the server-side assignor.
pub trait TopicLookup {
    /// (topic id, partition count) of a live topic.
    fn by_name(&self, name: &str) -> Option<(u128, i32)>;
    fn name_of(&self, id: u128) -> Option<String>;
}

fn drop_if_bare(staged: &mut BTreeMap<String, Group>, id: &str) {
    let bare = staged
        .get(id)
        .is_some_and(|g| g.offsets.is_empty() && g.is_empty());
    if bare {
        staged.remove(id);
    }
}

fn write_group_tombstones(g: &Group, fx: &mut Effects) {
    for (t, p) in g.offsets.keys() {
        fx.write(
            g.partition,
            Key::Offset {
                group: g.id.clone(),
                topic: t.clone(),
                partition: *p,
            },
            None,
        );
    }
    match &g.kind {
        Kind::Classic(_) => fx.write(
            g.partition,
            Key::ClassicGroup {
                group: g.id.clone(),
            },
            None,
        ),
        Kind::Consumer(c) => {
            for m in c.members.keys() {
                fx.write(
                    g.partition,
                    Key::ConsumerMember {
                        group: g.id.clone(),
                        member: m.clone(),
                    },
                    None,
                );
            }
            fx.write(
                g.partition,
                Key::ConsumerGroup {
                    group: g.id.clone(),
                },
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests;
