//! The groups workload: consumer groups on one Kafka broker
//! (`odradek_core::kafka::Broker`, the code `odradek server` runs) on a
//! faulty simulated disk. Simulated consumers speak the group protocols on
//! the wire, as real clients do: classic members (FindCoordinator,
//! JoinGroup with MEMBER_ID_REQUIRED, SyncGroup with the leader computing a
//! range assignment from the member list it is given, Heartbeat,
//! OffsetCommit with their generation, OffsetFetch, LeaveGroup) and KIP-848
//! members (ConsumerGroupHeartbeat reporting what they own, revoking what
//! they are told to give up before taking anything new); all of them fetch
//! what they own and commit what they consumed. A producer keeps writing to
//! the topic. Members crash (and restart with no member id), pause (for
//! less or more than their session timeout), leave and rejoin, and lose
//! messages; the broker crashes, is killed, loses power, has its clock
//! jumped and its disk broken, as in the broker workload (whose broker,
//! network and client machinery this shares, `wire.rs`).
//!
//! The checker is black-box: it sees requests as clients send them and
//! responses as they leave the broker (or as clients read them, for what a
//! client believes). Violations:
//! * `double-ownership`: two members were given the same partition in the
//!   same generation of a classic group (a member owns what a successful
//!   SyncGroup gave it); in a KIP-848 group, a member was given a partition
//!   that another member still held — one that had not been told to give it
//!   up, had not been fenced, and whose session (counted from the send of
//!   its last answered heartbeat) had not run out;
//! * `fenced-commit-accepted`: an OffsetCommit answered NONE for a
//!   generation (epoch) the coordinator had already moved past for that
//!   member — a SyncGroup of a later generation had succeeded (a KIP-848
//!   heartbeat had answered the member with a later epoch) before the
//!   commit was sent; or, classic, a JoinGroup or SyncGroup answer of a
//!   later generation, to any member, had left the broker before the
//!   broker read the commit; or the member had been told
//!   ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID for that generation by the
//!   same coordinator. The last two hold only within one broker
//!   incarnation with no write failure in between, which could have rolled
//!   the coordinator's memory back to the log. The broker's read, not its
//!   answer, is what is ordered against the announcement: answers wait
//!   until their records are durable and the group commit releases them
//!   in no particular order, so an answer that leaves after an
//!   announcement may be to a request read before it;
//! * `fenced-heartbeat-accepted`: likewise for a Heartbeat answered NONE;
//! * `lost-commit`: OffsetFetch returned for a partition something other
//!   than the last acknowledged commit (acknowledged before the fetch was
//!   sent) or a commit that may have been applied after it — after a broker
//!   restart above all, but checked on every OffsetFetch;
//! * `unstable` (liveness): once faults stop, within a bound of
//!   `2 s + initial rebalance delay + 4 × (session + rebalance timeout)`
//!   of simulated time, every member of every group is in one generation
//!   (epoch) and every partition is owned by exactly one of them;
//! * `liveness`: after that, a power loss and restart, and the committed
//!   offsets cannot be read back within 10 s;
//! * `protocol-error`: as in the broker workload.
//!
//! What the disk destroys cannot be demanded back: once the disk damages a
//! file of the group's `__consumer_offsets` partition, that group's checks
//! stop (its state may legitimately go back).
//!
//! Requests a client gave up on still reach the broker, as they do over
//! TCP: a client that times out or crashes closes its connection with a
//! FIN that follows what it sent, and the broker serves every request
//! before it (its answers go unread, but the checker sees them). Members'
//! commits and heartbeats time out below the session (as Java's request
//! timeout is below its session timeout), and in some runs one now and
//! then is held up in the network for longer than that: the member gives
//! up, reconnects and goes on — often rejoins in a later generation —
//! and the old request reaches the coordinator afterwards, stale. In runs
//! with power losses, up to two more are timed to fall right after a
//! commit's answer left the broker, before anything else happens: an
//! answer released before its record was synced is then lost with it.

use crate::disk::SimDisk;
use crate::net::SimNetwork;
use crate::rng::{self, Stream};
use crate::wire::{
    self, decode_api_versions, encode_request, produce_request, topic_name, ClientConn, Host,
    Request, Wire, DATA_DIR, MS, NODE,
};
use crate::{FaultKind, RunOptions, RunReport, Workload};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions as OwnedTopic;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceResponse, ResponseHeader,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use odradek_core::group::{partition_for, GroupConfig};
use odradek_core::io::Random;
use odradek_core::kafka::{BrokerConfig, OFFSETS_TOPIC};
use odradek_core::storage::batch::{BatchBuilder, Batches};
use odradek_nemesis::{NetFaults, Schedule};
use std::collections::{BTreeMap, BTreeSet};

const TOPIC: &str = "t0";
/// How long the final read of committed offsets may take.
const FINAL_MS: u64 = 10_000;

/// Kafka error codes the clients react to.
mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;

    pub fn coordinator(code: i16) -> bool {
        matches!(
            code,
            COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
        )
    }
}

/// The versions these clients speak, as (key, min, max); each request
/// goes at a random version both sides support.
const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 5, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
];

#[derive(Clone, Debug)]
struct GroupSpec {
    name: String,
    kip848: bool,
    /// Its partition of `__consumer_offsets`.
    partition: i32,
    session_ms: i32,
    rebalance_ms: i32,
    heartbeat_ms: u64,
    commit_ms: u64,
}

/// What a client asked; every field shows in the trace.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Req {
    ApiVersions,
    CreateTopics,
    Produce {
        p: i32,
        acks: i16,
    },
    Fetch {
        positions: Vec<(i32, i64)>,
    },
    FindCoordinator {
        g: usize,
    },
    Join {
        g: usize,
        member: String,
    },
    Sync {
        g: usize,
        member: String,
        gen: i32,
    },
    Heartbeat {
        g: usize,
        member: String,
        gen: i32,
        sent: u64,
        /// The client's request timeout: below the session.
        timeout_ms: u64,
    },
    Leave {
        g: usize,
        member: String,
    },
    /// Commits `first..first + n` of the commit log.
    Commit {
        g: usize,
        member: String,
        gen: i32,
        first: usize,
        n: usize,
        /// The client's request timeout: below the session.
        timeout_ms: u64,
    },
    OffsetFetch {
        g: usize,
        parts: Vec<i32>,
        /// The checker's order when it was sent.
        sent: u64,
    },
    ConsumerHeartbeat {
        g: usize,
        member: String,
        epoch: i32,
    },
}

impl Request for Req {
    fn key(&self) -> ApiKey {
        match self {
            Req::ApiVersions => ApiKey::ApiVersions,
            Req::CreateTopics => ApiKey::CreateTopics,
            Req::Produce { .. } => ApiKey::Produce,
            Req::Fetch { .. } => ApiKey::Fetch,
            Req::FindCoordinator { .. } => ApiKey::FindCoordinator,
            Req::Join { .. } => ApiKey::JoinGroup,
            Req::Sync { .. } => ApiKey::SyncGroup,
            Req::Heartbeat { .. } => ApiKey::Heartbeat,
            Req::Leave { .. } => ApiKey::LeaveGroup,
            Req::Commit { .. } => ApiKey::OffsetCommit,
            Req::OffsetFetch { .. } => ApiKey::OffsetFetch,
            Req::ConsumerHeartbeat { .. } => ApiKey::ConsumerGroupHeartbeat,
        }
    }

    fn api_versions() -> Req {
        Req::ApiVersions
    }

    fn timeout_ms(&self) -> u64 {
        match self {
            // Parked until the others join, or the rebalance times out.
            Req::Join { .. } | Req::Sync { .. } => 10_000,
            Req::Commit { timeout_ms, .. } | Req::Heartbeat { timeout_ms, .. } => *timeout_ms,
            _ => 3_000,
        }
    }
}

#[allow(dead_code)]
enum Resp {
    ApiVersions(ApiVersionsResponse),
    CreateTopics(CreateTopicsResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    FindCoordinator(FindCoordinatorResponse),
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    Leave(LeaveGroupResponse),
    Commit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ConsumerHeartbeat(ConsumerGroupHeartbeatResponse),
}

type Outstanding = wire::Outstanding<Req>;
type Event = wire::Event<Ev>;

fn decode_response(out: &Outstanding, bytes: &[u8]) -> Result<(i32, Resp), String> {
    let key = out.req.key();
    let mut buf = Bytes::copy_from_slice(bytes);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(out.version))
        .map_err(|e| format!("{key:?} v{} response header: {e}", out.version))?;
    let v = out.version;
    macro_rules! body {
        ($t:ty, $r:ident) => {
            <$t>::decode(&mut buf, v)
                .map(Resp::$r)
                .map_err(|e| e.to_string())
        };
    }
    let body = match &out.req {
        Req::ApiVersions => decode_api_versions(&mut buf, v).map(Resp::ApiVersions),
        Req::CreateTopics => body!(CreateTopicsResponse, CreateTopics),
        Req::Produce { .. } => body!(ProduceResponse, Produce),
        Req::Fetch { .. } => body!(FetchResponse, Fetch),
        Req::FindCoordinator { .. } => body!(FindCoordinatorResponse, FindCoordinator),
        Req::Join { .. } => body!(JoinGroupResponse, Join),
        Req::Sync { .. } => body!(SyncGroupResponse, Sync),
        Req::Heartbeat { .. } => body!(HeartbeatResponse, Heartbeat),
        Req::Leave { .. } => body!(LeaveGroupResponse, Leave),
        Req::Commit { .. } => body!(OffsetCommitResponse, Commit),
        Req::OffsetFetch { .. } => body!(OffsetFetchResponse, OffsetFetch),
        Req::ConsumerHeartbeat { .. } => {
            body!(ConsumerGroupHeartbeatResponse, ConsumerHeartbeat)
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

/// A consumer-protocol message: its version, then its body.
fn consumer_protocol<T: Encodable>(body: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    body.encode(&mut out, 0).expect("encodable at v0");
    out.to_vec()
}

/// The partitions of `TOPIC` a SyncGroup assignment gives.
fn decode_assignment(bytes: &[u8]) -> Result<BTreeSet<i32>, String> {
    if bytes.is_empty() {
        return Ok(BTreeSet::new());
    }
    if bytes.len() < 2 {
        return Err("assignment shorter than its version".into());
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]).clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&bytes[2..]);
    let a = ConsumerProtocolAssignment::decode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(a.assigned_partitions
        .iter()
        .filter(|t| t.topic.0.as_str() == TOPIC)
        .flat_map(|t| t.partitions.iter().copied())
        .collect())
}

/// Kafka's range assignor for one topic: members in id order, each a
/// contiguous run, the first `n % k` one partition more.
fn range_assign(members: &[String], partitions: i32) -> BTreeMap<String, Vec<i32>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let k = sorted.len() as i32;
    let mut out = BTreeMap::new();
    let mut start = 0;
    for (i, m) in sorted.into_iter().enumerate() {
        let n = partitions / k + i32::from((i as i32) < partitions % k);
        out.insert(m.clone(), (start..start + n).collect());
        start += n;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Producer,
    Member,
    /// Reads every group's committed offsets after the final restart.
    Final,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    /// Crashed; restarts with no member id.
    Down,
    Find,
    /// Classic: JoinGroup next. KIP-848: a heartbeat with epoch 0 next.
    Join,
    Sync,
    Stable,
    Left,
}

/// A member of a group, as the client process knows itself.
struct Member {
    g: usize,
    state: MState,
    /// Bumped each time the process restarts: beliefs do not survive it.
    life: u64,
    member_id: String,
    /// Classic generation, or KIP-848 member epoch.
    generation: i32,
    leader: bool,
    /// The leader's member list from JoinGroup.
    peers: Vec<String>,
    owned: BTreeSet<i32>,
    positions: BTreeMap<i32, i64>,
    next_heartbeat: u64,
    next_commit: u64,
    /// KIP-848: when the last answered heartbeat was sent, and when the
    /// one outstanding was. A member whose session has run out since the
    /// first gives up what it owns, as the coordinator will have.
    heartbeat_acked_sent: u64,
    heartbeat_sent: u64,
    /// KIP-848: the topic's id, learned from an assignment.
    topic_id: Option<u128>,
    paused_until: Option<u64>,
    inbox: Vec<(u64, Vec<u8>)>,
    /// A sloppy client that lost its JoinGroup answer may act once more in
    /// the generation it had, with the positions it had: (generation,
    /// positions, commit rather than heartbeat).
    stale: Option<(i32, BTreeMap<i32, i64>, bool)>,
    coordinator_errors: u32,
    sloppy: bool,
    /// What it had consumed when it last gave its partitions up.
    last_positions: BTreeMap<i32, i64>,
}

impl Member {
    fn new(g: usize, sloppy: bool) -> Member {
        Member {
            g,
            state: MState::Find,
            life: 0,
            member_id: String::new(),
            generation: -1,
            leader: false,
            peers: Vec::new(),
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            next_heartbeat: 0,
            next_commit: 0,
            heartbeat_acked_sent: 0,
            heartbeat_sent: 0,
            topic_id: None,
            paused_until: None,
            inbox: Vec::new(),
            stale: None,
            coordinator_errors: 0,
            sloppy,
            last_positions: BTreeMap::new(),
        }
    }
}

struct Client {
    role: Role,
    net: ClientConn<Req>,
    member: Option<Member>,
    sent_batches: u64,
    /// Final reader: groups whose offsets it has read.
    read: BTreeSet<usize>,
}

impl Client {
    fn new(role: Role) -> Client {
        Client {
            role,
            net: ClientConn::default(),
            member: None,
            sent_batches: 0,
            read: BTreeSet::new(),
        }
    }
}

/// One partition's entry of one OffsetCommit, as the checker tracks it.
#[allow(dead_code)]
#[derive(Clone, Debug)]
struct Commit {
    g: usize,
    p: i32,
    offset: i64,
    member: String,
    gen: i32,
    sent: u64,
    /// When the answer left the broker, and whether it was NONE.
    emitted: Option<u64>,
    ok: Option<bool>,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    EndSafety,
    Deadline,
    MemberCrash(usize),
    MemberRestart(usize, u64),
    MemberPause(usize, u64),
    MemberResume(usize, u64),
    FinalPowerLoss,
    FinalDeadline,
    /// A power loss timed to fall right after a group reply left the
    /// broker.
    PowerLoss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    /// Faults off: the groups must settle.
    Settle,
    /// Settled: members go on committing for a while.
    Run,
    /// After the final power loss: committed offsets are read back.
    FinalRead,
    Done,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    requests: u64,
    produced: u64,
    joins: u64,
    syncs: u64,
    commits_acked: u64,
    commits_rejected: u64,
    offset_fetches: u64,
    rebalances_seen: u64,
    member_crashes: u64,
    pauses: u64,
    leaves: u64,
    resets: u64,
    timeouts: u64,
    stalls: u64,
    timed_power_losses: u64,
}

struct Run {
    h: Host<Req, Ev>,
    groups: Vec<GroupSpec>,
    partitions: i32,
    clients: Vec<Client>,
    created: bool,
    phase: Phase,
    safety_end: u64,
    stable_bound: u64,
    stable_at: Option<u64>,
    storage_errors: u64,
    quiet_restarts: u64,
    /// The members' network and timing faults, drawn from their own
    /// stream: how often a commit or heartbeat is held up in the network,
    /// and how many power losses may still be timed to follow a commit's
    /// answer.
    faults_rng: rand_chacha::ChaCha8Rng,
    stall_rate: f64,
    timed_crashes: u32,
    // ---- the checker ----
    // Sends, the broker's reads and its emissions are ordered by
    // `Host::tick`: everything the checker compares.
    commits: Vec<Commit>,
    commits_of: BTreeMap<(usize, i32), Vec<usize>>,
    /// Classic: SyncGroup answers NONE, as (order, generation).
    synced: BTreeMap<usize, Vec<(u64, i32)>>,
    /// Classic: generations the coordinator announced (JoinGroup and
    /// SyncGroup answers NONE, to any member), as (order, generation,
    /// incarnation, write-fault count).
    announced: BTreeMap<usize, Vec<(u64, i32, u64, u64)>>,
    /// KIP-848: heartbeat answers NONE, as (order, epoch), per member.
    epochs: BTreeMap<(usize, String), Vec<(u64, i32)>>,
    /// Classic: (group, member, generation) learned from a JoinGroup
    /// answer, with the broker incarnation and write-fault count then.
    learned: BTreeMap<(usize, String, i32), (u64, u64)>,
    /// ... and told ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID since: (order,
    /// incarnation, write-fault count).
    fenced: BTreeMap<(usize, String, i32), (u64, u64, u64)>,
    /// Classic: who a SyncGroup gave each partition, per generation.
    owner: BTreeMap<(usize, i32, i32), String>,
    stats: Stats,
}

/// Runs the groups workload for one seed.
pub fn run(opts: &RunOptions) -> RunReport {
    let seed = opts.seed;
    let off = |k: FaultKind| opts.overrides.disables(k);
    let mut swarm_rng = rng::stream(seed, Stream::Swarm);
    let swarm = crate::draw_swarm(opts, &mut swarm_rng);
    let mut net_faults = NetFaults::draw(&mut swarm_rng);
    net_faults.duplicate = 0.0;
    net_faults.loss /= 4.0;
    if off(FaultKind::NetLoss) {
        net_faults.loss = 0.0;
    }
    let partitions = swarm_rng.between(1, 6) as i32;
    let mut config = BrokerConfig::new(NODE, DATA_DIR);
    config.offsets_topic_num_partitions = swarm_rng.between(1, 3) as i32;
    config.settings.insert(
        "log.segment.bytes".into(),
        swarm_rng.between(2048, 65_536).to_string(),
    );
    let consumer_session = swarm_rng.between(200, 1000) as i32;
    config.group = GroupConfig {
        min_session_timeout_ms: 100,
        initial_rebalance_delay_ms: swarm_rng.between(0, 300) as i32,
        consumer_session_timeout_ms: consumer_session,
        consumer_heartbeat_interval_ms: swarm_rng.between(30, (consumer_session / 4) as u64) as i32,
        ..GroupConfig::default()
    };
    let kinds: Vec<bool> = match swarm_rng.below(10) {
        0..=4 => vec![false],
        5..=6 => vec![true],
        _ => vec![false, true],
    };
    let mut groups = Vec::new();
    for (i, kip848) in kinds.into_iter().enumerate() {
        let name = format!("g{i}");
        let session_ms = if kip848 {
            consumer_session
        } else {
            swarm_rng.between(200, 1000) as i32
        };
        // A KIP-848 rebalance timeout at least the session: a member that
        // cannot answer a revocation in time is one whose session ran out.
        let rebalance_ms = swarm_rng.between(session_ms as u64, 2 * session_ms as u64) as i32;
        let heartbeat_ms = if kip848 {
            config.group.consumer_heartbeat_interval_ms as u64
        } else {
            swarm_rng.between(session_ms as u64 / 6, session_ms as u64 / 3)
        };
        groups.push(GroupSpec {
            partition: partition_for(&name, config.offsets_topic_num_partitions),
            name,
            kip848,
            session_ms,
            rebalance_ms,
            heartbeat_ms: heartbeat_ms.max(10),
            commit_ms: swarm_rng.between(50, 500),
        });
    }
    let mut clients = vec![Client::new(Role::Admin), Client::new(Role::Producer)];
    for (g, _) in groups.iter().enumerate() {
        for _ in 0..swarm_rng.between(1, 4) {
            let mut c = Client::new(Role::Member);
            c.member = Some(Member::new(g, swarm_rng.chance(0.5)));
            clients.push(c);
        }
    }
    let drawn_safety_ms = swarm_rng.between(2_000, 5_000);
    let safety_ms = opts
        .overrides
        .safety_ms
        .map_or(drawn_safety_ms, |ms| ms.min(drawn_safety_ms));
    let crash_every =
        (!off(FaultKind::Kill) && swarm_rng.chance(0.6)).then(|| swarm_rng.between(500, 3_000));
    let pause_every =
        (!off(FaultKind::Pause) && swarm_rng.chance(0.7)).then(|| swarm_rng.between(300, 2_000));
    let max_session = groups.iter().map(|g| g.session_ms).max().unwrap_or(0) as u64;
    let max_rebalance = groups.iter().map(|g| g.rebalance_ms).max().unwrap_or(0) as u64;
    let stable_bound_ms =
        2_000 + config.group.initial_rebalance_delay_ms as u64 + 4 * (max_session + max_rebalance);
    let mut schedule_rng = rng::stream(seed, Stream::Schedule);
    let schedule = Schedule::generate(&mut schedule_rng, &swarm, &[NODE], safety_ms);
    let disk = SimDisk::new(rng::stream(seed, Stream::Disk), swarm.disk);
    let net = SimNetwork::new(rng::stream(seed, Stream::Network), net_faults);
    let mut h = Host::new(
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
    h.ordered_close = true;
    // Drawn from a stream of their own, so that the rest of a seed's run
    // stays what it was without them.
    let mut faults_rng = rng::stream(seed, Stream::Members);
    let stall_rate = if !off(FaultKind::NetLoss) && faults_rng.chance(0.5) {
        faults_rng.between(5, 100) as f64 / 1000.0
    } else {
        0.0
    };
    let timed_crashes = match swarm.crash_every_ms {
        Some(_) => faults_rng.between(0, 2) as u32,
        None => 0,
    };
    let mut run = Run {
        h,
        groups,
        partitions,
        clients,
        created: false,
        phase: Phase::Safety,
        safety_end: safety_ms * MS,
        stable_bound: stable_bound_ms * MS,
        stable_at: None,
        storage_errors: 0,
        quiet_restarts: 0,
        faults_rng,
        stall_rate,
        timed_crashes,
        commits: Vec::new(),
        commits_of: BTreeMap::new(),
        synced: BTreeMap::new(),
        announced: BTreeMap::new(),
        epochs: BTreeMap::new(),
        learned: BTreeMap::new(),
        fenced: BTreeMap::new(),
        owner: BTreeMap::new(),
        stats: Stats::default(),
    };
    // Members' own faults, drawn after the broker's schedule from its
    // stream: crashes (restart after a short outage) and pauses (shorter
    // or longer than the session).
    let members: Vec<usize> = (0..run.clients.len())
        .filter(|&c| run.clients[c].role == Role::Member)
        .collect();
    for &c in &members {
        let session = run.groups[run.member(c).g].session_ms as u64;
        if let Some(mean) = crash_every {
            let mut t = schedule_rng.between(mean / 2, mean * 3 / 2);
            while t < safety_ms {
                run.h.at(t * MS, Ev::MemberCrash(c));
                t += schedule_rng.between(mean / 2, mean * 3 / 2);
            }
        }
        if let Some(mean) = pause_every {
            let mut t = schedule_rng.between(mean / 2, mean * 3 / 2);
            while t < safety_ms {
                let d = if schedule_rng.chance(0.5) {
                    schedule_rng.between(10, session / 2)
                } else {
                    schedule_rng.between(session, 3 * session)
                };
                run.h.at(t * MS, Ev::MemberPause(c, d));
                t += d + schedule_rng.between(mean / 2, mean * 3 / 2);
            }
        }
    }
    run.main(crash_every, pause_every);
    let simulated_ms = run.h.now / MS;
    let violation = run.h.violation.clone();
    RunReport {
        seed,
        workload: Workload::Groups,
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

impl Run {
    fn fail(&mut self, kind: &str, detail: String) {
        self.h.fail(kind, detail)
    }

    fn member(&self, c: usize) -> &Member {
        self.clients[c].member.as_ref().expect("a member")
    }

    fn m(&mut self, c: usize) -> &mut Member {
        self.clients[c].member.as_mut().expect("a member")
    }

    fn main(&mut self, crash_every: Option<u64>, pause_every: Option<u64>) {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{}({} offsets-partition={} session={} rebalance={} heartbeat={} commit={})",
                    g.name,
                    if g.kip848 { "kip848" } else { "classic" },
                    g.partition,
                    g.session_ms,
                    g.rebalance_ms,
                    g.heartbeat_ms,
                    g.commit_ms
                )
            })
            .collect();
        let members: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.member
                    .as_ref()
                    .map(|m| format!("c{i}:g{}{}", m.g, if m.sloppy { "(sloppy)" } else { "" }))
            })
            .collect();
        trace!(
            self,
            "seed {} topic {TOPIC} partitions={} groups=[{}] members=[{}] group_config={:?} offsets_partitions={} member_crash_every={:?} member_pause_every={:?} stall_rate={} timed_crashes={} swarm[{}] net[loss={:.4} delay_us={:?}] stable_bound_ms={}",
            self.h.seed,
            self.partitions,
            groups.join(" "),
            members.join(" "),
            self.h.config.group,
            self.h.config.offsets_topic_num_partitions,
            crash_every,
            pause_every,
            self.stall_rate,
            self.timed_crashes,
            "see broker",
            self.h.net_faults.loss,
            self.h.net_faults.delay_us,
            self.stable_bound / MS
        );
        for i in 0..self.h.schedule.faults.len() {
            let at = self.h.schedule.faults[i].0 * MS;
            self.h.schedule_at(at, Event::Fault(i));
        }
        self.h.at(self.safety_end, Ev::EndSafety);
        self.h.at(self.safety_end + self.stable_bound, Ev::Deadline);
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

    // ---- the checker's knowledge ------------------------------------------

    fn tick(&mut self) -> u64 {
        self.h.tick()
    }

    /// Failed writes: a coordinator whose append fails reloads its state
    /// from the log, which may take its memory back.
    fn write_faults(&self) -> u64 {
        let s = self.h.disk.stats();
        s.no_space + s.sync_errors
    }

    /// The disk damaged the group's partition of `__consumer_offsets`: its
    /// state may legitimately go back, and its checks stop.
    fn excused(&self, g: usize) -> bool {
        let dir = format!("{DATA_DIR}/{OFFSETS_TOPIC}-{}/", self.groups[g].partition);
        self.h
            .disk
            .damage()
            .iter()
            .any(|d| d.path.starts_with(&dir))
    }

    /// The disk damaged synced data of partition `p` of the data topic.
    fn data_damaged(&self, p: i32) -> bool {
        let dir = format!("{DATA_DIR}/{TOPIC}-{p}/");
        self.h
            .disk
            .damage()
            .iter()
            .any(|d| d.path.starts_with(&dir))
    }

    fn gname(&self, g: usize) -> &str {
        &self.groups[g].name
    }

    /// The checker sees a response as the broker emits it.
    fn observe_response(&mut self, out: &Outstanding, resp: &Resp) {
        let order = self.tick();
        let incarnation = self.h.incarnation;
        let faults = self.write_faults();
        match (&out.req, resp) {
            (Req::Join { g, .. }, Resp::Join(r)) if r.error_code == code::NONE => {
                let key = (*g, r.member_id.to_string(), r.generation_id);
                self.fenced.remove(&key);
                self.learned.insert(key, (incarnation, faults));
                self.announce(*g, order, r.generation_id);
            }
            (Req::Sync { g, gen, .. }, Resp::Sync(r)) if r.error_code == code::NONE => {
                self.synced.entry(*g).or_default().push((order, *gen));
                self.announce(*g, order, *gen);
            }
            (Req::Sync { g, member, gen }, Resp::Sync(r)) => {
                self.note_fenced(*g, member, *gen, r.error_code, order)
            }
            (
                Req::Heartbeat {
                    g,
                    member,
                    gen,
                    sent,
                    ..
                },
                Resp::Heartbeat(r),
            ) => {
                if r.error_code == code::NONE {
                    let read = out.read;
                    self.check_fenced(*g, member, *gen, *sent, read, "fenced-heartbeat-accepted");
                } else {
                    self.note_fenced(*g, member, *gen, r.error_code, order);
                }
            }
            (
                Req::Commit {
                    g,
                    member,
                    gen,
                    first,
                    n,
                    ..
                },
                Resp::Commit(r),
            ) => {
                let codes: Vec<i16> = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                    .collect();
                if codes.len() != *n {
                    let detail = format!("commit of {n} partitions answered for {}", codes.len());
                    return self.fail("protocol-error", detail);
                }
                for (i, &code) in codes.iter().enumerate() {
                    let c = &mut self.commits[first + i];
                    c.emitted = Some(order);
                    c.ok = Some(code == code::NONE);
                }
                if codes.iter().all(|&c| c == code::NONE) {
                    self.stats.commits_acked += 1;
                    let sent = self.commits[*first].sent;
                    self.check_commit(*g, member, *gen, sent, out.read);
                    self.maybe_timed_crash();
                } else {
                    self.stats.commits_rejected += 1;
                    let code = codes.iter().copied().find(|&c| c != code::NONE);
                    self.note_fenced(*g, member, *gen, code.unwrap_or_default(), order);
                }
            }
            (Req::OffsetFetch { g, parts, sent }, Resp::OffsetFetch(r)) => {
                let rows = offset_fetch_rows(out.version, r);
                if let Ok(rows) = rows {
                    for (p, offset) in rows {
                        if parts.contains(&p) {
                            self.check_offset(*g, p, offset, *sent, order);
                        }
                    }
                }
            }
            (Req::ConsumerHeartbeat { g, .. }, Resp::ConsumerHeartbeat(r))
                if r.error_code == code::NONE =>
            {
                let id = r
                    .member_id
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                self.epochs
                    .entry((*g, id))
                    .or_default()
                    .push((order, r.member_epoch));
            }
            _ => {}
        }
    }

    /// A classic member told that its generation is over, by the
    /// coordinator that gave it that generation.
    fn note_fenced(&mut self, g: usize, member: &str, gen: i32, code: i16, order: u64) {
        if code != code::ILLEGAL_GENERATION && code != code::UNKNOWN_MEMBER_ID {
            return;
        }
        let key = (g, member.to_string(), gen);
        if let Some(&(incarnation, faults)) = self.learned.get(&key) {
            if incarnation == self.h.incarnation && faults == self.write_faults() {
                self.fenced
                    .entry(key)
                    .or_insert((order, incarnation, faults));
            }
        }
    }

    /// Classic: the coordinator announced generation `gen` of group `g`.
    fn announce(&mut self, g: usize, order: u64, gen: i32) {
        let (incarnation, faults) = (self.h.incarnation, self.write_faults());
        self.announced
            .entry(g)
            .or_default()
            .push((order, gen, incarnation, faults));
    }

    /// Whether the coordinator is known to have moved past `gen` for
    /// `member` before order `sent` (the client sent the request) or
    /// `read` (the broker read it; 0 if unknown): why, if so.
    fn moved_past(&self, g: usize, member: &str, gen: i32, sent: u64, read: u64) -> Option<String> {
        if self.groups[g].kip848 {
            let later = self
                .epochs
                .get(&(g, member.to_string()))
                .and_then(|v| v.iter().find(|(o, e)| *o < sent && *e > gen));
            return later.map(|(_, e)| {
                format!("a heartbeat had answered it with epoch {e} before it was sent")
            });
        }
        if let Some((_, later)) = self
            .synced
            .get(&g)
            .and_then(|v| v.iter().find(|(o, x)| *o < sent && *x > gen))
        {
            return Some(format!(
                "a SyncGroup of generation {later} had succeeded before it was sent"
            ));
        }
        // A generation only grows in a coordinator's memory: once it has
        // announced a later one to any member, it is past `gen` for every
        // request it reads after — unless it lost its memory since (a
        // restart, or a failed write that made it reload the log, which
        // may not hold the later generation). The broker's read, not the
        // answer's emission: answers wait for their records to be durable
        // and leave in whatever order the group commit releases them, so
        // an answer emitted after the announcement may be to a request
        // read before it.
        if read > 0 {
            let (incarnation, faults) = (self.h.incarnation, self.write_faults());
            if let Some((o, later, ..)) = self.announced.get(&g).and_then(|v| {
                v.iter()
                    .find(|&&(o, x, i, f)| o < read && x > gen && i == incarnation && f == faults)
            }) {
                return Some(format!(
                    "the coordinator had announced generation {later} (a JoinGroup or SyncGroup answer left the broker at #{o}, before it read this request at #{read}, with no restart or failed write since)"
                ));
            }
        }
        let key = (g, member.to_string(), gen);
        if let Some(&(o, incarnation, faults)) = self.fenced.get(&key) {
            if o < sent && incarnation == self.h.incarnation && faults == self.write_faults() {
                return Some(
                    "the same coordinator had told it ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID before it was sent"
                        .to_string(),
                );
            }
        }
        None
    }

    fn check_fenced(&mut self, g: usize, member: &str, gen: i32, sent: u64, read: u64, kind: &str) {
        if self.excused(g) {
            return;
        }
        if let Some(why) = self.moved_past(g, member, gen, sent, read) {
            let detail = format!(
                "{} member {member} generation {gen}: answered NONE, but {why}",
                self.gname(g)
            );
            self.fail(kind, detail);
        }
    }

    fn check_commit(&mut self, g: usize, member: &str, gen: i32, sent: u64, read: u64) {
        if self.excused(g) {
            return;
        }
        if let Some(why) = self.moved_past(g, member, gen, sent, read) {
            let detail = format!(
                "{} member {member} committed with generation {gen} (sent #{sent}) and was answered NONE, but {why}",
                self.gname(g)
            );
            self.fail("fenced-commit-accepted", detail);
        }
    }

    /// An OffsetFetch answer for one partition: the last commit
    /// acknowledged before the fetch was sent, or one that may have been
    /// applied after it.
    fn check_offset(&mut self, g: usize, p: i32, offset: i64, sent: u64, emitted: u64) {
        if self.excused(g) {
            return;
        }
        let ids = self.commits_of.get(&(g, p)).cloned().unwrap_or_default();
        let last = ids
            .iter()
            .map(|&i| &self.commits[i])
            .filter(|c| c.ok == Some(true) && c.emitted.is_some_and(|e| e < sent))
            .max_by_key(|c| c.emitted);
        let mut allowed: BTreeSet<i64> = BTreeSet::new();
        match last {
            None => {
                allowed.insert(-1);
            }
            Some(l) => {
                allowed.insert(l.offset);
            }
        }
        for &i in &ids {
            let c = &self.commits[i];
            if c.ok == Some(false) || c.sent >= emitted {
                continue;
            }
            if let Some(l) = last {
                if c.emitted.is_some_and(|e| e < l.sent) {
                    continue;
                }
            }
            allowed.insert(c.offset);
        }
        if !allowed.contains(&offset) {
            let history: Vec<String> = ids
                .iter()
                .rev()
                .take(6)
                .map(|&i| {
                    let c = &self.commits[i];
                    format!(
                        "{}@{}:{} sent#{} answered#{:?} ok={:?}",
                        c.offset, c.member, c.gen, c.sent, c.emitted, c.ok
                    )
                })
                .collect();
            let name = self.gname(g).to_string();
            trace!(
                self,
                "commits of {name} {TOPIC}-{p}, latest first: {history:?}; fetch sent#{sent} answered#{emitted}"
            );
            let detail = match last {
                Some(l) => format!(
                    "{} {TOPIC}-{p}: OffsetFetch returned {offset} (broker incarnation {}), but {} had committed {} with generation {} and been acknowledged before the fetch was sent; possible: {allowed:?}",
                    self.gname(g),
                    self.h.incarnation,
                    l.member,
                    l.offset,
                    l.gen
                ),
                None => format!(
                    "{} {TOPIC}-{p}: OffsetFetch returned {offset}, which nobody committed; possible: {allowed:?}",
                    self.gname(g)
                ),
            };
            self.fail("lost-commit", detail);
        }
    }

    /// A classic member learns its partitions for a generation.
    fn check_owner(&mut self, c: usize, g: usize, gen: i32, parts: &BTreeSet<i32>) {
        let me = self.member(c).member_id.clone();
        for &p in parts {
            match self.owner.get(&(g, gen, p)) {
                Some(other) if *other != me && !self.excused(g) => {
                    let detail = format!(
                        "{} generation {gen}: {TOPIC}-{p} given to c{c} (member {me}) and to member {other}",
                        self.gname(g)
                    );
                    return self.fail("double-ownership", detail);
                }
                Some(_) => {}
                None => {
                    self.owner.insert((g, gen, p), me.clone());
                }
            }
        }
    }

    /// A KIP-848 member takes partitions: nobody else may hold them.
    fn check_held(&mut self, c: usize, parts: &BTreeSet<i32>) {
        let g = self.member(c).g;
        if self.excused(g) {
            return;
        }
        let session = self.groups[g].session_ms as u64 * MS;
        for (o, other) in self.clients.iter().enumerate() {
            let Some(m) = other.member.as_ref() else {
                continue;
            };
            if o == c || m.g != g || m.state == MState::Down {
                continue;
            }
            // Its session ran out: it has given everything up.
            if self.h.now >= m.heartbeat_acked_sent + session {
                continue;
            }
            if let Some(p) = m.owned.intersection(parts).next() {
                let detail = format!(
                    "{}: {TOPIC}-{p} given to c{c} (member {}, epoch {}) while c{o} (member {}, epoch {}) holds it",
                    self.gname(g),
                    self.member(c).member_id,
                    self.member(c).generation,
                    m.member_id,
                    m.generation
                );
                return self.fail("double-ownership", detail);
            }
        }
    }
}

/// The (partition, committed offset) rows of an OffsetFetch answer for
/// `TOPIC` without a partition error, or the group's error.
fn offset_fetch_rows(version: i16, r: &OffsetFetchResponse) -> Result<Vec<(i32, i64)>, i16> {
    if version >= 8 {
        let Some(g) = r.groups.first() else {
            return Err(-1);
        };
        if g.error_code != code::NONE {
            return Err(g.error_code);
        }
        Ok(g.topics
            .iter()
            .filter(|t| t.name.0.as_str() == TOPIC)
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == code::NONE)
            .map(|p| (p.partition_index, p.committed_offset))
            .collect())
    } else {
        if r.error_code != code::NONE {
            return Err(r.error_code);
        }
        Ok(r.topics
            .iter()
            .filter(|t| t.name.0.as_str() == TOPIC)
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == code::NONE)
            .map(|p| (p.partition_index, p.committed_offset))
            .collect())
    }
}

impl Run {
    // ---- clients ------------------------------------------------------------

    fn admin_step(&mut self, c: usize) {
        if self.created {
            self.clients[c].net.stopped = true;
            return;
        }
        let Some(version) = self.version(c, ApiKey::CreateTopics) else {
            return self.fail("protocol-error", "no CreateTopics".into());
        };
        let partitions = self.partitions;
        self.send(c, Req::CreateTopics, version, |corr| {
            let body = CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1)])
                .with_timeout_ms(2_000);
            encode_request(ApiKey::CreateTopics, version, corr, c, &body)
        });
    }

    fn on_create_topics(&mut self, c: usize, r: CreateTopicsResponse) {
        let ok = r
            .topics
            .iter()
            .all(|t| t.error_code == code::NONE || t.error_code == code::TOPIC_ALREADY_EXISTS);
        trace!(self, "c{c}: topic created: {ok}");
        if ok {
            self.created = true;
            self.wake(c, MS);
        } else {
            let b = self.h.backoff();
            self.wake(c, b);
        }
    }

    fn producer_step(&mut self, c: usize) {
        if !self.created {
            return self.wake(c, 20 * MS);
        }
        if matches!(self.phase, Phase::FinalRead | Phase::Done) {
            self.clients[c].net.stopped = true;
            return;
        }
        let Some(version) = self.version(c, ApiKey::Produce) else {
            return self.fail("protocol-error", "no Produce".into());
        };
        let p = self.h.rng.below(self.partitions as u64) as i32;
        let acks = if self.h.rng.chance(0.5) { -1 } else { 1 };
        let ts = self.h.client_wall_ms();
        let mut b = BatchBuilder::new(ts);
        let seq = self.clients[c].sent_batches;
        self.clients[c].sent_batches += 1;
        for i in 0..self.h.rng.between(1, 4) {
            let value = format!("c{c}-{seq}-{i}");
            b = b.add(None, Some(value.as_bytes()), ts);
        }
        let batch = b.build();
        self.stats.produced += 1;
        self.send(c, Req::Produce { p, acks }, version, |corr| {
            let body = produce_request(TOPIC, p, acks, &batch);
            encode_request(ApiKey::Produce, version, corr, c, &body)
        });
    }

    fn on_produce(&mut self, c: usize, r: ProduceResponse) {
        for p in r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
        {
            if p.error_code == code::KAFKA_STORAGE_ERROR {
                self.note_storage_error();
            }
        }
        let gap = self.h.rng.between(5, 40) * MS;
        self.wake(c, gap);
    }

    /// A storage error (a log offline, a group partition that cannot be
    /// served): an operator restarts the broker, as in the broker
    /// workload; errors that keep coming with faults off are a liveness
    /// failure.
    fn note_storage_error(&mut self) {
        self.storage_errors += 1;
        if self.h.restart_pending || self.h.broker.is_none() {
            return;
        }
        if !self.h.faults_on {
            self.quiet_restarts += 1;
            if self.quiet_restarts > 3 {
                if (0..self.groups.len()).any(|g| self.excused(g)) {
                    return;
                }
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

    fn final_step(&mut self, c: usize) {
        let Some(g) = (0..self.groups.len()).find(|g| !self.clients[c].read.contains(g)) else {
            return;
        };
        let parts: Vec<i32> = (0..self.partitions).collect();
        self.offset_fetch(c, g, parts, None);
    }

    fn member_step(&mut self, c: usize) {
        if !self.created {
            return self.wake(c, 20 * MS);
        }
        self.self_fence(c);
        match self.member(c).state {
            MState::Down | MState::Left => {}
            MState::Find => self.find_coordinator(c),
            MState::Join => {
                if let Some((gen, positions, commit)) = self.m(c).stale.take() {
                    if commit && !positions.is_empty() {
                        return self.commit(c, gen, positions);
                    }
                    if !commit && !self.groups[self.member(c).g].kip848 {
                        return self.heartbeat(c, gen);
                    }
                }
                if self.groups[self.member(c).g].kip848 {
                    self.consumer_heartbeat(c, 0)
                } else {
                    self.join_group(c)
                }
            }
            MState::Sync => self.sync_group(c),
            MState::Stable => self.stable_step(c),
        }
    }

    /// KIP-848: a member that has not had a heartbeat answered for its
    /// session gives up what it owns; the coordinator will have fenced it.
    fn self_fence(&mut self, c: usize) {
        let g = self.member(c).g;
        if !self.groups[g].kip848 || self.member(c).state != MState::Stable {
            return;
        }
        let session = self.groups[g].session_ms as u64 * MS;
        if self.h.now >= self.member(c).heartbeat_acked_sent + session {
            let owned = self.member(c).owned.clone();
            trace!(
                self,
                "c{c}: no heartbeat answered for a session: gives up {owned:?} and rejoins"
            );
            self.revoke(c);
            let m = self.m(c);
            m.generation = 0;
            m.state = MState::Join;
        }
    }

    fn stable_step(&mut self, c: usize) {
        let now = self.h.now;
        let g = self.member(c).g;
        let kip848 = self.groups[g].kip848;
        let m = self.member(c);
        let missing: Vec<i32> = m
            .owned
            .iter()
            .copied()
            .filter(|p| !m.positions.contains_key(p))
            .collect();
        let heartbeat_due = now >= m.next_heartbeat;
        let commit_due = now >= m.next_commit && !m.positions.is_empty();
        let (next_heartbeat, next_commit) = (m.next_heartbeat, m.next_commit);
        if heartbeat_due && !(commit_due && self.h.rng.chance(0.3)) {
            let gen = self.member(c).generation;
            return if kip848 {
                self.consumer_heartbeat(c, gen)
            } else {
                self.heartbeat(c, gen)
            };
        }
        if commit_due {
            let commit_ms = self.groups[g].commit_ms;
            let (gen, positions) = (self.member(c).generation, self.member(c).positions.clone());
            self.m(c).next_commit = now + commit_ms * MS;
            return self.commit(c, gen, positions);
        }
        if !missing.is_empty() {
            let member =
                kip848.then(|| (self.member(c).member_id.clone(), self.member(c).generation));
            return self.offset_fetch(c, g, missing, member);
        }
        if self.phase == Phase::Safety && self.h.rng.chance(0.002) {
            return self.leave(c);
        }
        if !self.member(c).owned.is_empty() {
            return self.fetch(c);
        }
        let at = next_heartbeat.min(next_commit).max(now + MS / 10);
        self.wake(c, at - now);
    }

    fn find_coordinator(&mut self, c: usize) {
        let Some(version) = self.version(c, ApiKey::FindCoordinator) else {
            return self.fail("protocol-error", "no FindCoordinator".into());
        };
        let g = self.member(c).g;
        let name = self.groups[g].name.clone();
        self.send(c, Req::FindCoordinator { g }, version, |corr| {
            let mut body = FindCoordinatorRequest::default();
            if version >= 4 {
                body.coordinator_keys = vec![StrBytes::from_string(name.clone())];
            } else {
                body.key = StrBytes::from_string(name.clone());
            }
            encode_request(ApiKey::FindCoordinator, version, corr, c, &body)
        });
    }

    fn join_group(&mut self, c: usize) {
        let Some(version) = self.version(c, ApiKey::JoinGroup) else {
            return self.fail("protocol-error", "no JoinGroup".into());
        };
        let g = self.member(c).g;
        let spec = self.groups[g].clone();
        let member = self.member(c).member_id.clone();
        self.stats.joins += 1;
        let req = Req::Join {
            g,
            member: member.clone(),
        };
        self.send(c, req, version, |corr| {
            let subscription = consumer_protocol(
                &ConsumerProtocolSubscription::default()
                    .with_topics(vec![StrBytes::from_static_str(TOPIC)]),
            );
            let body = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(spec.name.clone())))
                .with_session_timeout_ms(spec.session_ms)
                .with_rebalance_timeout_ms(spec.rebalance_ms)
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(subscription.into())]);
            encode_request(ApiKey::JoinGroup, version, corr, c, &body)
        });
    }

    fn sync_group(&mut self, c: usize) {
        let Some(version) = self.version(c, ApiKey::SyncGroup) else {
            return self.fail("protocol-error", "no SyncGroup".into());
        };
        let g = self.member(c).g;
        let name = self.groups[g].name.clone();
        let m = self.member(c);
        let (member, gen) = (m.member_id.clone(), m.generation);
        let assignments: Vec<(String, Vec<u8>)> = if m.leader {
            range_assign(&m.peers, self.partitions)
                .into_iter()
                .map(|(id, ps)| {
                    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                        AssignedTopic::default()
                            .with_topic(topic_name(TOPIC))
                            .with_partitions(ps),
                    ]);
                    (id, consumer_protocol(&a))
                })
                .collect()
        } else {
            Vec::new()
        };
        self.stats.syncs += 1;
        let req = Req::Sync {
            g,
            member: member.clone(),
            gen,
        };
        self.send(c, req, version, |corr| {
            let mut body = SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(name.clone())))
                .with_generation_id(gen)
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_assignments(
                    assignments
                        .iter()
                        .map(|(id, a)| {
                            SyncGroupRequestAssignment::default()
                                .with_member_id(StrBytes::from_string(id.clone()))
                                .with_assignment(a.clone().into())
                        })
                        .collect(),
                );
            if version >= 5 {
                body.protocol_type = Some(StrBytes::from_static_str("consumer"));
                body.protocol_name = Some(StrBytes::from_static_str("range"));
            }
            encode_request(ApiKey::SyncGroup, version, corr, c, &body)
        });
    }

    fn heartbeat(&mut self, c: usize, gen: i32) {
        let Some(version) = self.version(c, ApiKey::Heartbeat) else {
            return self.fail("protocol-error", "no Heartbeat".into());
        };
        let g = self.member(c).g;
        let name = self.groups[g].name.clone();
        let member = self.member(c).member_id.clone();
        let interval = self.groups[g].heartbeat_ms;
        self.m(c).next_heartbeat = self.h.now + interval * MS;
        let sent = self.tick();
        let timeout_ms = self.groups[g].session_ms as u64 * 2 / 3;
        let req = Req::Heartbeat {
            g,
            member: member.clone(),
            gen,
            sent,
            timeout_ms,
        };
        self.send(c, req, version, |corr| {
            let body = HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(name.clone())))
                .with_generation_id(gen)
                .with_member_id(StrBytes::from_string(member.clone()));
            encode_request(ApiKey::Heartbeat, version, corr, c, &body)
        });
    }

    /// KIP-848's heartbeat: `epoch` 0 joins, -1 leaves.
    fn consumer_heartbeat(&mut self, c: usize, epoch: i32) {
        let Some(version) = self.version(c, ApiKey::ConsumerGroupHeartbeat) else {
            return self.fail("protocol-error", "no ConsumerGroupHeartbeat".into());
        };
        let g = self.member(c).g;
        let spec = self.groups[g].clone();
        if self.member(c).member_id.is_empty() && (version >= 1 || epoch != 0) {
            // v1: the member names itself, once per life.
            let life = self.member(c).life;
            let id = format!("c{c}-{life}-{:016x}", self.h.rng.next_u64());
            self.m(c).member_id = id;
        }
        let now = self.h.now;
        let m = self.m(c);
        m.next_heartbeat = now + spec.heartbeat_ms * MS;
        m.heartbeat_sent = now;
        let member = m.member_id.clone();
        let owned: Vec<i32> = if epoch == 0 {
            Vec::new()
        } else {
            m.owned.iter().copied().collect()
        };
        let topic_id = m.topic_id;
        let req = Req::ConsumerHeartbeat {
            g,
            member: member.clone(),
            epoch,
        };
        self.send(c, req, version, |corr| {
            let mut body = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(spec.name.clone())))
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_member_epoch(epoch)
                .with_rebalance_timeout_ms(-1);
            if epoch == 0 {
                body.rebalance_timeout_ms = spec.rebalance_ms;
                body.subscribed_topic_names = Some(vec![topic_name(TOPIC)]);
                body.topic_partitions = Some(Vec::new());
            } else if epoch > 0 {
                body.topic_partitions = Some(match topic_id {
                    Some(id) if !owned.is_empty() => vec![OwnedTopic::default()
                        .with_topic_id(uuid::Uuid::from_u128(id))
                        .with_partitions(owned.clone())],
                    _ => Vec::new(),
                });
            }
            encode_request(ApiKey::ConsumerGroupHeartbeat, version, corr, c, &body)
        });
    }

    fn leave(&mut self, c: usize) {
        let g = self.member(c).g;
        self.stats.leaves += 1;
        trace!(self, "c{c}: leaves the group");
        self.revoke(c);
        if self.groups[g].kip848 {
            return self.consumer_heartbeat(c, -1);
        }
        let Some(version) = self.version(c, ApiKey::LeaveGroup) else {
            return self.fail("protocol-error", "no LeaveGroup".into());
        };
        let name = self.groups[g].name.clone();
        let member = self.member(c).member_id.clone();
        let req = Req::Leave {
            g,
            member: member.clone(),
        };
        self.send(c, req, version, |corr| {
            let mut body = LeaveGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(name.clone())));
            if version >= 3 {
                body.members =
                    vec![MemberIdentity::default()
                        .with_member_id(StrBytes::from_string(member.clone()))];
            } else {
                body.member_id = StrBytes::from_string(member.clone());
            }
            encode_request(ApiKey::LeaveGroup, version, corr, c, &body)
        });
    }

    fn commit(&mut self, c: usize, gen: i32, positions: BTreeMap<i32, i64>) {
        let Some(version) = self.version(c, ApiKey::OffsetCommit) else {
            return self.fail("protocol-error", "no OffsetCommit".into());
        };
        let g = self.member(c).g;
        let name = self.groups[g].name.clone();
        let member = self.member(c).member_id.clone();
        let sent = self.tick();
        let first = self.commits.len();
        for (&p, &offset) in &positions {
            self.commits_of
                .entry((g, p))
                .or_default()
                .push(self.commits.len());
            self.commits.push(Commit {
                g,
                p,
                offset,
                member: member.clone(),
                gen,
                sent,
                emitted: None,
                ok: None,
            });
        }
        // Below the session, as a real client's request timeout is (Java:
        // 30 s against 45 s): a member whose commit is held up gives up on
        // it, and on its connection, while it is still in the group.
        let timeout_ms = self.groups[g].session_ms as u64 * 2 / 3;
        let req = Req::Commit {
            g,
            member: member.clone(),
            gen,
            first,
            n: positions.len(),
            timeout_ms,
        };
        self.send(c, req, version, |corr| {
            let body = OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(name.clone())))
                .with_generation_id_or_member_epoch(gen)
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(
                        positions
                            .iter()
                            .map(|(&p, &o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                            })
                            .collect(),
                    )]);
            encode_request(ApiKey::OffsetCommit, version, corr, c, &body)
        });
    }

    fn offset_fetch(&mut self, c: usize, g: usize, parts: Vec<i32>, member: Option<(String, i32)>) {
        let Some(version) = self.version(c, ApiKey::OffsetFetch) else {
            return self.fail("protocol-error", "no OffsetFetch".into());
        };
        let name = self.groups[g].name.clone();
        let sent = self.tick();
        self.stats.offset_fetches += 1;
        let req = Req::OffsetFetch {
            g,
            parts: parts.clone(),
            sent,
        };
        self.send(c, req, version, |corr| {
            let mut body = OffsetFetchRequest::default();
            if version >= 8 {
                let mut group = OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(name.clone())))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic_name(TOPIC))
                        .with_partition_indexes(parts.clone())]));
                if let (Some((id, epoch)), true) = (&member, version >= 9) {
                    group.member_id = Some(StrBytes::from_string(id.clone()));
                    group.member_epoch = *epoch;
                }
                body.groups = vec![group];
            } else {
                body.group_id = GroupId(StrBytes::from_string(name.clone()));
                body.topics = Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(parts.clone())]);
            }
            encode_request(ApiKey::OffsetFetch, version, corr, c, &body)
        });
    }

    fn fetch(&mut self, c: usize) {
        let Some(version) = self.version(c, ApiKey::Fetch) else {
            return self.fail("protocol-error", "no Fetch".into());
        };
        let positions: Vec<(i32, i64)> = self
            .member(c)
            .positions
            .iter()
            .map(|(&p, &o)| (p, o))
            .collect();
        let max_wait = self.h.rng.between(0, 20) as i32;
        let req = Req::Fetch {
            positions: positions.clone(),
        };
        self.send(c, req, version, |corr| {
            let body = FetchRequest::default()
                .with_max_wait_ms(max_wait)
                .with_min_bytes(1)
                .with_max_bytes(1 << 16)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(TOPIC))
                    .with_partitions(
                        positions
                            .iter()
                            .map(|&(p, o)| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(o)
                                    .with_partition_max_bytes(1 << 14)
                            })
                            .collect(),
                    )]);
            encode_request(ApiKey::Fetch, version, corr, c, &body)
        });
    }

    /// A member gives up everything it owns (eager revocation; KIP-848
    /// fencing; a crash).
    fn revoke(&mut self, c: usize) {
        let m = self.m(c);
        m.owned.clear();
        if !m.positions.is_empty() {
            m.last_positions = std::mem::take(&mut m.positions);
        }
    }

    /// The member must join again; `commit_first` commits what it consumed
    /// in the generation it had, before it gives it up (as Kafka's eager
    /// consumers do before rejoining).
    fn rejoin(&mut self, c: usize, why: &str, commit_first: bool, forget_id: bool) {
        let (owned, generation) = (self.member(c).owned.clone(), self.member(c).generation);
        trace!(
            self,
            "c{c}: rejoins ({why}), gives up {owned:?} of generation {generation}"
        );
        let m = self.member(c);
        if commit_first && !m.positions.is_empty() {
            let (gen, positions) = (m.generation, m.positions.clone());
            self.m(c).stale = Some((gen, positions, true));
        }
        self.revoke(c);
        self.stats.rebalances_seen += 1;
        let kip848 = self.groups[self.member(c).g].kip848;
        let m = self.m(c);
        if forget_id && !kip848 {
            m.member_id.clear();
        }
        if kip848 {
            m.generation = 0;
        }
        m.state = MState::Join;
    }

    fn after(&mut self, c: usize) {
        self.wake(c, MS / 10);
    }

    fn coordinator_lost(&mut self, c: usize, code: i16) {
        trace!(self, "c{c}: coordinator error {code}: finds it again");
        let m = self.m(c);
        m.coordinator_errors += 1;
        if m.coordinator_errors >= 3 {
            m.coordinator_errors = 0;
            self.note_storage_error();
        }
        self.m(c).state = MState::Find;
        let b = self.h.backoff();
        self.wake(c, b);
    }

    fn response(&mut self, c: usize, out: Outstanding, resp: Resp) {
        let role = self.clients[c].role;
        match (out.req, resp) {
            (Req::ApiVersions, Resp::ApiVersions(r)) => self.on_api_versions(c, r),
            (Req::CreateTopics, Resp::CreateTopics(r)) => self.on_create_topics(c, r),
            (Req::Produce { .. }, Resp::Produce(r)) => self.on_produce(c, r),
            (Req::Fetch { positions }, Resp::Fetch(r)) => self.on_fetch(c, &positions, r),
            (Req::FindCoordinator { .. }, Resp::FindCoordinator(r)) => {
                let code = if out.version >= 4 {
                    r.coordinators.first().map_or(-1, |x| x.error_code)
                } else {
                    r.error_code
                };
                if code == code::NONE {
                    let m = self.m(c);
                    m.coordinator_errors = 0;
                    if m.state == MState::Find {
                        m.state = if m.generation > 0 && !m.owned.is_empty() {
                            MState::Stable
                        } else {
                            MState::Join
                        };
                    }
                    self.after(c)
                } else {
                    self.coordinator_lost(c, code)
                }
            }
            (Req::Join { .. }, Resp::Join(r)) => self.on_join(c, r),
            (Req::Sync { gen, .. }, Resp::Sync(r)) => self.on_sync(c, gen, r),
            (Req::Heartbeat { gen, .. }, Resp::Heartbeat(r)) => {
                let m = self.member(c);
                if m.state != MState::Stable || m.generation != gen {
                    // A stale heartbeat: whatever it says, the member is
                    // already rejoining.
                    return self.after(c);
                }
                match r.error_code {
                    code::NONE => self.after(c),
                    code::REBALANCE_IN_PROGRESS => {
                        self.rejoin(c, "rebalance in progress", true, false);
                        self.after(c)
                    }
                    code::ILLEGAL_GENERATION => {
                        self.rejoin(c, "illegal generation", false, false);
                        self.after(c)
                    }
                    code::UNKNOWN_MEMBER_ID => {
                        self.rejoin(c, "unknown member", false, true);
                        self.after(c)
                    }
                    e if code::coordinator(e) => self.coordinator_lost(c, e),
                    _ => self.after(c),
                }
            }
            (Req::Leave { .. }, Resp::Leave(_)) => self.left(c),
            (Req::Commit { gen, .. }, Resp::Commit(r)) => {
                let code = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|&e| e != code::NONE)
                    .unwrap_or(code::NONE);
                let m = self.member(c);
                if m.state != MState::Stable || m.generation != gen {
                    return self.after(c);
                }
                match code {
                    code::ILLEGAL_GENERATION | code::FENCED_MEMBER_EPOCH => {
                        self.rejoin(c, "commit fenced", false, false)
                    }
                    code::UNKNOWN_MEMBER_ID => {
                        self.rejoin(c, "commit: unknown member", false, true)
                    }
                    code::REBALANCE_IN_PROGRESS => {
                        self.rejoin(c, "commit: rebalance in progress", false, false)
                    }
                    e if code::coordinator(e) => return self.coordinator_lost(c, e),
                    _ => {}
                }
                self.after(c)
            }
            (Req::OffsetFetch { g, .. }, Resp::OffsetFetch(r)) => {
                match offset_fetch_rows(out.version, &r) {
                    Ok(rows) if role == Role::Final => {
                        let name = self.gname(g).to_string();
                        trace!(self, "c{c}: committed offsets of {name}: {rows:?}");
                        self.clients[c].read.insert(g);
                        if self.clients[c].read.len() == self.groups.len() {
                            trace!(self, "final read complete");
                            self.phase = Phase::Done;
                        }
                        self.after(c)
                    }
                    Ok(rows) => {
                        let m = self.m(c);
                        for (p, offset) in rows {
                            if m.owned.contains(&p) && !m.positions.contains_key(&p) {
                                m.positions.insert(p, offset.max(0));
                            }
                        }
                        self.after(c)
                    }
                    Err(e) if role == Role::Member && code::coordinator(e) => {
                        self.coordinator_lost(c, e)
                    }
                    Err(e) => {
                        if role == Role::Final && code::coordinator(e) {
                            self.note_storage_error();
                        }
                        self.clients[c].net.last_error = format!("OffsetFetch error {e}");
                        let b = self.h.backoff();
                        self.wake(c, b)
                    }
                }
            }
            (Req::ConsumerHeartbeat { epoch, .. }, Resp::ConsumerHeartbeat(r)) => {
                self.on_consumer_heartbeat(c, epoch, r)
            }
            _ => unreachable!("decoded by the request's key"),
        }
    }

    fn on_join(&mut self, c: usize, r: JoinGroupResponse) {
        let m = self.m(c);
        if m.state != MState::Join {
            return self.after(c);
        }
        match r.error_code {
            code::NONE => {
                m.member_id = r.member_id.to_string();
                m.generation = r.generation_id;
                m.leader = r.leader == r.member_id;
                m.peers = r.members.iter().map(|x| x.member_id.to_string()).collect();
                m.state = MState::Sync;
                trace!(
                    self,
                    "c{c}: joined generation {} as {}{}",
                    r.generation_id,
                    r.member_id.as_str(),
                    if r.leader == r.member_id {
                        " (leader)"
                    } else {
                        ""
                    }
                );
                self.after(c)
            }
            code::MEMBER_ID_REQUIRED => {
                m.member_id = r.member_id.to_string();
                self.after(c)
            }
            code::UNKNOWN_MEMBER_ID => {
                m.member_id.clear();
                self.after(c)
            }
            e if code::coordinator(e) => self.coordinator_lost(c, e),
            e => {
                self.clients[c].net.last_error = format!("JoinGroup error {e}");
                let b = self.h.backoff();
                self.wake(c, b)
            }
        }
    }

    fn on_sync(&mut self, c: usize, gen: i32, r: SyncGroupResponse) {
        let m = self.member(c);
        if m.state != MState::Sync || m.generation != gen {
            return self.after(c);
        }
        match r.error_code {
            code::NONE => {
                let parts = match decode_assignment(&r.assignment) {
                    Ok(p) => p,
                    Err(e) => return self.fail("protocol-error", format!("c{c}: assignment: {e}")),
                };
                let g = m.g;
                trace!(self, "c{c}: generation {gen} owns {parts:?}");
                self.check_owner(c, g, gen, &parts);
                let now = self.h.now;
                let spec = self.groups[g].clone();
                let m = self.m(c);
                m.owned = parts;
                m.positions.clear();
                m.state = MState::Stable;
                m.next_heartbeat = now + spec.heartbeat_ms * MS;
                m.next_commit = now + spec.commit_ms * MS;
                self.after(c)
            }
            code::UNKNOWN_MEMBER_ID => {
                self.rejoin(c, "sync: unknown member", false, true);
                self.after(c)
            }
            e if code::coordinator(e) => self.coordinator_lost(c, e),
            e => {
                self.rejoin(c, &format!("sync error {e}"), false, false);
                self.after(c)
            }
        }
    }

    fn on_consumer_heartbeat(&mut self, c: usize, epoch: i32, r: ConsumerGroupHeartbeatResponse) {
        let now = self.h.now;
        let g = self.member(c).g;
        if epoch < 0 {
            return self.left(c);
        }
        let m = self.member(c);
        let expected = match m.state {
            MState::Join => epoch == 0,
            MState::Stable => epoch == m.generation,
            _ => false,
        };
        if !expected {
            return self.after(c);
        }
        let session = self.groups[g].session_ms as u64 * MS;
        if r.error_code == code::NONE && now >= self.member(c).heartbeat_sent + session {
            // Read too late (the member was paused): its session has run
            // out since it asked, and the coordinator will have fenced it.
            self.rejoin(c, "answer read after its session ran out", false, false);
            return self.after(c);
        }
        match r.error_code {
            code::NONE => {
                let spec = self.groups[g].clone();
                let m = self.m(c);
                if let Some(id) = &r.member_id {
                    m.member_id = id.to_string();
                }
                m.generation = r.member_epoch;
                m.heartbeat_acked_sent = m.heartbeat_sent;
                m.state = MState::Stable;
                if m.next_commit < now {
                    m.next_commit = now + spec.commit_ms * MS;
                }
                if let Some(a) = r.assignment {
                    let mut new = BTreeSet::new();
                    for t in &a.topic_partitions {
                        m.topic_id = Some(t.topic_id.as_u128());
                        new.extend(t.partitions.iter().copied());
                    }
                    let revoked: Vec<i32> = m.owned.difference(&new).copied().collect();
                    let added: BTreeSet<i32> = new.difference(&m.owned).copied().collect();
                    for p in &revoked {
                        m.owned.remove(p);
                        m.positions.remove(p);
                    }
                    trace!(
                        self,
                        "c{c}: epoch {}: owns {new:?} (revoked {revoked:?}, added {added:?})",
                        r.member_epoch
                    );
                    self.check_held(c, &added);
                    self.m(c).owned.extend(added);
                }
                self.after(c)
            }
            code::FENCED_MEMBER_EPOCH | code::UNKNOWN_MEMBER_ID => {
                self.rejoin(
                    c,
                    &format!("heartbeat error {}", r.error_code),
                    false,
                    false,
                );
                self.after(c)
            }
            e if code::coordinator(e) => self.coordinator_lost(c, e),
            e => {
                self.clients[c].net.last_error = format!("ConsumerGroupHeartbeat error {e}");
                let b = self.h.backoff();
                self.wake(c, b)
            }
        }
    }

    fn left(&mut self, c: usize) {
        let life = {
            let m = self.m(c);
            m.state = MState::Left;
            m.life
        };
        let at = self.h.now + self.h.rng.between(50, 500) * MS;
        self.h.at(at, Ev::MemberRestart(c, life));
    }

    fn on_fetch(&mut self, c: usize, positions: &[(i32, i64)], r: FetchResponse) {
        for t in &r.responses {
            for p in &t.partitions {
                let Some(&(_, asked)) = positions.iter().find(|(x, _)| *x == p.partition_index)
                else {
                    continue;
                };
                let next = match p.error_code {
                    code::NONE => {
                        let records = p.records.clone().unwrap_or_default();
                        Batches::new(&records)
                            .filter_map(|b| b.ok())
                            .map(|b| b.header.next_offset())
                            .max()
                            .map_or(asked, |n| n.max(asked))
                    }
                    code::OFFSET_OUT_OF_RANGE if asked < p.log_start_offset => p.log_start_offset,
                    code::OFFSET_OUT_OF_RANGE => p.high_watermark.max(0),
                    code::KAFKA_STORAGE_ERROR => {
                        // Rot in a one-replica log is not mended by any
                        // restart: reads of it fail for good, as in Kafka.
                        if !self.data_damaged(p.partition_index) {
                            self.note_storage_error();
                        }
                        asked
                    }
                    _ => asked,
                };
                if let Some(m) = self.clients[c].member.as_mut() {
                    if m.positions.get(&p.partition_index) == Some(&asked) {
                        m.positions.insert(p.partition_index, next);
                    }
                }
            }
        }
        self.wake(c, MS);
    }

    // ---- members' faults ----------------------------------------------------

    fn member_crash(&mut self, c: usize) {
        if self.phase != Phase::Safety || self.member(c).state == MState::Down {
            return;
        }
        self.stats.member_crashes += 1;
        trace!(self, "c{c}: member process crashes");
        // The OS closes its sockets: what it had sent still arrives.
        let conn = self.clients[c].net.conn.take();
        if let Some(conn) = conn {
            self.h.client_close(conn);
        }
        let net = &mut self.clients[c].net;
        net.out = None;
        net.versions = None;
        let m = self.m(c);
        let sloppy = m.sloppy;
        let g = m.g;
        let life = m.life + 1;
        *m = Member::new(g, sloppy);
        m.life = life;
        m.state = MState::Down;
        let at = self.h.now + self.h.rng.between(20, 500) * MS;
        self.h.at(at, Ev::MemberRestart(c, life));
    }

    fn member_restart(&mut self, c: usize, life: u64) {
        let m = self.m(c);
        if m.life != life || !matches!(m.state, MState::Down | MState::Left) {
            return;
        }
        let (g, sloppy) = (m.g, m.sloppy);
        *m = Member::new(g, sloppy);
        m.life = life + 1;
        trace!(self, "c{c}: member starts again, with no member id");
        self.wake(c, MS / 10);
    }

    fn member_pause(&mut self, c: usize, ms: u64) {
        let m = self.member(c);
        if self.phase != Phase::Safety || m.state == MState::Down || m.paused_until.is_some() {
            return;
        }
        let life = m.life;
        self.stats.pauses += 1;
        let until = self.h.now + ms * MS;
        trace!(self, "c{c}: pauses for {ms} ms");
        self.m(c).paused_until = Some(until);
        self.h.at(until, Ev::MemberResume(c, life));
    }

    fn member_resume(&mut self, c: usize, life: u64) {
        let m = self.m(c);
        if m.life != life || m.paused_until.is_none() {
            return;
        }
        m.paused_until = None;
        let inbox = std::mem::take(&mut m.inbox);
        trace!(self, "c{c}: resumes ({} answers waiting)", inbox.len());
        self.self_fence(c);
        for (conn, frame) in inbox {
            self.client_frame(c, conn, frame);
        }
        self.wake(c, MS / 10);
    }

    /// Perhaps a power loss right after a commit's answer left the broker,
    /// before anything else happens: a reply released before its record
    /// was synced is lost with it.
    fn maybe_timed_crash(&mut self) {
        if self.timed_crashes == 0
            || self.phase != Phase::Safety
            || !self.h.faults_on
            || !self.faults_rng.chance(0.1)
        {
            return;
        }
        self.timed_crashes -= 1;
        let now = self.h.now;
        self.h.at(now, Ev::PowerLoss);
    }

    fn timed_power_loss(&mut self) {
        if self.h.broker.is_none() || !self.h.faults_on {
            return;
        }
        trace!(self, "power loss, timed to follow a commit's answer");
        self.stats.timed_power_losses += 1;
        self.h.stop_broker(true);
        let at = self.h.now + self.faults_rng.between(10, 300) * MS;
        self.h.schedule_at(at, Event::Restart);
    }

    // ---- the phases ---------------------------------------------------------

    fn end_safety(&mut self) {
        self.h.faults_on = false;
        self.phase = Phase::Settle;
        let quiet = self.h.disk.faults().quiet();
        self.h.disk.set_faults(quiet);
        self.h.net.set_faults(self.h.net_faults.quiet());
        trace!(
            self,
            "safety phase over: faults off, the groups must settle"
        );
        for c in 0..self.clients.len() {
            let Some(m) = self.clients[c].member.as_ref() else {
                continue;
            };
            let life = m.life;
            if m.paused_until.is_some() {
                self.member_resume(c, life);
            }
            if matches!(self.member(c).state, MState::Down | MState::Left) {
                self.member_restart(c, life);
            }
        }
        if self.h.broker.is_some() && self.storage_errors > 0 {
            trace!(self, "restarting the broker: storage errors were seen");
            self.h.stop_broker(false);
        }
        self.restart();
    }

    /// Every member of every group in one generation, every partition owned
    /// by exactly one of them.
    fn settled(&self) -> bool {
        (0..self.groups.len()).all(|g| self.excused(g) || self.group_settled(g))
    }

    fn group_settled(&self, g: usize) -> bool {
        let members: Vec<&Member> = self
            .clients
            .iter()
            .filter_map(|c| c.member.as_ref())
            .filter(|m| m.g == g)
            .collect();
        let Some(first) = members.first() else {
            return true;
        };
        let mut owned = BTreeSet::new();
        let mut count = 0;
        for m in &members {
            if m.state != MState::Stable || m.generation != first.generation {
                return false;
            }
            count += m.owned.len();
            owned.extend(m.owned.iter().copied());
        }
        count == self.partitions as usize && owned.len() == count
    }

    fn describe_members(&self) -> String {
        self.clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.member.as_ref().map(|m| {
                    format!(
                        "c{i} {}: {:?} generation {} owns {:?} (last error {:?})",
                        self.groups[m.g].name, m.state, m.generation, m.owned, c.net.last_error
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn final_power_loss(&mut self) {
        trace!(self, "final power loss");
        self.phase = Phase::FinalRead;
        for c in 0..self.clients.len() {
            self.clients[c].net.stopped = true;
        }
        if self.h.broker.is_some() {
            self.h.stop_broker(true);
        } else {
            self.h.disk.crash();
        }
        self.restart();
        if self.h.violation.is_some() || self.phase == Phase::Done {
            return;
        }
        let c = self.clients.len();
        self.clients.push(Client::new(Role::Final));
        trace!(self, "c{c}: reads every group's committed offsets");
        self.h.at(self.h.now + FINAL_MS * MS, Ev::FinalDeadline);
        self.wake(c, MS);
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
            Role::Member => self.member_step(c),
            Role::Final => self.final_step(c),
        }
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::EndSafety => self.end_safety(),
            Ev::Deadline => {
                if self.phase == Phase::Settle {
                    let detail = format!(
                        "not settled {} ms after faults stopped (bound {} ms): {}",
                        (self.h.now - self.safety_end) / MS,
                        self.stable_bound / MS,
                        self.describe_members()
                    );
                    self.fail("unstable", detail);
                }
            }
            Ev::MemberCrash(c) => self.member_crash(c),
            Ev::MemberRestart(c, life) => self.member_restart(c, life),
            Ev::MemberPause(c, ms) => self.member_pause(c, ms),
            Ev::MemberResume(c, life) => self.member_resume(c, life),
            Ev::FinalPowerLoss => self.final_power_loss(),
            Ev::PowerLoss => self.timed_power_loss(),
            Ev::FinalDeadline => {
                if self.phase == Phase::FinalRead {
                    let f = self.clients.last().map(|c| c.net.last_error.clone());
                    self.fail(
                        "liveness",
                        format!(
                            "committed offsets not read back within {FINAL_MS} ms of the final restart: {f:?}"
                        ),
                    );
                }
            }
        }
    }

    fn after_event(&mut self) {
        if self.phase == Phase::Settle && self.settled() {
            let took = (self.h.now - self.safety_end) / MS;
            trace!(
                self,
                "settled {took} ms after faults stopped: {}",
                self.describe_members()
            );
            self.stable_at = Some(self.h.now);
            self.phase = Phase::Run;
            let run_ms = 2 * self.groups.iter().map(|g| g.commit_ms).max().unwrap_or(0) + 300;
            self.h.at(self.h.now + run_ms * MS, Ev::FinalPowerLoss);
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

    fn paused_until(&self, c: usize) -> Option<u64> {
        self.clients[c].member.as_ref().and_then(|m| m.paused_until)
    }

    fn hold(&mut self, c: usize, conn: u64, frame: Vec<u8>) {
        self.m(c).inbox.push((conn, frame));
    }

    /// A commit or heartbeat held up in the network (a segment lost and
    /// retransmitted late) for longer than the member's request timeout:
    /// it gives up, closes the connection and goes on; the request reaches
    /// the coordinator later, maybe after the member has rejoined.
    fn stall(&mut self, _c: usize, req: &Req) -> u64 {
        let (Req::Commit { g, timeout_ms, .. } | Req::Heartbeat { g, timeout_ms, .. }) = req else {
            return 0;
        };
        if self.stall_rate == 0.0
            || self.phase != Phase::Safety
            || !self.h.faults_on
            || !self.faults_rng.chance(self.stall_rate)
        {
            return 0;
        }
        self.stats.stalls += 1;
        let spec = &self.groups[*g];
        let most = timeout_ms + 3 * spec.session_ms as u64 + spec.rebalance_ms as u64;
        self.faults_rng.between(*timeout_ms, most) * MS
    }

    fn request_lost(&mut self, c: usize, req: &Req) {
        // Leaving is what a closing consumer does on its way out: whether
        // or not the coordinator heard it, the member is gone (it had
        // already given its partitions up).
        if matches!(
            req,
            Req::Leave { .. } | Req::ConsumerHeartbeat { epoch: -1, .. }
        ) {
            trace!(self, "c{c}: its leave went unanswered; it is gone");
            return self.left(c);
        }
        // A sloppy client that does not know whether its JoinGroup went
        // through acts once more in the generation it had.
        if let Req::Join { .. } = req {
            let Some(m) = self.clients[c].member.as_ref() else {
                return;
            };
            if !m.sloppy || m.generation < 1 {
                return;
            }
            let (gen, positions) = (m.generation, m.last_positions.clone());
            let commit = self.h.rng.chance(0.5);
            self.m(c).stale = Some((gen, positions, commit));
        }
    }

    fn broker_closed(&mut self, conn: u64, reason: String, _fire_and_forget: bool) {
        let client = self.h.conns.get(&conn).map_or(usize::MAX, |c| c.client);
        if reason.contains(OFFSETS_TOPIC) {
            // A group partition failed under the request: its outcome is
            // unknown, and the partition is offline until a restart.
            trace!(
                self,
                "broker closed c{client}'s connection {conn}: {reason}"
            );
            self.h.reset_conn(conn, true);
            return self.note_storage_error();
        }
        self.fail(
            "protocol-error",
            format!("broker closed c{client}'s connection {conn}: {reason}"),
        );
    }
}
