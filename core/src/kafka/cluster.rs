//! The broker as a member of a cluster: it follows the committed metadata
//! image instead of its own topic file, and forwards what only the
//! controller may decide.
//!
//! The admin handlers are the single-node ones: they validate as before,
//! and where a single broker would write its topic file they *defer* the
//! change instead. After the handler, each deferred change becomes one
//! controller request ([`Forward`]), and the response the handler built is
//! held until every forwarded item has its answer (or its timeout): the
//! item's error code is then the controller's. The node driving the broker
//! (`crate::cluster::Node`) carries the forwards and hands back answers.
//!
//! Partition logs follow the image: a partition whose replicas include
//! this broker has its log opened (created when new), one of a topic gone
//! from the image has its files removed, and only the image's leader
//! serves clients; the others answer NOT_LEADER_OR_FOLLOWER.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;

use super::configs;
use super::meta::{self, TopicMeta};
use super::{
    error, remove_dir_files, str_bytes, topic_name, uuid, Broker, Completion, ConnId, Ctx,
    FrameOutcome, Partition, Topic, OFFSETS_TOPIC,
};
use crate::io::clock::Instant;
use crate::io::disk::Disk;
use crate::metadata::controller::NewTopic;
use crate::metadata::records::ConfigResource;
use crate::metadata::rpc::{Request, Response, Status};
use crate::metadata::MetadataImage;

/// How long a forwarded request without a timeout of its own (AlterConfigs,
/// InitProducerId) waits for the controller: Kafka's `request.timeout.ms`.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// A controller request the broker wants sent; its answer comes back
/// through [`Broker::forward_answered`] with the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub id: u64,
    pub request: Request,
    /// Nobody waits for an answer after this; stop retrying.
    pub deadline: Instant,
}

/// A change a handler made that the controller must make instead.
#[derive(Clone, Debug)]
enum Deferred {
    Create(NewTopic),
    Delete(String),
    Grow {
        topic: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    },
    Configs {
        topic: String,
        changes: Vec<(String, Option<String>)>,
    },
}

impl Deferred {
    fn topic(&self) -> &str {
        match self {
            Deferred::Create(t) => &t.name,
            Deferred::Delete(n) => n,
            Deferred::Grow { topic, .. } | Deferred::Configs { topic, .. } => topic,
        }
    }

    fn into_request(self) -> Request {
        match self {
            Deferred::Create(t) => Request::CreateTopics(vec![t]),
            Deferred::Delete(n) => Request::DeleteTopics(vec![n]),
            Deferred::Grow {
                topic,
                count,
                assignments,
            } => Request::CreatePartitions {
                topic,
                count,
                assignments,
            },
            Deferred::Configs { topic, changes } => Request::AlterConfigs {
                resource: ConfigResource::Topic(topic),
                changes,
            },
        }
    }
}

/// A response built by a handler, held until its forwarded items are
/// answered.
#[derive(Clone, Debug)]
pub(crate) enum Held {
    Create(CreateTopicsResponse),
    Delete(DeleteTopicsResponse),
    Grow(CreatePartitionsResponse),
    Alter(AlterConfigsResponse),
    IncAlter(IncrementalAlterConfigsResponse),
    ProducerId(InitProducerIdResponse),
}

impl Held {
    /// The topic each item names, and whether the handler let it through
    /// (error code 0): deferred changes belong to those, in order.
    fn items(&self) -> Vec<(String, bool)> {
        match self {
            Held::Create(r) => r
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.error_code == 0))
                .collect(),
            Held::Delete(r) => r
                .responses
                .iter()
                .map(|t| {
                    let n = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                    (n, t.error_code == 0)
                })
                .collect(),
            Held::Grow(r) => r
                .results
                .iter()
                .map(|t| (t.name.0.to_string(), t.error_code == 0))
                .collect(),
            Held::Alter(r) => r
                .responses
                .iter()
                .map(|t| (t.resource_name.to_string(), t.error_code == 0))
                .collect(),
            Held::IncAlter(r) => r
                .responses
                .iter()
                .map(|t| (t.resource_name.to_string(), t.error_code == 0))
                .collect(),
            Held::ProducerId(_) => vec![(String::new(), true)],
        }
    }

    fn set_status(&mut self, i: usize, (code, msg): &Status, version: i16) {
        let message = (!msg.is_empty()).then(|| str_bytes(msg));
        match self {
            Held::Create(r) => {
                if let Some(t) = r.topics.get_mut(i) {
                    t.error_code = *code;
                    t.error_message = message;
                    if *code != 0 {
                        t.topic_id = uuid::Uuid::nil();
                        t.num_partitions = -1;
                        t.replication_factor = -1;
                        t.configs = None;
                    }
                }
            }
            Held::Delete(r) => {
                if let Some(t) = r.responses.get_mut(i) {
                    t.error_code = *code;
                    if version >= 5 {
                        t.error_message = message;
                    }
                }
            }
            Held::Grow(r) => {
                if let Some(t) = r.results.get_mut(i) {
                    t.error_code = *code;
                    t.error_message = message;
                }
            }
            Held::Alter(r) => {
                if let Some(t) = r.responses.get_mut(i) {
                    t.error_code = *code;
                    t.error_message = message;
                }
            }
            Held::IncAlter(r) => {
                if let Some(t) = r.responses.get_mut(i) {
                    t.error_code = *code;
                    t.error_message = message;
                }
            }
            Held::ProducerId(r) => r.error_code = *code,
        }
    }

    fn respond(&self, ctx: &Ctx) -> FrameOutcome {
        match self {
            Held::Create(r) => ctx.respond(r),
            Held::Delete(r) => ctx.respond(r),
            Held::Grow(r) => ctx.respond(r),
            Held::Alter(r) => ctx.respond(r),
            Held::IncAlter(r) => ctx.respond(r),
            Held::ProducerId(r) => ctx.respond(r),
        }
    }
}

#[derive(Clone, Debug)]
struct Waiting {
    ctx: Ctx,
    deadline: Instant,
    held: Held,
    /// Items still waiting for the controller.
    open: BTreeSet<usize>,
}

/// Where a forward's answer goes.
#[derive(Clone, Debug)]
enum Route {
    Item(ConnId, usize),
    /// An auto-creation nobody waits for (Metadata, FindCoordinator).
    AutoCreate(String),
    ProducerIds(ConnId),
}

/// The broker's cluster state: the image it follows and its forwards.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterState {
    pub image: MetadataImage,
    pub controller: Option<i32>,
    next_forward: u64,
    outgoing: Vec<Forward>,
    /// Where each forward's answer goes, until its deadline: the carrier
    /// gives up then too, so nothing would ever remove it otherwise.
    routes: BTreeMap<u64, (Route, Instant)>,
    waiting: BTreeMap<ConnId, Waiting>,
    ready: Vec<(ConnId, FrameOutcome)>,
    deferred: Vec<Deferred>,
    /// Topics this broker asked the controller to create on its own, so a
    /// client polling Metadata does not send one request per poll.
    creating: BTreeMap<String, Instant>,
    /// Producer ids handed to this broker by the controller: `[next, end)`.
    producer_ids: (i64, i64),
    /// Topics whose files may be on this disk, by name: those the image
    /// listed when the broker last recorded it in its topic file. The
    /// [`Disk`] interface lists files, not directories, so this is how
    /// the files of topics deleted (or re-created under a new id) while
    /// the broker was down are found.
    pub known: BTreeMap<String, TopicMeta>,
}

impl ClusterState {
    pub fn new() -> ClusterState {
        ClusterState {
            image: MetadataImage::new(),
            ..ClusterState::default()
        }
    }

    fn forward(&mut self, request: Request, deadline: Instant, route: Route) -> u64 {
        self.next_forward += 1;
        let id = self.next_forward;
        self.routes.insert(id, (route, deadline));
        self.outgoing.push(Forward {
            id,
            request,
            deadline,
        });
        id
    }

    pub fn busy(&self, conn: ConnId) -> bool {
        self.waiting.contains_key(&conn)
    }
}

fn to_i32s(v: &[BrokerId]) -> Vec<i32> {
    v.iter().map(|b| b.0).collect()
}

fn ids(v: &[i32]) -> Vec<BrokerId> {
    v.iter().copied().map(BrokerId).collect()
}

impl<D: Disk + Clone> Broker<D> {
    /// Whether this broker follows a cluster's metadata.
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The image this broker follows (a cluster member only).
    pub fn image(&self) -> Option<&MetadataImage> {
        self.cluster.as_ref().map(|c| &c.image)
    }

    /// Controller requests to send, made since the last call.
    pub fn take_forwards(&mut self) -> Vec<Forward> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.outgoing))
            .unwrap_or_default()
    }

    /// The controller's answer to forward `id`. NOT_CONTROLLER is the
    /// carrier's to retry, never handed here; an answer nobody waits for
    /// any more (timed out, connection closed) is dropped.
    pub fn forward_answered(&mut self, id: u64, resp: Response) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((route, _)) = c.routes.remove(&id) else {
            return;
        };
        match route {
            Route::AutoCreate(name) => {
                c.creating.remove(&name);
            }
            Route::Item(conn, i) => {
                let status = match resp {
                    Response::Items(v) if v.len() == 1 => v[0].clone(),
                    other => (
                        error::UNKNOWN_SERVER_ERROR,
                        format!("unexpected controller answer {other:?}"),
                    ),
                };
                if let Some(w) = c.waiting.get_mut(&conn) {
                    if w.open.remove(&i) {
                        w.held.set_status(i, &status, w.ctx.version);
                    }
                }
                self.finish_waiting(conn);
            }
            Route::ProducerIds(conn) => {
                let status = match resp {
                    Response::ProducerIds {
                        status,
                        first,
                        count,
                    } if status.0 == 0 && first >= 0 && count > 0 => {
                        c.producer_ids = (first, first.saturating_add(count));
                        status
                    }
                    Response::ProducerIds { status, .. } if status.0 != 0 => status,
                    other => (
                        error::UNKNOWN_SERVER_ERROR,
                        format!("unexpected controller answer {other:?}"),
                    ),
                };
                let Some(w) = c.waiting.get_mut(&conn) else {
                    return;
                };
                w.open.clear();
                if let Held::ProducerId(r) = &mut w.held {
                    match c.producer_ids {
                        (next, end) if status.0 == 0 && next < end => {
                            r.producer_id = ProducerId(next);
                            r.producer_epoch = 0;
                            c.producer_ids.0 += 1;
                        }
                        _ => {
                            r.error_code = if status.0 == 0 {
                                error::UNKNOWN_SERVER_ERROR
                            } else {
                                status.0
                            }
                        }
                    }
                }
                self.finish_waiting(conn);
            }
        }
    }

    /// Answers a held response whose items are all decided.
    fn finish_waiting(&mut self, conn: ConnId) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !c.waiting.get(&conn).is_some_and(|w| w.open.is_empty()) {
            return;
        }
        let Some(mut w) = c.waiting.remove(&conn) else {
            return;
        };
        if let Held::Create(r) = &mut w.held {
            // What the controller placed, as far as this broker's image
            // has it already: ids and counts are the cluster's, not the
            // request's.
            for t in r.topics.iter_mut().filter(|t| t.error_code == 0) {
                if let Some(ti) = c.image.topic(&t.name.0) {
                    t.topic_id = uuid(ti.id);
                    t.num_partitions = ti.partitions.len() as i32;
                    if let Some(p) = ti.partitions.values().next() {
                        t.replication_factor = p.replicas.len() as i16;
                    }
                }
            }
        }
        let outcome = w.held.respond(&w.ctx);
        c.ready.push((conn, outcome));
    }

    /// Called after an admin handler in a cluster: sends what it deferred
    /// and holds its response, or answers at once when nothing was.
    pub(crate) fn finish_admin(&mut self, ctx: &Ctx, held: Held, timeout_ms: i32) -> FrameOutcome {
        let Some(c) = self.cluster.as_mut() else {
            return held.respond(ctx);
        };
        let deferred = std::mem::take(&mut c.deferred);
        if deferred.is_empty() {
            return held.respond(ctx);
        }
        let timeout = if timeout_ms > 0 {
            timeout_ms as u64
        } else {
            DEFAULT_TIMEOUT_MS
        };
        let deadline = ctx.now.plus_millis(timeout);
        // Each deferred change belongs to the next item of its topic that
        // the handler let through: handlers defer in item order.
        let items = held.items();
        let mut used = BTreeSet::new();
        let mut waiting = Waiting {
            ctx: *ctx,
            deadline,
            held,
            open: BTreeSet::new(),
        };
        for d in deferred {
            let slot = items
                .iter()
                .enumerate()
                .position(|(i, (name, ok))| *ok && !used.contains(&i) && name == d.topic());
            let Some(i) = slot else {
                continue;
            };
            used.insert(i);
            waiting.open.insert(i);
            c.forward(d.into_request(), deadline, Route::Item(ctx.conn, i));
        }
        if waiting.open.is_empty() {
            return waiting.held.respond(ctx);
        }
        c.waiting.insert(ctx.conn, waiting);
        FrameOutcome::Pending
    }

    /// Held responses whose time ran out, answered with REQUEST_TIMED_OUT
    /// for the items still open; and those answered meanwhile.
    pub(crate) fn release_forwarded(&mut self, now: Instant) -> Vec<Completion> {
        let Some(c) = self.cluster.as_mut() else {
            return Vec::new();
        };
        let expired: Vec<ConnId> = c
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in expired {
            let Some(c) = self.cluster.as_mut() else {
                break;
            };
            if let Some(w) = c.waiting.get_mut(&conn) {
                let status = (
                    error::REQUEST_TIMED_OUT,
                    "the controller did not answer in time".to_string(),
                );
                for i in std::mem::take(&mut w.open) {
                    w.held.set_status(i, &status, w.ctx.version);
                }
            }
            self.finish_waiting(conn);
        }
        let Some(c) = self.cluster.as_mut() else {
            return Vec::new();
        };
        c.creating.retain(|_, deadline| *deadline > now);
        c.routes.retain(|_, (_, deadline)| *deadline > now);
        std::mem::take(&mut c.ready)
            .into_iter()
            .map(|(conn, outcome)| Completion { conn, outcome })
            .collect()
    }

    pub(crate) fn forwarded_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        if !c.ready.is_empty() {
            return Some(Instant::ZERO);
        }
        c.waiting.values().map(|w| w.deadline).min()
    }

    pub(crate) fn forwarded_closed(&mut self, conn: ConnId) {
        if let Some(c) = self.cluster.as_mut() {
            c.waiting.remove(&conn);
        }
    }

    // ---- hooks for the single-node handlers ---------------------------

    /// In a cluster, the change a handler would have written is deferred
    /// to the controller; `Some(())` says it was.
    fn defer(&mut self, d: Deferred) -> Option<()> {
        let c = self.cluster.as_mut()?;
        c.deferred.push(d);
        Some(())
    }

    pub(crate) fn defer_create(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        t: &create_topics_request::CreatableTopic,
        configs: &BTreeMap<String, String>,
    ) -> Option<()> {
        let assignments = t
            .assignments
            .iter()
            .map(|a| (a.partition_index, to_i32s(&a.broker_ids)))
            .collect();
        self.defer(Deferred::Create(NewTopic {
            name: name.to_string(),
            partitions: if t.assignments.is_empty() {
                partitions
            } else {
                -1
            },
            replication_factor: if t.assignments.is_empty() {
                replication_factor
            } else {
                -1
            },
            assignments,
            configs: configs.clone(),
        }))
    }

    pub(crate) fn defer_delete(&mut self, name: &str) -> Option<()> {
        self.defer(Deferred::Delete(name.to_string()))
    }

    pub(crate) fn defer_grow(
        &mut self,
        t: &create_partitions_request::CreatePartitionsTopic,
    ) -> Option<()> {
        self.defer(Deferred::Grow {
            topic: t.name.0.to_string(),
            count: t.count,
            assignments: t
                .assignments
                .as_ref()
                .filter(|a| !a.is_empty())
                .map(|a| a.iter().map(|a| to_i32s(&a.broker_ids)).collect()),
        })
    }

    /// The override set of `name` becomes `overrides`: sent as the
    /// settings that differ and the deletions of those gone.
    pub(crate) fn defer_configs(
        &mut self,
        name: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Option<()> {
        let current = self
            .meta
            .topics
            .get(name)
            .map(|t| t.configs.clone())
            .unwrap_or_default();
        let mut changes: Vec<(String, Option<String>)> = current
            .keys()
            .filter(|k| !overrides.contains_key(*k))
            .map(|k| (k.clone(), None))
            .collect();
        for (k, v) in overrides {
            if current.get(k) != Some(v) {
                changes.push((k.clone(), Some(v.clone())));
            }
        }
        self.defer(Deferred::Configs {
            topic: name.to_string(),
            changes,
        })
    }

    /// Replication factors a cluster can honour: as many as there are
    /// live brokers (the controller has the last word).
    pub(crate) fn cluster_replication_check(&self, rf: i16) -> Option<Result<(), (i16, String)>> {
        let c = self.cluster.as_ref()?;
        let live = c.image.live_brokers().count();
        Some(if rf == -1 || (rf >= 1 && rf as usize <= live) {
            Ok(())
        } else if rf <= 0 {
            Err((
                error::INVALID_REPLICATION_FACTOR,
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ))
        } else {
            Err((
                error::INVALID_REPLICATION_FACTOR,
                format!(
                    "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {live} broker(s) are registered."
                ),
            ))
        })
    }

    /// Manual assignments in a cluster: registered brokers, no repeats.
    pub(crate) fn cluster_assignment_check(
        &self,
        index: i32,
        brokers: &[BrokerId],
    ) -> Option<Result<(), (i16, String)>> {
        let c = self.cluster.as_ref()?;
        let distinct: BTreeSet<i32> = brokers.iter().map(|b| b.0).collect();
        Some(if brokers.is_empty() || distinct.len() != brokers.len() {
            Err((
                error::INVALID_REPLICA_ASSIGNMENT,
                format!("replica assignment for partition {index} is empty or repeats a broker"),
            ))
        } else if let Some(b) = distinct.iter().find(|b| !c.image.brokers.contains_key(b)) {
            Err((
                error::INVALID_REPLICA_ASSIGNMENT,
                format!("replica assignment for partition {index} names unknown broker {b}"),
            ))
        } else {
            Ok(())
        })
    }

    /// Asks the controller to create `name` for this broker's own needs
    /// (auto-creation, `__consumer_offsets`), once at a time.
    pub(crate) fn auto_create_in_cluster(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.creating.contains_key(name) || c.image.topic(name).is_some() {
            return;
        }
        let deadline = now.plus_millis(DEFAULT_TIMEOUT_MS);
        c.creating.insert(name.to_string(), deadline);
        let t = NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            assignments: BTreeMap::new(),
            configs,
        };
        c.forward(
            Request::CreateTopics(vec![t]),
            deadline,
            Route::AutoCreate(name.to_string()),
        );
    }

    /// InitProducerId in a cluster: ids come in blocks from the controller,
    /// so no two brokers ever hand out the same one.
    pub(crate) fn cluster_producer_id(
        &mut self,
        ctx: &Ctx,
        mut resp: InitProducerIdResponse,
    ) -> FrameOutcome {
        let Some(c) = self.cluster.as_mut() else {
            return ctx.respond(&resp);
        };
        let (next, end) = c.producer_ids;
        if next < end {
            c.producer_ids.0 += 1;
            resp.producer_id = ProducerId(next);
            resp.producer_epoch = 0;
            return ctx.respond(&resp);
        }
        let deadline = ctx.now.plus_millis(DEFAULT_TIMEOUT_MS);
        let broker = self.config.node_id;
        let c = self.cluster.as_mut().expect("checked above");
        c.forward(
            Request::AllocateProducerIds { broker },
            deadline,
            Route::ProducerIds(ctx.conn),
        );
        c.waiting.insert(
            ctx.conn,
            Waiting {
                ctx: *ctx,
                deadline,
                held: Held::ProducerId(resp),
                open: BTreeSet::from([0]),
            },
        );
        FrameOutcome::Pending
    }

    // ---- following the image -------------------------------------------

    /// Makes the broker's partitions what `image` says: logs opened for
    /// the partitions it holds a replica of, leadership and leader epochs
    /// taken from it, files of removed topics deleted, configs applied.
    /// `controller` is the quorum leader as this node knows it.
    pub fn apply_image(&mut self, image: &MetadataImage, controller: Option<i32>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.controller = controller;
        if image.offset < c.image.offset {
            // Images only move forward; an older one is a stale answer.
            return;
        }
        c.image = image.clone();
        let me = self.config.node_id;
        let gone: Vec<String> = self
            .topics
            .iter()
            .filter(|(n, t)| image.topic(n).map(|ti| ti.id) != Some(t.id))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.drop_topic_files(&name);
        }
        let mut created = false;
        let mut lost_offsets = Vec::new();
        for ti in image.topics.values() {
            // A topic re-created under this name while the broker was
            // away: the old one's files must not be served as the new
            // one's.
            let stale = self
                .cluster
                .as_ref()
                .and_then(|c| c.known.get(&ti.name))
                .filter(|k| k.id != ti.id && !self.topics.contains_key(&ti.name))
                .cloned();
            if let Some(k) = stale {
                self.remove_files(&k.name, k.partitions);
                if let Some(c) = self.cluster.as_mut() {
                    c.known.remove(&k.name);
                }
            }
            let overrides = image
                .configs
                .get(&ConfigResource::Topic(ti.name.clone()))
                .cloned()
                .unwrap_or_default();
            let settings = configs::topic_settings(&overrides, &self.config.settings);
            if !self.topics.contains_key(&ti.name) {
                self.topics.insert(
                    ti.name.clone(),
                    Topic {
                        id: ti.id,
                        settings: settings.clone(),
                        partitions: Vec::new(),
                    },
                );
                self.by_id.insert(ti.id, ti.name.clone());
            }
            let mut opened = Vec::new();
            {
                let t = self.topics.get(&ti.name).expect("inserted above");
                for (i, p) in ti.partitions.values().enumerate() {
                    // The controller numbers partitions densely; anything
                    // else is not followed past the gap.
                    if p.partition != i as i32 {
                        break;
                    }
                    let needs_log = p.replicas.contains(&me)
                        && t.partitions.get(i).is_none_or(|have| {
                            have.log.is_none() && have.problem.as_deref() == Some(NOT_A_REPLICA)
                        });
                    if needs_log {
                        opened.push((i, self.open_partition(&ti.name, p.partition, &settings)));
                    } else if i >= t.partitions.len() {
                        opened.push((i, placeholder()));
                    }
                }
            }
            created |= opened.iter().any(|(_, p)| p.log.is_some());
            let t = self.topics.get_mut(&ti.name).expect("inserted above");
            for (i, p) in opened {
                if i < t.partitions.len() {
                    t.partitions[i] = p;
                } else {
                    t.partitions.push(p);
                }
            }
            if t.settings != settings {
                for p in &mut t.partitions {
                    if let Some(log) = &mut p.log {
                        log.set_config(settings.log.clone());
                    }
                }
                t.settings = settings;
            }
            for (i, p) in ti.partitions.values().enumerate() {
                let Some(part) = t.partitions.get_mut(i) else {
                    break;
                };
                let leading = p.leader == me && part.log.is_some();
                if part.leading && !leading && ti.name == OFFSETS_TOPIC {
                    lost_offsets.push(i as i32);
                }
                part.leading = leading;
                part.leader_epoch = p.leader_epoch;
            }
        }
        if created {
            if let Err(e) = self.disk.sync_dir(&self.config.data_dir) {
                // As on a single node: partitions whose directory entry
                // may not survive a power loss stay offline until a start
                // can sync it.
                for t in self.topics.values_mut() {
                    for p in &mut t.partitions {
                        if p.log.as_ref().is_some_and(|l| l.end_offset() == 0) {
                            p.log = None;
                            p.problem = Some(format!("cannot sync the data directory: {e}"));
                        }
                    }
                }
            }
        }
        // Handlers that read the single-node topic list (configs,
        // name collisions) see the image's.
        self.meta.topics = image
            .topics
            .values()
            .map(|t| {
                let configs = image
                    .configs
                    .get(&ConfigResource::Topic(t.name.clone()))
                    .cloned()
                    .unwrap_or_default();
                (
                    t.name.clone(),
                    TopicMeta {
                        name: t.name.clone(),
                        id: t.id,
                        partitions: t.partitions.len() as i32,
                        deleting: false,
                        configs,
                    },
                )
            })
            .collect();
        self.record_known();
        for p in lost_offsets {
            // Its groups are served elsewhere now (or nowhere until the
            // partition has a leader again): parked requests get closed,
            // so the clients look for the coordinator again.
            for w in self.groups.unload(p) {
                let conn = ConnId(w);
                if self.parked_group.remove(&conn).is_some() {
                    self.group_completions.push((
                        conn,
                        FrameOutcome::Close(format!(
                            "this broker stopped leading partition {p} of {OFFSETS_TOPIC}"
                        )),
                    ));
                }
            }
        }
        self.load_offsets_partitions();
    }

    /// Forgets a topic gone from the image and removes its files. A
    /// failure to remove leaves files behind but never serves them: the
    /// topic is gone from the broker either way.
    fn drop_topic_files(&mut self, name: &str) {
        let Some(t) = self.topics.remove(name) else {
            return;
        };
        self.by_id.remove(&t.id);
        let count = t.partitions.len() as i32;
        drop(t);
        let mut fx = crate::group::Effects::default();
        self.groups.topic_deleted(name, &mut fx);
        let others = self.apply_group_effects(fx);
        self.group_completions.extend(others);
        self.remove_files(name, count);
        if let Some(c) = self.cluster.as_mut() {
            c.known.remove(name);
        }
    }

    /// Records in the topic file every topic whose files may be on this
    /// disk: the image's, and those known before that still await
    /// [`Broker::remove_strays`] (marked deleting). Best effort: a failed
    /// write can leave a later deletion's files behind, never serve them.
    fn record_known(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let mut merged = self.meta.topics.clone();
        for (n, k) in &c.known {
            if !merged.contains_key(n) {
                let mut k = k.clone();
                k.deleting = true;
                merged.insert(n.clone(), k);
            }
        }
        if same_topics(&c.known, &merged) {
            return;
        }
        let mut m = self.meta.clone();
        m.topics = merged.clone();
        let written = m.store(&self.disk, &self.config.data_dir).is_ok();
        // The generation moved whether or not the write went through.
        self.meta.generation = m.generation;
        if let (true, Some(c)) = (written, self.cluster.as_mut()) {
            c.known = merged;
        }
    }

    fn remove_files(&self, name: &str, partitions: i32) {
        for p in 0..partitions {
            let dir = meta::partition_dir(&self.config.data_dir, name, p);
            let _ = remove_dir_files(&self.disk, &dir);
        }
    }

    // ---- answers from the image ----------------------------------------

    fn image_brokers(&self) -> Vec<(i32, String, i32, Option<String>)> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        c.image
            .live_brokers()
            .map(|b| {
                let (host, port) = b
                    .endpoints
                    .first()
                    .map_or((String::new(), -1), |e| (e.host.clone(), i32::from(e.port)));
                (b.id, host, port, b.rack.clone())
            })
            .collect()
    }

    /// Where broker `id` is reached, if it is registered and live.
    pub(crate) fn broker_address(&self, id: i32) -> Option<(String, i32)> {
        self.image_brokers()
            .into_iter()
            .find(|b| b.0 == id)
            .map(|b| (b.1, b.2))
    }

    pub(crate) fn cluster_metadata(
        &mut self,
        ctx: &Ctx,
        req: &MetadataRequest,
    ) -> MetadataResponse {
        let all = req.topics.is_none()
            || (ctx.version == 0 && req.topics.as_ref().is_some_and(Vec::is_empty));
        let allow =
            self.config.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
        let image = match self.cluster.as_ref() {
            Some(c) => c.image.clone(),
            None => return MetadataResponse::default(),
        };
        let mut topics = Vec::new();
        if all {
            for t in image.topics.values() {
                topics.push(self.image_topic(&image, &t.name));
            }
        } else {
            for t in req.topics.iter().flatten() {
                match &t.name {
                    Some(name) => {
                        let name = name.0.to_string();
                        if image.topic(&name).is_none()
                            && allow
                            && meta::validate_topic_name(&name).is_ok()
                            && !super::is_internal(&name)
                        {
                            let (n, rf) = (
                                self.config.num_partitions.max(1),
                                self.config.default_replication_factor,
                            );
                            self.auto_create_in_cluster(&name, n, rf, BTreeMap::new(), ctx.now);
                            // Kafka's answer while a topic is being made:
                            // the client asks again.
                            topics.push(
                                MetadataResponseTopic::default()
                                    .with_name(Some(topic_name(&name)))
                                    .with_error_code(error::LEADER_NOT_AVAILABLE),
                            );
                            continue;
                        }
                        topics.push(self.image_topic(&image, &name));
                    }
                    None => match image.topics.get(&t.topic_id.as_u128()) {
                        Some(ti) => topics.push(self.image_topic(&image, &ti.name)),
                        None => topics.push(
                            MetadataResponseTopic::default()
                                .with_topic_id(t.topic_id)
                                .with_error_code(error::UNKNOWN_TOPIC_ID),
                        ),
                    },
                }
            }
        }
        let brokers = self
            .image_brokers()
            .into_iter()
            .map(|(id, host, port, rack)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_rack(rack.as_deref().map(str_bytes))
            })
            .collect();
        let controller = self.cluster.as_ref().and_then(|c| c.controller);
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(str_bytes(&self.config.cluster_id)))
            .with_controller_id(BrokerId(controller.unwrap_or(-1)))
            .with_topics(topics)
    }

    fn image_topic(&self, image: &MetadataImage, name: &str) -> MetadataResponseTopic {
        let Some(ti) = image.topic(name) else {
            let code = if meta::validate_topic_name(name).is_err() {
                error::INVALID_TOPIC_EXCEPTION
            } else {
                error::UNKNOWN_TOPIC_OR_PARTITION
            };
            return MetadataResponseTopic::default()
                .with_name(Some(topic_name(name)))
                .with_error_code(code);
        };
        let me = self.config.node_id;
        let live = |id: &i32| image.brokers.get(id).is_some_and(|b| !b.fenced);
        let partitions = ti
            .partitions
            .values()
            .map(|p| {
                // A partition this broker leads but cannot serve from its
                // disk is reported offline, as on a single node.
                let local_offline = p.leader == me
                    && self
                        .partition(name, p.partition)
                        .is_none_or(|part| part.log().is_err());
                let code = if p.leader == -1 {
                    error::LEADER_NOT_AVAILABLE
                } else if local_offline {
                    error::KAFKA_STORAGE_ERROR
                } else {
                    error::NONE
                };
                let offline: Vec<i32> = p.replicas.iter().copied().filter(|r| !live(r)).collect();
                MetadataResponsePartition::default()
                    .with_partition_index(p.partition)
                    .with_error_code(code)
                    .with_leader_id(BrokerId(p.leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr))
                    .with_offline_replicas(ids(&offline))
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_topic_id(uuid(ti.id))
            .with_is_internal(name.starts_with("__"))
            .with_partitions(partitions)
    }

    pub(crate) fn cluster_describe(&self) -> DescribeClusterResponse {
        let controller = self.cluster.as_ref().and_then(|c| c.controller);
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(&self.config.cluster_id))
            .with_controller_id(BrokerId(controller.unwrap_or(-1)))
            .with_endpoint_type(1)
            .with_cluster_authorized_operations(i32::MIN)
            .with_brokers(
                self.image_brokers()
                    .into_iter()
                    .map(|(id, host, port, rack)| {
                        DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(id))
                            .with_host(str_bytes(&host))
                            .with_port(port)
                            .with_rack(rack.as_deref().map(str_bytes))
                    })
                    .collect(),
            )
    }

    /// Removes the files of topics this disk held that the image no
    /// longer has: topics deleted while the broker was down. Only sound
    /// once the image has caught up to this broker's own registration
    /// (every deletion before its start is then in it). Returns the
    /// topics removed.
    pub fn remove_strays(&mut self) -> Vec<String> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let strays: Vec<TopicMeta> = c
            .known
            .values()
            .filter(|k| c.image.topic(&k.name).is_none_or(|t| t.id != k.id))
            .filter(|k| self.topics.get(&k.name).is_none_or(|t| t.id != k.id))
            .cloned()
            .collect();
        for k in &strays {
            self.remove_files(&k.name, k.partitions);
        }
        let names: Vec<String> = strays.into_iter().map(|k| k.name).collect();
        if let Some(c) = self.cluster.as_mut() {
            for n in &names {
                c.known.remove(n);
            }
        }
        self.record_known();
        names
    }
}

fn same_topics(a: &BTreeMap<String, TopicMeta>, b: &BTreeMap<String, TopicMeta>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((n1, t1), (n2, t2))| {
            n1 == n2 && t1.id == t2.id && t1.partitions == t2.partitions
        })
}

/// The `problem` of a partition this broker holds no replica of.
const NOT_A_REPLICA: &str = "this broker holds no replica of the partition";

fn placeholder<D: Disk>() -> Partition<D> {
    Partition {
        log: None,
        problem: Some(NOT_A_REPLICA.to_string()),
        producers: Default::default(),
        leading: false,
        leader_epoch: -1,
    }
}
