//! The broker workload: one Kafka broker (`odradek_core::kafka::Broker`) on
//! a faulty simulated disk, and a handful of clients that talk to it in the
//! Kafka wire protocol over the simulated network — an admin that creates
//! topics, lists offsets and deletes records, producers with acks 0, 1 and
//! -1, and consumers fetching every partition from offset 0 onward — while
//! the nemesis crashes the machine, kills the process, jumps the clock,
//! resets connections and breaks the disk.
//!
//! The checker is black-box, like Jepsen's: it sees only what clients sent
//! and what the broker answered, plus where the disk recorded damage. High
//! watermarks and log start offsets are checked in the order the broker
//! produced them (a response is observed when the broker emits it, not when
//! a delayed network delivers it); everything else when the client reads
//! the response. Violations, in the Jepsen Kafka vocabulary where it has a
//! word:
//! * `lost-write`: a record acknowledged with acks=-1 is not at its offset
//!   (or not anywhere) in the log after recovery, at or above the log start;
//! * `inconsistent-offsets`: two reads of one offset returned different
//!   records, or an acknowledgement placed a record at an offset already
//!   read as another;
//! * `phantom-read`: a fetched record no producer sent to that partition;
//! * `duplicate`: a record sent once appears at two offsets (a retried
//!   produce may duplicate without idempotence: counted, not a violation);
//! * `poll-skip`, `nonmonotonic-poll`: a consumer session's position jumped
//!   forward over records that exist, or went back; also a fetch at a
//!   position below the high watermark that returned nothing at all;
//! * `offsets-not-dense`: offsets within a batch, or between the batches of
//!   one response, are not contiguous;
//! * `corrupt-read`: a fetched batch whose CRC fails;
//! * `read-past-hw`: a record at or above the response's own high
//!   watermark (not yet durable) was served;
//! * `hw-regressed`: the high watermark (Fetch, ListOffsets latest, or the
//!   end of an acks=-1 acknowledgement) went backwards;
//! * `log-start-regressed`: the log start offset went backwards;
//! * `timestamp-type`: a topic with `message.timestamp.type=LogAppendTime`
//!   served a batch stamped otherwise;
//! * `protocol-error`: the broker closed a connection on a valid request,
//!   answered with the wrong correlation id, or sent a response that does
//!   not decode;
//! * `liveness`: after faults stop, outstanding produces do not complete,
//!   or a final consumer (after a last power loss) cannot read every
//!   partition from its log start to its high watermark, within the
//!   liveness phase.
//!
//! A single copy cannot survive the loss of that copy: a loss is excused
//! only at or above the base offset of the first segment whose *data file*
//! the disk damaged (latent rot or a misdirected write) — exactly as the
//! storage workload excuses it. Damage to index, seal and checkpoint files
//! excuses nothing, except that a log start offset may regress when both
//! partition checkpoint copies were damaged.

use crate::disk::SimDisk;
use crate::net::SimNetwork;
use crate::rng::{self, Stream};
use crate::wire::{
    self, decode_api_versions, encode_request, produce_request, topic_name, ClientConn, Host,
    Request as _, Wire, DATA_DIR, MS, NODE,
};
use crate::{FaultKind, RunOptions, RunReport, Workload};
use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use odradek_core::io::Random;
use odradek_core::kafka::BrokerConfig;
use odradek_core::storage::batch::{self, BatchBuilder, Batches, TimestampType};
use odradek_core::storage::segment::parse_data_name;
use odradek_nemesis::{NetFaults, Schedule, Swarm};
use std::collections::{BTreeMap, BTreeSet};

const AUTO_TOPIC: &str = "auto";
/// Kafka error codes the clients react to.
mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;

    /// Errors after which a producer sends the same batch again, as
    /// Kafka's clients do for its retriable errors.
    pub fn retriable(code: i16) -> bool {
        // CORRUPT_MESSAGE, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
        // NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NETWORK_EXCEPTION,
        // NOT_ENOUGH_REPLICAS(_AFTER_APPEND), KAFKA_STORAGE_ERROR.
        matches!(code, 2 | 3 | 5 | 6 | 7 | 13 | 19 | 20 | 56)
    }
}

/// The versions these clients can speak, as (key, min, max). Each request
/// is sent at a random version in the range both sides support, so every
/// version the broker advertises gets exercised. Fetch starts at v5 (the
/// first with the log start offset, which tells a consumer why it skipped)
/// and stops at v12, Produce at v12: later versions name topics by id.
const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 5, 12),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteRecords, 0, 2),
];

/// A topic-partition: (index into the topic list, partition).
type Tp = (usize, i32);

#[derive(Clone, Debug)]
struct TopicSpec {
    name: String,
    partitions: i32,
    log_append_time: bool,
    segment_bytes: Option<u64>,
    /// Created by the admin's CreateTopics; otherwise auto-created by the
    /// first Produce or Metadata that names it.
    explicit: bool,
}

/// Every record a producer ever sent, keyed by its (unique) value.
#[derive(Clone, Debug)]
struct SentRecord {
    tp: Tp,
    key: Vec<u8>,
    /// The producer's timestamp, which a CreateTime topic keeps.
    timestamp: i64,
    /// Where a produce answer placed it.
    acked_at: Option<i64>,
    /// How many times the batch holding it was sent.
    attempts: u32,
    /// Offsets it has been read at.
    seen: BTreeSet<i64>,
}

/// What the checker knows of one partition.
#[derive(Clone, Debug, Default)]
struct PartModel {
    /// Offset -> value, as first read by any consumer (reads expose only
    /// durable data, so these must never change).
    reads: BTreeMap<i64, Vec<u8>>,
    /// Offset -> value of records acknowledged with acks=-1.
    durable: BTreeMap<i64, Vec<u8>>,
    /// The highest high watermark promised, in the broker's order, and what
    /// promised it.
    hw: i64,
    hw_why: String,
    log_start: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Producer,
    Consumer,
    /// Reads everything once after the final power loss.
    Final,
}

/// A produce batch a producer keeps until it is acknowledged (or given up).
#[derive(Clone, Debug)]
struct ProduceBatch {
    tp: Tp,
    acks: i16,
    bytes: Vec<u8>,
    values: Vec<Vec<u8>>,
    attempts: u32,
}

#[derive(Clone, Debug)]
enum Req {
    ApiVersions,
    CreateTopics,
    Metadata { topics: Vec<usize> },
    Produce { tp: Tp, acks: i16, records: usize },
    Fetch { positions: Vec<(Tp, i64)> },
    ListOffsets { tps: Vec<Tp>, timestamp: i64 },
    DeleteRecords { tp: Tp, offset: i64 },
}

impl wire::Request for Req {
    fn api_versions() -> Req {
        Req::ApiVersions
    }

    fn unanswered(&self) -> bool {
        matches!(self, Req::Produce { acks: 0, .. })
    }

    fn timeout_ms(&self) -> u64 {
        match self {
            Req::Fetch { .. } => 6_000,
            _ => 3_000,
        }
    }

    fn key(&self) -> ApiKey {
        match self {
            Req::ApiVersions => ApiKey::ApiVersions,
            Req::CreateTopics => ApiKey::CreateTopics,
            Req::Metadata { .. } => ApiKey::Metadata,
            Req::Produce { .. } => ApiKey::Produce,
            Req::Fetch { .. } => ApiKey::Fetch,
            Req::ListOffsets { .. } => ApiKey::ListOffsets,
            Req::DeleteRecords { .. } => ApiKey::DeleteRecords,
        }
    }
}

type Outstanding = wire::Outstanding<Req>;
type Event = wire::Event<Ev>;

/// A consumer's reset of one partition after OFFSET_OUT_OF_RANGE: first
/// ask for the log start, then (if still out of range) the high watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    Earliest,
    Latest,
}

struct Client {
    role: Role,
    net: ClientConn<Req>,
    /// Producers: acks used (0, 1, -1), or `None` for a mix.
    acks: Option<i16>,
    /// Producers: the batch's topic is unknown; ask for metadata first.
    need_metadata: bool,
    batch: Option<ProduceBatch>,
    sent_batches: u64,
    /// Consumers: the position of each partition in this session.
    positions: BTreeMap<Tp, i64>,
    resets: BTreeMap<Tp, Reset>,
    session: u64,
    /// Final consumer: where each partition starts and must be read to.
    starts: BTreeMap<Tp, i64>,
    targets: BTreeMap<Tp, i64>,
    /// Final consumer: partitions given up on because damage excuses it.
    abandoned: BTreeSet<Tp>,
    /// Final consumer: partitions the broker does not know.
    missing: BTreeSet<Tp>,
}

impl Client {
    fn new(role: Role) -> Client {
        Client {
            role,
            net: ClientConn::default(),
            acks: None,
            need_metadata: false,
            batch: None,
            sent_batches: 0,
            positions: BTreeMap::new(),
            resets: BTreeMap::new(),
            session: 0,
            starts: BTreeMap::new(),
            targets: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            missing: BTreeSet::new(),
        }
    }
}

/// The workload's own events.
#[derive(Clone, Copy, Debug)]
enum Ev {
    EndSafety,
    Drain,
    Deadline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Settle,
    /// Producers finish what they started; nothing new.
    Drain,
    /// After the final power loss: the final consumer reads everything.
    FinalRead,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Weights {
    list_offsets: u64,
    delete_records: u64,
    metadata: u64,
    idle: u64,
}

struct Run {
    h: Host<Req, Ev>,
    swarm: Swarm,
    topics: Vec<TopicSpec>,
    weights: Weights,
    producer_gap_ms: u64,
    consumer_gap_ms: u64,
    clients: Vec<Client>,
    phase: Phase,
    safety_end: u64,
    settle_end: u64,
    deadline: u64,
    storage_errors: u64,
    quiet_restarts: u64,
    created: bool,
    sent: BTreeMap<Vec<u8>, SentRecord>,
    parts: BTreeMap<Tp, PartModel>,
    stats: Stats,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    requests: u64,
    produced: u64,
    acked_durable: u64,
    records_read: u64,
    duplicates: u64,
    resets: u64,
    timeouts: u64,
    skipped_to_log_start: u64,
}

/// Runs the broker workload for one seed.
pub fn run(opts: &RunOptions) -> RunReport {
    let seed = opts.seed;
    let off = |k: FaultKind| opts.overrides.disables(k);
    let mut swarm_rng = rng::stream(seed, Stream::Swarm);
    let swarm = crate::draw_swarm(opts, &mut swarm_rng);
    // TCP neither duplicates nor reorders within a connection; a lost
    // segment is a reset connection here.
    let mut net_faults = NetFaults::draw(&mut swarm_rng);
    net_faults.duplicate = 0.0;
    net_faults.loss /= 4.0;
    if off(FaultKind::NetLoss) {
        net_faults.loss = 0.0;
    }

    let mut topics = Vec::new();
    for t in 0..swarm_rng.between(1, 3) {
        topics.push(TopicSpec {
            name: format!("t{t}"),
            partitions: swarm_rng.between(1, 3) as i32,
            log_append_time: swarm_rng.chance(0.3),
            segment_bytes: swarm_rng
                .chance(0.5)
                .then(|| swarm_rng.between(1024, 16_384)),
            explicit: true,
        });
    }
    let mut config = BrokerConfig::new(NODE, DATA_DIR);
    config.num_partitions = swarm_rng.between(1, 3) as i32;
    config.auto_create_topics = swarm_rng.chance(0.5);
    // Small segments, so that damage, retention and recovery meet segment
    // boundaries; retention now and then, so that log starts move under
    // the consumers.
    let mut setting = |name: &str, value: u64| {
        config.settings.insert(name.to_string(), value.to_string());
    };
    setting("log.segment.bytes", swarm_rng.between(1024, 65_536));
    setting("log.index.interval.bytes", swarm_rng.between(32, 4096));
    if swarm_rng.chance(0.3) {
        setting("log.retention.bytes", swarm_rng.between(4_000, 60_000));
    }
    if swarm_rng.chance(0.2) {
        setting("log.retention.ms", swarm_rng.between(5_000, 60_000));
    }
    config.retention_check_interval_ms = swarm_rng.between(100, 3_000);
    if config.auto_create_topics {
        topics.push(TopicSpec {
            name: AUTO_TOPIC.to_string(),
            partitions: config.num_partitions,
            log_append_time: false,
            segment_bytes: None,
            explicit: false,
        });
    }
    let weights = Weights {
        list_offsets: swarm_rng.between(1, 10),
        delete_records: swarm_rng.between(0, 3),
        metadata: swarm_rng.between(0, 3),
        idle: swarm_rng.between(1, 10),
    };
    let producers = swarm_rng.between(1, 3) as usize;
    let consumers = swarm_rng.between(1, 2) as usize;
    let mut clients = vec![Client::new(Role::Admin)];
    for i in 0..producers {
        let mut c = Client::new(Role::Producer);
        // The first producer always uses acks=-1 at least some of the time:
        // its acknowledgements are what durability is checked against.
        c.acks = match swarm_rng.below(4) {
            0 if i > 0 => Some(0),
            1 if i > 0 => Some(1),
            0..=2 => Some(-1),
            _ => None,
        };
        clients.push(c);
    }
    for _ in 0..consumers {
        clients.push(Client::new(Role::Consumer));
    }
    let producer_gap_ms = swarm_rng.between(2, 30);
    let consumer_gap_ms = swarm_rng.between(0, 20);
    let drawn_safety_ms = swarm_rng.between(2_000, 6_000);
    let safety_ms = opts
        .overrides
        .safety_ms
        .map_or(drawn_safety_ms, |ms| ms.min(drawn_safety_ms));
    let settle_ms = 500;
    let liveness_ms = 20_000;
    let mut schedule_rng = rng::stream(seed, Stream::Schedule);
    let schedule = Schedule::generate(&mut schedule_rng, &swarm, &[NODE], safety_ms);
    let disk = SimDisk::new(rng::stream(seed, Stream::Disk), swarm.disk);
    let net = SimNetwork::new(rng::stream(seed, Stream::Network), net_faults);
    let parts = topics
        .iter()
        .enumerate()
        .flat_map(|(t, spec)| (0..spec.partitions).map(move |p| ((t, p), PartModel::default())))
        .collect();

    let h = Host::new(
        seed,
        opts.trace,
        rng::stream(seed, Stream::Workload),
        disk,
        net,
        net_faults,
        schedule,
        config,
        off(FaultKind::Buggify),
    );
    let mut run = Run {
        h,
        swarm,
        topics,
        weights,
        producer_gap_ms,
        consumer_gap_ms,
        clients,
        phase: Phase::Safety,
        safety_end: safety_ms * MS,
        settle_end: (safety_ms + settle_ms) * MS,
        deadline: (safety_ms + liveness_ms) * MS,
        storage_errors: 0,
        quiet_restarts: 0,
        created: false,
        sent: BTreeMap::new(),
        parts,
        stats: Stats::default(),
    };
    run.main();
    let simulated_ms = run.h.now / MS;
    let violation = run.h.violation.clone();
    RunReport {
        seed,
        workload: Workload::Broker,
        ok: violation.is_none(),
        trace_hash: run.h.trace.hash(),
        events: run.h.trace.events(),
        simulated_ms,
        violation,
        trace: run.h.trace.into_lines(),
    }
}

macro_rules! trace {
    ($run:expr, $($arg:tt)*) => {
        $run.h.trace.record($run.h.now, format_args!($($arg)*))
    };
}

enum Resp {
    ApiVersions(ApiVersionsResponse),
    CreateTopics(CreateTopicsResponse),
    Metadata(MetadataResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    DeleteRecords(DeleteRecordsResponse),
}

/// Decodes a response to `out`: its correlation id and body. ApiVersions
/// falls back to v0 when the broker refused the version (KIP-511).
fn decode_response(out: &Outstanding, bytes: &[u8]) -> Result<(i32, Resp), String> {
    let key = out.req.key();
    let mut buf = Bytes::copy_from_slice(bytes);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(out.version))
        .map_err(|e| format!("{key:?} v{} response header: {e}", out.version))?;
    let v = out.version;
    let body = match &out.req {
        Req::ApiVersions => decode_api_versions(&mut buf, v).map(Resp::ApiVersions),
        Req::CreateTopics => CreateTopicsResponse::decode(&mut buf, v)
            .map(Resp::CreateTopics)
            .map_err(|e| e.to_string()),
        Req::Metadata { .. } => MetadataResponse::decode(&mut buf, v)
            .map(Resp::Metadata)
            .map_err(|e| e.to_string()),
        Req::Produce { .. } => ProduceResponse::decode(&mut buf, v)
            .map(Resp::Produce)
            .map_err(|e| e.to_string()),
        Req::Fetch { .. } => FetchResponse::decode(&mut buf, v)
            .map(Resp::Fetch)
            .map_err(|e| e.to_string()),
        Req::ListOffsets { .. } => ListOffsetsResponse::decode(&mut buf, v)
            .map(Resp::ListOffsets)
            .map_err(|e| e.to_string()),
        Req::DeleteRecords { .. } => DeleteRecordsResponse::decode(&mut buf, v)
            .map(Resp::DeleteRecords)
            .map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("{key:?} v{v} response body: {e}"))?;
    if !buf.is_empty() {
        return Err(format!(
            "{key:?} v{v} response has {} bytes after its body",
            buf.len()
        ));
    }
    Ok((header.correlation_id, body))
}

impl Run {
    fn tp_name(&self, tp: Tp) -> String {
        format!("{}-{}", self.topics[tp.0].name, tp.1)
    }

    fn fail(&mut self, kind: &str, detail: String) {
        self.h.fail(kind, detail)
    }

    fn main(&mut self) {
        let topics: Vec<String> = self
            .topics
            .iter()
            .map(|t| {
                format!(
                    "{}(partitions={} log_append_time={} segment_bytes={:?}{})",
                    t.name,
                    t.partitions,
                    t.log_append_time,
                    t.segment_bytes,
                    if t.explicit { "" } else { " auto" }
                )
            })
            .collect();
        let roles: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "c{i}:{:?}{}",
                    c.role,
                    c.acks.map_or(String::new(), |a| format!("(acks={a})"))
                )
            })
            .collect();
        trace!(
            self,
            "seed {} topics=[{}] clients=[{}] num_partitions={} auto_create={} swarm[{}] net[loss={:.4} delay_us={:?}] weights={:?} producer_gap_ms={} consumer_gap_ms={}",
            self.h.seed,
            topics.join(" "),
            roles.join(" "),
            self.h.config.num_partitions,
            self.h.config.auto_create_topics,
            self.swarm,
            self.h.net_faults.loss,
            self.h.net_faults.delay_us,
            self.weights,
            self.producer_gap_ms,
            self.consumer_gap_ms
        );
        for i in 0..self.h.schedule.faults.len() {
            let at = self.h.schedule.faults[i].0 * MS;
            self.h.schedule_at(at, Event::Fault(i));
        }
        self.h.at(self.safety_end, Ev::EndSafety);
        self.h.at(self.settle_end, Ev::Drain);
        self.h.at(self.deadline, Ev::Deadline);
        self.restart();
        for c in 0..self.clients.len() {
            self.wake(c, MS);
        }
        self.run_loop();
        self.stats.requests = self.h.stats.requests;
        self.stats.resets = self.h.stats.resets;
        self.stats.timeouts = self.h.stats.timeouts;
        trace!(
            self,
            "done: restarts={} stats={:?} net={:?} disk={:?}",
            self.h.restarts,
            self.stats,
            self.h.net.stats(),
            self.h.disk.stats()
        );
    }

    fn all_tps(&self) -> Vec<Tp> {
        self.parts.keys().copied().collect()
    }

    /// Partitions clients may use: those of created topics, and the
    /// auto-created topic's (its first produce creates it).
    fn usable_tps(&self) -> Vec<Tp> {
        self.parts
            .keys()
            .copied()
            .filter(|tp| self.created || !self.topics[tp.0].explicit)
            .collect()
    }

    fn admin_step(&mut self, c: usize) {
        if !self.created {
            let Some(version) = self.version(c, ApiKey::CreateTopics) else {
                return self.fail(
                    "protocol-error",
                    "the broker does not offer CreateTopics".into(),
                );
            };
            let topics: Vec<CreatableTopic> = self
                .topics
                .iter()
                .filter(|t| t.explicit)
                .map(|t| {
                    let mut configs = Vec::new();
                    if t.log_append_time {
                        configs.push(
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_static_str("message.timestamp.type"))
                                .with_value(Some(StrBytes::from_static_str("LogAppendTime"))),
                        );
                    }
                    if let Some(sb) = t.segment_bytes {
                        configs.push(
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_static_str("segment.bytes"))
                                .with_value(Some(StrBytes::from_string(sb.to_string()))),
                        );
                    }
                    CreatableTopic::default()
                        .with_name(topic_name(&t.name))
                        .with_num_partitions(t.partitions)
                        .with_replication_factor(1)
                        .with_configs(configs)
                })
                .collect();
            return self.send(c, Req::CreateTopics, version, |corr| {
                let body = CreateTopicsRequest::default()
                    .with_topics(topics.clone())
                    .with_timeout_ms(2_000);
                encode_request(ApiKey::CreateTopics, version, corr, c, &body)
            });
        }
        if self.phase != Phase::Safety && self.phase != Phase::Settle {
            self.clients[c].net.stopped = true;
            return;
        }
        let w = self.weights;
        let mut roll = self
            .h
            .rng
            .below(w.list_offsets + w.delete_records + w.metadata + w.idle);
        if roll < w.list_offsets {
            let tps = self.usable_tps();
            let timestamp = if self.h.rng.chance(0.5) { -1 } else { -2 };
            return self.list_offsets(c, tps, timestamp);
        }
        roll -= w.list_offsets;
        if roll < w.delete_records {
            return self.delete_records(c);
        }
        roll -= w.delete_records;
        if roll < w.metadata {
            let all = (0..self.topics.len()).collect();
            return self.metadata(c, all);
        }
        let gap = self.h.rng.between(5, 100) * MS;
        self.wake(c, gap);
    }

    /// Metadata for some topics, allowing auto-creation: what a producer
    /// sends before writing to a topic it does not know, which is what
    /// auto-creates it (Produce itself does not, as in Kafka).
    fn metadata(&mut self, c: usize, topics: Vec<usize>) {
        let Some(version) = self.version(c, ApiKey::Metadata) else {
            return self.fail(
                "protocol-error",
                "the broker does not offer Metadata".into(),
            );
        };
        let names: Vec<String> = topics
            .iter()
            .map(|&t| self.topics[t].name.clone())
            .collect();
        self.send(c, Req::Metadata { topics }, version, |corr| {
            let topics = names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                .collect();
            let body = MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(true);
            encode_request(ApiKey::Metadata, version, corr, c, &body)
        });
    }

    fn list_offsets(&mut self, c: usize, tps: Vec<Tp>, timestamp: i64) {
        let Some(version) = self.version(c, ApiKey::ListOffsets) else {
            return self.fail(
                "protocol-error",
                "the broker does not offer ListOffsets".into(),
            );
        };
        let mut by_topic: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        for &(t, p) in &tps {
            by_topic.entry(t).or_default().push(p);
        }
        let topics: Vec<ListOffsetsTopic> = by_topic
            .iter()
            .map(|(&t, ps)| {
                ListOffsetsTopic::default()
                    .with_name(topic_name(&self.topics[t].name))
                    .with_partitions(
                        ps.iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )
            })
            .collect();
        self.send(c, Req::ListOffsets { tps, timestamp }, version, |corr| {
            let body = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(topics.clone())
                .with_timeout_ms(2_000);
            encode_request(ApiKey::ListOffsets, version, corr, c, &body)
        });
    }

    fn delete_records(&mut self, c: usize) {
        let Some(version) = self.version(c, ApiKey::DeleteRecords) else {
            let gap = self.h.rng.between(5, 100) * MS;
            return self.wake(c, gap);
        };
        let tps = self.usable_tps();
        if tps.is_empty() {
            return;
        }
        let tp = tps[self.h.rng.below(tps.len() as u64) as usize];
        // Somewhere between the log start and the high watermark as last
        // seen, mostly near the start: deleting is rare in real use.
        let m = &self.parts[&tp];
        let (lo, hi) = (m.log_start, m.hw.max(m.log_start));
        let span = ((hi - lo) as u64 / 4).max(1);
        let offset = lo + self.h.rng.below(span + 1).min((hi - lo) as u64) as i64;
        let name = self.topics[tp.0].name.clone();
        self.send(c, Req::DeleteRecords { tp, offset }, version, |corr| {
            let body = DeleteRecordsRequest::default()
                .with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(vec![DeleteRecordsPartition::default()
                        .with_partition_index(tp.1)
                        .with_offset(offset)])])
                .with_timeout_ms(2_000);
            encode_request(ApiKey::DeleteRecords, version, corr, c, &body)
        });
    }

    fn make_batch(&mut self, c: usize, tp: Tp, acks: i16) -> ProduceBatch {
        let n = self.h.rng.between(1, 5);
        let ts = self.h.client_wall_ms();
        let mut b = BatchBuilder::new(ts);
        let mut values = Vec::new();
        for i in 0..n {
            let seq = self.clients[c].sent_batches;
            let key = format!("k{}", self.h.rng.below(8));
            let mut value = format!("c{c}-{seq}-{i}#").into_bytes();
            for _ in 0..self.h.rng.below(120) {
                value.push(self.h.rng.next_u64() as u8);
            }
            b = b.add(Some(key.as_bytes()), Some(&value), ts + i as i64);
            self.sent.insert(
                value.clone(),
                SentRecord {
                    tp,
                    key: key.into_bytes(),
                    timestamp: ts + i as i64,
                    acked_at: None,
                    attempts: 0,
                    seen: BTreeSet::new(),
                },
            );
            values.push(value);
        }
        self.clients[c].sent_batches += 1;
        ProduceBatch {
            tp,
            acks,
            bytes: b.build(),
            values,
            attempts: 0,
        }
    }

    fn producer_step(&mut self, c: usize) {
        if self.clients[c].batch.is_none() {
            if self.phase != Phase::Safety && self.phase != Phase::Settle {
                self.clients[c].net.stopped = true;
                return;
            }
            let tps = self.usable_tps();
            if tps.is_empty() {
                let b = self.h.backoff();
                return self.wake(c, b);
            }
            let tp = tps[self.h.rng.below(tps.len() as u64) as usize];
            let acks = self.clients[c]
                .acks
                .unwrap_or_else(|| [0, 1, -1][self.h.rng.below(3) as usize]);
            let batch = self.make_batch(c, tp, acks);
            self.clients[c].batch = Some(batch);
        }
        if std::mem::take(&mut self.clients[c].need_metadata) {
            let t = self.clients[c].batch.as_ref().expect("set above").tp.0;
            return self.metadata(c, vec![t]);
        }
        let Some(version) = self.version(c, ApiKey::Produce) else {
            return self.fail("protocol-error", "the broker does not offer Produce".into());
        };
        let batch = self.clients[c].batch.as_mut().expect("set above");
        batch.attempts += 1;
        let batch = batch.clone();
        for v in &batch.values {
            if let Some(s) = self.sent.get_mut(v) {
                s.attempts = batch.attempts;
            }
        }
        self.stats.produced += 1;
        if batch.acks == 0 {
            // Fire and forget: nobody will say whether it arrived.
            self.clients[c].batch = None;
        }
        let name = self.topics[batch.tp.0].name.clone();
        let req = Req::Produce {
            tp: batch.tp,
            acks: batch.acks,
            records: batch.values.len(),
        };
        self.send(c, req, version, |corr| {
            let body = produce_request(&name, batch.tp.1, batch.acks, &batch.bytes);
            encode_request(ApiKey::Produce, version, corr, c, &body)
        });
    }

    fn consumer_step(&mut self, c: usize) {
        if self.clients[c].role == Role::Consumer
            && self.phase != Phase::Safety
            && self.phase != Phase::Settle
        {
            self.clients[c].net.stopped = true;
            return;
        }
        if self.clients[c].role == Role::Final {
            return self.final_step(c);
        }
        // A new session now and then: a fresh consumer reading from 0
        // re-reads offsets others read long ago.
        if self.h.rng.chance(0.002) {
            let client = &mut self.clients[c];
            client.session += 1;
            client.positions.clear();
            client.resets.clear();
            trace!(self, "c{c}: new consumer session");
        }
        if let Some((&tp, &stage)) = self.clients[c].resets.iter().next() {
            let ts = if stage == Reset::Earliest { -2 } else { -1 };
            return self.list_offsets(c, vec![tp], ts);
        }
        let tps = self.usable_tps();
        if tps.is_empty() {
            let b = self.h.backoff();
            return self.wake(c, b);
        }
        let positions: Vec<(Tp, i64)> = tps
            .iter()
            .map(|&tp| (tp, self.clients[c].positions.get(&tp).copied().unwrap_or(0)))
            .collect();
        self.fetch(c, positions);
    }

    fn fetch(&mut self, c: usize, positions: Vec<(Tp, i64)>) {
        let Some(version) = self.version(c, ApiKey::Fetch) else {
            return self.fail("protocol-error", "the broker does not offer Fetch".into());
        };
        let mut max_wait = [0, 10, 100, 500][self.h.rng.below(4) as usize];
        let mut min_bytes = [0, 1, 1, 100, 4096][self.h.rng.below(5) as usize];
        let mut max_bytes = [1, 300, 4096, 65_536, 1 << 20][self.h.rng.below(5) as usize];
        let mut partition_max = [1, 200, 4096, 1 << 20][self.h.rng.below(4) as usize];
        if self.clients[c].role == Role::Final {
            // Catching up, as a real consumer's defaults do: large reads,
            // so that the liveness bound measures the broker, not tiny
            // fetch limits.
            (max_wait, min_bytes, max_bytes, partition_max) =
                (max_wait.min(100), 1, 1 << 20, 1 << 20);
        }
        let mut by_topic: BTreeMap<usize, Vec<(i32, i64)>> = BTreeMap::new();
        for &((t, p), pos) in &positions {
            by_topic.entry(t).or_default().push((p, pos));
        }
        let topics: Vec<FetchTopic> = by_topic
            .iter()
            .map(|(&t, ps)| {
                FetchTopic::default()
                    .with_topic(topic_name(&self.topics[t].name))
                    .with_partitions(
                        ps.iter()
                            .map(|&(p, pos)| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(pos)
                                    .with_partition_max_bytes(partition_max)
                            })
                            .collect(),
                    )
            })
            .collect();
        self.send(c, Req::Fetch { positions }, version, |corr| {
            let body = FetchRequest::default()
                .with_max_wait_ms(max_wait)
                .with_min_bytes(min_bytes)
                .with_max_bytes(max_bytes)
                .with_topics(topics.clone());
            encode_request(ApiKey::Fetch, version, corr, c, &body)
        });
    }

    fn response(&mut self, c: usize, out: Outstanding, resp: Resp) {
        match (&out.req, resp) {
            (Req::ApiVersions, Resp::ApiVersions(r)) => self.on_api_versions(c, r),
            (Req::CreateTopics, Resp::CreateTopics(r)) => self.on_create_topics(c, r),
            (Req::Metadata { topics }, Resp::Metadata(r)) => {
                let topics = topics.clone();
                self.on_metadata(c, &topics, r)
            }
            (Req::Produce { .. }, Resp::Produce(r)) => self.on_produce(c, r),
            (Req::Fetch { positions }, Resp::Fetch(r)) => {
                let positions = positions.clone();
                self.on_fetch(c, &positions, r)
            }
            (Req::ListOffsets { timestamp, .. }, Resp::ListOffsets(r)) => {
                self.on_list_offsets(c, *timestamp, r)
            }
            (Req::DeleteRecords { .. }, Resp::DeleteRecords(r)) => self.on_delete_records(c, r),
            _ => unreachable!("decoded by the request's key"),
        }
    }

    fn next_after_response(&mut self, c: usize) {
        let gap = match self.clients[c].role {
            Role::Producer => self.h.rng.between(0, 2 * self.producer_gap_ms) * MS / 2,
            Role::Consumer => self.h.rng.between(0, 2 * self.consumer_gap_ms) * MS / 2,
            Role::Admin => self.h.rng.between(5, 100) * MS,
            Role::Final => 2 * MS,
        };
        self.wake(c, gap.max(MS / 10));
    }

    fn on_create_topics(&mut self, c: usize, r: CreateTopicsResponse) {
        let mut ok = true;
        for t in &r.topics {
            if t.error_code != code::NONE && t.error_code != code::TOPIC_ALREADY_EXISTS {
                ok = false;
                self.clients[c].net.last_error = format!(
                    "CreateTopics {}: error {} {:?}",
                    t.name.0.as_str(),
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.as_str().to_string())
                );
            }
        }
        let why = if ok {
            ""
        } else {
            &self.clients[c].net.last_error
        };
        trace!(self, "c{c}: topics created: {ok} {why}");
        if ok {
            self.created = true;
            self.next_after_response(c);
        } else {
            let b = self.h.backoff();
            self.wake(c, b);
        }
    }

    fn on_metadata(&mut self, c: usize, asked: &[usize], r: MetadataResponse) {
        for &t in asked {
            let name = &self.topics[t].name;
            if !r
                .topics
                .iter()
                .any(|x| x.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            {
                let detail = format!("c{c}: metadata response omits topic {name}");
                return self.fail("protocol-error", detail);
            }
        }
        for t in &r.topics {
            let Some(name) = &t.name else { continue };
            let Some(spec) = self.topics.iter().find(|s| s.name == name.0.as_str()) else {
                continue;
            };
            if t.error_code == code::NONE && t.partitions.len() as i32 != spec.partitions {
                let detail = format!(
                    "metadata for {} lists {} partitions, created with {}",
                    spec.name,
                    t.partitions.len(),
                    spec.partitions
                );
                return self.fail("state-mismatch", detail);
            }
        }
        self.next_after_response(c);
    }

    fn on_produce(&mut self, c: usize, r: ProduceResponse) {
        let Some(batch) = self.clients[c].batch.clone() else {
            return self.next_after_response(c);
        };
        let part = r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .next()
            .cloned();
        let Some(part) = part else {
            return self.fail(
                "protocol-error",
                format!("c{c}: produce response without the partition"),
            );
        };
        if part.error_code != code::NONE {
            let retry = code::retriable(part.error_code);
            trace!(
                self,
                "c{c}: produce to {} failed with error {} {:?} (attempt {}, {})",
                self.tp_name(batch.tp),
                part.error_code,
                part.error_message.as_ref().map(|m| m.as_str().to_string()),
                batch.attempts,
                if retry { "retrying" } else { "giving up" }
            );
            self.clients[c].net.last_error = format!("produce error {}", part.error_code);
            if part.error_code == code::UNKNOWN_TOPIC_OR_PARTITION {
                self.clients[c].need_metadata = true;
            }
            if !retry {
                self.clients[c].batch = None;
            }
            let b = self.h.backoff();
            return self.wake(c, b);
        }
        let base = part.base_offset;
        trace!(
            self,
            "c{c}: produced {}@{base}..={} acks={}",
            self.tp_name(batch.tp),
            base + batch.values.len() as i64 - 1,
            batch.acks
        );
        let damaged = self.damaged_from(batch.tp);
        for (i, v) in batch.values.iter().enumerate() {
            let o = base + i as i64;
            let excused = damaged.is_some_and(|d| o >= d);
            let name = self.tp_name(batch.tp);
            let sent = self.sent.get_mut(v).expect("sent");
            sent.acked_at = Some(o);
            if sent.attempts <= 1 && !sent.seen.is_empty() && !sent.seen.contains(&o) && !excused {
                let detail = format!(
                    "{name}: {} read at {:?}, acknowledged at offset {o}",
                    show(v),
                    sent.seen
                );
                return self.fail("inconsistent-offsets", detail);
            }
            let m = self.parts.get(&batch.tp).expect("known partition");
            if let Some(read) = m.reads.get(&o) {
                if read != v && !excused {
                    let detail = format!(
                        "{}: offset {o} was read as {} and is now acknowledged as {}",
                        self.tp_name(batch.tp),
                        show(read),
                        show(v)
                    );
                    return self.fail("inconsistent-offsets", detail);
                }
            }
            if batch.acks == -1 {
                self.stats.acked_durable += 1;
                let m = self.parts.get_mut(&batch.tp).expect("known partition");
                if let Some(old) = m.durable.insert(o, v.clone()) {
                    if &old != v && !excused {
                        let detail = format!(
                            "{}: offset {o} acknowledged durable as {}, now acknowledged as {}",
                            self.tp_name(batch.tp),
                            show(&old),
                            show(v)
                        );
                        return self.fail("lost-write", detail);
                    }
                }
            }
        }
        self.clients[c].batch = None;
        self.next_after_response(c);
    }

    fn on_delete_records(&mut self, c: usize, r: DeleteRecordsResponse) {
        for t in &r.topics {
            for p in &t.partitions {
                trace!(
                    self,
                    "c{c}: delete records {}-{} -> error {} low watermark {}",
                    t.name.0.as_str(),
                    p.partition_index,
                    p.error_code,
                    p.low_watermark
                );
            }
        }
        self.next_after_response(c);
    }

    fn on_list_offsets(&mut self, c: usize, timestamp: i64, r: ListOffsetsResponse) {
        let role = self.clients[c].role;
        for t in &r.topics {
            let Some(ti) = self.topics.iter().position(|s| s.name == t.name.0.as_str()) else {
                continue;
            };
            for p in &t.partitions {
                let tp = (ti, p.partition_index);
                if p.error_code != code::NONE {
                    trace!(
                        self,
                        "c{c}: list offsets {} ts {timestamp}: error {}",
                        self.tp_name(tp),
                        p.error_code
                    );
                    continue;
                }
                let offset = p.offset;
                match role {
                    Role::Consumer => self.consumer_reset(c, tp, timestamp, offset),
                    Role::Final => {
                        if timestamp == -2 {
                            let client = &mut self.clients[c];
                            client.starts.insert(tp, offset);
                            let pos = client.positions.entry(tp).or_insert(offset);
                            if *pos < offset {
                                trace!(self, "c{c}: {} starts at {offset} now", self.tp_name(tp));
                                self.clients[c].positions.insert(tp, offset);
                            }
                        } else {
                            self.clients[c].targets.insert(tp, offset);
                        }
                    }
                    _ => {}
                }
            }
        }
        if role == Role::Final {
            self.final_listed(c, timestamp, &r);
        }
        self.next_after_response(c);
    }

    fn consumer_reset(&mut self, c: usize, tp: Tp, timestamp: i64, offset: i64) {
        let client = &mut self.clients[c];
        let pos = client.positions.get(&tp).copied().unwrap_or(0);
        if timestamp == -2 {
            if pos < offset {
                client.positions.insert(tp, offset);
                client.resets.remove(&tp);
                self.stats.skipped_to_log_start += 1;
                trace!(
                    self,
                    "c{c}: {} reset from {pos} to the log start {offset}",
                    self.tp_name(tp)
                );
            } else {
                client.resets.insert(tp, Reset::Latest);
            }
        } else {
            client.resets.remove(&tp);
            if pos > offset {
                // Reads below `pos` were below some high watermark; that
                // one now ends lower was checked (and excused, or not)
                // when the broker said so.
                client.positions.insert(tp, offset);
                trace!(
                    self,
                    "c{c}: {} reset from {pos} back to the high watermark {offset}",
                    self.tp_name(tp)
                );
            }
        }
    }

    /// Checks one fetch response as the consumer reads it.
    fn on_fetch(&mut self, c: usize, positions: &[(Tp, i64)], r: FetchResponse) {
        if r.error_code != code::NONE {
            self.clients[c].net.last_error = format!("fetch error {}", r.error_code);
            return self.next_after_response(c);
        }
        let mut total_bytes = 0;
        let mut starved: Option<(Tp, i64, i64)> = None;
        let mut all_clean = true;
        for t in &r.responses {
            let Some(ti) = self
                .topics
                .iter()
                .position(|s| s.name == t.topic.0.as_str())
            else {
                return self.fail(
                    "protocol-error",
                    format!(
                        "c{c}: fetch response names unknown topic {}",
                        t.topic.0.as_str()
                    ),
                );
            };
            for p in &t.partitions {
                let tp = (ti, p.partition_index);
                let Some(&(_, asked)) = positions.iter().find(|(x, _)| *x == tp) else {
                    return self.fail(
                        "protocol-error",
                        format!(
                            "c{c}: fetch response for {} not asked for",
                            self.tp_name(tp)
                        ),
                    );
                };
                if self.clients[c].positions.get(&tp).copied().unwrap_or(0) != asked
                    && self.clients[c].role == Role::Consumer
                {
                    // The session restarted while this fetch was out.
                    continue;
                }
                match p.error_code {
                    code::NONE => {}
                    code::OFFSET_OUT_OF_RANGE => {
                        all_clean = false;
                        trace!(
                            self,
                            "c{c}: {} offset {asked} out of range",
                            self.tp_name(tp)
                        );
                        if self.clients[c].role == Role::Consumer {
                            self.clients[c].resets.insert(tp, Reset::Earliest);
                        } else {
                            // Retention may move the log start under the
                            // final read too: ask again where it starts.
                            self.clients[c].starts.remove(&tp);
                            self.final_stuck(c, tp, asked, "offset out of range".into());
                        }
                        continue;
                    }
                    e => {
                        all_clean = false;
                        trace!(self, "c{c}: fetch {}@{asked}: error {e}", self.tp_name(tp));
                        self.clients[c].net.last_error =
                            format!("fetch {} error {e}", self.tp_name(tp));
                        if self.clients[c].role == Role::Final {
                            self.final_stuck(c, tp, asked, format!("error {e}"));
                        }
                        continue;
                    }
                }
                let records = p.records.clone().unwrap_or_default();
                total_bytes += records.len();
                if records.is_empty() && asked < p.high_watermark && asked >= p.log_start_offset {
                    starved = Some((tp, asked, p.high_watermark));
                }
                self.check_records(c, tp, asked, p.high_watermark, p.log_start_offset, &records);
                if self.h.violation.is_some() {
                    return;
                }
            }
        }
        // KIP-74: a fetch returns at least one batch if any partition it
        // asks for has one, whatever the byte limits.
        if let Some((tp, asked, hw)) = starved {
            if total_bytes == 0 && all_clean {
                let detail = format!(
                    "c{c}: fetch at {}@{asked} below the high watermark {hw} returned nothing",
                    self.tp_name(tp)
                );
                return self.fail("poll-skip", detail);
            }
        }
        self.next_after_response(c);
    }

    fn check_records(
        &mut self,
        c: usize,
        tp: Tp,
        asked: i64,
        hw: i64,
        log_start: i64,
        records: &[u8],
    ) {
        let name = self.tp_name(tp);
        let damaged = self.damaged_from(tp);
        let log_append_time = self.topics[tp.0].log_append_time;
        let mut pos = asked;
        let mut prev_next: Option<i64> = None;
        for b in Batches::new(records) {
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    return self.fail(
                        "corrupt-read",
                        format!(
                            "c{c}: fetch {name}@{asked} served a bad batch after offset {pos}: {e}"
                        ),
                    )
                }
            };
            let h = b.header;
            if let Some(n) = prev_next {
                if h.base_offset != n {
                    let kind = if h.base_offset < n {
                        "nonmonotonic-poll"
                    } else {
                        "offsets-not-dense"
                    };
                    return self.fail(
                        kind,
                        format!(
                            "c{c}: fetch {name}@{asked}: batch at {} follows one ending at {}",
                            h.base_offset,
                            n - 1
                        ),
                    );
                }
            }
            prev_next = Some(h.next_offset());
            if log_append_time && h.timestamp_type() != TimestampType::LogAppendTime {
                return self.fail(
                    "timestamp-type",
                    format!(
                        "c{c}: {name} is LogAppendTime but batch {} is not",
                        h.base_offset
                    ),
                );
            }
            let recs = match batch::decode_records(b.bytes) {
                Ok(r) => r,
                Err(e) => {
                    return self.fail(
                        "corrupt-read",
                        format!("c{c}: {name} batch {} does not decode: {e}", h.base_offset),
                    )
                }
            };
            if recs.len() as i64 != h.last_offset() - h.base_offset + 1
                || recs
                    .iter()
                    .enumerate()
                    .any(|(i, r)| r.offset_delta != i as i32)
            {
                return self.fail(
                    "offsets-not-dense",
                    format!(
                        "c{c}: {name} batch {}..={} holds {} records with deltas not 0..n",
                        h.base_offset,
                        h.last_offset(),
                        recs.len()
                    ),
                );
            }
            for (i, r) in recs.iter().enumerate() {
                let o = h.base_offset + i as i64;
                if o < pos {
                    continue;
                }
                if o > pos {
                    // Skipping is allowed only over deleted records, or
                    // where the disk destroyed them.
                    let deleted = o <= log_start.max(self.parts[&tp].log_start);
                    if !deleted && damaged.is_none_or(|d| pos < d) {
                        return self.fail(
                            "poll-skip",
                            format!("c{c}: {name}: position {pos}, next record read is at {o} (log start {log_start})"),
                        );
                    }
                    self.stats.skipped_to_log_start += 1;
                }
                if o >= hw {
                    return self.fail(
                        "read-past-hw",
                        format!("c{c}: {name}: record at {o} served with high watermark {hw}"),
                    );
                }
                let value = r.value.clone().unwrap_or_default();
                let excused = damaged.is_some_and(|d| o >= d);
                let Some(sent) = self.sent.get_mut(&value) else {
                    return self.fail(
                        "phantom-read",
                        format!(
                            "c{c}: {name}@{o} holds {}, which no producer sent",
                            show(&value)
                        ),
                    );
                };
                if sent.tp != tp || r.key.as_deref() != Some(&sent.key[..]) {
                    let detail = format!(
                        "c{c}: {name}@{o} holds {} (key {:?}), sent to {}-{} with key {:?}",
                        show(&value),
                        r.key.as_deref().map(String::from_utf8_lossy),
                        self.topics[sent.tp.0].name,
                        sent.tp.1,
                        String::from_utf8_lossy(&sent.key)
                    );
                    return self.fail("phantom-read", detail);
                }
                let timestamp = h.base_timestamp + r.timestamp_delta;
                if !log_append_time && timestamp != sent.timestamp {
                    let detail = format!(
                        "c{c}: {name}@{o} holds {} with timestamp {timestamp}, sent with {}",
                        show(&value),
                        sent.timestamp
                    );
                    return self.fail("phantom-read", detail);
                }
                if sent.attempts <= 1 && sent.acked_at.is_some_and(|a| a != o) && !excused {
                    let detail = format!(
                        "c{c}: {name}: {} acknowledged at offset {}, read at {o}",
                        show(&value),
                        sent.acked_at.unwrap_or_default()
                    );
                    return self.fail("inconsistent-offsets", detail);
                }
                if sent.seen.insert(o) && sent.seen.len() > 1 {
                    let (attempts, seen) = (sent.attempts, sent.seen.clone());
                    self.stats.duplicates += 1;
                    trace!(
                        self,
                        "c{c}: {name}: {} at offsets {seen:?} (sent {attempts} times)",
                        show(&value)
                    );
                    if attempts <= 1 && !excused {
                        return self.fail(
                            "duplicate",
                            format!(
                                "c{c}: {name}: {} sent once, read at offsets {seen:?}",
                                show(&value)
                            ),
                        );
                    }
                }
                let m = self.parts.get_mut(&tp).expect("known partition");
                match m.reads.get(&o) {
                    Some(prev) if *prev != value => {
                        if !excused {
                            let detail = format!(
                                "c{c}: {name}@{o} read as {}, earlier as {}",
                                show(&value),
                                show(prev)
                            );
                            return self.fail("inconsistent-offsets", detail);
                        }
                        m.reads.insert(o, value.clone());
                    }
                    Some(_) => {}
                    None => {
                        m.reads.insert(o, value.clone());
                    }
                }
                if let Some(d) = m.durable.get(&o) {
                    if *d != value && !excused {
                        let detail = format!(
                            "c{c}: {name}@{o} acknowledged durable as {}, read as {}",
                            show(d),
                            show(&value)
                        );
                        return self.fail("lost-write", detail);
                    }
                }
                self.stats.records_read += 1;
                pos = o + 1;
            }
        }
        if pos != asked {
            self.clients[c].positions.insert(tp, pos);
        }
    }

    // ---- what the broker said, in the broker's order ----------------------

    fn observe_response(&mut self, out: &Outstanding, resp: &Resp) {
        match (&out.req, resp) {
            (Req::Produce { tp, acks, records }, Resp::Produce(r)) => {
                for p in r
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                {
                    self.note_error(p.error_code, *tp, None);
                    if p.error_code != code::NONE {
                        continue;
                    }
                    // Its log start offset is the one at append time (an
                    // acks=-1 answer waits for the sync, and records may be
                    // deleted meanwhile, as in Kafka): not checked for order.
                    if *acks == -1 {
                        // A floor, not a report: the high watermark covers
                        // at least this batch from now on.
                        let end = p.base_offset + *records as i64;
                        if end > self.parts[tp].hw {
                            let m = self.parts.get_mut(tp).expect("known partition");
                            m.hw = end;
                            m.hw_why = "an acks=-1 acknowledgement's end".to_string();
                        }
                    }
                }
            }
            (Req::Fetch { positions }, Resp::Fetch(r)) => {
                for t in &r.responses {
                    let Some(ti) = self
                        .topics
                        .iter()
                        .position(|s| s.name == t.topic.0.as_str())
                    else {
                        continue;
                    };
                    for p in &t.partitions {
                        let tp = (ti, p.partition_index);
                        let at = positions.iter().find(|(x, _)| *x == tp).map(|&(_, o)| o);
                        self.note_error(p.error_code, tp, at);
                        if p.error_code != code::NONE {
                            continue;
                        }
                        self.observe_hw(tp, p.high_watermark, "fetch");
                        self.observe_log_start(tp, p.log_start_offset, "fetch");
                    }
                }
            }
            (Req::ListOffsets { tps, timestamp }, Resp::ListOffsets(r)) => {
                let answered = r.topics.iter().map(|t| t.partitions.len()).sum::<usize>();
                if answered != tps.len() {
                    let detail = format!(
                        "list offsets for {} partitions answered for {answered}",
                        tps.len()
                    );
                    return self.fail("protocol-error", detail);
                }
                for t in &r.topics {
                    let Some(ti) = self.topics.iter().position(|s| s.name == t.name.0.as_str())
                    else {
                        continue;
                    };
                    for p in &t.partitions {
                        let tp = (ti, p.partition_index);
                        self.note_error(p.error_code, tp, None);
                        if p.error_code != code::NONE {
                            continue;
                        }
                        if *timestamp == -1 {
                            self.observe_hw(tp, p.offset, "list offsets latest");
                        } else {
                            self.observe_log_start(tp, p.offset, "list offsets earliest");
                        }
                    }
                }
            }
            (Req::DeleteRecords { tp, offset }, Resp::DeleteRecords(r)) => {
                for p in r.topics.iter().flat_map(|t| t.partitions.iter()) {
                    self.note_error(p.error_code, *tp, None);
                    if p.error_code == code::NONE {
                        if p.low_watermark < *offset {
                            let detail = format!(
                                "{}: delete records below {offset} left the log start at {}",
                                self.tp_name(*tp),
                                p.low_watermark
                            );
                            return self.fail("state-mismatch", detail);
                        }
                        self.observe_log_start(*tp, p.low_watermark, "delete records");
                    }
                }
            }
            _ => {}
        }
    }

    /// A storage error means a log went offline, or data at `at` is
    /// corrupt. An operator restarts the broker for the first, as
    /// storage.rs's workload restarts an offline log; no restart mends
    /// damaged data.
    fn note_error(&mut self, error: i16, tp: Tp, at: Option<i64>) {
        let damaged = self.damaged_from(tp);
        if at.is_some_and(|o| damaged.is_some_and(|d| d <= o)) {
            return;
        }
        if error == code::KAFKA_STORAGE_ERROR {
            self.storage_errors += 1;
            if self.h.restart_pending || self.h.broker.is_none() {
                return;
            }
            if !self.h.faults_on {
                // A log taken offline before faults stopped is fixed by
                // one restart; errors that keep coming are a liveness bug.
                self.quiet_restarts += 1;
                if self.quiet_restarts > 2 {
                    return self.fail(
                        "liveness",
                        "storage errors keep coming with faults off".into(),
                    );
                }
            }
            self.h.restart_pending = true;
            self.h
                .schedule_at(self.h.now + 10 * MS, Event::OperatorRestart);
        }
    }

    fn observe_hw(&mut self, tp: Tp, hw: i64, what: &str) {
        let Some(m) = self.parts.get(&tp) else { return };
        let (old, old_why) = (m.hw, m.hw_why.clone());
        if hw < old {
            let damaged = self.damaged_from(tp);
            let name = self.tp_name(tp);
            if damaged.is_none_or(|d| d > hw) {
                let detail =
                    format!("{name}: high watermark {hw} ({what}) after {old} ({old_why})");
                return self.fail("hw-regressed", detail);
            }
            trace!(
                self,
                "{name}: high watermark {hw} ({what}) below {old} ({old_why}): excused, data damaged from offset {}",
                damaged.unwrap_or_default()
            );
        }
        if hw != old {
            let m = self.parts.get_mut(&tp).expect("known");
            m.hw = hw;
            m.hw_why = what.to_string();
        }
    }

    fn observe_log_start(&mut self, tp: Tp, start: i64, what: &str) {
        let both_lost = self.both_checkpoint_copies_damaged(tp);
        let name = self.tp_name(tp);
        let Some(m) = self.parts.get_mut(&tp) else {
            return;
        };
        if start < m.log_start {
            if both_lost {
                m.log_start = start;
                return;
            }
            let detail = format!("{name}: log start {start} ({what}) after {}", m.log_start);
            return self.fail("log-start-regressed", detail);
        }
        m.log_start = start;
    }

    fn partition_dir(&self, tp: Tp) -> String {
        format!("{DATA_DIR}/{}/", self.tp_name(tp))
    }

    /// The base offset of the first segment of `tp` whose data file the disk
    /// damaged: one copy cannot survive the loss of that copy.
    fn damaged_from(&self, tp: Tp) -> Option<i64> {
        let prefix = self.partition_dir(tp);
        self.h
            .disk
            .damage()
            .iter()
            .filter_map(|d| d.path.strip_prefix(&prefix).and_then(parse_data_name))
            .min()
    }

    fn both_checkpoint_copies_damaged(&self, tp: Tp) -> bool {
        let damage = self.h.disk.damage();
        let dir = self.partition_dir(tp);
        ["a", "b"].iter().all(|copy| {
            let name = format!("{dir}partition.checkpoint.{copy}");
            damage
                .iter()
                .any(|d| d.path == name || d.path == format!("{name}.tmp"))
        })
    }

    // ---- the phases ---------------------------------------------------------

    fn end_safety(&mut self) {
        self.h.faults_on = false;
        self.phase = Phase::Settle;
        let quiet = self.h.disk.faults().quiet();
        self.h.disk.set_faults(quiet);
        self.h.net.set_faults(self.h.net_faults.quiet());
        trace!(self, "safety phase over: faults off, liveness phase begins");
        if self.h.broker.is_some() && self.storage_errors > 0 {
            trace!(self, "restarting the broker: storage errors were seen");
            self.h.stop_broker(false);
        }
        self.restart();
    }

    fn drain(&mut self) {
        if self.phase != Phase::Settle {
            return;
        }
        trace!(
            self,
            "drain: producers finish their batches, nothing new starts"
        );
        self.phase = Phase::Drain;
    }

    fn drained(&self) -> bool {
        self.clients.iter().all(|c| match c.role {
            Role::Producer => c.batch.is_none(),
            Role::Admin => self.created && c.net.out.is_none(),
            _ => true,
        })
    }

    /// Everything acknowledged is in; a last power loss, and then a fresh
    /// consumer must find all of it.
    fn final_power_loss(&mut self) {
        trace!(self, "final power loss");
        self.phase = Phase::FinalRead;
        if self.h.broker.is_some() {
            self.h.stop_broker(true);
        } else {
            self.h.disk.crash();
        }
        self.restart();
        if self.h.violation.is_some() {
            return;
        }
        let c = self.clients.len();
        self.clients.push(Client::new(Role::Final));
        trace!(self, "c{c}: final consumer starts");
        self.wake(c, MS);
    }

    fn final_step(&mut self, c: usize) {
        let client = &self.clients[c];
        let tps: Vec<Tp> = self
            .all_tps()
            .into_iter()
            .filter(|tp| !client.abandoned.contains(tp))
            .collect();
        let no_start: Vec<Tp> = tps
            .iter()
            .copied()
            .filter(|tp| !client.starts.contains_key(tp))
            .collect();
        if !no_start.is_empty() {
            return self.list_offsets(c, no_start, -2);
        }
        let no_target: Vec<Tp> = tps
            .iter()
            .copied()
            .filter(|tp| !client.targets.contains_key(tp))
            .collect();
        if !no_target.is_empty() {
            return self.list_offsets(c, no_target, -1);
        }
        let positions: Vec<(Tp, i64)> = tps
            .iter()
            .filter(|&tp| client.positions[tp] < client.targets[tp])
            .map(|&tp| (tp, client.positions[&tp]))
            .collect();
        if positions.is_empty() {
            return;
        }
        self.fetch(c, positions);
    }

    /// A partition the final consumer cannot list: unknown topics hold
    /// nothing (if they should, the final check says so).
    fn final_listed(&mut self, c: usize, timestamp: i64, r: &ListOffsetsResponse) {
        for t in &r.topics {
            let Some(ti) = self.topics.iter().position(|s| s.name == t.name.0.as_str()) else {
                continue;
            };
            for p in &t.partitions {
                let tp = (ti, p.partition_index);
                if p.error_code == code::NONE {
                    continue;
                }
                // A partition the broker does not know holds nothing; if it
                // should, the final check finds what is missing.
                if p.error_code == code::UNKNOWN_TOPIC_OR_PARTITION {
                    trace!(self, "c{c}: {} does not exist", self.tp_name(tp));
                    let client = &mut self.clients[c];
                    client.starts.insert(tp, 0);
                    client.positions.insert(tp, 0);
                    client.targets.insert(tp, 0);
                    client.missing.insert(tp);
                } else {
                    let pos = self.clients[c].positions.get(&tp).copied().unwrap_or(0);
                    self.final_stuck(
                        c,
                        tp,
                        pos,
                        format!("list offsets {timestamp}: error {}", p.error_code),
                    );
                }
            }
        }
    }

    /// The final consumer cannot read `tp` at `pos`. Excused (and the
    /// partition abandoned) only where the disk damaged that data.
    fn final_stuck(&mut self, c: usize, tp: Tp, pos: i64, why: String) {
        if self.damaged_from(tp).is_some_and(|d| pos >= d) {
            if self.clients[c].abandoned.insert(tp) {
                trace!(
                    self,
                    "c{c}: {} unreadable at {pos} ({why}): excused, its data file was damaged",
                    self.tp_name(tp)
                );
            }
        } else {
            self.clients[c].net.last_error = format!("{} at {pos}: {why}", self.tp_name(tp));
        }
    }

    fn final_read_done(&self) -> bool {
        let Some(f) = self.clients.iter().find(|c| c.role == Role::Final) else {
            return false;
        };
        self.parts.keys().all(|tp| {
            f.abandoned.contains(tp)
                || f.targets
                    .get(tp)
                    .is_some_and(|t| f.positions.get(tp).is_some_and(|p| p >= t))
        })
    }

    fn final_check(&mut self) {
        let f = self
            .clients
            .iter()
            .find(|c| c.role == Role::Final)
            .expect("final consumer");
        let (starts, targets, abandoned, missing) = (
            f.starts.clone(),
            f.targets.clone(),
            f.abandoned.clone(),
            f.missing.clone(),
        );
        let mut lost = None;
        'parts: for (&tp, m) in &self.parts {
            if abandoned.contains(&tp) {
                continue;
            }
            let start = starts.get(&tp).copied().unwrap_or(0);
            let end = targets[&tp];
            let damaged = self.damaged_from(tp);
            let gone = if missing.contains(&tp) {
                " (the broker no longer knows the partition)"
            } else {
                ""
            };
            for (&o, v) in &m.durable {
                if o < start || damaged.is_some_and(|d| o >= d) {
                    continue;
                }
                let detail = if o >= end {
                    let count = m.durable.range(o..).count();
                    format!(
                        "{}: {} acknowledged at {o} with acks=-1 ({count} such records from there), the log now ends at {end}{gone}",
                        self.tp_name(tp),
                        show(v)
                    )
                } else if m.reads.get(&o) != Some(v) {
                    format!(
                        "{}: {} acknowledged at {o} with acks=-1, final read found {}",
                        self.tp_name(tp),
                        show(v),
                        m.reads.get(&o).map_or("nothing".into(), |r| show(r))
                    )
                } else {
                    continue;
                };
                lost = Some(("lost-write", detail));
                break 'parts;
            }
            // A partition the broker no longer knows answered only errors,
            // which the tap does not check: its promises are checked here.
            if m.hw > end && damaged.is_none_or(|d| d > end) {
                let detail = format!(
                    "{}: high watermark was {} ({}), the log now ends at {end}{gone}",
                    self.tp_name(tp),
                    m.hw,
                    m.hw_why
                );
                lost = Some(("hw-regressed", detail));
                break 'parts;
            }
        }
        if let Some((kind, detail)) = lost {
            return self.fail(kind, detail);
        }
        trace!(
            self,
            "final read complete: {:?}",
            targets
                .iter()
                .map(|(&tp, &e)| format!(
                    "{}=[{}, {e})",
                    self.tp_name(tp),
                    starts.get(&tp).copied().unwrap_or(-1)
                ))
                .collect::<Vec<_>>()
        );
        self.phase = Phase::Done;
    }

    fn liveness_deadline(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let stuck: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| match c.role {
                Role::Producer => c.batch.is_some(),
                Role::Final => true,
                Role::Admin => !self.created,
                Role::Consumer => false,
            })
            .map(|(i, c)| format!("c{i} ({:?}): last error {:?}", c.role, c.net.last_error))
            .collect();
        let detail = format!(
            "phase {:?} not finished {} ms after faults stopped: {}",
            self.phase,
            (self.h.now - self.safety_end) / MS,
            stuck.join("; ")
        );
        self.fail("liveness", detail);
    }
}

impl Wire for Run {
    type Req = Req;
    type Resp = Resp;
    type Ev = Ev;

    fn host(&mut self) -> &mut Host<Req, Ev> {
        &mut self.h
    }

    fn host_ref(&self) -> &Host<Req, Ev> {
        &self.h
    }

    fn client(&mut self, c: usize) -> &mut ClientConn<Req> {
        &mut self.clients[c].net
    }

    fn client_ref(&self, c: usize) -> &ClientConn<Req> {
        &self.clients[c].net
    }

    fn client_versions(&self) -> &'static [(ApiKey, i16, i16)] {
        CLIENT_VERSIONS
    }

    fn decode(&self, out: &Outstanding, bytes: &[u8]) -> Result<(i32, Resp), String> {
        decode_response(out, bytes)
    }

    fn observe(&mut self, out: &Outstanding, resp: &Resp) {
        self.observe_response(out, resp)
    }

    fn on_response(&mut self, c: usize, out: Outstanding, resp: Resp) {
        self.response(c, out, resp)
    }

    fn client_work(&mut self, c: usize) {
        match self.clients[c].role {
            Role::Admin => self.admin_step(c),
            Role::Producer => self.producer_step(c),
            Role::Consumer | Role::Final => self.consumer_step(c),
        }
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::EndSafety => self.end_safety(),
            Ev::Drain => self.drain(),
            Ev::Deadline => self.liveness_deadline(),
        }
    }

    fn after_event(&mut self) {
        if self.phase == Phase::Drain && self.drained() {
            self.final_power_loss();
        }
        if self.phase == Phase::FinalRead && self.final_read_done() {
            self.final_check();
        }
    }

    fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn end_excused(&mut self) {
        self.phase = Phase::Done;
    }

    fn broker_started(&mut self) {
        self.storage_errors = 0;
    }

    fn unanswered_gap(&mut self, _c: usize) -> u64 {
        let gap = self.h.rng.between(0, 2 * self.producer_gap_ms) * MS / 2;
        gap.max(MS / 10)
    }
}

/// A record value for a message: its readable prefix.
fn show(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == b'#').unwrap_or(v.len().min(24));
    format!("{:?}", String::from_utf8_lossy(&v[..end]))
}
