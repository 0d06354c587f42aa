//! What the workloads that put Kafka clients in front of one simulated
//! broker share: the broker process on its simulated disk (open, crash,
//! kill, restart, the nemesis schedule), the connections between clients
//! and broker over the simulated network (TCP's in-order delivery and flow
//! control, resets both ends learn of), the driver that hands frames to
//! `Broker::handle_frame` and runs `Broker::poll` as a separate step, and
//! the client side every such client has (connect, ApiVersions, version
//! choice, one request outstanding, timeouts, backoff).
//!
//! A workload (`broker.rs`, `groups.rs`) owns a [`Host`] and implements
//! [`Wire`]: how its requests and responses decode, what its checker
//! observes as each response leaves the broker, what its clients do next.

use crate::disk::SimDisk;
use crate::net::SimNetwork;
use crate::rng::Stream;
use crate::trace::Trace;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use odradek_core::buggify::Buggify;
use odradek_core::io::clock::ManualClock;
use odradek_core::io::{Address, Disk, Envelope, Instant, Random, TimerQueue};
use odradek_core::kafka::meta::META_FILES;
use odradek_core::kafka::{Broker, BrokerConfig, ConnId, FrameOutcome};
use odradek_nemesis::{Fault, NetFaults, Schedule};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

pub(crate) const NODE: i32 = 1;
pub(crate) const MS: u64 = 1_000_000;
/// Simulated wall clock at time zero: 2026-01-01T00:00:00Z.
pub(crate) const EPOCH_WALL_MS: i64 = 1_767_225_600_000;
pub(crate) const DATA_DIR: &str = "data";
/// Frames a client may have sent that the broker has not yet read.
pub(crate) const MAX_UNREAD: u64 = 16;

macro_rules! trace {
    ($host:expr, $($arg:tt)*) => {
        $host.trace.record($host.now, format_args!($($arg)*))
    };
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub(crate) fn encode_request<T: Encodable>(
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

/// A Produce of one batch to one partition.
pub(crate) fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    batch: &[u8],
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(2_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch.to_vec())))])])
}

/// Decodes an ApiVersions response body, falling back to v0 when the
/// broker refused the version (KIP-511).
pub(crate) fn decode_api_versions(
    buf: &mut Bytes,
    version: i16,
) -> Result<ApiVersionsResponse, String> {
    let mut probe = buf.clone();
    match ApiVersionsResponse::decode(&mut probe, version) {
        Ok(r) => {
            *buf = probe;
            Ok(r)
        }
        Err(_) => ApiVersionsResponse::decode(buf, 0).map_err(|e| e.to_string()),
    }
}

/// Whether a request frame is a Produce with acks=0.
pub(crate) fn is_acks0_produce(frame: &[u8]) -> bool {
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

/// A request a client sent and awaits the answer to.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding<R> {
    pub corr: i32,
    pub version: i16,
    pub req: R,
    pub serial: u64,
    /// When the broker read it, in the host's order (0: not yet).
    pub read: u64,
}

/// What a workload's request descriptions must say about themselves.
pub(crate) trait Request: Clone + fmt::Debug {
    fn key(&self) -> ApiKey;
    /// The request that opens every connection.
    fn api_versions() -> Self;
    /// Sent without expecting an answer (a Produce with acks=0).
    fn unanswered(&self) -> bool {
        false
    }
    /// How long the client waits for the answer.
    fn timeout_ms(&self) -> u64 {
        3_000
    }
}

/// The connection side of a client: every workload's clients have one.
pub(crate) struct ClientConn<R> {
    pub conn: Option<u64>,
    /// Negotiated on the current connection: key -> (min, max).
    pub versions: Option<BTreeMap<i16, (i16, i16)>>,
    pub out: Option<Outstanding<R>>,
    pub next_corr: i32,
    /// When the client's next step is due, so that wakes are not doubled.
    pub wake_at: Option<u64>,
    /// The last error this client saw, for liveness reports.
    pub last_error: String,
    pub stopped: bool,
}

impl<R> Default for ClientConn<R> {
    fn default() -> Self {
        ClientConn {
            conn: None,
            versions: None,
            out: None,
            next_corr: 0,
            wake_at: None,
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
pub(crate) struct Conn<R> {
    pub client: usize,
    pub alive: bool,
    /// The client closed its end (`Host::client_close`): the broker still
    /// reads what was sent before the close, and its answers go unread.
    pub client_gone: bool,
    to_broker_seq: u64,
    to_client_seq: u64,
    /// Frames sent that the broker has not read yet: TCP's flow control
    /// stops a sender when the receiver's buffers are full.
    pub unread: u64,
    at_client: InOrder,
    /// The request the broker's next response answers (one at a time).
    expect: Option<Outstanding<R>>,
}

/// The broker's end of a live connection.
#[derive(Default)]
pub(crate) struct ServerConn {
    at_broker: InOrder,
    frames: VecDeque<Vec<u8>>,
    /// A request is pending inside the broker: the next frame waits.
    pending: bool,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Event<W> {
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
    /// The workload's own events.
    Workload(W),
}

/// Counts the shared machinery keeps; each workload reports them.
#[derive(Clone, Debug, Default)]
pub(crate) struct WireStats {
    pub requests: u64,
    pub resets: u64,
    pub timeouts: u64,
}

/// The simulated world around one broker: its disk and network, the
/// broker itself, the connections, the event queue and the trace.
pub(crate) struct Host<R, W> {
    pub seed: u64,
    pub trace: Trace,
    pub now: u64,
    /// The workload's stream: clients' choices and the connections' own
    /// delays.
    pub rng: ChaCha8Rng,
    pub disk: SimDisk,
    pub net: SimNetwork,
    pub net_faults: NetFaults,
    pub schedule: Schedule,
    pub config: BrokerConfig,
    pub broker: Option<Broker<SimDisk>>,
    pub incarnation: u64,
    pub restarts: u64,
    server: BTreeMap<u64, ServerConn>,
    pub conns: BTreeMap<u64, Conn<R>>,
    next_conn: u64,
    pub no_buggify: bool,
    pub queue: TimerQueue<Event<W>>,
    busy_until: u64,
    /// Times at which a `BrokerWork` or a `BrokerPoll` is already queued.
    work_at: BTreeSet<u64>,
    poll_at: BTreeSet<u64>,
    pub wall_offset_ms: i64,
    pub faults_on: bool,
    /// An operator restart is queued.
    pub restart_pending: bool,
    pub serial: u64,
    /// Orders the broker's reads of requests with whatever else a
    /// workload's checker orders (sends, emissions): `tick`.
    pub order: u64,
    /// A client closing its connection sends a FIN after its data (see
    /// `client_close`); otherwise both ends reset at once.
    pub ordered_close: bool,
    pub stats: WireStats,
    pub violation: Option<String>,
}

impl<R: Request, W: Copy> Host<R, W> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        trace: bool,
        rng: ChaCha8Rng,
        disk: SimDisk,
        net: SimNetwork,
        net_faults: NetFaults,
        schedule: Schedule,
        config: BrokerConfig,
        no_buggify: bool,
    ) -> Host<R, W> {
        Host {
            seed,
            trace: Trace::new(trace),
            now: 0,
            rng,
            disk,
            net,
            net_faults,
            schedule,
            config,
            broker: None,
            incarnation: 0,
            restarts: 0,
            server: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            no_buggify,
            queue: TimerQueue::new(),
            busy_until: 0,
            work_at: BTreeSet::new(),
            poll_at: BTreeSet::new(),
            wall_offset_ms: 0,
            faults_on: true,
            restart_pending: false,
            serial: 0,
            order: 0,
            ordered_close: false,
            stats: WireStats::default(),
            violation: None,
        }
    }

    /// The next number in the checker's order.
    pub fn tick(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    pub fn schedule_at(&mut self, at: u64, ev: Event<W>) {
        self.queue.schedule(Instant(at), ev);
    }

    /// Schedules a workload event.
    pub fn at(&mut self, at: u64, ev: W) {
        self.schedule_at(at, Event::Workload(ev));
    }

    /// The broker's clock: its wall clock may jump.
    pub fn clock(&self) -> ManualClock {
        ManualClock {
            now: Instant(self.now),
            wall_ms: EPOCH_WALL_MS + (self.now / MS) as i64 + self.wall_offset_ms,
        }
    }

    /// Clients' clocks do not jump: only the broker's does.
    pub fn client_wall_ms(&self) -> i64 {
        EPOCH_WALL_MS + (self.now / MS) as i64
    }

    /// Records the first violation (with the disk's damage, which is what
    /// may excuse it) and ends the run.
    pub fn fail(&mut self, kind: &str, detail: String) {
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

    pub fn backoff(&mut self) -> u64 {
        self.rng.between(20, 200) * MS
    }

    /// Every copy of the topic registry on disk damaged (a copy never
    /// written, because the store that would have made it failed, does not
    /// count): no restart can bring the broker back, and it refuses to start
    /// rather than come up empty.
    pub fn registry_damaged(&self) -> bool {
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

    pub fn schedule_work(&mut self, at: u64) {
        let at = at.max(self.busy_until);
        if self.work_at.insert(at) {
            self.schedule_at(at, Event::BrokerWork);
        }
    }

    pub fn schedule_poll(&mut self, at: u64) {
        let at = at.max(self.busy_until);
        if self.poll_at.insert(at) {
            self.schedule_at(at, Event::BrokerPoll);
        }
    }

    pub fn schedule_deadline(&mut self) {
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

    /// A connection dies. Both ends learn of it: the client after a network
    /// delay, the broker (if `tell_broker` and it is up) at once.
    pub fn reset_conn(&mut self, conn: u64, tell_broker: bool) {
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

    /// The client closes its end of a connection (it gave up on a
    /// request, or its process died). With `ordered_close`, as TCP does: a
    /// FIN follows the data already sent, the broker reads and serves
    /// every request before it (its answers leave the broker and go
    /// unread) and learns of the close only then — a request a client gave
    /// up on can reach the coordinator after the client has moved on.
    /// Otherwise both ends reset at once.
    pub fn client_close(&mut self, conn: u64) {
        if !self.ordered_close {
            return self.reset_conn(conn, true);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive || c.client_gone {
            return;
        }
        c.client_gone = true;
        self.stats.resets += 1;
        // The FIN: an empty frame (no request is empty).
        self.send_to_broker(conn, Vec::new(), 0);
    }

    /// Sends a frame; `stall` holds it back that much longer (a segment
    /// retransmitted late), and everything after it on the connection
    /// waits for it, as TCP delivers in order.
    fn send_to_broker(&mut self, conn: u64, frame: Vec<u8>, stall: u64) {
        let c = self.conns.get_mut(&conn).expect("client's connection");
        let seq = c.to_broker_seq;
        c.to_broker_seq += 1;
        c.unread += 1;
        let env = Envelope {
            from: Address::Client(conn),
            to: Address::Node(NODE),
            payload: conn_frame(conn, seq, &frame),
        };
        match self.net.submit(Instant(self.now + stall), env) {
            Some(Instant(arrive)) => self.schedule_at(arrive, Event::Net),
            None => {
                trace!(self, "request on connection {conn} lost: reset");
                self.reset_conn(conn, true);
            }
        }
    }

    /// The process dies: every connection resets, nothing it held in memory
    /// survives. `power_loss` takes the page cache too.
    pub fn stop_broker(&mut self, power_loss: bool) {
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
}

/// A workload of clients in front of the simulated broker. The provided
/// methods are the shared machinery; the required ones are the workload.
pub(crate) trait Wire: Sized {
    type Req: Request;
    type Resp;
    type Ev: Copy;

    fn host(&mut self) -> &mut Host<Self::Req, Self::Ev>;
    fn host_ref(&self) -> &Host<Self::Req, Self::Ev>;
    fn client(&mut self, c: usize) -> &mut ClientConn<Self::Req>;
    fn client_ref(&self, c: usize) -> &ClientConn<Self::Req>;

    /// The versions the workload's clients speak, as (key, min, max).
    fn client_versions(&self) -> &'static [(ApiKey, i16, i16)];
    /// Decodes a response to `out`: its correlation id and body.
    fn decode(
        &self,
        out: &Outstanding<Self::Req>,
        bytes: &[u8],
    ) -> Result<(i32, Self::Resp), String>;
    /// The checker sees a response as it leaves the broker.
    fn observe(&mut self, out: &Outstanding<Self::Req>, resp: &Self::Resp);
    /// A client reads a response.
    fn on_response(&mut self, c: usize, out: Outstanding<Self::Req>, resp: Self::Resp);
    /// A connected client's next request (or wait).
    fn client_work(&mut self, c: usize);
    fn on_event(&mut self, ev: Self::Ev);
    /// Checked after every event.
    fn after_event(&mut self) {}
    fn done(&self) -> bool;
    /// The broker cannot start again because the disk destroyed every copy
    /// of its registry: the run ends, excused.
    fn end_excused(&mut self);
    /// How long a client that sent a request with no answer waits before
    /// its next step.
    fn unanswered_gap(&mut self, _c: usize) -> u64 {
        MS
    }
    /// Until when a client is paused, if it is: it reads nothing, sends
    /// nothing and its timers wait.
    fn paused_until(&self, _c: usize) -> Option<u64> {
        None
    }
    /// A request's answer will never come (its connection failed): its
    /// outcome is unknown.
    fn request_lost(&mut self, _c: usize, _req: &Self::Req) {}
    /// A frame that reached a paused client, for it to read when it
    /// resumes.
    fn hold(&mut self, _c: usize, _conn: u64, _frame: Vec<u8>) {}
    /// How much longer than the network's delay the request's frame takes
    /// to reach the broker.
    fn stall(&mut self, _c: usize, _req: &Self::Req) -> u64 {
        0
    }
    /// The broker closed a connection instead of answering.
    fn broker_closed(&mut self, conn: u64, reason: String, fire_and_forget: bool) {
        if fire_and_forget {
            // Kafka's only way to tell an acks=0 producer that its batch
            // failed.
            let h = self.host();
            trace!(
                h,
                "broker closed connection {conn} after an acks=0 produce: {reason}"
            );
            h.reset_conn(conn, true);
        } else {
            let client = self
                .host_ref()
                .conns
                .get(&conn)
                .map_or(usize::MAX, |c| c.client);
            self.host().fail(
                "protocol-error",
                format!("broker closed c{client}'s connection {conn}: {reason}"),
            );
        }
    }

    /// Runs the event loop until the queue empties, a violation, or the
    /// workload says it is done.
    fn run_loop(&mut self) {
        while let Some((Instant(at), ev)) = self.host().queue.pop_next() {
            if self.host_ref().violation.is_some() || self.done() {
                break;
            }
            // The broker works on one thing at a time and waits for its
            // disk; everything else happens when it happens.
            if matches!(ev, Event::BrokerWork | Event::BrokerPoll) {
                let h = self.host();
                let queued = match ev {
                    Event::BrokerWork => &mut h.work_at,
                    _ => &mut h.poll_at,
                };
                queued.remove(&at);
                if at < h.busy_until {
                    let busy = h.busy_until;
                    match ev {
                        Event::BrokerWork => h.schedule_work(busy),
                        _ => h.schedule_poll(busy),
                    }
                    continue;
                }
            }
            self.host().now = at;
            self.host().disk.set_now(at);
            match ev {
                Event::ClientWake(c) => {
                    if self.client_ref(c).wake_at == Some(at) {
                        self.client(c).wake_at = None;
                        self.client_step(c);
                    }
                }
                Event::ClientTimeout(c, serial) => self.client_timeout(c, serial),
                Event::ClientReset(c, conn) => {
                    if let Some(t) = self.paused_until(c) {
                        self.host().schedule_at(t, ev);
                    } else if self.client_ref(c).conn == Some(conn) {
                        self.client_error(c, "connection reset".to_string());
                    }
                }
                Event::Net => self.deliver(),
                Event::BrokerWork => self.broker_work(),
                Event::BrokerPoll => self.broker_poll(),
                Event::Fault(i) => {
                    if self.host_ref().faults_on {
                        let fault = self.host_ref().schedule.faults[i].1.clone();
                        self.apply_fault(fault);
                    }
                }
                Event::Restart => self.restart(),
                Event::OperatorRestart => {
                    self.host().restart_pending = false;
                    let h = self.host();
                    if h.broker.is_some() {
                        trace!(h, "operator restart after a storage error");
                        h.stop_broker(false);
                        self.restart();
                    }
                }
                Event::Workload(w) => self.on_event(w),
            }
            self.after_event();
        }
    }

    // ---- the broker ---------------------------------------------------------

    /// Starts the broker if it is down.
    fn restart(&mut self) {
        let h = self.host();
        if h.broker.is_some() {
            return;
        }
        h.restarts += 1;
        let clock = h.clock();
        let buggify = if h.no_buggify {
            Buggify::disabled()
        } else {
            Buggify::seeded(h.seed ^ (h.restarts << 40))
        };
        let mut config = h.config.clone();
        // Seeded, and new at every start, as the OS's randomness is for a
        // real process.
        config.incarnation =
            crate::rng::stream(h.seed ^ h.restarts.rotate_left(32), Stream::Incarnation).next_u64();
        let result = Broker::open_with_buggify(h.disk.clone(), config, &clock, buggify);
        let busy = h.disk.take_busy_ns();
        h.busy_until = h.busy_until.max(h.now + busy);
        match result {
            Ok(b) => {
                h.incarnation += 1;
                trace!(h, "broker up (incarnation {})", h.incarnation);
                h.broker = Some(b);
                self.broker_started();
                self.host().schedule_deadline();
            }
            Err(e) => {
                trace!(h, "broker open failed: {e}");
                if h.registry_damaged() {
                    // Topic metadata has two copies: with both damaged, no
                    // restart can bring the broker back.
                    trace!(
                        h,
                        "both copies of the topic registry were damaged: the broker cannot start again (excused; nothing more to check)"
                    );
                    return self.end_excused();
                }
                if !h.faults_on {
                    h.fail(
                        "liveness",
                        format!("broker open failed with faults off: {e}"),
                    );
                    return;
                }
                h.disk.kill_process();
                let at = h.now + busy + 10 * MS;
                h.schedule_at(at, Event::Restart);
            }
        }
    }

    /// The broker has just started.
    fn broker_started(&mut self) {}

    fn apply_fault(&mut self, fault: Fault) {
        let h = self.host();
        trace!(h, "nemesis {fault}");
        match fault {
            Fault::Crash { .. } => {
                if h.broker.is_some() {
                    h.stop_broker(true);
                } else {
                    h.disk.crash();
                }
            }
            Fault::Kill { .. } => {
                if h.broker.is_some() {
                    h.stop_broker(false);
                }
            }
            Fault::Restart { .. } => self.restart(),
            Fault::ClockJump { delta_ms, .. } => h.wall_offset_ms += delta_ms,
            other => trace!(h, "fault {other} does not apply to a single node"),
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
        let h = self.host();
        let Some(mut broker) = h.broker.take() else {
            return;
        };
        let clock = h.clock();
        let mut sends: Vec<(u64, FrameOutcome, bool)> = Vec::new();
        let ready: Vec<u64> = h
            .server
            .iter()
            .filter(|(_, s)| !s.pending && !s.frames.is_empty())
            .map(|(&c, _)| c)
            .collect();
        let mut frames = 0;
        for conn in ready {
            while let Some(frame) = h
                .server
                .get_mut(&conn)
                .filter(|s| !s.pending)
                .and_then(|s| s.frames.pop_front())
            {
                frames += 1;
                if let Some(c) = h.conns.get_mut(&conn) {
                    c.unread -= 1;
                    if frame.is_empty() {
                        // The client's FIN, after everything it sent.
                        c.alive = false;
                        c.expect = None;
                    } else if let Some(e) = c.expect.as_mut().filter(|e| e.read == 0) {
                        h.order += 1;
                        e.read = h.order;
                    }
                }
                if frame.is_empty() {
                    h.server.remove(&conn);
                    broker.connection_closed(ConnId(conn));
                    break;
                }
                match broker.handle_frame(ConnId(conn), &frame, &clock) {
                    FrameOutcome::Pending => {
                        h.server.get_mut(&conn).expect("live").pending = true;
                    }
                    outcome => {
                        let fire_and_forget = is_acks0_produce(&frame);
                        sends.push((conn, outcome, fire_and_forget));
                    }
                }
            }
        }
        h.broker = Some(broker);
        let done = self.dispatch(sends, format_args!("{frames} requests"));
        if frames > 0 {
            self.host().schedule_poll(done);
        }
    }

    /// `poll`: the group commit, and the answers it releases (acks=-1
    /// produces now durable, fetches whose wait is over, group replies
    /// whose records are durable).
    fn broker_poll(&mut self) {
        let h = self.host();
        let Some(mut broker) = h.broker.take() else {
            return;
        };
        let clock = h.clock();
        let completions = broker.poll(&clock);
        h.broker = Some(broker);
        let mut sends = Vec::new();
        for c in completions {
            if let Some(s) = h.server.get_mut(&c.conn.0) {
                s.pending = false;
                sends.push((c.conn.0, c.outcome, false));
            }
        }
        let n = sends.len();
        let done = self.dispatch(sends, format_args!("poll, {n} completions"));
        let h = self.host();
        if h.server
            .values()
            .any(|s| !s.pending && !s.frames.is_empty())
        {
            h.schedule_work(done);
        }
    }

    /// Charges the disk time of a broker step and sends its answers when
    /// it is over. Returns that time.
    fn dispatch(&mut self, sends: Vec<(u64, FrameOutcome, bool)>, what: fmt::Arguments<'_>) -> u64 {
        let h = self.host();
        let busy = h.disk.take_busy_ns();
        let done = h.now + busy;
        h.busy_until = done;
        if !sends.is_empty() || busy > 0 {
            trace!(
                h,
                "broker: {what}, {} outcomes, disk busy {}us",
                sends.len(),
                busy / 1000
            );
        }
        for (conn, outcome, fire_and_forget) in sends {
            match outcome {
                FrameOutcome::Respond(bytes) => self.respond(conn, bytes, done),
                FrameOutcome::NoResponse => {}
                FrameOutcome::Close(reason) => self.broker_closed(conn, reason, fire_and_forget),
                FrameOutcome::Pending => self.host().fail(
                    "protocol-error",
                    format!("a completion for connection {conn} is still pending"),
                ),
            }
        }
        if self.host_ref().violation.is_none() {
            self.host().schedule_deadline();
        }
        done
    }

    /// A response leaves the broker: the checker observes it now, in the
    /// broker's order, then the network carries it.
    fn respond(&mut self, conn: u64, bytes: Vec<u8>, at: u64) {
        let h = self.host();
        let Some(c) = h.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let Some(out) = c.expect.take() else {
            let client = c.client;
            return h.fail(
                "protocol-error",
                format!("broker answered c{client} on connection {conn} when no answer was due"),
            );
        };
        match self.decode(&out, &bytes) {
            Ok((_, resp)) => self.observe(&out, &resp),
            Err(e) => return self.host().fail("protocol-error", e),
        }
        let h = self.host();
        let c = h.conns.get_mut(&conn).expect("live");
        if c.client_gone {
            // Nobody reads it.
            return;
        }
        let seq = c.to_client_seq;
        c.to_client_seq += 1;
        let env = Envelope {
            from: Address::Node(NODE),
            to: Address::Client(conn),
            payload: conn_frame(conn, seq, &bytes),
        };
        match h.net.submit(Instant(at), env) {
            Some(Instant(arrive)) => h.schedule_at(arrive, Event::Net),
            None => {
                trace!(h, "response on connection {conn} lost: reset");
                h.reset_conn(conn, true);
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.host_ref().now;
        let envs = self.host().net.deliver_due(Instant(now));
        for env in envs {
            let (conn, seq, data) = split_frame(&env.payload);
            let h = self.host();
            let alive = h.conns.get(&conn).is_some_and(|c| c.alive);
            if !alive {
                continue;
            }
            match env.to {
                Address::Node(_) => {
                    if h.broker.is_none() {
                        // Nobody listens: connection refused.
                        h.reset_conn(conn, false);
                        continue;
                    }
                    let s = h.server.entry(conn).or_default();
                    let frames = s.at_broker.push(seq, data);
                    let any = !frames.is_empty();
                    s.frames.extend(frames);
                    if any {
                        h.schedule_work(h.now);
                    }
                }
                Address::Client(_) => {
                    let c = h.conns.get_mut(&conn).expect("alive");
                    if c.client_gone {
                        continue;
                    }
                    let client = c.client;
                    for frame in c.at_client.push(seq, data) {
                        if self.paused_until(client).is_some() {
                            self.hold(client, conn, frame);
                        } else {
                            self.client_frame(client, conn, frame);
                        }
                    }
                }
            }
        }
    }

    // ---- clients ------------------------------------------------------------

    fn wake(&mut self, c: usize, after_ns: u64) {
        let at = self.host_ref().now + after_ns;
        let client = self.client(c);
        if client.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        client.wake_at = Some(at);
        self.host().schedule_at(at, Event::ClientWake(c));
    }

    fn client_timeout(&mut self, c: usize, serial: u64) {
        if self
            .client_ref(c)
            .out
            .as_ref()
            .is_none_or(|o| o.serial != serial)
        {
            return;
        }
        if let Some(t) = self.paused_until(c) {
            return self.host().schedule_at(t, Event::ClientTimeout(c, serial));
        }
        self.host().stats.timeouts += 1;
        if let Some(conn) = self.client_ref(c).conn {
            self.host().client_close(conn);
        }
        self.client_error(c, "request timed out".to_string());
    }

    /// The connection failed under a request: its outcome is unknown, and
    /// the client reconnects after a backoff and retries.
    fn client_error(&mut self, c: usize, why: String) {
        let lost = self.client(c).out.take();
        let what = lost
            .as_ref()
            .map_or("idle".to_string(), |o| format!("{:?}", o.req.key()));
        if let Some(o) = lost {
            self.request_lost(c, &o.req);
        }
        let h = self.host();
        trace!(h, "c{c}: {why} ({what})");
        let client = self.client(c);
        client.last_error = why;
        client.conn = None;
        client.versions = None;
        let b = self.host().backoff();
        self.wake(c, b);
    }

    fn version(&mut self, c: usize, key: ApiKey) -> Option<i16> {
        let (lo, hi) = *self.client_ref(c).versions.as_ref()?.get(&(key as i16))?;
        Some(lo + self.host().rng.below((hi - lo + 1) as u64) as i16)
    }

    fn send(
        &mut self,
        c: usize,
        req: Self::Req,
        version: i16,
        frame_of: impl Fn(i32) -> Result<Vec<u8>, String>,
    ) {
        let conn = self.client_ref(c).conn.expect("connected");
        let corr = self.client_ref(c).next_corr;
        self.client(c).next_corr += 1;
        let frame = match frame_of(corr) {
            Ok(f) => f,
            Err(e) => return self.host().fail("protocol-error", format!("c{c}: {e}")),
        };
        let stall = self.stall(c, &req);
        let h = self.host();
        h.stats.requests += 1;
        trace!(h, "c{c} -> {:?} v{version} corr={corr} {req:?}", req.key());
        if stall > 0 {
            trace!(
                h,
                "c{c}: that request is held up {} ms in the network",
                stall / MS
            );
        }
        if req.unanswered() {
            let gap = self.unanswered_gap(c);
            self.wake(c, gap);
        } else {
            let h = self.host();
            h.serial += 1;
            let out = Outstanding {
                corr,
                version,
                serial: h.serial,
                read: 0,
                req,
            };
            let timeout = out.req.timeout_ms() * MS;
            h.schedule_at(h.now + timeout, Event::ClientTimeout(c, out.serial));
            h.conns.get_mut(&conn).expect("live").expect = Some(out.clone());
            self.client(c).out = Some(out);
        }
        self.host().send_to_broker(conn, frame, stall);
    }

    fn client_step(&mut self, c: usize) {
        if self.client_ref(c).out.is_some()
            || self.client_ref(c).stopped
            || self.paused_until(c).is_some()
        {
            return;
        }
        let conn = self.client_ref(c).conn;
        let h = self.host_ref();
        if conn.is_some_and(|n| h.conns[&n].alive && h.conns[&n].unread >= MAX_UNREAD) {
            return self.wake(c, 5 * MS);
        }
        if conn.is_none() {
            let h = self.host();
            let conn = h.next_conn;
            h.next_conn += 1;
            h.conns.insert(
                conn,
                Conn {
                    client: c,
                    alive: true,
                    client_gone: false,
                    to_broker_seq: 0,
                    to_client_seq: 0,
                    unread: 0,
                    at_client: InOrder::default(),
                    expect: None,
                },
            );
            trace!(h, "c{c}: connect (connection {conn})");
            let version = h.rng.below(4) as i16;
            let client = self.client(c);
            client.conn = Some(conn);
            client.next_corr = 0;
            return self.send(c, Self::Req::api_versions(), version, |corr| {
                let body = ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("odradek-sim"))
                    .with_client_software_version(StrBytes::from_static_str("0"));
                encode_request(ApiKey::ApiVersions, version, corr, c, &body)
            });
        }
        self.client_work(c)
    }

    /// A frame reaches a client.
    fn client_frame(&mut self, c: usize, conn: u64, frame: Vec<u8>) {
        if self.client_ref(c).conn != Some(conn) {
            return;
        }
        let Some(out) = self.client(c).out.take() else {
            return self.host().fail(
                "protocol-error",
                format!("c{c} got a response with no request outstanding"),
            );
        };
        let (corr, resp) = match self.decode(&out, &frame) {
            Ok(r) => r,
            Err(e) => return self.host().fail("protocol-error", format!("c{c}: {e}")),
        };
        if corr != out.corr {
            return self.host().fail(
                "protocol-error",
                format!("c{c} expected correlation id {} and got {corr}", out.corr),
            );
        }
        self.on_response(c, out, resp);
    }

    /// Records the versions both sides speak; the client goes on at once.
    fn on_api_versions(&mut self, c: usize, r: ApiVersionsResponse) {
        if r.error_code != 0 {
            self.client(c).last_error = format!("ApiVersions error {}", r.error_code);
            let b = self.host().backoff();
            return self.wake(c, b);
        }
        let mut versions = BTreeMap::new();
        for &(key, lo, hi) in self.client_versions() {
            if let Some(k) = r.api_keys.iter().find(|k| k.api_key == key as i16) {
                let (lo, hi) = (lo.max(k.min_version), hi.min(k.max_version));
                if lo <= hi {
                    versions.insert(key as i16, (lo, hi));
                }
            }
        }
        self.client(c).versions = Some(versions);
        self.wake(c, MS / 10);
    }
}
