//! The controller: the quorum leader's decisions about the cluster, as
//! batches of metadata records to propose.
//!
//! It decides from its own image: the committed image plus every batch it
//! has proposed since it became leader (the driver hands each proposed
//! batch back with its offset through [`Controller::proposed`]), so two
//! requests in flight cannot both create one topic. A controller that loses
//! leadership is dropped; the next one starts from the committed image once
//! its own epoch's first entry commits, so nothing speculative survives.
//!
//! Broker liveness is soft state, as in Kafka: heartbeat times are kept
//! here, not in the log. A new controller gives every broker a full
//! session before fencing it.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;

use super::image::MetadataImage;
use super::records::{
    BrokerRegistration, ConfigResource, Endpoint, MetadataRecord, PartitionRecord,
};
use crate::kafka::error;

/// Kafka's error codes the controller answers with, beyond the common ones.
pub mod code {
    pub const STALE_BROKER_EPOCH: i16 = 77;
    pub const DUPLICATE_BROKER_REGISTRATION: i16 = 101;
    pub const BROKER_ID_NOT_REGISTERED: i16 = 102;
    pub const INCONSISTENT_CLUSTER_ID: i16 = 104;
}

pub type Refusal = (i16, String);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ControllerConfig {
    pub cluster_id: String,
    /// `broker.session.timeout.ms`
    pub broker_session_timeout_ms: u64,
    /// `num.partitions`
    pub default_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// Producer ids handed to a broker at a time.
    pub producer_id_block: i64,
    /// A new partition's ISR is its leader alone, not every live replica.
    /// Until brokers replicate partition data, a follower holds none of
    /// the records its leader acknowledges; counting it in-sync would let
    /// leadership move to it when the leader is fenced, and the
    /// acknowledged records would be lost (a clean election in name only).
    /// With the leader alone in the ISR, a partition whose leader is
    /// fenced goes leaderless and comes back with it, as Kafka does with
    /// `unclean.leader.election.enable=false`. Turn off once followers
    /// fetch from their leaders and join the ISR when caught up.
    pub new_isr_leader_only: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_id: String::new(),
            broker_session_timeout_ms: 9_000,
            default_partitions: 1,
            default_replication_factor: 1,
            producer_id_block: 1_000,
            new_isr_leader_only: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub id: i32,
    pub cluster_id: String,
    pub incarnation: u128,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub id: i32,
    pub epoch: i64,
    /// The offset of the broker's own metadata image: it is unfenced once
    /// it has caught up to its registration.
    pub metadata_offset: i64,
    pub want_fence: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub partitions: i32,
    /// -1: `default.replication.factor`.
    pub replication_factor: i16,
    /// Replicas by partition, when the client chose them.
    pub assignments: BTreeMap<i32, Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Controller {
    pub config: ControllerConfig,
    image: MetadataImage,
    /// When each broker was last heard from, in ms of the monotonic clock.
    last_heard: BTreeMap<i32, u64>,
}

impl Controller {
    /// A controller for a leader whose committed image is `image`, at
    /// `now_ms`: every registered broker is given a full session.
    pub fn new(config: ControllerConfig, image: MetadataImage, now_ms: u64) -> Controller {
        let last_heard = image.brokers.keys().map(|id| (*id, now_ms)).collect();
        Controller {
            config,
            image,
            last_heard,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The driver proposed `batch` and Raft put it at `offset`.
    pub fn proposed(&mut self, offset: i64, batch: &[MetadataRecord]) {
        if self.image.apply(offset, batch).is_err() {
            self.image.skip(offset);
        }
    }

    // ---- brokers -------------------------------------------------------

    pub fn register(
        &mut self,
        req: &Registration,
        now_ms: u64,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if req.cluster_id != self.config.cluster_id {
            return Err((
                code::INCONSISTENT_CLUSTER_ID,
                format!(
                    "broker {} is from cluster {:?}, this is {:?}",
                    req.id, req.cluster_id, self.config.cluster_id
                ),
            ));
        }
        if req.id < 0 {
            return Err((
                error::INVALID_REQUEST,
                format!("broker id {} is negative", req.id),
            ));
        }
        if let Some(b) = self.image.brokers.get(&req.id) {
            if b.incarnation == req.incarnation {
                // A retry of a registration that went through.
                self.last_heard.insert(req.id, now_ms);
                return Ok(Vec::new());
            }
            let alive = !b.fenced && self.heard_within_session(req.id, now_ms);
            if alive {
                return Err((
                    code::DUPLICATE_BROKER_REGISTRATION,
                    format!(
                        "broker {} is registered by another live process (incarnation {:032x})",
                        req.id, b.incarnation
                    ),
                ));
            }
        }
        self.last_heard.insert(req.id, now_ms);
        let mut batch = vec![MetadataRecord::RegisterBroker(BrokerRegistration {
            id: req.id,
            incarnation: req.incarnation,
            epoch: -1,
            endpoints: req.endpoints.clone(),
            rack: req.rack.clone(),
            fenced: true,
        })];
        // The previous process's leadership ends with it.
        if let Some(old) = self.image.brokers.get(&req.id) {
            if !old.fenced {
                batch.extend(self.leave_partitions(req.id));
            }
        }
        Ok(batch)
    }

    pub fn heartbeat(
        &mut self,
        req: &Heartbeat,
        now_ms: u64,
    ) -> Result<(Vec<MetadataRecord>, HeartbeatReply), Refusal> {
        let Some(b) = self.image.brokers.get(&req.id) else {
            return Err((
                code::BROKER_ID_NOT_REGISTERED,
                format!("broker {} is not registered", req.id),
            ));
        };
        if b.epoch != req.epoch {
            return Err((
                code::STALE_BROKER_EPOCH,
                format!(
                    "broker {} heartbeats with epoch {}, its registration is {}",
                    req.id, req.epoch, b.epoch
                ),
            ));
        }
        self.last_heard.insert(req.id, now_ms);
        let (fenced, epoch) = (b.fenced, b.epoch);
        let mut batch = Vec::new();
        if req.want_fence && !fenced {
            batch.push(MetadataRecord::FenceBroker { id: req.id, epoch });
            batch.extend(self.leave_partitions(req.id));
        } else if fenced && !req.want_fence && req.metadata_offset >= epoch {
            batch.push(MetadataRecord::UnfenceBroker { id: req.id, epoch });
            batch.extend(self.lead_orphans(req.id));
        }
        let fenced_after = if batch.is_empty() { fenced } else { !fenced };
        Ok((
            batch,
            HeartbeatReply {
                fenced: fenced_after,
            },
        ))
    }

    fn heard_within_session(&self, id: i32, now_ms: u64) -> bool {
        self.last_heard
            .get(&id)
            .is_some_and(|t| now_ms < t + self.config.broker_session_timeout_ms)
    }

    /// When the next broker session runs out, if any broker is unfenced.
    pub fn next_deadline(&self) -> Option<u64> {
        self.image
            .live_brokers()
            .filter_map(|b| self.last_heard.get(&b.id))
            .map(|t| t + self.config.broker_session_timeout_ms)
            .min()
    }

    /// Fences the brokers whose session ran out and moves their
    /// partitions' leadership to other in-sync replicas, in one batch (so
    /// a partition is never handed to a broker fenced by the same tick).
    /// Empty when nobody ran out.
    pub fn tick(&mut self, now_ms: u64) -> Vec<MetadataRecord> {
        let silent: BTreeMap<i32, i64> = self
            .image
            .live_brokers()
            .filter(|b| !self.heard_within_session(b.id, now_ms))
            .map(|b| (b.id, b.epoch))
            .collect();
        if silent.is_empty() {
            return Vec::new();
        }
        let mut batch: Vec<MetadataRecord> = silent
            .iter()
            .map(|(id, epoch)| MetadataRecord::FenceBroker {
                id: *id,
                epoch: *epoch,
            })
            .collect();
        batch.extend(self.leave_partitions_of(&silent.keys().copied().collect()));
        batch
    }

    fn leave_partitions(&self, id: i32) -> Vec<MetadataRecord> {
        self.leave_partitions_of(&BTreeSet::from([id]))
    }

    /// Changes that take the brokers `gone` out of every partition's
    /// leadership and ISR. An ISR is never emptied: its last member stays
    /// (it has every acknowledged record; with unclean election off only
    /// it may lead again), and the partition is left without a leader.
    fn leave_partitions_of(&self, gone: &BTreeSet<i32>) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for t in self.image.topics.values() {
            for p in t.partitions.values() {
                if !p.isr.iter().any(|r| gone.contains(r)) && !gone.contains(&p.leader) {
                    continue;
                }
                let mut isr: Vec<i32> = p
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| !gone.contains(r))
                    .collect();
                if isr.is_empty() {
                    let keep = if p.isr.contains(&p.leader) {
                        p.leader
                    } else {
                        p.isr[0]
                    };
                    isr = vec![keep];
                }
                let leader = if gone.contains(&p.leader) || p.leader == -1 {
                    isr.iter()
                        .copied()
                        .find(|r| !gone.contains(r) && self.is_live(*r))
                        .unwrap_or(-1)
                } else {
                    p.leader
                };
                out.push(MetadataRecord::PartitionChange {
                    topic_id: p.topic_id,
                    partition: p.partition,
                    isr: (isr != p.isr).then_some(isr),
                    leader: (leader != p.leader).then_some(leader),
                });
            }
        }
        out
    }

    /// Partitions without a leader that broker `id` can lead (it is in
    /// their ISR) get it as leader.
    fn lead_orphans(&self, id: i32) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for t in self.image.topics.values() {
            for p in t.partitions.values() {
                if p.leader == -1 && p.isr.contains(&id) {
                    out.push(MetadataRecord::PartitionChange {
                        topic_id: p.topic_id,
                        partition: p.partition,
                        isr: None,
                        leader: Some(id),
                    });
                }
            }
        }
        out
    }

    fn is_live(&self, id: i32) -> bool {
        self.image.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    // ---- topics --------------------------------------------------------

    /// The records creating `t`, or why not. `rng` draws the topic id and
    /// where placement starts, as Kafka's random start does.
    pub fn create_topic(
        &self,
        t: &NewTopic,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if self.image.topic_ids.contains_key(&t.name) {
            return Err((
                error::TOPIC_ALREADY_EXISTS,
                format!("Topic '{}' already exists.", t.name),
            ));
        }
        let replicas = if t.assignments.is_empty() {
            let n = if t.partitions == -1 {
                self.config.default_partitions
            } else {
                t.partitions
            };
            let rf = if t.replication_factor == -1 {
                self.config.default_replication_factor
            } else {
                t.replication_factor
            };
            if n <= 0 {
                return Err((
                    error::INVALID_PARTITIONS,
                    "Number of partitions must be larger than 0.".into(),
                ));
            }
            if rf <= 0 {
                return Err((
                    error::INVALID_REPLICATION_FACTOR,
                    "Replication factor must be larger than 0.".into(),
                ));
            }
            self.place(n, rf, 0, rng.next_u64())?
        } else {
            if t.partitions != -1 || t.replication_factor != -1 {
                return Err((
                    error::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set."
                        .into(),
                ));
            }
            self.check_assignments(&t.assignments, 0)?;
            t.assignments.values().cloned().collect()
        };
        let mut id = 0u128;
        while id == 0 || self.image.topics.contains_key(&id) {
            id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        }
        let mut batch = vec![MetadataRecord::Topic {
            name: t.name.clone(),
            id,
        }];
        batch.extend(self.partition_records(id, 0, replicas));
        for (k, v) in &t.configs {
            batch.push(MetadataRecord::Config {
                resource: ConfigResource::Topic(t.name.clone()),
                name: k.clone(),
                value: Some(v.clone()),
            });
        }
        Ok(batch)
    }

    fn partition_records(
        &self,
        topic_id: u128,
        first: i32,
        replicas: Vec<Vec<i32>>,
    ) -> Vec<MetadataRecord> {
        replicas
            .into_iter()
            .enumerate()
            .map(|(i, replicas)| {
                let isr: Vec<i32> = replicas
                    .iter()
                    .copied()
                    .filter(|r| self.is_live(*r))
                    .collect();
                let isr = if isr.is_empty() {
                    replicas.clone()
                } else {
                    isr
                };
                let leader = isr.iter().copied().find(|r| self.is_live(*r)).unwrap_or(-1);
                let isr = if !self.config.new_isr_leader_only {
                    isr
                } else if leader != -1 {
                    vec![leader]
                } else {
                    // No live replica: the first waits to lead it.
                    replicas.iter().take(1).copied().collect()
                };
                MetadataRecord::Partition(PartitionRecord {
                    topic_id,
                    partition: first + i as i32,
                    replicas,
                    isr,
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                })
            })
            .collect()
    }

    fn check_assignments(
        &self,
        assignments: &BTreeMap<i32, Vec<i32>>,
        first: i32,
    ) -> Result<(), Refusal> {
        let bad = |m: String| Err((error::INVALID_REPLICA_ASSIGNMENT, m));
        let mut rf = None;
        for (i, (p, rs)) in assignments.iter().enumerate() {
            if *p != first + i as i32 {
                return bad(format!(
                    "partitions must be numbered from {first} without gaps"
                ));
            }
            let distinct: BTreeSet<i32> = rs.iter().copied().collect();
            if rs.is_empty() || distinct.len() != rs.len() {
                return bad(format!(
                    "partition {p}: replicas {rs:?} are empty or repeat"
                ));
            }
            if let Some(b) = rs.iter().find(|b| !self.image.brokers.contains_key(b)) {
                return bad(format!("partition {p}: broker {b} is not registered"));
            }
            if *rf.get_or_insert(rs.len()) != rs.len() {
                return bad("every partition must have the same replication factor".into());
            }
        }
        Ok(())
    }

    /// Rack-aware placement, after Kafka's: live brokers are ordered so
    /// that racks alternate; partition `p`'s leader is at a position that
    /// advances with `p`, and its followers are found from a shift that
    /// grows every full turn, so leaders and followers both spread. A
    /// follower is never put on a rack that already has one of the
    /// partition's replicas while some rack has none, so with at least `rf`
    /// racks every partition's replicas are on `rf` different racks.
    fn place(&self, n: i32, rf: i16, first: i32, seed: u64) -> Result<Vec<Vec<i32>>, Refusal> {
        let mut by_rack: BTreeMap<Option<&str>, Vec<i32>> = BTreeMap::new();
        for b in self.image.live_brokers() {
            by_rack.entry(b.rack.as_deref()).or_default().push(b.id);
        }
        let live: usize = by_rack.values().map(Vec::len).sum();
        let rf = usize::try_from(rf).unwrap_or(0);
        if rf > live {
            return Err((
                error::INVALID_REPLICATION_FACTOR,
                format!(
                    "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {live} broker(s) are registered."
                ),
            ));
        }
        let racks = by_rack.len();
        // Rack-alternating order: one broker from each rack in turn.
        let mut order: Vec<(i32, Option<&str>)> = Vec::with_capacity(live);
        let mut turn = 0;
        while order.len() < live {
            for (rack, ids) in &by_rack {
                if let Some(id) = ids.get(turn) {
                    order.push((*id, *rack));
                }
            }
            turn += 1;
        }
        let m = order.len();
        let start = (seed % m as u64) as usize;
        let shift0 = ((seed >> 32) % m as u64) as usize;
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for p in 0..usize::try_from(n).unwrap_or(0) {
            let q = p + usize::try_from(first).unwrap_or(0);
            let lead = (start + q) % m;
            let shift = (shift0 + q / m) % m;
            let mut chosen = vec![order[lead]];
            for k in 1..rf {
                let step = 1 + (shift + k - 1) % (m - 1).max(1);
                let from = (lead + step) % m;
                let racks_left = chosen
                    .iter()
                    .map(|(_, r)| *r)
                    .collect::<BTreeSet<_>>()
                    .len()
                    < racks;
                let pick = (0..m)
                    .map(|i| order[(from + i) % m])
                    .filter(|c| !chosen.contains(c))
                    .find(|c| !racks_left || chosen.iter().all(|(_, r)| *r != c.1))
                    .or_else(|| {
                        (0..m)
                            .map(|i| order[(from + i) % m])
                            .find(|c| !chosen.contains(c))
                    });
                if let Some(c) = pick {
                    chosen.push(c);
                }
            }
            out.push(chosen.into_iter().map(|(id, _)| id).collect());
        }
        Ok(out)
    }

    pub fn delete_topic(&self, name: &str) -> Result<Vec<MetadataRecord>, Refusal> {
        let id = self.image.topic_ids.get(name).ok_or((
            error::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".to_string(),
        ))?;
        Ok(vec![MetadataRecord::RemoveTopic { id: *id }])
    }

    /// CreatePartitions: grows `name` to `count` partitions.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let t = self.image.topic(name).ok_or((
            error::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".to_string(),
        ))?;
        let have = t.partitions.len() as i32;
        if count <= have {
            return Err((
                error::INVALID_PARTITIONS,
                format!("Topic currently has {have} partitions, which is higher than the requested {count}."),
            ));
        }
        let rf = t
            .partitions
            .values()
            .next()
            .map_or(1, |p| p.replicas.len() as i16);
        let replicas = match assignments {
            Some(a) => {
                if a.len() as i32 != count - have {
                    return Err((
                        error::INVALID_REPLICA_ASSIGNMENT,
                        format!(
                            "Increasing the number of partitions by {} but {} assignments provided.",
                            count - have,
                            a.len()
                        ),
                    ));
                }
                let map = a
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (have + i as i32, r.clone()))
                    .collect();
                self.check_assignments(&map, have)?;
                a.to_vec()
            }
            None => self.place(count - have, rf, have, rng.next_u64())?,
        };
        Ok(self.partition_records(t.id, have, replicas))
    }

    /// Config changes (IncrementalAlterConfigs / AlterConfigs), already
    /// validated by the broker that received them: `None` deletes.
    pub fn alter_configs(
        &self,
        resource: &ConfigResource,
        changes: &[(String, Option<String>)],
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if let ConfigResource::Topic(name) = resource {
            if !self.image.topic_ids.contains_key(name) {
                return Err((
                    error::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("Topic {name} does not exist."),
                ));
            }
        }
        Ok(changes
            .iter()
            .map(|(name, value)| MetadataRecord::Config {
                resource: resource.clone(),
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }

    /// A block of producer ids for broker `id`: returns the batch and the
    /// first id of the block.
    pub fn allocate_producer_ids(&self, id: i32) -> (Vec<MetadataRecord>, i64) {
        let first = self.image.next_producer_id;
        (
            vec![MetadataRecord::ProducerIds {
                broker: id,
                next: first + self.config.producer_id_block,
            }],
            first,
        )
    }
}
