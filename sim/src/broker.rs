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
use crate::trace::Trace;
use crate::{FaultKind, RunOptions, RunReport, Workload};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use odradek_core::buggify::Buggify;
use odradek_core::io::clock::ManualClock;
use odradek_core::io::{Address, Disk, Envelope, Instant, Random, TimerQueue};
use odradek_core::kafka::meta::META_FILES;
use odradek_core::kafka::{Broker, BrokerConfig, ConnId, FrameOutcome};
use odradek_core::storage::batch::{self, BatchBuilder, Batches, TimestampType};
use odradek_core::storage::segment::parse_data_name;
use odradek_nemesis::{Fault, NetFaults, Schedule, Swarm};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

const NODE: i32 = 1;
const MS: u64 = 1_000_000;
/// Simulated wall clock at time zero: 2026-01-01T00:00:00Z.
const EPOCH_WALL_MS: i64 = 1_767_225_600_000;
const DATA_DIR: &str = "data";
const AUTO_TOPIC: &str = "auto";
/// Frames a client may have sent that the broker has not yet read.
const MAX_UNREAD: u64 = 16;

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

impl Req {
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

#[derive(Clone, Debug)]
struct Outstanding {
    corr: i32,
    version: i16,
    req: Req,
    serial: u64,
}

/// A consumer's reset of one partition after OFFSET_OUT_OF_RANGE: first
/// ask for the log start, then (if still out of range) the high watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    Earliest,
    Latest,
}

struct Client {
    role: Role,
    conn: Option<u64>,
    /// Negotiated on the current connection: key -> (min, max).
    versions: Option<BTreeMap<i16, (i16, i16)>>,
    out: Option<Outstanding>,
    next_corr: i32,
    /// When the client's next step is due, so that wakes are not doubled.
    wake_at: Option<u64>,
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
    /// The last error this client saw, for liveness reports.
    last_error: String,
    stopped: bool,
}

impl Client {
    fn new(role: Role) -> Client {
        Client {
            role,
            conn: None,
            versions: None,
            out: None,
            next_corr: 0,
            wake_at: None,
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
            last_error: String::new(),
            stopped: false,
        }
    }
}

/// TCP's in-order delivery on one direction of a connection: segments that
/// arrive early wait for the ones before them.
#[derive(Default)]
struct InOrder {
    next: u64,
    early: BTreeMap<u64, Vec<u8>>,
}

impl InOrder {
    fn push(&mut self, seq: u64, data: Vec<u8>) -> Vec<Vec<u8>> {
        self.early.insert(seq, data);
        let mut out = Vec::new();
        while let Some(d) = self.early.remove(&self.next) {
            out.push(d);
            self.next += 1;
        }
        out
    }
}

/// A connection as the simulator sees it, both ends.
struct Conn {
    client: usize,
    alive: bool,
    to_broker_seq: u64,
    to_client_seq: u64,
    /// Frames sent that the broker has not read yet: TCP's flow control
    /// stops a sender when the receiver's buffers are full.
    unread: u64,
    at_client: InOrder,
    /// The request the broker's next response answers (one at a time).
    expect: Option<Outstanding>,
}

/// The broker's end of a live connection.
#[derive(Default)]
struct ServerConn {
    at_broker: InOrder,
    frames: VecDeque<Vec<u8>>,
    /// A request is pending inside the broker: the next frame waits.
    pending: bool,
}

#[derive(Clone, Copy, Debug)]
enum Event {
    ClientWake(usize),
    ClientTimeout(usize, u64),
    /// The client learns that its connection was reset.
    ClientReset(usize, u64),
    Net,
    BrokerWork,
    BrokerPoll,
    Fault(usize),
    Restart,
    OperatorRestart,
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
    seed: u64,
    trace: Trace,
    now: u64,
    rng: ChaCha8Rng,
    disk: SimDisk,
    net: SimNetwork,
    swarm: Swarm,
    net_faults: NetFaults,
    schedule: Schedule,
    config: BrokerConfig,
    topics: Vec<TopicSpec>,
    weights: Weights,
    producer_gap_ms: u64,
    consumer_gap_ms: u64,
    broker: Option<Broker<SimDisk>>,
    incarnation: u64,
    server: BTreeMap<u64, ServerConn>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    clients: Vec<Client>,
    no_buggify: bool,
    queue: TimerQueue<Event>,
    busy_until: u64,
    /// Times at which a `BrokerWork` or a `BrokerPoll` is already queued.
    work_at: BTreeSet<u64>,
    poll_at: BTreeSet<u64>,
    wall_offset_ms: i64,
    faults_on: bool,
    phase: Phase,
    safety_end: u64,
    settle_end: u64,
    deadline: u64,
    restart_pending: bool,
    storage_errors: u64,
    quiet_restarts: u64,
    created: bool,
    sent: BTreeMap<Vec<u8>, SentRecord>,
    parts: BTreeMap<Tp, PartModel>,
    serial: u64,
    restarts: u64,
    stats: Stats,
    violation: Option<String>,
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

    let mut run = Run {
        seed,
        trace: Trace::new(opts.trace),
        now: 0,
        rng: rng::stream(seed, Stream::Workload),
        disk,
        net,
        swarm,
        net_faults,
        schedule,
        config,
        topics,
        weights,
        producer_gap_ms,
        consumer_gap_ms,
        broker: None,
        incarnation: 0,
        server: BTreeMap::new(),
        conns: BTreeMap::new(),
        next_conn: 1,
        clients,
        no_buggify: off(FaultKind::Buggify),
        queue: TimerQueue::new(),
        busy_until: 0,
        work_at: BTreeSet::new(),
        poll_at: BTreeSet::new(),
        wall_offset_ms: 0,
        faults_on: true,
        phase: Phase::Safety,
        safety_end: safety_ms * MS,
        settle_end: (safety_ms + settle_ms) * MS,
        deadline: (safety_ms + liveness_ms) * MS,
        restart_pending: false,
        storage_errors: 0,
        quiet_restarts: 0,
        created: false,
        sent: BTreeMap::new(),
        parts,
        serial: 0,
        restarts: 0,
        stats: Stats::default(),
        violation: None,
    };
    run.main();
    let simulated_ms = run.now / MS;
    let violation = run.violation.clone();
    RunReport {
        seed,
        workload: Workload::Broker,
        ok: violation.is_none(),
        trace_hash: run.trace.hash(),
        events: run.trace.events(),
        simulated_ms,
        violation,
        trace: run.trace.into_lines(),
    }
}

macro_rules! trace {
    ($run:expr, $($arg:tt)*) => {
        $run.trace.record($run.now, format_args!($($arg)*))
    };
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn encode_request<T: Encodable>(
    key: ApiKey,
    version: i16,
    corr: i32,
    client: usize,
    body: &T,
) -> Result<Vec<u8>, String> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_string(format!("sim-c{client}"))))
        .encode(&mut out, key.request_header_version(version))
        .and_then(|_| body.encode(&mut out, version))
        .map_err(|e| format!("cannot encode {key:?} v{version}: {e}"))?;
    Ok(out.to_vec())
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
        Req::ApiVersions => {
            let mut probe = buf.clone();
            match ApiVersionsResponse::decode(&mut probe, v) {
                Ok(r) => {
                    buf = probe;
                    Ok(Resp::ApiVersions(r))
                }
                Err(_) => ApiVersionsResponse::decode(&mut buf, 0).map(Resp::ApiVersions),
            }
        }
        Req::CreateTopics => CreateTopicsResponse::decode(&mut buf, v).map(Resp::CreateTopics),
        Req::Metadata { .. } => MetadataResponse::decode(&mut buf, v).map(Resp::Metadata),
        Req::Produce { .. } => ProduceResponse::decode(&mut buf, v).map(Resp::Produce),
        Req::Fetch { .. } => FetchResponse::decode(&mut buf, v).map(Resp::Fetch),
        Req::ListOffsets { .. } => ListOffsetsResponse::decode(&mut buf, v).map(Resp::ListOffsets),
        Req::DeleteRecords { .. } => {
            DeleteRecordsResponse::decode(&mut buf, v).map(Resp::DeleteRecords)
        }
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

/// Whether a request frame is a Produce with acks=0.
fn is_acks0_produce(frame: &[u8]) -> bool {
    if frame.len() < 4 || i16::from_be_bytes([frame[0], frame[1]]) != ApiKey::Produce as i16 {
        return false;
    }
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let mut buf = Bytes::copy_from_slice(frame);
    RequestHeader::decode(&mut buf, ApiKey::Produce.request_header_version(version))
        .and_then(|_| ProduceRequest::decode(&mut buf, version))
        .is_ok_and(|r| r.acks == 0)
}

fn conn_frame(conn: u64, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + data.len());
    p.extend_from_slice(&conn.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(data);
    p
}

fn split_frame(payload: &[u8]) -> (u64, u64, Vec<u8>) {
    let conn = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes"));
    (conn, seq, payload[16..].to_vec())
}

impl Run {
    fn schedule_at(&mut self, at: u64, ev: Event) {
        self.queue.schedule(Instant(at), ev);
    }

    fn clock(&self) -> ManualClock {
        ManualClock {
            now: Instant(self.now),
            wall_ms: EPOCH_WALL_MS + (self.now / MS) as i64 + self.wall_offset_ms,
        }
    }

    /// Clients' clocks do not jump: only the broker's does.
    fn client_wall_ms(&self) -> i64 {
        EPOCH_WALL_MS + (self.now / MS) as i64
    }

    fn tp_name(&self, tp: Tp) -> String {
        format!("{}-{}", self.topics[tp.0].name, tp.1)
    }

    fn fail(&mut self, kind: &str, detail: String) {
        if self.violation.is_none() {
            let v = format!("{kind}: {detail}");
            for d in self.disk.damage() {
                trace!(
                    self,
                    "disk damage: {} at {}.{:06}ms in {}",
                    d.kind,
                    d.at_ns / MS,
                    d.at_ns % MS,
                    d.path
                );
            }
            trace!(self, "VIOLATION {v}");
            self.violation = Some(v);
        }
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
            self.seed,
            topics.join(" "),
            roles.join(" "),
            self.config.num_partitions,
            self.config.auto_create_topics,
            self.swarm,
            self.net_faults.loss,
            self.net_faults.delay_us,
            self.weights,
            self.producer_gap_ms,
            self.consumer_gap_ms
        );
        for i in 0..self.schedule.faults.len() {
            let at = self.schedule.faults[i].0 * MS;
            self.schedule_at(at, Event::Fault(i));
        }
        self.schedule_at(self.safety_end, Event::EndSafety);
        self.schedule_at(self.settle_end, Event::Drain);
        self.schedule_at(self.deadline, Event::Deadline);
        self.restart();
        for c in 0..self.clients.len() {
            self.wake(c, MS);
        }
        while let Some((Instant(at), ev)) = self.queue.pop_next() {
            if self.violation.is_some() || self.phase == Phase::Done {
                break;
            }
            // The broker works on one thing at a time and waits for its
            // disk; everything else happens when it happens.
            if matches!(ev, Event::BrokerWork | Event::BrokerPoll) {
                let queued = match ev {
                    Event::BrokerWork => &mut self.work_at,
                    _ => &mut self.poll_at,
                };
                queued.remove(&at);
                if at < self.busy_until {
                    match ev {
                        Event::BrokerWork => self.schedule_work(self.busy_until),
                        _ => self.schedule_poll(self.busy_until),
                    }
                    continue;
                }
            }
            self.now = at;
            self.disk.set_now(at);
            match ev {
                Event::ClientWake(c) => {
                    if self.clients[c].wake_at == Some(at) {
                        self.clients[c].wake_at = None;
                        self.client_step(c);
                    }
                }
                Event::ClientTimeout(c, serial) => self.client_timeout(c, serial),
                Event::ClientReset(c, conn) => {
                    if self.clients[c].conn == Some(conn) {
                        self.client_error(c, "connection reset".to_string());
                    }
                }
                Event::Net => self.deliver(),
                Event::BrokerWork => self.broker_work(),
                Event::BrokerPoll => self.broker_poll(),
                Event::Fault(i) => {
                    if self.faults_on {
                        let fault = self.schedule.faults[i].1.clone();
                        self.apply_fault(fault);
                    }
                }
                Event::Restart => self.restart(),
                Event::OperatorRestart => {
                    self.restart_pending = false;
                    if self.broker.is_some() {
                        trace!(self, "operator restart after a storage error");
                        self.stop_broker(false);
                        self.restart();
                    }
                }
                Event::EndSafety => self.end_safety(),
                Event::Drain => self.drain(),
                Event::Deadline => self.liveness_deadline(),
            }
            if self.phase == Phase::Drain && self.drained() {
                self.final_power_loss();
            }
            if self.phase == Phase::FinalRead && self.final_read_done() {
                self.final_check();
            }
        }
        trace!(
            self,
            "done: restarts={} stats={:?} net={:?} disk={:?}",
            self.restarts,
            self.stats,
            self.net.stats(),
            self.disk.stats()
        );
    }

    // ---- the broker ---------------------------------------------------------

    fn restart(&mut self) {
        if self.broker.is_some() {
            return;
        }
        self.restarts += 1;
        let clock = self.clock();
        let buggify = if self.no_buggify {
            Buggify::disabled()
        } else {
            Buggify::seeded(self.seed ^ (self.restarts << 40))
        };
        let result =
            Broker::open_with_buggify(self.disk.clone(), self.config.clone(), &clock, buggify);
        let busy = self.disk.take_busy_ns();
        self.busy_until = self.busy_until.max(self.now + busy);
        match result {
            Ok(b) => {
                self.incarnation += 1;
                trace!(self, "broker up (incarnation {})", self.incarnation);
                self.broker = Some(b);
                self.storage_errors = 0;
                self.schedule_deadline();
            }
            Err(e) => {
                trace!(self, "broker open failed: {e}");
                if self.registry_damaged() {
                    // Topic metadata has two copies: with both damaged, no
                    // restart can bring the broker back.
                    trace!(
                        self,
                        "both copies of the topic registry were damaged: the broker cannot start again (excused; nothing more to check)"
                    );
                    self.phase = Phase::Done;
                    return;
                }
                if !self.faults_on {
                    self.fail(
                        "liveness",
                        format!("broker open failed with faults off: {e}"),
                    );
                    return;
                }
                self.disk.kill_process();
                self.schedule_at(self.now + busy + 10 * MS, Event::Restart);
            }
        }
    }

    /// The process dies: every connection resets, nothing it held in memory
    /// survives. `power_loss` takes the page cache too.
    fn stop_broker(&mut self, power_loss: bool) {
        self.broker = None;
        if power_loss {
            self.disk.crash();
            trace!(self, "disk after crash: {:?}", self.disk.stats());
        } else {
            self.disk.kill_process();
        }
        let conns: Vec<u64> = self.server.keys().copied().collect();
        self.server.clear();
        for conn in conns {
            self.reset_conn(conn, false);
        }
    }

    fn apply_fault(&mut self, fault: Fault) {
        trace!(self, "nemesis {fault}");
        match fault {
            Fault::Crash { .. } => {
                if self.broker.is_some() {
                    self.stop_broker(true);
                } else {
                    self.disk.crash();
                }
            }
            Fault::Kill { .. } => {
                if self.broker.is_some() {
                    self.stop_broker(false);
                }
            }
            Fault::Restart { .. } => self.restart(),
            Fault::ClockJump { delta_ms, .. } => self.wall_offset_ms += delta_ms,
            other => trace!(self, "fault {other} does not apply to a single node"),
        }
    }

    fn schedule_work(&mut self, at: u64) {
        let at = at.max(self.busy_until);
        if self.work_at.insert(at) {
            self.schedule_at(at, Event::BrokerWork);
        }
    }

    fn schedule_poll(&mut self, at: u64) {
        let at = at.max(self.busy_until);
        if self.poll_at.insert(at) {
            self.schedule_at(at, Event::BrokerPoll);
        }
    }

    fn schedule_deadline(&mut self) {
        let Some(b) = &self.broker else { return };
        if let Some(Instant(d)) = b.next_deadline() {
            // A deadline already passed is served at once, but never in a
            // loop at the same instant.
            let at = d.max(self.now + 1000);
            if self.poll_at.range(..=at).next().is_none() {
                self.schedule_poll(at);
            }
        }
    }

    /// The broker reads every frame of every connection up to its first
    /// pending request (a request is answered before the next is read).
    /// Its answers leave when the disk has done the writes; the `poll`
    /// that syncs them (group commit) follows as a separate step, so that
    /// a crash can fall between an append and its sync, and frames that
    /// arrive meanwhile wait for the next round, which is what makes group
    /// commit group.
    fn broker_work(&mut self) {
        let Some(mut broker) = self.broker.take() else {
            return;
        };
        let clock = self.clock();
        let mut sends: Vec<(u64, FrameOutcome, bool)> = Vec::new();
        let ready: Vec<u64> = self
            .server
            .iter()
            .filter(|(_, s)| !s.pending && !s.frames.is_empty())
            .map(|(&c, _)| c)
            .collect();
        let mut frames = 0;
        for conn in ready {
            while let Some(frame) = self
                .server
                .get_mut(&conn)
                .filter(|s| !s.pending)
                .and_then(|s| s.frames.pop_front())
            {
                frames += 1;
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.unread -= 1;
                }
                match broker.handle_frame(ConnId(conn), &frame, &clock) {
                    FrameOutcome::Pending => {
                        self.server.get_mut(&conn).expect("live").pending = true;
                    }
                    outcome => {
                        let fire_and_forget = is_acks0_produce(&frame);
                        sends.push((conn, outcome, fire_and_forget));
                    }
                }
            }
        }
        self.broker = Some(broker);
        let done = self.dispatch(sends, format_args!("{frames} requests"));
        if frames > 0 {
            self.schedule_poll(done);
        }
    }

    /// `poll`: the group commit, and the answers it releases (acks=-1
    /// produces now durable, fetches whose wait is over).
    fn broker_poll(&mut self) {
        let Some(mut broker) = self.broker.take() else {
            return;
        };
        let clock = self.clock();
        let completions = broker.poll(&clock);
        self.broker = Some(broker);
        let mut sends = Vec::new();
        for c in completions {
            if let Some(s) = self.server.get_mut(&c.conn.0) {
                s.pending = false;
                sends.push((c.conn.0, c.outcome, false));
            }
        }
        let n = sends.len();
        let done = self.dispatch(sends, format_args!("poll, {n} completions"));
        if self
            .server
            .values()
            .any(|s| !s.pending && !s.frames.is_empty())
        {
            self.schedule_work(done);
        }
    }

    /// Charges the disk time of a broker step and sends its answers when
    /// it is over. Returns that time.
    fn dispatch(&mut self, sends: Vec<(u64, FrameOutcome, bool)>, what: fmt::Arguments<'_>) -> u64 {
        let busy = self.disk.take_busy_ns();
        let done = self.now + busy;
        self.busy_until = done;
        if !sends.is_empty() || busy > 0 {
            trace!(
                self,
                "broker: {what}, {} outcomes, disk busy {}us",
                sends.len(),
                busy / 1000
            );
        }
        for (conn, outcome, fire_and_forget) in sends {
            match outcome {
                FrameOutcome::Respond(bytes) => self.respond(conn, bytes, done),
                FrameOutcome::NoResponse => {}
                FrameOutcome::Close(reason) if fire_and_forget => {
                    // Kafka's only way to tell an acks=0 producer that its
                    // batch failed.
                    trace!(
                        self,
                        "broker closed connection {conn} after an acks=0 produce: {reason}"
                    );
                    self.reset_conn(conn, true);
                }
                FrameOutcome::Close(reason) => {
                    let client = self.conns.get(&conn).map_or(usize::MAX, |c| c.client);
                    self.fail(
                        "protocol-error",
                        format!("broker closed c{client}'s connection {conn}: {reason}"),
                    );
                }
                FrameOutcome::Pending => self.fail(
                    "protocol-error",
                    format!("a completion for connection {conn} is still pending"),
                ),
            }
        }
        if self.violation.is_none() {
            self.schedule_deadline();
        }
        done
    }

    /// A response leaves the broker: the checker observes it now, in the
    /// broker's order, then the network carries it.
    fn respond(&mut self, conn: u64, bytes: Vec<u8>, at: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let Some(out) = c.expect.take() else {
            let client = c.client;
            return self.fail(
                "protocol-error",
                format!("broker answered c{client} on connection {conn} when no answer was due"),
            );
        };
        match decode_response(&out, &bytes) {
            Ok((_, resp)) => self.observe(&out, &resp),
            Err(e) => return self.fail("protocol-error", e),
        }
        let c = self.conns.get_mut(&conn).expect("live");
        let seq = c.to_client_seq;
        c.to_client_seq += 1;
        let env = Envelope {
            from: Address::Node(NODE),
            to: Address::Client(conn),
            payload: conn_frame(conn, seq, &bytes),
        };
        match self.net.submit(Instant(at), env) {
            Some(Instant(arrive)) => self.schedule_at(arrive, Event::Net),
            None => {
                trace!(self, "response on connection {conn} lost: reset");
                self.reset_conn(conn, true);
            }
        }
    }

    /// A connection dies. Both ends learn of it: the client after a network
    /// delay, the broker (if `tell_broker` and it is up) at once.
    fn reset_conn(&mut self, conn: u64, tell_broker: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        c.expect = None;
        let client = c.client;
        self.stats.resets += 1;
        if tell_broker && self.server.remove(&conn).is_some() {
            if let Some(b) = self.broker.as_mut() {
                b.connection_closed(ConnId(conn));
            }
        }
        let (lo, hi) = self.net_faults.delay_us;
        let delay = self.rng.between(lo, hi.max(lo)) * 1000;
        self.schedule_at(self.now + delay, Event::ClientReset(client, conn));
    }

    fn send_to_broker(&mut self, conn: u64, frame: Vec<u8>) {
        let c = self.conns.get_mut(&conn).expect("client's connection");
        let seq = c.to_broker_seq;
        c.to_broker_seq += 1;
        c.unread += 1;
        let env = Envelope {
            from: Address::Client(conn),
            to: Address::Node(NODE),
            payload: conn_frame(conn, seq, &frame),
        };
        match self.net.submit(Instant(self.now), env) {
            Some(Instant(arrive)) => self.schedule_at(arrive, Event::Net),
            None => {
                trace!(self, "request on connection {conn} lost: reset");
                self.reset_conn(conn, true);
            }
        }
    }

    fn deliver(&mut self) {
        for env in self.net.deliver_due(Instant(self.now)) {
            let (conn, seq, data) = split_frame(&env.payload);
            let alive = self.conns.get(&conn).is_some_and(|c| c.alive);
            if !alive {
                continue;
            }
            match env.to {
                Address::Node(_) => {
                    if self.broker.is_none() {
                        // Nobody listens: connection refused.
                        self.reset_conn(conn, false);
                        continue;
                    }
                    let s = self.server.entry(conn).or_default();
                    let frames = s.at_broker.push(seq, data);
                    let any = !frames.is_empty();
                    s.frames.extend(frames);
                    if any {
                        self.schedule_work(self.now);
                    }
                }
                Address::Client(_) => {
                    let c = self.conns.get_mut(&conn).expect("alive");
                    let client = c.client;
                    for frame in c.at_client.push(seq, data) {
                        self.client_response(client, conn, frame);
                    }
                }
            }
        }
    }

    // ---- clients ------------------------------------------------------------

    fn wake(&mut self, c: usize, after_ns: u64) {
        let at = self.now + after_ns;
        let client = &mut self.clients[c];
        if client.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        client.wake_at = Some(at);
        self.schedule_at(at, Event::ClientWake(c));
    }

    fn backoff(&mut self) -> u64 {
        self.rng.between(20, 200) * MS
    }

    fn client_timeout(&mut self, c: usize, serial: u64) {
        if self.clients[c]
            .out
            .as_ref()
            .is_none_or(|o| o.serial != serial)
        {
            return;
        }
        self.stats.timeouts += 1;
        if let Some(conn) = self.clients[c].conn {
            self.reset_conn(conn, true);
        }
        self.client_error(c, "request timed out".to_string());
    }

    /// The connection failed under a request: its outcome is unknown, and
    /// the client reconnects after a backoff and retries (a produce keeps
    /// its batch and sends it again).
    fn client_error(&mut self, c: usize, why: String) {
        let client = &mut self.clients[c];
        let what = client
            .out
            .take()
            .map_or("idle".to_string(), |o| format!("{:?}", o.req.key()));
        trace!(self, "c{c}: {why} ({what})");
        let client = &mut self.clients[c];
        client.last_error = why;
        client.conn = None;
        client.versions = None;
        let b = self.backoff();
        self.wake(c, b);
    }

    fn version(&mut self, c: usize, key: ApiKey) -> Option<i16> {
        let (lo, hi) = *self.clients[c].versions.as_ref()?.get(&(key as i16))?;
        Some(lo + self.rng.below((hi - lo + 1) as u64) as i16)
    }

    fn send(
        &mut self,
        c: usize,
        req: Req,
        version: i16,
        frame_of: impl Fn(i32) -> Result<Vec<u8>, String>,
    ) {
        let conn = self.clients[c].conn.expect("connected");
        let corr = self.clients[c].next_corr;
        self.clients[c].next_corr += 1;
        let frame = match frame_of(corr) {
            Ok(f) => f,
            Err(e) => return self.fail("protocol-error", format!("c{c}: {e}")),
        };
        self.stats.requests += 1;
        let no_response = matches!(req, Req::Produce { acks: 0, .. });
        trace!(
            self,
            "c{c} -> {:?} v{version} corr={corr} {req:?}",
            req.key()
        );
        if no_response {
            let gap = self.rng.between(0, 2 * self.producer_gap_ms) * MS / 2;
            self.wake(c, gap.max(MS / 10));
        } else {
            self.serial += 1;
            let out = Outstanding {
                corr,
                version,
                req,
                serial: self.serial,
            };
            let timeout = match &out.req {
                Req::Fetch { .. } => 6_000,
                _ => 3_000,
            } * MS;
            self.schedule_at(self.now + timeout, Event::ClientTimeout(c, out.serial));
            self.conns.get_mut(&conn).expect("live").expect = Some(out.clone());
            self.clients[c].out = Some(out);
        }
        self.send_to_broker(conn, frame);
    }

    fn client_step(&mut self, c: usize) {
        if self.clients[c].out.is_some() || self.clients[c].stopped {
            return;
        }
        let conn = self.clients[c].conn;
        if conn.is_some_and(|n| self.conns[&n].alive && self.conns[&n].unread >= MAX_UNREAD) {
            return self.wake(c, 5 * MS);
        }
        if self.clients[c].conn.is_none() {
            let conn = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(
                conn,
                Conn {
                    client: c,
                    alive: true,
                    to_broker_seq: 0,
                    to_client_seq: 0,
                    unread: 0,
                    at_client: InOrder::default(),
                    expect: None,
                },
            );
            self.clients[c].conn = Some(conn);
            self.clients[c].next_corr = 0;
            trace!(self, "c{c}: connect (connection {conn})");
            let version = self.rng.below(4) as i16;
            return self.send(c, Req::ApiVersions, version, |corr| {
                let body = ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("odradek-sim"))
                    .with_client_software_version(StrBytes::from_static_str("0"));
                encode_request(ApiKey::ApiVersions, version, corr, c, &body)
            });
        }
        match self.clients[c].role {
            Role::Admin => self.admin_step(c),
            Role::Producer => self.producer_step(c),
            Role::Consumer | Role::Final => self.consumer_step(c),
        }
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
            self.clients[c].stopped = true;
            return;
        }
        let w = self.weights;
        let mut roll = self
            .rng
            .below(w.list_offsets + w.delete_records + w.metadata + w.idle);
        if roll < w.list_offsets {
            let tps = self.usable_tps();
            let timestamp = if self.rng.chance(0.5) { -1 } else { -2 };
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
        let gap = self.rng.between(5, 100) * MS;
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
            let gap = self.rng.between(5, 100) * MS;
            return self.wake(c, gap);
        };
        let tps = self.usable_tps();
        if tps.is_empty() {
            return;
        }
        let tp = tps[self.rng.below(tps.len() as u64) as usize];
        // Somewhere between the log start and the high watermark as last
        // seen, mostly near the start: deleting is rare in real use.
        let m = &self.parts[&tp];
        let (lo, hi) = (m.log_start, m.hw.max(m.log_start));
        let span = ((hi - lo) as u64 / 4).max(1);
        let offset = lo + self.rng.below(span + 1).min((hi - lo) as u64) as i64;
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
        let n = self.rng.between(1, 5);
        let ts = self.client_wall_ms();
        let mut b = BatchBuilder::new(ts);
        let mut values = Vec::new();
        for i in 0..n {
            let seq = self.clients[c].sent_batches;
            let key = format!("k{}", self.rng.below(8));
            let mut value = format!("c{c}-{seq}-{i}#").into_bytes();
            for _ in 0..self.rng.below(120) {
                value.push(self.rng.next_u64() as u8);
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
                self.clients[c].stopped = true;
                return;
            }
            let tps = self.usable_tps();
            if tps.is_empty() {
                let b = self.backoff();
                return self.wake(c, b);
            }
            let tp = tps[self.rng.below(tps.len() as u64) as usize];
            let acks = self.clients[c]
                .acks
                .unwrap_or_else(|| [0, 1, -1][self.rng.below(3) as usize]);
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
            let body = ProduceRequest::default()
                .with_acks(batch.acks)
                .with_timeout_ms(2_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(&name))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(batch.tp.1)
                        .with_records(Some(Bytes::from(batch.bytes.clone())))])]);
            encode_request(ApiKey::Produce, version, corr, c, &body)
        });
    }

    fn consumer_step(&mut self, c: usize) {
        if self.clients[c].role == Role::Consumer
            && self.phase != Phase::Safety
            && self.phase != Phase::Settle
        {
            self.clients[c].stopped = true;
            return;
        }
        if self.clients[c].role == Role::Final {
            return self.final_step(c);
        }
        // A new session now and then: a fresh consumer reading from 0
        // re-reads offsets others read long ago.
        if self.rng.chance(0.002) {
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
            let b = self.backoff();
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
        let mut max_wait = [0, 10, 100, 500][self.rng.below(4) as usize];
        let mut min_bytes = [0, 1, 1, 100, 4096][self.rng.below(5) as usize];
        let mut max_bytes = [1, 300, 4096, 65_536, 1 << 20][self.rng.below(5) as usize];
        let mut partition_max = [1, 200, 4096, 1 << 20][self.rng.below(4) as usize];
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

    fn client_response(&mut self, c: usize, conn: u64, frame: Vec<u8>) {
        if self.clients[c].conn != Some(conn) {
            return;
        }
        let Some(out) = self.clients[c].out.take() else {
            return self.fail(
                "protocol-error",
                format!("c{c} got a response with no request outstanding"),
            );
        };
        let (corr, resp) = match decode_response(&out, &frame) {
            Ok(r) => r,
            Err(e) => return self.fail("protocol-error", format!("c{c}: {e}")),
        };
        if corr != out.corr {
            return self.fail(
                "protocol-error",
                format!("c{c} expected correlation id {} and got {corr}", out.corr),
            );
        }
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
            Role::Producer => self.rng.between(0, 2 * self.producer_gap_ms) * MS / 2,
            Role::Consumer => self.rng.between(0, 2 * self.consumer_gap_ms) * MS / 2,
            Role::Admin => self.rng.between(5, 100) * MS,
            Role::Final => 2 * MS,
        };
        self.wake(c, gap.max(MS / 10));
    }

    fn on_api_versions(&mut self, c: usize, r: ApiVersionsResponse) {
        if r.error_code != code::NONE {
            self.clients[c].last_error = format!("ApiVersions error {}", r.error_code);
            let b = self.backoff();
            return self.wake(c, b);
        }
        let mut versions = BTreeMap::new();
        for &(key, lo, hi) in CLIENT_VERSIONS {
            if let Some(k) = r.api_keys.iter().find(|k| k.api_key == key as i16) {
                let (lo, hi) = (lo.max(k.min_version), hi.min(k.max_version));
                if lo <= hi {
                    versions.insert(key as i16, (lo, hi));
                }
            }
        }
        self.clients[c].versions = Some(versions);
        self.wake(c, MS / 10);
    }

    fn on_create_topics(&mut self, c: usize, r: CreateTopicsResponse) {
        let mut ok = true;
        for t in &r.topics {
            if t.error_code != code::NONE && t.error_code != code::TOPIC_ALREADY_EXISTS {
                ok = false;
                self.clients[c].last_error = format!(
                    "CreateTopics {}: error {} {:?}",
                    t.name.0.as_str(),
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.as_str().to_string())
                );
            }
        }
        let why = if ok { "" } else { &self.clients[c].last_error };
        trace!(self, "c{c}: topics created: {ok} {why}");
        if ok {
            self.created = true;
            self.next_after_response(c);
        } else {
            let b = self.backoff();
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
            self.clients[c].last_error = format!("produce error {}", part.error_code);
            if part.error_code == code::UNKNOWN_TOPIC_OR_PARTITION {
                self.clients[c].need_metadata = true;
            }
            if !retry {
                self.clients[c].batch = None;
            }
            let b = self.backoff();
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
            self.clients[c].last_error = format!("fetch error {}", r.error_code);
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
                        self.clients[c].last_error =
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
                if self.violation.is_some() {
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

    fn observe(&mut self, out: &Outstanding, resp: &Resp) {
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
            if self.restart_pending || self.broker.is_none() {
                return;
            }
            if !self.faults_on {
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
            self.restart_pending = true;
            self.schedule_at(self.now + 10 * MS, Event::OperatorRestart);
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
        self.disk
            .damage()
            .iter()
            .filter_map(|d| d.path.strip_prefix(&prefix).and_then(parse_data_name))
            .min()
    }

    /// Every copy of the topic registry on disk damaged (a copy never
    /// written, because the store that would have made it failed, does not
    /// count): no restart can bring the broker back, and it refuses to start
    /// rather than come up empty.
    fn registry_damaged(&self) -> bool {
        let damage = self.disk.damage();
        let mut any_damaged = false;
        for name in META_FILES {
            let file = format!("{DATA_DIR}/{name}");
            let damaged = damage
                .iter()
                .any(|d| d.path == file || d.path == format!("{file}.tmp"));
            if damaged {
                any_damaged = true;
            } else if self.disk.exists(&file).unwrap_or(true) {
                return false;
            }
        }
        any_damaged
    }

    fn both_checkpoint_copies_damaged(&self, tp: Tp) -> bool {
        let damage = self.disk.damage();
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
        self.faults_on = false;
        self.phase = Phase::Settle;
        let quiet = self.disk.faults().quiet();
        self.disk.set_faults(quiet);
        self.net.set_faults(self.net_faults.quiet());
        trace!(self, "safety phase over: faults off, liveness phase begins");
        if self.broker.is_some() && self.storage_errors > 0 {
            trace!(self, "restarting the broker: storage errors were seen");
            self.stop_broker(false);
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
            Role::Admin => self.created && c.out.is_none(),
            _ => true,
        })
    }

    /// Everything acknowledged is in; a last power loss, and then a fresh
    /// consumer must find all of it.
    fn final_power_loss(&mut self) {
        trace!(self, "final power loss");
        self.phase = Phase::FinalRead;
        if self.broker.is_some() {
            self.stop_broker(true);
        } else {
            self.disk.crash();
        }
        self.restart();
        if self.violation.is_some() {
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
            self.clients[c].last_error = format!("{} at {pos}: {why}", self.tp_name(tp));
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
            .map(|(i, c)| format!("c{i} ({:?}): last error {:?}", c.role, c.last_error))
            .collect();
        let detail = format!(
            "phase {:?} not finished {} ms after faults stopped: {}",
            self.phase,
            (self.now - self.safety_end) / MS,
            stuck.join("; ")
        );
        self.fail("liveness", detail);
    }
}

/// A record value for a message: its readable prefix.
fn show(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == b'#').unwrap_or(v.len().min(24));
    format!("{:?}", String::from_utf8_lossy(&v[..end]))
}
