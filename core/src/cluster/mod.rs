//! A cluster node: a metadata quorum member (the controller role), a
//! Kafka broker (the broker role), or both, behind one sans-I/O struct
//! that the server and the simulator drive. The driver only moves bytes:
//! client frames in and responses out, peer payloads both ways, and calls
//! to [`Node::poll`] at [`Node::next_deadline`].
//!
//! * The controller role is a [`QuorumNode`] on the node's disk (its Raft
//!   files under `<data_dir>/__cluster_metadata-0`, as Kafka names them).
//! * The broker role is the single-node [`Broker`] opened in cluster mode:
//!   it follows a metadata image and forwards admin changes to the
//!   controller. Its image is the local quorum member's on a combined
//!   node; a broker-only node has no Raft log, so it follows the
//!   committed log from any voter (`FetchMetadata`), taking an image when
//!   the entries it needs were compacted.
//! * The broker registers with the controller (its incarnation, endpoint
//!   and rack) and heartbeats well inside the session timeout; requests
//!   go to the quorum leader as known, else to the voters in turn, and are
//!   retried after NOT_CONTROLLER or silence.
//!
//! Requests to this node's own controller are not sent over the network:
//! they are queued and stepped into the local quorum member, whose
//! answers to itself come back the same way, so a combined node works
//! alone (a one-voter quorum) and never depends on a loopback connection.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use rand_core::RngCore;

use crate::io::clock::{Clock, Instant};
use crate::io::disk::{self, Disk};
use crate::io::{Address, NodeId};
use crate::kafka::{Broker, BrokerConfig, Completion, ConnId, FrameOutcome};
use crate::metadata::controller::{code, Heartbeat, Registration};
use crate::metadata::quorum::{QuorumConfig, QuorumNode, CHANNEL_RAFT};
use crate::metadata::records::{decode_batch, Endpoint};
use crate::metadata::rpc::{self, MetadataUpdate, Request, Response};
use crate::metadata::{ControllerConfig, MetadataImage};
use crate::raft::{self, DiskStore};

/// The directory of the metadata log, under the data directory.
pub const METADATA_DIR: &str = "__cluster_metadata-0";

/// `process.roles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub controller: bool,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: i32,
    pub roles: Roles,
    /// The ids of `controller.quorum.voters`.
    pub voters: Vec<i32>,
    pub cluster_id: String,
    /// Raft files go under `<data_dir>/__cluster_metadata-0`, partition
    /// logs where the broker puts them (`<data_dir>/<topic>-<partition>`).
    pub data_dir: String,
    /// Used with the broker role. Its node id, cluster id and data
    /// directory are overwritten with the ones above.
    pub broker: BrokerConfig,
    /// Used with the controller role. Its Raft node id and voters and the
    /// controller's cluster id are overwritten with the ones above.
    pub quorum: QuorumConfig,
    /// `broker.heartbeat.interval.ms`: well inside the controller's
    /// `broker.session.timeout.ms` (9 s), so one lost heartbeat does not
    /// fence the broker.
    pub heartbeat_interval_ms: u64,
    /// How long a controller request waits for its answer before it is
    /// sent again, to the next voter.
    pub rpc_retry_ms: u64,
    /// How often a broker-only node asks for new metadata when it has
    /// caught up.
    pub metadata_fetch_ms: u64,
}

impl NodeConfig {
    /// Kafka's defaults for a node of the given roles.
    pub fn new(
        node_id: i32,
        roles: Roles,
        voters: Vec<i32>,
        cluster_id: &str,
        data_dir: &str,
    ) -> NodeConfig {
        let mut broker = BrokerConfig::new(node_id, data_dir);
        broker.cluster_id = cluster_id.to_string();
        NodeConfig {
            node_id,
            roles,
            quorum: QuorumConfig {
                raft: raft::Config::new(node_id, voters.iter().copied()),
                controller: ControllerConfig {
                    cluster_id: cluster_id.to_string(),
                    ..ControllerConfig::default()
                },
                snapshot_every: 1_000,
            },
            voters,
            cluster_id: cluster_id.to_string(),
            data_dir: data_dir.to_string(),
            broker,
            heartbeat_interval_ms: 2_000,
            rpc_retry_ms: 1_000,
            metadata_fetch_ms: 200,
        }
    }
}

/// What a node knows of itself and the cluster, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: i32,
    /// The quorum leader (the active controller) as this node knows it.
    pub quorum_leader: Option<i32>,
    /// This node's Raft epoch (0 without the controller role).
    pub epoch: u64,
    /// Whether this node is the active controller.
    pub is_controller: bool,
    /// The offset of the metadata image the broker follows (or the
    /// quorum member's, on a controller-only node).
    pub image_offset: i64,
    /// The broker epoch of this process's registration, once committed.
    pub broker_epoch: Option<i64>,
    /// Whether the controller last said this broker is fenced.
    pub fenced: bool,
    /// Why the quorum member or the registration is not working, if so.
    pub problem: Option<String>,
}

type Quorum<D> = QuorumNode<DiskStore<D>, u64>;

#[derive(Clone, Debug)]
enum Purpose {
    Register,
    Heartbeat,
    Fetch,
    Forward(u64),
}

/// A controller request waiting for its answer.
#[derive(Clone, Debug)]
struct Call {
    to: i32,
    request: Request,
    purpose: Purpose,
    resend_at: Instant,
    /// Given up on after this (forwards: the client's timeout).
    deadline: Option<Instant>,
}

pub struct Node<D: Disk + Clone> {
    disk: D,
    config: NodeConfig,
    quorum: Option<Quorum<D>>,
    broker: Option<Broker<D>>,
    /// A broker-only node's copy of the committed metadata.
    image: MetadataImage,
    /// The quorum leader as a broker-only node last heard of it.
    leader: Option<i32>,
    /// Where controller requests go first: the last NOT_CONTROLLER hint.
    hint: Option<i32>,
    /// Which voter is tried next when no leader is known.
    cursor: usize,
    calls: BTreeMap<u64, Call>,
    next_correlation: u64,
    /// (image offset, controller) last handed to the broker.
    given: Option<(i64, Option<i32>)>,
    broker_epoch: Option<i64>,
    fenced: bool,
    next_register: Instant,
    next_heartbeat: Instant,
    next_fetch: Instant,
    strays_removed: bool,
    /// Controller-channel payloads this node sent itself (requests to its
    /// own quorum member, and its answers), handled before a call returns.
    local: Vec<Vec<u8>>,
    outbox: Vec<(i32, Vec<u8>)>,
    now: Instant,
    problem: Option<String>,
}

impl<D: Disk + Clone> Node<D> {
    pub fn open<R: RngCore>(
        disk: D,
        mut config: NodeConfig,
        clock: &dyn Clock,
        rng: &mut R,
    ) -> Result<Node<D>, String> {
        let id = config.node_id;
        if !config.roles.broker && !config.roles.controller {
            return Err(format!(
                "node {id} has neither the broker nor the controller role"
            ));
        }
        if config.voters.is_empty() {
            return Err("controller.quorum.voters is empty".into());
        }
        if config.roles.controller && !config.voters.contains(&id) {
            return Err(format!(
                "node {id} has the controller role but is not among the voters {:?}",
                config.voters
            ));
        }
        config.voters.sort_unstable();
        config.voters.dedup();
        config.broker.node_id = id;
        config.broker.cluster_id = config.cluster_id.clone();
        config.broker.data_dir = config.data_dir.clone();
        config.quorum.raft.node_id = id;
        config.quorum.raft.voters = config.voters.iter().copied().collect();
        config.quorum.controller.cluster_id = config.cluster_id.clone();
        let now = clock.now();
        disk.create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir))?;
        let quorum = if config.roles.controller {
            Some(open_quorum(&disk, &config, now, rng)?)
        } else {
            None
        };
        let broker = if config.roles.broker {
            Some(Broker::open_cluster(
                disk.clone(),
                config.broker.clone(),
                clock,
                crate::buggify::Buggify::disabled(),
            )?)
        } else {
            None
        };
        let mut node = Node {
            disk,
            config,
            quorum,
            broker,
            image: MetadataImage::new(),
            leader: None,
            hint: None,
            cursor: (id.unsigned_abs() as usize) % 7,
            calls: BTreeMap::new(),
            next_correlation: 0,
            given: None,
            broker_epoch: None,
            fenced: true,
            next_register: now,
            next_heartbeat: now,
            next_fetch: now,
            strays_removed: false,
            local: Vec::new(),
            outbox: Vec::new(),
            now,
            problem: None,
        };
        node.pump(now, rng);
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The broker, for drivers that need more than frames (client hosts).
    pub fn broker_mut(&mut self) -> Option<&mut Broker<D>> {
        self.broker.as_mut()
    }

    pub fn broker(&self) -> Option<&Broker<D>> {
        self.broker.as_ref()
    }

    /// The metadata image this node serves from.
    pub fn image(&self) -> &MetadataImage {
        match (&self.broker, &self.quorum) {
            (Some(b), _) => b.image().unwrap_or(&self.image),
            (None, Some(q)) => q.image(),
            (None, None) => &self.image,
        }
    }

    /// A Kafka request from a client connection.
    pub fn handle_frame<R: RngCore>(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        clock: &dyn Clock,
        rng: &mut R,
    ) -> FrameOutcome {
        let now = clock.now();
        self.now = self.now.max(now);
        let Some(b) = self.broker.as_mut() else {
            return FrameOutcome::Close(format!(
                "node {} is a controller only (process.roles=controller): clients must connect to a broker",
                self.config.node_id
            ));
        };
        let out = b.handle_frame(conn, frame, clock);
        self.send_forwards(now, rng);
        self.pump(now, rng);
        out
    }

    /// Syncs and closes the broker's logs, after the last request. The
    /// Raft store needs nothing: it syncs each write before relying on it.
    pub fn shutdown(self) -> Result<(), String> {
        match self.broker {
            Some(b) => b.shutdown(),
            None => Ok(()),
        }
    }

    pub fn conn_closed(&mut self, conn: ConnId) {
        if let Some(b) = self.broker.as_mut() {
            b.connection_closed(conn);
        }
    }

    /// A payload from node `from`. Anything that does not decode is
    /// dropped: the network is not trusted.
    pub fn step_peer<R: RngCore>(
        &mut self,
        from: i32,
        payload: &[u8],
        clock: &dyn Clock,
        rng: &mut R,
    ) {
        let now = clock.now();
        self.now = self.now.max(now);
        if from == self.config.node_id {
            // Only this node's own queue may speak for it.
            return;
        }
        match payload.first() {
            Some(&CHANNEL_RAFT) => {
                if let Some(q) = self.quorum.as_mut() {
                    if q.step(now, from, payload, rng).is_err() {
                        self.restart_quorum(now, rng);
                    }
                }
            }
            Some(&rpc::CHANNEL_CONTROLLER) => self.controller_payload(now, from, payload, rng),
            _ => {}
        }
        self.pump(now, rng);
    }

    /// Timers: Raft's, the controller's, registration and heartbeats,
    /// metadata fetches, retries; then the broker's own poll (syncs,
    /// deferred answers, forwarded requests answered or timed out).
    pub fn poll<R: RngCore>(&mut self, clock: &dyn Clock, rng: &mut R) -> Vec<Completion> {
        let now = clock.now();
        self.now = self.now.max(now);
        if self.config.roles.controller && self.quorum.is_none() {
            self.restart_quorum(now, rng);
        }
        if let Some(q) = self.quorum.as_mut() {
            if now >= q.next_deadline() && q.tick(now, rng).is_err() {
                self.restart_quorum(now, rng);
            }
        }
        self.pump(now, rng);
        self.retry_calls(now, rng);
        if self.broker.is_some() {
            self.keep_registered(now, rng);
            if self.quorum.is_none() {
                self.keep_fetching(now, rng);
            }
        }
        self.send_forwards(now, rng);
        self.pump(now, rng);
        match self.broker.as_mut() {
            Some(b) => b.poll(clock),
            None => Vec::new(),
        }
    }

    pub fn take_peer_messages(&mut self) -> Vec<(i32, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn next_deadline(&self) -> Instant {
        let mut at = self.now.plus_millis(self.config.rpc_retry_ms.max(1));
        if let Some(q) = &self.quorum {
            at = at.min(q.next_deadline());
        }
        if let Some(b) = &self.broker {
            if let Some(d) = b.next_deadline() {
                at = at.min(d);
            }
            match self.broker_epoch {
                None => at = at.min(self.next_register),
                Some(_) => at = at.min(self.next_heartbeat),
            }
            if self.quorum.is_none() {
                at = at.min(self.next_fetch);
            }
        }
        for c in self.calls.values() {
            at = at.min(c.resend_at);
        }
        at
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.config.node_id,
            quorum_leader: self.known_leader(),
            epoch: self.quorum.as_ref().map_or(0, |q| q.raft().epoch()),
            is_controller: self
                .quorum
                .as_ref()
                .is_some_and(|q| q.controller().is_some()),
            image_offset: self.image().offset,
            broker_epoch: self.broker_epoch,
            fenced: self.fenced,
            problem: self.problem.clone(),
        }
    }

    // ---- internals -------------------------------------------------------

    fn known_leader(&self) -> Option<i32> {
        match &self.quorum {
            Some(q) => q.leader(),
            None => self.leader,
        }
    }

    /// A failed store poisons Raft: the member is dropped and opened again
    /// from its files, as after a crash. If that fails too it stays down
    /// and the next poll tries again.
    fn restart_quorum<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        self.quorum = None;
        match open_quorum(&self.disk, &self.config, now, rng) {
            Ok(q) => {
                self.quorum = Some(q);
                self.problem = None;
            }
            Err(e) => self.problem = Some(e),
        }
    }

    /// Moves messages until nothing is left to do locally: the quorum
    /// member's outbox (to peers, or to this node's own broker side),
    /// requests this node sent its own controller, and the image to the
    /// broker.
    fn pump<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        let me = self.config.node_id;
        // Bounded: every round either empties the queues or handles what
        // was in them, and answers to oneself cause at most a retry later.
        for _ in 0..64 {
            if let Some(q) = self.quorum.as_mut() {
                for env in q.take_messages() {
                    let Address::Node(to) = env.to else { continue };
                    if to == me {
                        self.local.push(env.payload);
                    } else {
                        self.outbox.push((to, env.payload));
                    }
                }
                // Proposals of the driver's own are not made here.
                let _ = q.take_done();
            }
            self.follow_image();
            if self.local.is_empty() {
                break;
            }
            for payload in std::mem::take(&mut self.local) {
                self.controller_payload(now, me, &payload, rng);
            }
        }
    }

    /// Hands the broker the image when it or the controller changed.
    fn follow_image(&mut self) {
        let (image, leader) = match &self.quorum {
            Some(q) => (q.image(), q.leader()),
            None => (&self.image, self.leader),
        };
        let Some(b) = self.broker.as_mut() else {
            return;
        };
        let now = (image.offset, leader);
        if self.given != Some(now) {
            b.apply_image(image, leader);
            self.given = Some(now);
        }
        if let Some(epoch) = self.broker_epoch {
            if !self.strays_removed && image.offset >= epoch {
                // Caught up to this process's own registration: every
                // topic deleted while it was down is gone from the image.
                b.remove_strays();
                self.strays_removed = true;
            }
        }
    }

    fn controller_payload<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        payload: &[u8],
        rng: &mut R,
    ) {
        match rpc::decode(payload) {
            Ok(rpc::Frame::Request(correlation, _)) => match self.quorum.as_mut() {
                Some(q) => {
                    if q.step(now, from, payload, rng).is_err() {
                        self.restart_quorum(now, rng);
                    }
                }
                None => {
                    // A broker-only node is no controller: point the
                    // sender at the leader it knows of.
                    let resp = Response::NotController(self.leader);
                    self.outbox
                        .push((from, rpc::encode_response(correlation, &resp)));
                }
            },
            Ok(rpc::Frame::Response(correlation, resp)) => {
                self.answered(now, from, correlation, resp, rng)
            }
            Err(_) => {}
        }
    }

    fn target(&self) -> i32 {
        if let Some(h) = self.hint {
            return h;
        }
        if let Some(l) = self.known_leader() {
            return l;
        }
        self.config.voters[self.cursor % self.config.voters.len()]
    }

    fn call<R: RngCore>(
        &mut self,
        now: Instant,
        request: Request,
        purpose: Purpose,
        deadline: Option<Instant>,
        rng: &mut R,
    ) {
        let call = Call {
            to: self.target(),
            request,
            purpose,
            resend_at: now,
            deadline,
        };
        self.send(now, call, rng);
    }

    fn send<R: RngCore>(&mut self, now: Instant, mut call: Call, _rng: &mut R) {
        self.next_correlation += 1;
        let correlation = self.next_correlation;
        call.resend_at = now.plus_millis(self.config.rpc_retry_ms.max(1));
        let payload = rpc::encode_request(correlation, &call.request);
        if call.to == self.config.node_id {
            if self.quorum.is_some() {
                self.local.push(payload);
            }
        } else {
            self.outbox.push((call.to, payload));
        }
        self.calls.insert(correlation, call);
    }

    /// Calls unanswered for too long go again, to the next voter; those
    /// nobody waits for any more are dropped.
    fn retry_calls<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.resend_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let Some(mut call) = self.calls.remove(&k) else {
                continue;
            };
            if call.deadline.is_some_and(|d| d <= now) {
                continue;
            }
            // Silence: whoever we thought led may be gone.
            if self.hint == Some(call.to) || self.hint.is_none() {
                self.hint = None;
                self.cursor = self.cursor.wrapping_add(1);
            }
            if self.quorum.is_none() && self.leader == Some(call.to) {
                self.leader = None;
            }
            call.to = self.target();
            self.send(now, call, rng);
        }
    }

    fn answered<R: RngCore>(
        &mut self,
        now: Instant,
        from: NodeId,
        correlation: u64,
        resp: Response,
        rng: &mut R,
    ) {
        match self.calls.get(&correlation) {
            Some(c) if c.to == from => {}
            // Not ours, a duplicate, or from a node we did not ask.
            _ => return,
        }
        let Some(mut call) = self.calls.remove(&correlation) else {
            return;
        };
        if let Response::NotController(leader) = resp {
            let leader = leader.filter(|l| *l != from && self.config.voters.contains(l));
            if self.quorum.is_none() {
                self.leader = leader;
            }
            self.hint = leader;
            match leader {
                Some(l) => {
                    call.to = l;
                    self.send(now, call, rng);
                }
                None => {
                    // Nobody leads yet (an election is on): try the next
                    // voter after a pause rather than at once.
                    self.cursor = self.cursor.wrapping_add(1);
                    call.to = self.config.voters[self.cursor % self.config.voters.len()];
                    let retry = self.config.rpc_retry_ms.max(1) / 4;
                    self.next_correlation += 1;
                    call.resend_at = now.plus_millis(retry.max(1));
                    // Not sent now: `retry_calls` sends it when due.
                    self.calls.insert(self.next_correlation, call);
                }
            }
            return;
        }
        if self.hint.is_none() && self.config.voters.contains(&from) {
            self.hint = Some(from);
        }
        match call.purpose {
            Purpose::Register => self.registered(now, resp),
            Purpose::Heartbeat => self.heartbeat_answered(now, resp),
            Purpose::Fetch => self.fetched(now, resp),
            Purpose::Forward(id) => {
                if let Some(b) = self.broker.as_mut() {
                    b.forward_answered(id, resp);
                }
            }
        }
    }

    // ---- the broker's registration ------------------------------------

    fn in_flight(&self, f: impl Fn(&Purpose) -> bool) -> bool {
        self.calls.values().any(|c| f(&c.purpose))
    }

    fn keep_registered<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        match self.broker_epoch {
            None => {
                if now >= self.next_register && !self.in_flight(|p| matches!(p, Purpose::Register))
                {
                    let b = &self.config.broker;
                    let req = Request::Register(Registration {
                        id: self.config.node_id,
                        cluster_id: self.config.cluster_id.clone(),
                        incarnation: u128::from(b.incarnation),
                        endpoints: vec![Endpoint {
                            name: "PLAINTEXT".into(),
                            host: b.advertised_host.clone(),
                            port: u16::try_from(b.advertised_port).unwrap_or(0),
                        }],
                        rack: b.rack.clone(),
                    });
                    self.next_register = now.plus_millis(self.config.rpc_retry_ms.max(1));
                    self.call(now, req, Purpose::Register, None, rng);
                }
            }
            Some(epoch) => {
                if now >= self.next_heartbeat
                    && !self.in_flight(|p| matches!(p, Purpose::Heartbeat))
                {
                    let req = Request::Heartbeat(Heartbeat {
                        id: self.config.node_id,
                        epoch,
                        metadata_offset: self.image().offset,
                        want_fence: false,
                    });
                    self.next_heartbeat = now.plus_millis(self.heartbeat_every());
                    self.call(now, req, Purpose::Heartbeat, None, rng);
                }
            }
        }
    }

    /// A fenced broker heartbeats more often, so that it is unfenced soon
    /// after its image catches up.
    fn heartbeat_every(&self) -> u64 {
        let every = self.config.heartbeat_interval_ms.max(1);
        if self.fenced {
            every.min(250)
        } else {
            every
        }
    }

    fn registered(&mut self, now: Instant, resp: Response) {
        match resp {
            Response::Register { status, epoch } if status.0 == 0 && epoch >= 0 => {
                self.broker_epoch = Some(epoch);
                self.fenced = true;
                self.problem = None;
                self.next_heartbeat = now;
            }
            // Not committed yet, a live twin, another cluster: asked again
            // later; the status says why meanwhile.
            Response::Register { status, .. } if status.0 != 0 => {
                self.problem = Some(format!("registration refused ({}): {}", status.0, status.1));
            }
            _ => {}
        }
    }

    fn heartbeat_answered(&mut self, now: Instant, resp: Response) {
        let Response::Heartbeat { status, fenced } = resp else {
            return;
        };
        match status.0 {
            0 => {
                let was = self.fenced;
                self.fenced = fenced;
                if was && !fenced {
                    self.next_heartbeat = now.plus_millis(self.heartbeat_every());
                }
            }
            code::STALE_BROKER_EPOCH | code::BROKER_ID_NOT_REGISTERED => {
                // The controller no longer knows this registration.
                self.broker_epoch = None;
                self.fenced = true;
                self.next_register = now;
            }
            _ => {}
        }
    }

    // ---- following the metadata log (broker-only) ---------------------

    fn keep_fetching<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        if now < self.next_fetch || self.in_flight(|p| matches!(p, Purpose::Fetch)) {
            return;
        }
        self.next_fetch = now.plus_millis(self.config.metadata_fetch_ms.max(1));
        let req = Request::FetchMetadata {
            after: self.image.offset,
        };
        self.call(now, req, Purpose::Fetch, None, rng);
    }

    fn fetched(&mut self, now: Instant, resp: Response) {
        let Response::Metadata { leader, update } = resp else {
            return;
        };
        if leader.is_some() {
            self.leader = leader;
        }
        let before = self.image.offset;
        match update {
            MetadataUpdate::Entries(entries) => {
                for (offset, batch) in entries {
                    if offset <= self.image.offset {
                        continue;
                    }
                    if offset != self.image.offset + 1 {
                        // A gap: ask again from where this image is.
                        break;
                    }
                    match batch.map(|b| decode_batch(&b)) {
                        Some(Ok(records)) => {
                            if self.image.apply(offset, &records).is_err() {
                                self.image.skip(offset);
                            }
                        }
                        // A no-op, or a batch every node refuses alike.
                        _ => self.image.skip(offset),
                    }
                }
            }
            MetadataUpdate::Snapshot(bytes) => {
                if let Ok(image) = MetadataImage::decode_snapshot(&bytes) {
                    if image.offset > self.image.offset {
                        self.image = image;
                    }
                }
            }
        }
        if self.image.offset > before {
            // There may be more: ask again at once.
            self.next_fetch = now;
        }
    }

    fn send_forwards<R: RngCore>(&mut self, now: Instant, rng: &mut R) {
        let Some(b) = self.broker.as_mut() else {
            return;
        };
        for f in b.take_forwards() {
            self.call(
                now,
                f.request,
                Purpose::Forward(f.id),
                Some(f.deadline),
                rng,
            );
        }
    }
}

fn open_quorum<D: Disk + Clone, R: RngCore>(
    disk: &D,
    config: &NodeConfig,
    now: Instant,
    rng: &mut R,
) -> Result<Quorum<D>, String> {
    let dir = disk::join(&config.data_dir, METADATA_DIR);
    disk.create_dir_all(&dir)
        .map_err(|e| format!("cannot create {dir}: {e}"))?;
    QuorumNode::new(
        DiskStore::new(disk.clone(), &dir),
        config.quorum.clone(),
        now,
        rng,
    )
    .map_err(|e| format!("cannot open the metadata quorum in {dir}: {e:?}"))
}
