//! The group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, OffsetDelete,
//! DescribeGroups, ListGroups, DeleteGroups, ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe, translated to and from [`crate::group`].
//!
//! The coordinator's records go into `__consumer_offsets` like any
//! producer's, and its replies wait for them: a reply is released only
//! once the group's partition is durable up to the end it had when the
//! reply was made, so a client never hears of state a crash could undo
//! (a reply that only reads waits too: it may read a commit not yet
//! synced).

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{error, str_bytes, topic_name, uuid, Broker, ConnId, Ctx, FrameOutcome};
use crate::group::records::{self, Key, Value};
use crate::group::{
    self, CommitEntry, CommitRequest, Effects, JoinReply, JoinRequest, Reply, SyncReply,
    SyncRequest, TopicLookup,
};
use crate::io::disk::Disk;
use crate::storage::batch::{self, BatchBuilder};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A record's key and value (none for a tombstone), encoded.
type RawRecord = (Vec<u8>, Option<Vec<u8>>);
/// One group of an OffsetFetch: the group, the partitions wanted by topic
/// (all, for `None`), and the asking member and epoch (v9).
type FetchAsk = (
    String,
    Option<Vec<(String, Vec<i32>)>>,
    Option<(String, i32)>,
);
/// partition, offset, leader epoch, metadata, error
type FetchRow = (i32, i64, i32, String, i16);

/// Internal topics clients may read but not write, delete or grow.
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC
}

/// A join or sync parked in the coordinator, to be answered in the
/// version it was asked in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parked {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

/// A reply waiting for its group's partition to be durable.
#[derive(Clone, Debug)]
pub(crate) struct Durable {
    pub outcome: FrameOutcome,
    pub partition: i32,
    pub need: i64,
}

struct Lookup<'a, D: Disk> {
    topics: &'a BTreeMap<String, super::Topic<D>>,
    by_id: &'a BTreeMap<u128, String>,
}

impl<D: Disk> TopicLookup for Lookup<'_, D> {
    fn by_name(&self, name: &str) -> Option<(u128, i32)> {
        self.topics
            .get(name)
            .map(|t| (t.id, t.partitions.len() as i32))
    }
    fn name_of(&self, id: u128) -> Option<String> {
        self.by_id.get(&id).cloned()
    }
}

fn s(v: &StrBytes) -> String {
    v.to_string()
}

fn opt(v: &Option<StrBytes>) -> Option<String> {
    v.as_ref().map(|x| x.to_string())
}

fn opt_bytes(v: &Option<String>) -> Option<StrBytes> {
    v.as_deref().map(str_bytes)
}

impl<D: Disk + Clone> Broker<D> {
    fn lookup(&self) -> Lookup<'_, D> {
        Lookup {
            topics: &self.topics,
            by_id: &self.by_id,
        }
    }

    /// Creates `__consumer_offsets` on first use, as Kafka does, and
    /// starts serving its partitions.
    fn ensure_offsets_topic(&mut self, now: crate::io::Instant) -> Result<(), String> {
        if self.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), "104857600".to_string());
        configs.insert("compression.type".to_string(), "producer".to_string());
        let n = self.groups.num_partitions;
        if self.in_cluster() {
            // The controller creates it; clients ask again meanwhile.
            let rf = self.config.default_replication_factor;
            self.auto_create_in_cluster(OFFSETS_TOPIC, n, rf, configs, now);
            return Err(format!("{OFFSETS_TOPIC} is being created"));
        }
        self.create_topic(OFFSETS_TOPIC, n, configs)
            .map_err(|(_, e)| e)?;
        self.load_offsets_partitions();
        Ok(())
    }

    /// Loads every partition of `__consumer_offsets` not yet loaded whose
    /// log is readable; called at open and after a failure unloads one.
    pub(crate) fn load_offsets_partitions(&mut self) {
        let Some(t) = self.topics.get(OFFSETS_TOPIC) else {
            return;
        };
        let n = t.partitions.len() as i32;
        if n != self.groups.num_partitions {
            // The topic decides: groups must stay where they were put.
            self.groups =
                group::Coordinator::new(self.groups.config.clone(), n, self.groups_salt());
        }
        for p in 0..n {
            if !self.groups.is_loaded(p) {
                self.load_offsets_partition(p);
            }
        }
    }

    /// Member ids mix this with a counter that starts again at every open,
    /// so it must change with the incarnation: the same cluster, node and
    /// counter after a restart would hand a new member an id a live client
    /// still holds (the simulator found it).
    pub(crate) fn groups_salt(&self) -> u64 {
        let h = crc32c::crc32c(self.config.cluster_id.as_bytes());
        let id = (u64::from(h) << 32) | u64::from(self.config.node_id as u32);
        id ^ self.config.incarnation.rotate_left(17)
    }

    fn load_offsets_partition(&mut self, p: i32) {
        let (now, wall) = self.group_clock;
        let Some(part) = self.partition_mut(OFFSETS_TOPIC, p) else {
            return;
        };
        let Ok(log) = part.log_mut() else {
            return;
        };
        // What recovery found may be only in the page cache; the state
        // rebuilt from it must not be served until it is durable.
        if log.end_offset() > log.durable_end() {
            if let Err(e) = log.flush() {
                part.problem = Some(e.to_string());
                return;
            }
        }
        let mut recs: Vec<(Key, Option<Value>)> = Vec::new();
        let mut at = log.log_start_offset();
        let end = log.end_offset();
        let mut failure = None;
        while at < end {
            let read = match log.read(at, 1 << 20) {
                Ok(r) => r,
                Err(e) => {
                    failure = Some(format!("reading offset {at}: {e}"));
                    break;
                }
            };
            if read.batches.is_empty() {
                break;
            }
            let mut pos = 0;
            for h in &read.batches {
                let bytes = &read.bytes[pos..pos + h.total_size()];
                pos += h.total_size();
                at = h.next_offset();
                if h.is_control() {
                    continue;
                }
                match batch::decode_records_any(bytes, 64 << 20) {
                    Ok(rs) => {
                        for r in rs {
                            let Some(k) = r.key.as_deref() else { continue };
                            match records::decode_key(k) {
                                Ok(Some(key)) => {
                                    let value = match r.value.as_deref() {
                                        None => None,
                                        Some(v) => match records::decode_value(&key, v) {
                                            Ok(v) => Some(v),
                                            Err(e) => {
                                                failure =
                                                    Some(format!("offset {}: {e}", h.base_offset));
                                                break;
                                            }
                                        },
                                    };
                                    recs.push((key, value));
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    failure = Some(format!("offset {}: {e}", h.base_offset));
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => failure = Some(format!("offset {}: {e:?}", h.base_offset)),
                }
                if failure.is_some() {
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(f) = failure {
            // Serving a partial state would hand out offsets and
            // generations that are not the group's: the groups stay
            // unavailable (COORDINATOR_NOT_AVAILABLE) until an operator
            // looks.
            part.problem = Some(format!("cannot load group state: {f}"));
            return;
        }
        if let Err(e) = self.groups.load(p, recs, now, wall) {
            if let Some(part) = self.partition_mut(OFFSETS_TOPIC, p) {
                part.problem = Some(format!("cannot load group state: {e}"));
            }
        }
    }

    /// Appends the coordinator's records and routes the replies it made
    /// for parked requests. A partition whose append fails is unloaded
    /// (memory may be ahead of the log) and reloaded from what the log
    /// holds, if it can still be read.
    pub(crate) fn apply_group_effects(&mut self, fx: Effects) -> Vec<(ConnId, FrameOutcome)> {
        let (_, wall) = self.group_clock;
        let mut by_partition: BTreeMap<i32, Vec<RawRecord>> = BTreeMap::new();
        for w in fx.records {
            by_partition.entry(w.partition).or_default().push((
                records::encode_key(&w.key),
                w.value.as_ref().map(records::encode_value),
            ));
        }
        let mut out = Vec::new();
        let mut failed = BTreeSet::new();
        for (p, recs) in by_partition {
            let Some(part) = self.partition_mut(OFFSETS_TOPIC, p) else {
                failed.insert(p);
                continue;
            };
            let epoch = part.leader_epoch;
            let Ok(log) = part.log_mut() else {
                failed.insert(p);
                continue;
            };
            for chunk in recs.chunks(1000) {
                let mut b = BatchBuilder::new(wall);
                for (k, v) in chunk {
                    b = b.add(Some(k), v.as_deref(), wall);
                }
                if let Err(e) = log.append_as_leader(&b.build(), epoch, wall) {
                    part.problem = Some(format!("group records: {e}"));
                    failed.insert(p);
                    break;
                }
            }
        }
        for (w, reply) in fx.replies {
            let conn = ConnId(w);
            let Some(parked) = self.parked_group.remove(&conn) else {
                continue;
            };
            let outcome = encode_reply(parked, &reply);
            let group_partition = match &reply {
                Reply::Join(_) | Reply::Sync(_) => self.parked_partition.remove(&conn),
            };
            match group_partition {
                // The reply reports state whose records were not written.
                Some(p) if failed.contains(&p) => out.push((conn, failed_close(p))),
                Some(p) => out.extend(self.when_durable(conn, outcome, p)),
                None => out.push((conn, outcome)),
            }
        }
        self.group_failed = failed.clone();
        for p in failed {
            for w in self.groups.unload(p) {
                let conn = ConnId(w);
                if self.parked_group.remove(&conn).is_some() {
                    out.push((
                        conn,
                        FrameOutcome::Close(format!(
                            "the group coordinator for partition {p} of {OFFSETS_TOPIC} failed"
                        )),
                    ));
                }
            }
            self.load_offsets_partitions();
        }
        out
    }

    /// Holds `outcome` until partition `p` is durable to its present end.
    fn when_durable(
        &mut self,
        conn: ConnId,
        outcome: FrameOutcome,
        p: i32,
    ) -> Option<(ConnId, FrameOutcome)> {
        let log = self
            .partition(OFFSETS_TOPIC, p)
            .and_then(|part| part.log().ok());
        match log {
            Some(l) if l.durable_end() >= l.end_offset() => Some((conn, outcome)),
            Some(l) => {
                let need = l.end_offset();
                self.durable_group.insert(
                    conn,
                    Durable {
                        outcome,
                        partition: p,
                        need,
                    },
                );
                None
            }
            None => Some((
                conn,
                FrameOutcome::Close(format!("partition {p} of {OFFSETS_TOPIC} is offline")),
            )),
        }
    }

    /// After a group commit: the held replies whose records are durable,
    /// and a close for those whose partition failed.
    pub(crate) fn release_group_replies(&mut self) -> Vec<(ConnId, FrameOutcome)> {
        let mut out = Vec::new();
        // A partition whose log went offline (a failed sync) may have
        // groups in memory ahead of what is on disk: they stop being
        // served, and the requests parked in them are closed.
        for p in 0..self.groups.num_partitions {
            let online = self
                .partition(OFFSETS_TOPIC, p)
                .is_some_and(|part| part.log().is_ok());
            if self.groups.is_loaded(p) && !online {
                for w in self.groups.unload(p) {
                    let conn = ConnId(w);
                    if self.parked_group.remove(&conn).is_some() {
                        out.push((
                            conn,
                            FrameOutcome::Close(format!(
                                "partition {p} of {OFFSETS_TOPIC} went offline"
                            )),
                        ));
                    }
                }
            }
        }
        let conns: Vec<ConnId> = self.durable_group.keys().copied().collect();
        for conn in conns {
            let d = &self.durable_group[&conn];
            let state = self
                .partition(OFFSETS_TOPIC, d.partition)
                .and_then(|part| part.log().ok())
                .map(|l| l.durable_end() >= d.need);
            match state {
                Some(false) => {}
                Some(true) => {
                    let d = self.durable_group.remove(&conn).expect("listed");
                    out.push((conn, d.outcome));
                }
                None => {
                    let d = self.durable_group.remove(&conn).expect("listed");
                    out.push((
                        conn,
                        FrameOutcome::Close(format!(
                            "partition {} of {OFFSETS_TOPIC} went offline before the reply was durable",
                            d.partition
                        )),
                    ));
                }
            }
        }
        out
    }

    /// Sessions, rebalance deadlines and offset expiry.
    pub(crate) fn group_tick(&mut self) -> Vec<(ConnId, FrameOutcome)> {
        let (now, wall) = self.group_clock;
        if now < self.groups.next_deadline() {
            return Vec::new();
        }
        let mut fx = Effects::default();
        let lookup = Lookup {
            topics: &self.topics,
            by_id: &self.by_id,
        };
        self.groups.tick(now, wall, &lookup, &mut fx);
        self.apply_group_effects(fx)
    }

    /// Finishes a group request: its own reply (if due) goes out once
    /// durable; replies to others are queued for the next poll.
    fn finish_group(
        &mut self,
        ctx: &Ctx,
        group_id: &str,
        own: Option<FrameOutcome>,
        fx: Effects,
    ) -> FrameOutcome {
        let p = self.groups.partition_for(group_id);
        let others = self.apply_group_effects(fx);
        self.group_completions.extend(others);
        let Some(outcome) = own else {
            return FrameOutcome::Pending;
        };
        if self.group_failed.contains(&p) {
            // Its records were not written: the answer must not be given.
            return failed_close(p);
        }
        match self.when_durable(ctx.conn, outcome, p) {
            Some((_, o)) => o,
            None => FrameOutcome::Pending,
        }
    }

    /// The error for a group this broker does not coordinate now.
    fn coordinator_error(&self, group_id: &str) -> Option<i16> {
        if !self.topics.contains_key(OFFSETS_TOPIC) {
            return Some(error::COORDINATOR_NOT_AVAILABLE);
        }
        if !self.groups.owns(group_id) {
            // In a cluster another broker may lead the group's partition:
            // NOT_COORDINATOR sends the client to FindCoordinator again.
            return Some(if self.in_cluster() {
                error::NOT_COORDINATOR
            } else {
                error::COORDINATOR_NOT_AVAILABLE
            });
        }
        None
    }

    /// In a cluster, the broker that leads the group's partition of
    /// `__consumer_offsets`, when that is another live broker.
    fn coordinator_elsewhere(&self, group: &str) -> Option<(i32, String, i32)> {
        let image = self.image()?;
        let t = image.topic(OFFSETS_TOPIC)?;
        let p = group::partition_for(group, t.partitions.len() as i32);
        let leader = t.partitions.get(&p)?.leader;
        if leader < 0 || leader == self.config.node_id {
            return None;
        }
        let (host, port) = self.broker_address(leader)?;
        Some((leader, host, port))
    }

    pub(crate) fn find_coordinator(
        &mut self,
        ctx: &Ctx,
        req: &FindCoordinatorRequest,
    ) -> FindCoordinatorResponse {
        let keys: Vec<String> = if ctx.version >= 4 {
            req.coordinator_keys.iter().map(s).collect()
        } else {
            vec![s(&req.key)]
        };
        let mut resp = FindCoordinatorResponse::default();
        let mut answers = Vec::new();
        let mut elsewhere: BTreeMap<String, (i32, String, i32)> = BTreeMap::new();
        for key in keys {
            let (code, msg) = match req.key_type {
                0 if key.is_empty() => {
                    (error::INVALID_REQUEST, "the group id is empty".to_string())
                }
                0 => match self.ensure_offsets_topic(ctx.now) {
                    Err(e) => (error::COORDINATOR_NOT_AVAILABLE, e),
                    Ok(()) if self.groups.owns(&key) => (error::NONE, String::new()),
                    Ok(()) => match self.coordinator_elsewhere(&key) {
                        Some(node) => {
                            elsewhere.insert(key.clone(), node);
                            (error::NONE, String::new())
                        }
                        None => (
                            error::COORDINATOR_NOT_AVAILABLE,
                            format!(
                                "partition {} of {OFFSETS_TOPIC} is offline",
                                self.groups.partition_for(&key)
                            ),
                        ),
                    },
                },
                1 => (
                    error::COORDINATOR_NOT_AVAILABLE,
                    "this broker has no transaction coordinator yet".to_string(),
                ),
                t => (
                    error::INVALID_REQUEST,
                    format!("unknown coordinator key type {t}"),
                ),
            };
            answers.push((key, code, msg));
        }
        let here = (
            self.config.node_id,
            self.config.advertised_host.clone(),
            self.config.advertised_port,
        );
        let node_for = |key: &str| elsewhere.get(key).cloned().unwrap_or_else(|| here.clone());
        if ctx.version >= 4 {
            resp.coordinators = answers
                .into_iter()
                .map(|(key, code, msg)| {
                    let ok = code == error::NONE;
                    let (id, host, port) = node_for(&key);
                    let (me, host) = (BrokerId(id), str_bytes(&host));
                    find_coordinator_response::Coordinator::default()
                        .with_key(str_bytes(&key))
                        .with_node_id(if ok { me } else { BrokerId(-1) })
                        .with_host(if ok {
                            host.clone()
                        } else {
                            StrBytes::default()
                        })
                        .with_port(if ok { port } else { -1 })
                        .with_error_code(code)
                        .with_error_message((!ok).then(|| str_bytes(&msg)))
                })
                .collect();
        } else if let Some((key, code, msg)) = answers.into_iter().next() {
            let ok = code == error::NONE;
            let (id, host, port) = node_for(&key);
            let (me, host) = (BrokerId(id), str_bytes(&host));
            resp.error_code = code;
            resp.node_id = if ok { me } else { BrokerId(-1) };
            resp.host = if ok { host } else { StrBytes::default() };
            resp.port = if ok { port } else { -1 };
            if ctx.version >= 1 && !ok {
                resp.error_message = Some(str_bytes(&msg));
            }
        }
        resp
    }

    pub(crate) fn join_group(
        &mut self,
        ctx: &Ctx,
        client_id: &str,
        req: &JoinGroupRequest,
    ) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        if let Some(code) = self.coordinator_error(&gid) {
            let r = Reply::Join(JoinReply::error(code, &s(&req.member_id)));
            return encode_reply(self.parked(ctx), &r);
        }
        let r = JoinRequest {
            group: gid.clone(),
            member_id: s(&req.member_id),
            instance_id: opt(&req.group_instance_id),
            client_id: client_id.to_string(),
            client_host: self.client_host(ctx.conn),
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: the session timeout serves.
            rebalance_timeout_ms: if ctx.version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: s(&req.protocol_type),
            protocols: req
                .protocols
                .iter()
                .map(|p| (s(&p.name), p.metadata.to_vec()))
                .collect(),
            require_known_member: ctx.version >= 4,
        };
        let (now, wall) = self.group_clock;
        let mut fx = Effects::default();
        self.groups.join(&r, ctx.conn.0, now, wall, &mut fx);
        let own = fx
            .take_reply(ctx.conn.0)
            .map(|reply| encode_reply(self.parked(ctx), &reply));
        if own.is_none() {
            self.park(ctx, &gid);
        }
        self.finish_group(ctx, &gid, own, fx)
    }

    pub(crate) fn sync_group(&mut self, ctx: &Ctx, req: &SyncGroupRequest) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        if let Some(code) = self.coordinator_error(&gid) {
            return encode_reply(self.parked(ctx), &Reply::Sync(SyncReply::error(code)));
        }
        let r = SyncRequest {
            group: gid.clone(),
            generation: req.generation_id,
            member_id: s(&req.member_id),
            instance_id: opt(&req.group_instance_id),
            protocol_type: if ctx.version >= 5 {
                opt(&req.protocol_type)
            } else {
                None
            },
            protocol: if ctx.version >= 5 {
                opt(&req.protocol_name)
            } else {
                None
            },
            assignments: req
                .assignments
                .iter()
                .map(|a| (s(&a.member_id), a.assignment.to_vec()))
                .collect(),
        };
        let (now, wall) = self.group_clock;
        let mut fx = Effects::default();
        self.groups.sync(&r, ctx.conn.0, now, wall, &mut fx);
        let own = fx
            .take_reply(ctx.conn.0)
            .map(|reply| encode_reply(self.parked(ctx), &reply));
        if own.is_none() {
            self.park(ctx, &gid);
        }
        self.finish_group(ctx, &gid, own, fx)
    }

    fn parked(&self, ctx: &Ctx) -> Parked {
        Parked {
            key: ctx.key,
            version: ctx.version,
            correlation_id: ctx.correlation_id,
        }
    }

    fn park(&mut self, ctx: &Ctx, group_id: &str) {
        let parked = self.parked(ctx);
        self.parked_group.insert(ctx.conn, parked);
        let p = self.groups.partition_for(group_id);
        self.parked_partition.insert(ctx.conn, p);
    }

    pub(crate) fn heartbeat(&mut self, ctx: &Ctx, req: &HeartbeatRequest) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        let code = match self.coordinator_error(&gid) {
            Some(c) => c,
            None => {
                let (now, _) = self.group_clock;
                self.groups.heartbeat(
                    &gid,
                    &s(&req.member_id),
                    req.group_instance_id.as_ref().map(|x| x.as_str()),
                    req.generation_id,
                    now,
                )
            }
        };
        ctx.respond(&HeartbeatResponse::default().with_error_code(code))
    }

    pub(crate) fn leave_group(&mut self, ctx: &Ctx, req: &LeaveGroupRequest) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
            req.members
                .iter()
                .map(|m| (s(&m.member_id), opt(&m.group_instance_id)))
                .collect()
        } else {
            vec![(s(&req.member_id), None)]
        };
        let mut resp = LeaveGroupResponse::default();
        if let Some(code) = self.coordinator_error(&gid) {
            resp.error_code = code;
            return ctx.respond(&resp);
        }
        let (now, wall) = self.group_clock;
        let mut fx = Effects::default();
        match self.groups.leave(&gid, &members, now, wall, &mut fx) {
            Err(code) => resp.error_code = code,
            Ok(codes) => {
                if ctx.version >= 3 {
                    resp.members = members
                        .iter()
                        .zip(&codes)
                        .map(|((m, i), c)| {
                            leave_group_response::MemberResponse::default()
                                .with_member_id(str_bytes(m))
                                .with_group_instance_id(opt_bytes(i))
                                .with_error_code(*c)
                        })
                        .collect();
                } else {
                    resp.error_code = codes.first().copied().unwrap_or(error::NONE);
                }
            }
        }
        let own = ctx.respond(&resp);
        self.finish_group(ctx, &gid, Some(own), fx)
    }

    pub(crate) fn offset_commit(&mut self, ctx: &Ctx, req: &OffsetCommitRequest) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        let entries: Vec<CommitEntry> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| CommitEntry {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if ctx.version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: opt(&p.committed_metadata),
                })
            })
            .collect();
        let r = CommitRequest {
            group: gid.clone(),
            generation_or_epoch: req.generation_id_or_member_epoch,
            member_id: s(&req.member_id),
            instance_id: if ctx.version >= 7 {
                opt(&req.group_instance_id)
            } else {
                None
            },
            retention_ms: if ctx.version <= 4 {
                req.retention_time_ms
            } else {
                -1
            },
            epoch_aware: ctx.version >= 9,
            entries,
        };
        let outcome = match self.coordinator_error(&gid) {
            Some(code) => Err(code),
            None => Ok(()),
        };
        let (now, wall) = self.group_clock;
        let mut fx = Effects::default();
        let codes = outcome.and_then(|()| {
            let topics = &self.topics;
            let known = |t: &str, p: i32| {
                topics
                    .get(t)
                    .is_some_and(|x| p >= 0 && (p as usize) < x.partitions.len())
            };
            self.groups.commit(&r, &known, now, wall, &mut fx)
        });
        let mut i = 0;
        let mut resp = OffsetCommitResponse::default();
        for t in &req.topics {
            let mut rt = offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone());
            for p in &t.partitions {
                let code = match &codes {
                    Ok(c) => c.get(i).copied().unwrap_or(error::NONE),
                    Err(c) => *c,
                };
                i += 1;
                rt.partitions.push(
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code),
                );
            }
            resp.topics.push(rt);
        }
        let own = ctx.respond(&resp);
        self.finish_group(ctx, &gid, Some(own), fx)
    }

    pub(crate) fn offset_fetch(&mut self, ctx: &Ctx, req: &OffsetFetchRequest) -> FrameOutcome {
        let requests: Vec<FetchAsk> = if ctx.version >= 8 {
            req.groups
                .iter()
                .map(|g| {
                    let topics = g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                            .collect()
                    });
                    let member = opt(&g.member_id).map(|m| (m, g.member_epoch));
                    (s(&g.group_id.0), topics, member)
                })
                .collect()
        } else {
            let topics = req.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            vec![(s(&req.group_id.0), topics, None)]
        };
        let mut groups_out = Vec::new();
        let mut touched = BTreeSet::new();
        for (gid, topics, member) in requests {
            let result = match self.coordinator_error(&gid) {
                Some(code) => Err(code),
                None => {
                    touched.insert(self.groups.partition_for(&gid));
                    let flat: Option<Vec<(String, i32)>> = topics.as_ref().map(|ts| {
                        ts.iter()
                            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                            .collect()
                    });
                    self.groups.fetch_offsets(
                        &gid,
                        flat.as_deref(),
                        member.as_ref().map(|(m, e)| (m.as_str(), *e)),
                    )
                }
            };
            groups_out.push((gid, topics, result));
        }
        let mut resp = OffsetFetchResponse::default();
        for (gid, topics, result) in groups_out {
            // Partitions in request order, grouped by topic.
            let mut by_topic: Vec<(String, Vec<FetchRow>)> = Vec::new();
            let mut push = |t: &str, row: (i32, i64, i32, String, i16)| match by_topic
                .iter_mut()
                .find(|(n, _)| n == t)
            {
                Some((_, rows)) => rows.push(row),
                None => by_topic.push((t.to_string(), vec![row])),
            };
            let mut group_code = error::NONE;
            match &result {
                Ok(rows) => {
                    for (t, p, v) in rows {
                        match v {
                            Some(v) => {
                                push(t, (*p, v.offset, v.leader_epoch, v.metadata.clone(), 0))
                            }
                            None => push(t, (*p, -1, -1, String::new(), 0)),
                        }
                    }
                }
                Err(code) => {
                    group_code = *code;
                    if let Some(ts) = &topics {
                        for (t, ps) in ts {
                            for p in ps {
                                push(t, (*p, -1, -1, String::new(), *code));
                            }
                        }
                    }
                }
            }
            if ctx.version >= 8 {
                let topics = by_topic
                    .into_iter()
                    .map(|(t, rows)| {
                        offset_fetch_response::OffsetFetchResponseTopics::default()
                            .with_name(topic_name(&t))
                            .with_partitions(
                                rows.into_iter()
                                    .map(|(p, o, e, m, c)| {
                                        offset_fetch_response::OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_committed_leader_epoch(e)
                                            .with_metadata(Some(str_bytes(&m)))
                                            .with_error_code(c)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                resp.groups.push(
                    offset_fetch_response::OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(str_bytes(&gid)))
                        .with_topics(topics)
                        .with_error_code(group_code),
                );
            } else {
                resp.topics = by_topic
                    .into_iter()
                    .map(|(t, rows)| {
                        offset_fetch_response::OffsetFetchResponseTopic::default()
                            .with_name(topic_name(&t))
                            .with_partitions(
                                rows.into_iter()
                                    .map(|(p, o, e, m, c)| {
                                        offset_fetch_response::OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_committed_leader_epoch(if ctx.version >= 5 { e } else { -1 })
                                            .with_metadata(Some(str_bytes(&m)))
                                            .with_error_code(c)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                if ctx.version >= 2 {
                    resp.error_code = group_code;
                }
            }
        }
        let own = ctx.respond(&resp);
        // A read waits like a write: it may have seen commits not yet
        // durable.
        let mut outcome = Some(own);
        for p in touched {
            if let Some(o) = outcome.take() {
                match self.when_durable(ctx.conn, o, p) {
                    Some((_, o)) => outcome = Some(o),
                    None => return FrameOutcome::Pending,
                }
            }
        }
        outcome.unwrap_or(FrameOutcome::Pending)
    }

    pub(crate) fn offset_delete(&mut self, ctx: &Ctx, req: &OffsetDeleteRequest) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        let wanted: Vec<(String, i32)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index))
            })
            .collect();
        let mut fx = Effects::default();
        let result = match self.coordinator_error(&gid) {
            Some(c) => Err(c),
            None => self.groups.delete_offsets(&gid, &wanted, &mut fx),
        };
        let mut resp = OffsetDeleteResponse::default();
        match result {
            Err(c) => resp.error_code = c,
            Ok(codes) => {
                let mut i = 0;
                for t in &req.topics {
                    let mut rt = offset_delete_response::OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone());
                    for p in &t.partitions {
                        rt.partitions.push(
                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(codes.get(i).copied().unwrap_or(error::NONE)),
                        );
                        i += 1;
                    }
                    resp.topics.push(rt);
                }
            }
        }
        let own = ctx.respond(&resp);
        self.finish_group(ctx, &gid, Some(own), fx)
    }

    pub(crate) fn describe_groups(
        &mut self,
        ctx: &Ctx,
        req: &DescribeGroupsRequest,
    ) -> FrameOutcome {
        let mut resp = DescribeGroupsResponse::default();
        let mut touched = BTreeSet::new();
        for g in &req.groups {
            let gid = s(&g.0);
            let mut d =
                describe_groups_response::DescribedGroup::default().with_group_id(g.clone());
            if let Some(code) = self.coordinator_error(&gid) {
                d.error_code = code;
                resp.groups.push(d);
                continue;
            }
            touched.insert(self.groups.partition_for(&gid));
            let desc = self.groups.describe(&gid, ctx.version);
            d.error_code = desc.error;
            if ctx.version >= 6 && desc.error != error::NONE {
                d.error_message = Some(str_bytes(&format!("Group {gid} not found.")));
            }
            d.group_state = str_bytes(&desc.state);
            d.protocol_type = str_bytes(&desc.protocol_type);
            d.protocol_data = str_bytes(&desc.protocol);
            d.authorized_operations = i32::MIN;
            d.members = desc
                .members
                .into_iter()
                .map(|m| {
                    describe_groups_response::DescribedGroupMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(if ctx.version >= 4 {
                            opt_bytes(&m.instance_id)
                        } else {
                            None
                        })
                        .with_client_id(str_bytes(&m.client_id))
                        .with_client_host(str_bytes(&m.client_host))
                        .with_member_metadata(m.metadata.into())
                        .with_member_assignment(m.assignment.into())
                })
                .collect();
            resp.groups.push(d);
        }
        self.respond_when_durable(ctx, &resp, touched)
    }

    fn respond_when_durable<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        ctx: &Ctx,
        resp: &T,
        touched: BTreeSet<i32>,
    ) -> FrameOutcome {
        let mut outcome = ctx.respond(resp);
        for p in touched {
            match self.when_durable(ctx.conn, outcome, p) {
                Some((_, o)) => outcome = o,
                None => return FrameOutcome::Pending,
            }
        }
        outcome
    }

    pub(crate) fn list_groups(&mut self, ctx: &Ctx, req: &ListGroupsRequest) -> FrameOutcome {
        let states: Vec<String> = if ctx.version >= 4 {
            req.states_filter.iter().map(s).collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if ctx.version >= 5 {
            req.types_filter.iter().map(s).collect()
        } else {
            Vec::new()
        };
        let mut resp = ListGroupsResponse::default();
        if self.topics.contains_key(OFFSETS_TOPIC) {
            resp.groups = self
                .groups
                .list(&states, &types)
                .into_iter()
                .map(|g| {
                    list_groups_response::ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(&g.id)))
                        .with_protocol_type(str_bytes(&g.protocol_type))
                        .with_group_state(str_bytes(g.state))
                        .with_group_type(str_bytes(g.group_type))
                })
                .collect();
        }
        let touched: BTreeSet<i32> = (0..self.groups.num_partitions)
            .filter(|p| self.groups.is_loaded(*p))
            .collect();
        self.respond_when_durable(ctx, &resp, touched)
    }

    pub(crate) fn delete_groups(&mut self, ctx: &Ctx, req: &DeleteGroupsRequest) -> FrameOutcome {
        let mut resp = DeleteGroupsResponse::default();
        let mut fx = Effects::default();
        let mut touched = BTreeSet::new();
        for g in &req.groups_names {
            let gid = s(&g.0);
            let code = match self.coordinator_error(&gid) {
                Some(c) => c,
                None => {
                    touched.insert(self.groups.partition_for(&gid));
                    self.groups.delete_group(&gid, &mut fx)
                }
            };
            resp.results.push(
                delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(g.clone())
                    .with_error_code(code),
            );
        }
        let others = self.apply_group_effects(fx);
        self.group_completions.extend(others);
        if let Some(p) = touched.iter().find(|p| self.group_failed.contains(p)) {
            return failed_close(*p);
        }
        self.respond_when_durable(ctx, &resp, touched)
    }

    pub(crate) fn consumer_group_heartbeat(
        &mut self,
        ctx: &Ctx,
        client_id: &str,
        req: &ConsumerGroupHeartbeatRequest,
    ) -> FrameOutcome {
        let gid = s(&req.group_id.0);
        let mut resp = ConsumerGroupHeartbeatResponse::default();
        if let Some(code) = self.coordinator_error(&gid) {
            resp.error_code = code;
            return ctx.respond(&resp);
        }
        let owned = req.topic_partitions.as_ref().map(|tps| {
            let mut m: group::consumer::Partitions = BTreeMap::new();
            for tp in tps {
                m.entry(tp.topic_id.as_u128())
                    .or_default()
                    .extend(tp.partitions.iter().copied());
            }
            m
        });
        let r = group::HeartbeatRequest {
            version: ctx.version,
            group: gid.clone(),
            member_id: s(&req.member_id),
            member_epoch: req.member_epoch,
            instance_id: opt(&req.instance_id),
            rack: opt(&req.rack_id),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            subscribed_topics: req
                .subscribed_topic_names
                .as_ref()
                .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
            regex: opt(&req.subscribed_topic_regex),
            server_assignor: opt(&req.server_assignor),
            owned,
            client_id: client_id.to_string(),
            client_host: self.client_host(ctx.conn),
        };
        let (now, wall) = self.group_clock;
        let mut fx = Effects::default();
        let lookup = Lookup {
            topics: &self.topics,
            by_id: &self.by_id,
        };
        match self
            .groups
            .consumer_heartbeat(&r, &lookup, now, wall, &mut fx)
        {
            Err((code, msg)) => {
                resp.error_code = code;
                resp.error_message = Some(str_bytes(&msg));
            }
            Ok(reply) => {
                resp.member_id = Some(str_bytes(&reply.member_id));
                resp.member_epoch = reply.member_epoch;
                resp.heartbeat_interval_ms = reply.heartbeat_interval_ms;
                resp.assignment = reply.assignment.map(|a| {
                    consumer_group_heartbeat_response::Assignment::default().with_topic_partitions(
                        a.into_iter()
                            .map(|(t, ps)| {
                                consumer_group_heartbeat_response::TopicPartitions::default()
                                    .with_topic_id(uuid(t))
                                    .with_partitions(ps.into_iter().collect())
                            })
                            .collect(),
                    )
                });
            }
        }
        let own = ctx.respond(&resp);
        self.finish_group(ctx, &gid, Some(own), fx)
    }

    pub(crate) fn consumer_group_describe(
        &mut self,
        ctx: &Ctx,
        req: &ConsumerGroupDescribeRequest,
    ) -> FrameOutcome {
        let mut resp = ConsumerGroupDescribeResponse::default();
        let mut touched = BTreeSet::new();
        let lookup = self.lookup();
        let assignment = |a: &group::consumer::Partitions| {
            consumer_group_describe_response::Assignment::default().with_topic_partitions(
                a.iter()
                    .map(|(t, ps)| {
                        consumer_group_describe_response::TopicPartitions::default()
                            .with_topic_id(uuid(*t))
                            .with_topic_name(topic_name(&lookup.name_of(*t).unwrap_or_default()))
                            .with_partitions(ps.iter().copied().collect())
                    })
                    .collect(),
            )
        };
        for g in &req.group_ids {
            let gid = s(&g.0);
            let mut d = consumer_group_describe_response::DescribedGroup::default()
                .with_group_id(g.clone())
                .with_authorized_operations(i32::MIN);
            if let Some(code) = self.coordinator_error(&gid) {
                d.error_code = code;
                resp.groups.push(d);
                continue;
            }
            touched.insert(self.groups.partition_for(&gid));
            match self.groups.consumer_group(&gid) {
                None => {
                    d.error_code = error::GROUP_ID_NOT_FOUND;
                    d.error_message = Some(str_bytes(&format!(
                        "Group {gid} not found or is not a consumer group."
                    )));
                    d.group_state = str_bytes("Dead");
                }
                Some(c) => {
                    d.group_state = str_bytes(c.state_name());
                    d.group_epoch = c.epoch;
                    d.assignment_epoch = c.target_epoch.max(0);
                    d.assignor_name = str_bytes(&c.assignor);
                    d.members = c
                        .members
                        .iter()
                        .map(|(id, m)| {
                            let target: group::consumer::Partitions =
                                c.target.get(id).cloned().unwrap_or_default();
                            consumer_group_describe_response::Member::default()
                                .with_member_id(str_bytes(id))
                                .with_instance_id(opt_bytes(&m.value.instance_id))
                                .with_rack_id(opt_bytes(&m.value.rack))
                                .with_member_epoch(m.value.epoch)
                                .with_client_id(str_bytes(&m.value.client_id))
                                .with_client_host(str_bytes(&m.value.client_host))
                                .with_subscribed_topic_names(
                                    m.value
                                        .subscribed_topics
                                        .iter()
                                        .map(|t| topic_name(t))
                                        .collect(),
                                )
                                .with_assignment(assignment(&m.assigned()))
                                .with_target_assignment(assignment(&target))
                                .with_member_type(if ctx.version >= 1 { 1 } else { -1 })
                        })
                        .collect();
                }
            }
            resp.groups.push(d);
        }
        self.respond_when_durable(ctx, &resp, touched)
    }
}

/// The answer to a request whose records could not be appended: its
/// outcome is unknown to the client, as after any lost connection.
fn failed_close(p: i32) -> FrameOutcome {
    FrameOutcome::Close(format!(
        "the group coordinator for partition {p} of {OFFSETS_TOPIC} failed to write its records"
    ))
}

fn encode_join(r: &JoinReply) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(r.protocol_type.as_deref().map(str_bytes))
        .with_protocol_name(r.protocol.as_deref().map(str_bytes))
        .with_leader(str_bytes(&r.leader))
        .with_skip_assignment(r.skip_assignment)
        .with_member_id(str_bytes(&r.member_id))
        .with_members(
            r.members
                .iter()
                .map(|(m, i, meta)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(m))
                        .with_group_instance_id(opt_bytes(i))
                        .with_metadata(meta.clone().into())
                })
                .collect(),
        )
}

fn encode_sync(r: &SyncReply) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(r.protocol_type.as_deref().map(str_bytes))
        .with_protocol_name(r.protocol.as_deref().map(str_bytes))
        .with_assignment(r.assignment.clone().into())
}

fn encode_reply(parked: Parked, reply: &Reply) -> FrameOutcome {
    let mut reply = reply.clone();
    // Fields a version cannot carry are left out rather than refused.
    match &mut reply {
        Reply::Join(j) => {
            if parked.version < 7 {
                j.protocol_type = None;
            }
            if parked.version < 5 {
                for m in &mut j.members {
                    m.1 = None;
                }
            }
            if parked.version < 9 {
                j.skip_assignment = false;
            }
            if j.protocol.is_none() && parked.version < 7 {
                j.protocol = Some(String::new());
            }
            super::respond(
                parked.key,
                parked.version,
                parked.correlation_id,
                &encode_join(j),
            )
        }
        Reply::Sync(sr) => {
            if parked.version < 5 {
                sr.protocol_type = None;
                sr.protocol = None;
            }
            super::respond(
                parked.key,
                parked.version,
                parked.correlation_id,
                &encode_sync(sr),
            )
        }
    }
}
