//! Kafka request handling, sans I/O: a frame of bytes in, a frame of bytes
//! (or a reason to close the connection, or "later") out. The production
//! listener in `server/` and the simulator both drive [`Broker`], so every
//! request a client can send is also something the simulator sends under
//! faults.
//!
//! The codec is the `kafka-protocol` crate, generated from Kafka's message
//! schemas. ApiVersions advertises exactly the versions in [`SUPPORTED`],
//! each of which is handled and tested here.
//!
//! # Driving the broker
//!
//! A driver hands each request frame to [`Broker::handle_frame`] with the
//! connection it came from, and gets a response, nothing (acks=0), a reason
//! to close, or [`FrameOutcome::Pending`]. After each round of frames, and
//! whenever [`Broker::next_deadline`] passes, it calls [`Broker::poll`],
//! which syncs what the round appended (one fsync per dirty partition for
//! the whole round: group commit) and returns the deferred responses that
//! are now due. A connection has at most one request in flight, as Kafka's
//! own broker processes a connection's requests one at a time.
//!
//! # Durability and the high watermark
//!
//! A single broker is its own whole ISR, so the high watermark is what that
//! one replica holds durably: the synced end of the log. acks=1 is answered
//! right after the append (the leader has it, as Kafka promises); acks=-1
//! is answered after the sync. Consumers only ever see synced records, so an
//! offset a consumer has read can never be lost or reused after a crash.

mod admin;
mod cluster;
pub mod configs;
mod fetch;
mod groups;
pub mod meta;
mod offsets;
mod produce;
mod producers;

use std::collections::BTreeMap;

use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::buggify::Buggify;
use crate::io::clock::{Clock, Instant};
use crate::io::disk::{self, Disk};
use crate::storage::log::{Log, LogError};

use crate::group::{Coordinator, GroupConfig};
pub use cluster::Forward;
use configs::TopicSettings;
pub use groups::{is_internal, OFFSETS_TOPIC};
use meta::MetaState;

/// Kafka's error codes used here.
pub mod error {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub use crate::group::error::*;
}

/// The API versions this broker handles: (key, min, max). The minimums are
/// Kafka 4.0's (KIP-896 removed the older ones).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

/// A single broker's partitions are led by itself in this epoch; the Raft
/// controller (a later issue) will bump it on leadership changes.
pub const LEADER_EPOCH: i32 = 0;

/// A ceiling on partitions per broker: each open partition holds files
/// open, and a request for millions of partitions must be refused, not
/// attempted until the process runs out of descriptors.
pub const MAX_PARTITIONS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub rack: Option<String>,
    pub cluster_id: String,
    /// Where topic metadata and partition logs live (`log.dirs`).
    pub data_dir: String,
    /// `num.partitions`: for auto-created topics and CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval_ms: u64,
    /// `fetch.max.bytes`: the most a fetch response carries, whatever the
    /// client asks for (it may ask for 2 GiB), beyond the one batch a
    /// consumer is always given.
    pub fetch_max_bytes: usize,
    /// Settings the operator made, by Kafka name: topic configs default to
    /// these (`log.retention.ms` for `retention.ms`, …), and DescribeConfigs
    /// on the broker reports them.
    pub settings: BTreeMap<String, String>,
    /// `offsets.topic.num.partitions`: used when `__consumer_offsets` is
    /// created; afterwards the topic's own count rules.
    pub offsets_topic_num_partitions: i32,
    /// The group coordinator's settings (`group.*`, `offsets.*`).
    pub group: GroupConfig,
    /// Different on every start of the process, like Kafka's broker
    /// incarnation id: the driver draws it from its randomness (the OS in
    /// production, the seed in simulation). Member ids handed out after a
    /// restart must not repeat ones live clients still hold.
    pub incarnation: u64,
}

impl BrokerConfig {
    /// A single-node broker with Kafka's defaults.
    pub fn new(node_id: i32, data_dir: &str) -> BrokerConfig {
        BrokerConfig {
            node_id,
            advertised_host: "localhost".into(),
            advertised_port: 9092,
            rack: None,
            cluster_id: "odradek-single-node".into(),
            data_dir: data_dir.to_string(),
            num_partitions: 1,
            default_replication_factor: 1,
            auto_create_topics: true,
            retention_check_interval_ms: 300_000,
            fetch_max_bytes: 57_671_680,
            settings: BTreeMap::new(),
            offsets_topic_num_partitions: 50,
            group: GroupConfig::default(),
            incarnation: 0,
        }
    }
}

/// Identifies a client connection to the driver and the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What to do with a request frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Send these bytes back (without the 4-byte size prefix).
    Respond(Vec<u8>),
    /// Send nothing (a produce with acks=0).
    NoResponse,
    /// Close the connection; the reason is for the log.
    Close(String),
    /// The response comes later, from [`Broker::poll`].
    Pending,
}

/// A deferred response that is now due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub conn: ConnId,
    /// Never `Pending`.
    pub outcome: FrameOutcome,
}

pub(crate) struct Partition<D: Disk> {
    /// `None` when the log could not be opened or went offline for good:
    /// the partition answers KAFKA_STORAGE_ERROR, as a Kafka partition in an
    /// offline log directory does.
    pub log: Option<Log<D>>,
    pub problem: Option<String>,
    pub producers: producers::ProducerStates,
    /// Whether this broker leads the partition: always on a single node;
    /// in a cluster, what the metadata image says. Clients reading or
    /// writing a partition led elsewhere get NOT_LEADER_OR_FOLLOWER.
    pub leading: bool,
    /// The partition's leader epoch: [`LEADER_EPOCH`] on a single node,
    /// the image's in a cluster.
    pub leader_epoch: i32,
}

impl<D: Disk> Partition<D> {
    fn log(&self) -> Result<&Log<D>, i16> {
        if !self.leading {
            return Err(error::NOT_LEADER_OR_FOLLOWER);
        }
        match &self.log {
            Some(l) if !l.is_offline() => Ok(l),
            _ => Err(error::KAFKA_STORAGE_ERROR),
        }
    }

    fn log_mut(&mut self) -> Result<&mut Log<D>, i16> {
        if !self.leading {
            return Err(error::NOT_LEADER_OR_FOLLOWER);
        }
        match &mut self.log {
            Some(l) if !l.is_offline() => Ok(l),
            _ => Err(error::KAFKA_STORAGE_ERROR),
        }
    }

    /// The high watermark: the durable end of the only replica.
    fn high_watermark(&self) -> Option<i64> {
        self.log.as_ref().map(|l| l.durable_end())
    }
}

pub(crate) struct Topic<D: Disk> {
    pub id: u128,
    pub settings: TopicSettings,
    pub partitions: Vec<Partition<D>>,
}

/// The request being handled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub conn: ConnId,
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub now: Instant,
    pub wall_ms: i64,
}

pub struct Broker<D: Disk + Clone> {
    disk: D,
    config: BrokerConfig,
    buggify: Buggify,
    meta: MetaState,
    topics: BTreeMap<String, Topic<D>>,
    by_id: BTreeMap<u128, String>,
    pending_produce: BTreeMap<ConnId, produce::PendingProduce>,
    pending_fetch: BTreeMap<ConnId, fetch::PendingFetch>,
    next_retention: Instant,
    groups: Coordinator,
    /// (monotonic ms, wall ms) of the request or poll being handled.
    group_clock: (u64, i64),
    parked_group: BTreeMap<ConnId, groups::Parked>,
    parked_partition: BTreeMap<ConnId, i32>,
    durable_group: BTreeMap<ConnId, groups::Durable>,
    /// Group replies to other connections, made while handling a request,
    /// handed out by the next poll.
    group_completions: Vec<(ConnId, FrameOutcome)>,
    /// Partitions of `__consumer_offsets` whose records the last
    /// `apply_group_effects` failed to append: replies that depend on them
    /// must not be released.
    group_failed: std::collections::BTreeSet<i32>,
    client_hosts: BTreeMap<ConnId, String>,
    /// Present when the broker is a member of a cluster: it follows the
    /// metadata image and forwards changes to the controller.
    cluster: Option<cluster::ClusterState>,
}

fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub(crate) fn uuid(id: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(id)
}

impl<D: Disk + Clone> Broker<D> {
    /// Opens the broker's data directory: loads the topic metadata, finishes
    /// any topic deletion a crash interrupted, and recovers every partition
    /// log.
    pub fn open(disk: D, config: BrokerConfig, clock: &dyn Clock) -> Result<Broker<D>, String> {
        Self::open_with_buggify(disk, config, clock, Buggify::disabled())
    }

    /// As [`Broker::open`], with fault injection for the simulator.
    pub fn open_with_buggify(
        disk: D,
        config: BrokerConfig,
        clock: &dyn Clock,
        buggify: Buggify,
    ) -> Result<Broker<D>, String> {
        Self::open_inner(disk, config, clock, buggify, false)
    }

    /// Opens a broker that is a member of a cluster: its topics come from
    /// the metadata image ([`Broker::apply_image`]), not from its own topic
    /// file, and it starts with none until the first image arrives. The
    /// file still records the cluster id, so a data directory of another
    /// cluster is refused.
    pub fn open_cluster(
        disk: D,
        config: BrokerConfig,
        clock: &dyn Clock,
        buggify: Buggify,
    ) -> Result<Broker<D>, String> {
        Self::open_inner(disk, config, clock, buggify, true)
    }

    fn open_inner(
        disk: D,
        config: BrokerConfig,
        clock: &dyn Clock,
        buggify: Buggify,
        in_cluster: bool,
    ) -> Result<Broker<D>, String> {
        let dir = config.data_dir.clone();
        disk.create_dir_all(&dir)
            .map_err(|e| format!("cannot create data directory {dir}: {e}"))?;
        let meta = match MetaState::load(&disk, &dir)? {
            Some(mut m) => {
                if m.cluster_id != config.cluster_id {
                    return Err(format!(
                        "data directory {dir} belongs to cluster {:?}, but this broker is configured for cluster {:?}",
                        m.cluster_id, config.cluster_id
                    ));
                }
                // What was read may be only in the page cache: a store whose
                // directory sync failed before a process restart left it
                // there, and the next power loss would take it back. Writing
                // it again (synced, renamed, directory synced) is the only
                // way to make it durable before anything relies on it.
                m.store(&disk, &dir)
                    .map_err(|e| format!("cannot rewrite topic metadata in {dir}: {e}"))?;
                m
            }
            None => {
                let mut m = MetaState {
                    cluster_id: config.cluster_id.clone(),
                    ..MetaState::default()
                };
                m.store(&disk, &dir)
                    .map_err(|e| format!("cannot write topic metadata in {dir}: {e}"))?;
                m
            }
        };
        let mut broker = Broker {
            disk,
            config,
            buggify,
            meta,
            topics: BTreeMap::new(),
            by_id: BTreeMap::new(),
            pending_produce: BTreeMap::new(),
            pending_fetch: BTreeMap::new(),
            next_retention: Instant::ZERO,
            groups: Coordinator::new(GroupConfig::default(), 1, 0),
            group_clock: (clock.now().as_millis(), clock.wall_ms()),
            parked_group: BTreeMap::new(),
            parked_partition: BTreeMap::new(),
            durable_group: BTreeMap::new(),
            group_completions: Vec::new(),
            group_failed: std::collections::BTreeSet::new(),
            client_hosts: BTreeMap::new(),
            cluster: in_cluster.then(cluster::ClusterState::new),
        };
        if let Some(c) = broker.cluster.as_mut() {
            // The image is the only source of topics in a cluster; the
            // file's list says which topics' files may be on this disk.
            c.known = std::mem::take(&mut broker.meta.topics);
        }
        broker.groups = Coordinator::new(
            broker.config.group.clone(),
            broker.config.offsets_topic_num_partitions,
            broker.groups_salt(),
        );
        broker.next_retention = clock
            .now()
            .plus_millis(broker.config.retention_check_interval_ms);
        let deleting: Vec<String> = broker
            .meta
            .topics
            .values()
            .filter(|t| t.deleting)
            .map(|t| t.name.clone())
            .collect();
        for name in deleting {
            broker.finish_deletion(&name)?;
        }
        let live: Vec<meta::TopicMeta> = broker.meta.topics.values().cloned().collect();
        for t in live {
            let topic = broker.open_topic(&t, 0);
            broker.by_id.insert(t.id, t.name.clone());
            broker.topics.insert(t.name.clone(), topic);
        }
        // A partition directory created before a crash may have its entry
        // in the data directory only in the page cache.
        broker
            .disk
            .sync_dir(&broker.config.data_dir)
            .map_err(|e| format!("cannot sync data directory {dir}: {e}"))?;
        broker.load_offsets_partitions();
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Names of the live topics, for operators and tests.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    fn log_buggify(&self, topic: &str, partition: i32) -> Buggify {
        let h = crc32c::crc32c(format!("{topic}-{partition}").as_bytes());
        self.buggify.child(u64::from(h))
    }

    /// Opens (creating if absent) partitions `from..` of a topic. The data
    /// directory is not synced here: `open` syncs it once for all topics,
    /// and new partitions go through [`Broker::create_partitions_durably`].
    fn open_topic(&self, t: &meta::TopicMeta, from: i32) -> Topic<D> {
        let settings = configs::topic_settings(&t.configs, &self.config.settings);
        let mut partitions = Vec::new();
        for p in from..t.partitions {
            partitions.push(self.open_partition(&t.name, p, &settings));
        }
        Topic {
            id: t.id,
            settings,
            partitions,
        }
    }

    /// Creates partitions `from..` of a topic and syncs their new
    /// directories into the data directory: until that is synced, a power
    /// loss can take a whole partition, acknowledged records and all. If it
    /// cannot be synced they stay offline, and the next start syncs it.
    fn create_partitions_durably(&self, t: &meta::TopicMeta, from: i32) -> Topic<D> {
        let mut topic = self.open_topic(t, from);
        if let Err(e) = self.disk.sync_dir(&self.config.data_dir) {
            for p in &mut topic.partitions {
                p.log = None;
                p.problem = Some(format!("cannot sync the data directory: {e}"));
            }
        }
        topic
    }

    fn open_partition(&self, topic: &str, p: i32, settings: &TopicSettings) -> Partition<D> {
        let dir = meta::partition_dir(&self.config.data_dir, topic, p);
        match Log::open(
            self.disk.clone(),
            &dir,
            settings.log.clone(),
            self.log_buggify(topic, p),
        ) {
            Ok(log) => Partition {
                producers: producers::ProducerStates::rebuild(&log),
                log: Some(log),
                problem: None,
                leading: true,
                leader_epoch: LEADER_EPOCH,
            },
            Err(e) => Partition {
                log: None,
                problem: Some(format!("{dir}: {e}")),
                producers: producers::ProducerStates::default(),
                leading: true,
                leader_epoch: LEADER_EPOCH,
            },
        }
    }

    /// Removes the files of a topic marked for deletion, then the mark.
    fn finish_deletion(&mut self, name: &str) -> Result<(), String> {
        let Some(t) = self.meta.topics.get(name).cloned() else {
            return Ok(());
        };
        for p in 0..t.partitions {
            let dir = meta::partition_dir(&self.config.data_dir, name, p);
            remove_dir_files(&self.disk, &dir)
                .map_err(|e| format!("deleting topic {name}: {dir}: {e}"))?;
        }
        let mut next = self.meta.clone();
        next.topics.remove(name);
        next.store(&self.disk, &self.config.data_dir)
            .map_err(|e| format!("deleting topic {name}: metadata: {e}"))?;
        self.meta = next;
        Ok(())
    }

    /// Handles one request: `frame` is everything after the size prefix.
    pub fn handle_frame(&mut self, conn: ConnId, frame: &[u8], clock: &dyn Clock) -> FrameOutcome {
        if frame.len() < 8 {
            return FrameOutcome::Close(format!(
                "request of {} bytes is shorter than any header",
                frame.len()
            ));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Ok(key) = ApiKey::try_from(raw_key) else {
            return FrameOutcome::Close(format!(
                "unknown api key {raw_key} (correlation id {correlation_id})"
            ));
        };
        let Some((lo, hi)) = supported_range(key) else {
            return unsupported(key, version, correlation_id, None);
        };
        if version < lo || version > hi {
            if key == ApiKey::ApiVersions {
                return respond(
                    key,
                    0,
                    correlation_id,
                    &self.api_versions(error::UNSUPPORTED_VERSION),
                );
            }
            return unsupported(key, version, correlation_id, Some((lo, hi)));
        }
        if self.pending_produce.contains_key(&conn)
            || self.pending_fetch.contains_key(&conn)
            || self.parked_group.contains_key(&conn)
            || self.durable_group.contains_key(&conn)
            || self.cluster.as_ref().is_some_and(|c| c.busy(conn))
        {
            return FrameOutcome::Close(format!(
                "{key:?} request on connection {conn:?} while its previous request is still being handled"
            ));
        }
        let mut buf = bytes::Bytes::copy_from_slice(frame);
        let client_id = match RequestHeader::decode(&mut buf, key.request_header_version(version)) {
            Err(e) => {
                return FrameOutcome::Close(format!(
                    "malformed {key:?} v{version} request header: {e}"
                ))
            }
            Ok(h) => h.client_id.map(|c| c.to_string()).unwrap_or_default(),
        };
        self.group_clock = (clock.now().as_millis(), clock.wall_ms());
        let ctx = Ctx {
            conn,
            key,
            version,
            correlation_id,
            now: clock.now(),
            wall_ms: clock.wall_ms(),
        };
        macro_rules! decode {
            ($t:ty) => {{
                match <$t>::decode(&mut buf, version) {
                    Err(e) => {
                        return FrameOutcome::Close(format!(
                            "malformed {key:?} v{version} request: {e}"
                        ))
                    }
                    // Bytes after the body are ignored, as Kafka's broker
                    // ignores them: librdkafka 2.x sends three stray bytes
                    // after an all-topics Metadata request
                    // (confluentinc/librdkafka#5049).
                    Ok(r) => r,
                }
            }};
        }
        match key {
            ApiKey::ApiVersions => {
                decode!(ApiVersionsRequest);
                ctx.respond(&self.api_versions(error::NONE))
            }
            ApiKey::Metadata => {
                let req = decode!(MetadataRequest);
                let resp = if self.cluster.is_some() {
                    self.cluster_metadata(&ctx, &req)
                } else {
                    self.metadata(&ctx, &req)
                };
                ctx.respond(&resp)
            }
            ApiKey::Produce => {
                let req = decode!(ProduceRequest);
                self.produce(&ctx, req)
            }
            ApiKey::Fetch => {
                let req = decode!(FetchRequest);
                self.fetch(&ctx, req)
            }
            ApiKey::ListOffsets => {
                let req = decode!(ListOffsetsRequest);
                let resp = self.list_offsets(&ctx, &req);
                ctx.respond(&resp)
            }
            ApiKey::OffsetForLeaderEpoch => {
                let req = decode!(OffsetForLeaderEpochRequest);
                let resp = self.offset_for_leader_epoch(&req);
                ctx.respond(&resp)
            }
            ApiKey::CreateTopics => {
                let req = decode!(CreateTopicsRequest);
                let resp = self.create_topics(&ctx, &req);
                self.finish_admin(&ctx, cluster::Held::Create(resp), req.timeout_ms)
            }
            ApiKey::DeleteTopics => {
                let req = decode!(DeleteTopicsRequest);
                let resp = self.delete_topics(&ctx, &req);
                self.finish_admin(&ctx, cluster::Held::Delete(resp), req.timeout_ms)
            }
            ApiKey::CreatePartitions => {
                let req = decode!(CreatePartitionsRequest);
                let resp = self.create_partitions(&req);
                self.finish_admin(&ctx, cluster::Held::Grow(resp), req.timeout_ms)
            }
            ApiKey::DeleteRecords => {
                let req = decode!(DeleteRecordsRequest);
                let resp = self.delete_records(&req);
                ctx.respond(&resp)
            }
            ApiKey::DescribeConfigs => {
                let req = decode!(DescribeConfigsRequest);
                let resp = self.describe_configs(&ctx, &req);
                ctx.respond(&resp)
            }
            ApiKey::AlterConfigs => {
                let req = decode!(AlterConfigsRequest);
                let resp = self.alter_configs(&req);
                self.finish_admin(&ctx, cluster::Held::Alter(resp), 0)
            }
            ApiKey::IncrementalAlterConfigs => {
                let req = decode!(IncrementalAlterConfigsRequest);
                let resp = self.incremental_alter_configs(&req);
                self.finish_admin(&ctx, cluster::Held::IncAlter(resp), 0)
            }
            ApiKey::InitProducerId => {
                let req = decode!(InitProducerIdRequest);
                self.init_producer_id(&ctx, &req)
            }
            ApiKey::DescribeCluster => {
                let req = decode!(DescribeClusterRequest);
                let resp = if self.cluster.is_some() {
                    self.cluster_describe()
                } else {
                    self.describe_cluster(&req)
                };
                ctx.respond(&resp)
            }
            ApiKey::FindCoordinator => {
                let req = decode!(FindCoordinatorRequest);
                let resp = self.find_coordinator(&ctx, &req);
                ctx.respond(&resp)
            }
            ApiKey::JoinGroup => {
                let req = decode!(JoinGroupRequest);
                self.join_group(&ctx, &client_id, &req)
            }
            ApiKey::SyncGroup => {
                let req = decode!(SyncGroupRequest);
                self.sync_group(&ctx, &req)
            }
            ApiKey::Heartbeat => {
                let req = decode!(HeartbeatRequest);
                self.heartbeat(&ctx, &req)
            }
            ApiKey::LeaveGroup => {
                let req = decode!(LeaveGroupRequest);
                self.leave_group(&ctx, &req)
            }
            ApiKey::OffsetCommit => {
                let req = decode!(OffsetCommitRequest);
                self.offset_commit(&ctx, &req)
            }
            ApiKey::OffsetFetch => {
                let req = decode!(OffsetFetchRequest);
                self.offset_fetch(&ctx, &req)
            }
            ApiKey::OffsetDelete => {
                let req = decode!(OffsetDeleteRequest);
                self.offset_delete(&ctx, &req)
            }
            ApiKey::DescribeGroups => {
                let req = decode!(DescribeGroupsRequest);
                self.describe_groups(&ctx, &req)
            }
            ApiKey::ListGroups => {
                let req = decode!(ListGroupsRequest);
                self.list_groups(&ctx, &req)
            }
            ApiKey::DeleteGroups => {
                let req = decode!(DeleteGroupsRequest);
                self.delete_groups(&ctx, &req)
            }
            ApiKey::ConsumerGroupHeartbeat => {
                let req = decode!(ConsumerGroupHeartbeatRequest);
                self.consumer_group_heartbeat(&ctx, &client_id, &req)
            }
            ApiKey::ConsumerGroupDescribe => {
                let req = decode!(ConsumerGroupDescribeRequest);
                self.consumer_group_describe(&ctx, &req)
            }
            // Every key in SUPPORTED has an arm above.
            _ => FrameOutcome::Close(format!(
                "api {key:?} is listed as supported but has no handler"
            )),
        }
    }

    /// Syncs what was appended since the last poll (group commit), runs
    /// retention when due, and returns the deferred responses now due.
    pub fn poll(&mut self, clock: &dyn Clock) -> Vec<Completion> {
        let now = clock.now();
        let wall_ms = clock.wall_ms();
        self.group_clock = (now.as_millis(), wall_ms);
        let mut group_done = std::mem::take(&mut self.group_completions);
        group_done.extend(self.group_tick());
        self.sync_dirty();
        if now >= self.next_retention {
            self.next_retention = now.plus_millis(self.config.retention_check_interval_ms.max(1));
            for t in self.topics.values_mut() {
                for p in &mut t.partitions {
                    if let Ok(log) = p.log_mut() {
                        // A failure takes the log offline, which readers
                        // and writers then see as KAFKA_STORAGE_ERROR.
                        let _ = log.apply_retention(wall_ms);
                    }
                }
            }
        }
        let mut done = self.release_produces();
        done.extend(self.release_fetches(now, wall_ms));
        group_done.extend(self.release_group_replies());
        done.extend(self.release_forwarded(now));
        done.extend(
            group_done
                .into_iter()
                .map(|(conn, outcome)| Completion { conn, outcome }),
        );
        done
    }

    /// The earliest time [`Broker::poll`] has something to do on its own.
    pub fn next_deadline(&self) -> Option<Instant> {
        let fetch = self.pending_fetch.values().map(|f| f.deadline).min();
        let mut at = Some(self.next_retention);
        if let Some(f) = fetch {
            at = Some(f.min(self.next_retention));
        }
        let groups = Instant::from_millis(self.groups.next_deadline());
        at = Some(at.map_or(groups, |a| a.min(groups)));
        if let Some(f) = self.forwarded_deadline() {
            at = Some(at.map_or(f, |a| a.min(f)));
        }
        if !self.pending_produce.is_empty()
            || !self.durable_group.is_empty()
            || !self.group_completions.is_empty()
        {
            // Due at once: the next poll syncs and answers them.
            at = Some(Instant::ZERO);
        }
        at
    }

    /// Forgets a closed connection's deferred request.
    pub fn connection_closed(&mut self, conn: ConnId) {
        self.pending_fetch.remove(&conn);
        // A pending produce's data is already appended; only its answer is
        // dropped, as Kafka drops the response to a closed connection.
        self.pending_produce.remove(&conn);
        self.parked_group.remove(&conn);
        self.parked_partition.remove(&conn);
        self.durable_group.remove(&conn);
        self.client_hosts.remove(&conn);
        self.forwarded_closed(conn);
    }

    /// The peer's address, as group descriptions show it ("/127.0.0.1").
    pub fn set_client_host(&mut self, conn: ConnId, host: String) {
        self.client_hosts.insert(conn, host);
    }

    pub(crate) fn client_host(&self, conn: ConnId) -> String {
        self.client_hosts
            .get(&conn)
            .cloned()
            .unwrap_or_else(|| "/unknown".to_string())
    }

    /// A clean stop: syncs and closes every log.
    pub fn shutdown(mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, t) in std::mem::take(&mut self.topics) {
            for (i, p) in t.partitions.into_iter().enumerate() {
                if let Some(log) = p.log {
                    if let Err(e) = log.close() {
                        problems.push(format!("{name}-{i}: {e}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Group commit: one sync per partition with unsynced appends.
    fn sync_dirty(&mut self) {
        for t in self.topics.values_mut() {
            for p in &mut t.partitions {
                // Not `log_mut`: appends made while leading must reach the
                // disk even if leadership went meanwhile.
                if let Some(log) = p.log.as_mut().filter(|l| !l.is_offline()) {
                    if log.end_offset() > log.durable_end() {
                        if let Err(e) = log.flush() {
                            p.problem = Some(e.to_string());
                        }
                    }
                }
            }
        }
    }

    fn api_versions(&self, error_code: i16) -> ApiVersionsResponse {
        let keys = SUPPORTED
            .iter()
            .map(|&(k, lo, hi)| {
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(lo)
                    .with_max_version(hi)
            })
            .collect();
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(keys)
    }

    pub(crate) fn partition(&self, topic: &str, p: i32) -> Option<&Partition<D>> {
        let t = self.topics.get(topic)?;
        usize::try_from(p).ok().and_then(|i| t.partitions.get(i))
    }

    pub(crate) fn partition_mut(&mut self, topic: &str, p: i32) -> Option<&mut Partition<D>> {
        let t = self.topics.get_mut(topic)?;
        usize::try_from(p)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
    }
}

impl Ctx {
    pub(crate) fn respond<T: Encodable>(&self, body: &T) -> FrameOutcome {
        respond(self.key, self.version, self.correlation_id, body)
    }
}

pub(crate) fn respond<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> FrameOutcome {
    let mut out = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut out, key.response_header_version(version))
        .and_then(|_| body.encode(&mut out, version));
    match encoded {
        Ok(()) => FrameOutcome::Respond(out.to_vec()),
        // Our own response not fitting its schema is a bug, but a
        // connection-level one: the client is told by the close.
        Err(e) => FrameOutcome::Close(format!("cannot encode {key:?} v{version} response: {e}")),
    }
}

/// The answer to an API or version this broker does not handle: where the
/// API's response has a top-level error code and the codec can write that
/// version, a response carrying UNSUPPORTED_VERSION, which clients surface
/// as "not supported by the broker"; otherwise (an API key Kafka does not
/// define, a version no Kafka has) a close, which is what Kafka's broker
/// does with a request it cannot parse.
fn unsupported(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    ours: Option<(i16, i16)>,
) -> FrameOutcome {
    macro_rules! error_reply {
        ($($k:ident => $resp:ty),* $(,)?) => {
            match key {
                $(ApiKey::$k => {
                    let body = <$resp>::default().with_error_code(error::UNSUPPORTED_VERSION);
                    respond(key, version, correlation_id, &body)
                })*
                _ => FrameOutcome::Close(String::new()),
            }
        };
    }
    let reply = error_reply!(
        Fetch => FetchResponse,
        Metadata => MetadataResponse,
        DescribeCluster => DescribeClusterResponse,
        FindCoordinator => FindCoordinatorResponse,
        JoinGroup => JoinGroupResponse,
        SyncGroup => SyncGroupResponse,
        Heartbeat => HeartbeatResponse,
        LeaveGroup => LeaveGroupResponse,
        ListGroups => ListGroupsResponse,
        OffsetFetch => OffsetFetchResponse,
        OffsetDelete => OffsetDeleteResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        AddPartitionsToTxn => AddPartitionsToTxnResponse,
        AddOffsetsToTxn => AddOffsetsToTxnResponse,
        EndTxn => EndTxnResponse,
        ListTransactions => ListTransactionsResponse,
        SaslHandshake => SaslHandshakeResponse,
        SaslAuthenticate => SaslAuthenticateResponse,
        DescribeAcls => DescribeAclsResponse,
        DescribeLogDirs => DescribeLogDirsResponse,
        DescribeClientQuotas => DescribeClientQuotasResponse,
        DescribeUserScramCredentials => DescribeUserScramCredentialsResponse,
        ElectLeaders => ElectLeadersResponse,
        AlterPartitionReassignments => AlterPartitionReassignmentsResponse,
        ListPartitionReassignments => ListPartitionReassignmentsResponse,
        UpdateFeatures => UpdateFeaturesResponse,
        DescribeQuorum => DescribeQuorumResponse,
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse,
        PushTelemetry => PushTelemetryResponse,
    );
    match reply {
        FrameOutcome::Respond(bytes) => FrameOutcome::Respond(bytes),
        _ => FrameOutcome::Close(match ours {
            Some((lo, hi)) => format!(
                "{key:?} v{version} is not supported (supported: v{lo}..=v{hi}, correlation id {correlation_id})"
            ),
            None => format!("api {key:?} v{version} is not supported (correlation id {correlation_id})"),
        }),
    }
}

/// Kafka's error code for a storage failure seen by a client.
pub(crate) fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::InvalidBatch(_) => error::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => error::MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => error::OFFSET_OUT_OF_RANGE,
        LogError::NonContiguous { .. }
        | LogError::Corrupt { .. }
        | LogError::Disk(_)
        | LogError::Offline(_) => error::KAFKA_STORAGE_ERROR,
    }
}

fn remove_dir_files<D: Disk>(d: &D, dir: &str) -> disk::DiskResult<()> {
    match d.list(dir) {
        Ok(names) => {
            for n in names {
                d.remove(&disk::join(dir, &n))?;
            }
            d.sync_dir(dir)
        }
        Err(disk::DiskError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

// Its request framing helpers serve the cluster tests too.
#[cfg(test)]
pub(crate) mod tests;
