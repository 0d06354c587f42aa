//! Whole nodes on an in-process network with a manual clock: three
//! combined nodes, or three controllers with broker-only nodes. Messages
//! travel encoded, every node is polled every 10 ms, and Kafka requests
//! are framed as a client frames them.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::io::clock::ManualClock;
use crate::io::disk::mem::MemDisk;
use crate::kafka::error;
use crate::kafka::tests::{request, response};
use crate::storage::batch::{self, BatchBuilder};

const COMBINED: Roles = Roles {
    broker: true,
    controller: true,
};
const CONTROLLER: Roles = Roles {
    broker: false,
    controller: true,
};
const BROKER: Roles = Roles {
    broker: true,
    controller: false,
};

struct Cluster {
    nodes: BTreeMap<i32, Node<MemDisk>>,
    disks: BTreeMap<i32, MemDisk>,
    roles: BTreeMap<i32, Roles>,
    voters: Vec<i32>,
    clock: ManualClock,
    rng: ChaCha8Rng,
    /// Completions polls returned, by node.
    done: Vec<(i32, Completion)>,
    starts: u64,
    next_cid: i32,
    snapshot_every: u64,
}

impl Cluster {
    fn new(roles: &[(i32, Roles)], snapshot_every: u64) -> Cluster {
        let voters = roles
            .iter()
            .filter(|(_, r)| r.controller)
            .map(|(id, _)| *id)
            .collect();
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            roles: roles.iter().copied().collect(),
            voters,
            clock: ManualClock {
                now: Instant::from_millis(1),
                wall_ms: 1_700_000_000_000,
            },
            rng: ChaCha8Rng::seed_from_u64(11),
            done: Vec::new(),
            starts: 0,
            next_cid: 0,
            snapshot_every,
        };
        for (id, _) in roles {
            c.disks.insert(*id, MemDisk::new());
            c.start(*id);
        }
        c
    }

    fn combined() -> Cluster {
        Cluster::new(&[(1, COMBINED), (2, COMBINED), (3, COMBINED)], 1_000)
    }

    fn config(&mut self, id: i32) -> NodeConfig {
        let mut c = NodeConfig::new(
            id,
            self.roles[&id],
            self.voters.clone(),
            "cluster-t",
            "data",
        );
        c.broker.advertised_host = format!("node{id}.test");
        c.broker.advertised_port = 9090 + id;
        c.broker.rack = Some(format!("rack-{}", id % 2));
        c.broker.offsets_topic_num_partitions = 3;
        // A new process, a new incarnation.
        self.starts += 1;
        c.broker.incarnation = self.starts.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        c.quorum.snapshot_every = self.snapshot_every;
        c
    }

    fn start(&mut self, id: i32) {
        let config = self.config(id);
        let disk = self.disks[&id].clone();
        let node = Node::open(disk, config, &self.clock, &mut self.rng).unwrap();
        self.nodes.insert(id, node);
    }

    /// Drops a node as a crash would (its disk stays, with what it wrote).
    fn kill(&mut self, id: i32) {
        self.nodes.remove(&id);
    }

    fn deliver(&mut self) {
        for _ in 0..1_000 {
            let mut msgs = Vec::new();
            for (id, n) in self.nodes.iter_mut() {
                for (to, payload) in n.take_peer_messages() {
                    msgs.push((*id, to, payload));
                }
            }
            if msgs.is_empty() {
                return;
            }
            for (from, to, payload) in msgs {
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.step_peer(from, &payload, &self.clock, &mut self.rng);
                }
            }
        }
        panic!("messages kept flowing without time passing");
    }

    /// Lets `ms` pass in 10 ms steps, polling every node and delivering
    /// every message after each step.
    fn run(&mut self, ms: u64) {
        let end = self.clock.now.plus_millis(ms);
        loop {
            self.deliver();
            for (id, n) in self.nodes.iter_mut() {
                for c in n.poll(&self.clock, &mut self.rng) {
                    self.done.push((*id, c));
                }
            }
            self.deliver();
            if self.clock.now >= end {
                return;
            }
            self.clock.advance_millis(10);
        }
    }

    fn send<T: Encodable>(
        &mut self,
        node: i32,
        conn: ConnId,
        key: ApiKey,
        version: i16,
        body: &T,
    ) -> FrameOutcome {
        self.next_cid += 1;
        let frame = request(key, version, self.next_cid, body);
        let n = self.nodes.get_mut(&node).unwrap();
        n.handle_frame(conn, &frame, &self.clock, &mut self.rng)
    }

    /// A request and its answer, waiting (up to 40 simulated seconds) for
    /// one that comes later.
    fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        node: i32,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let conn = ConnId(1_000 + self.next_cid as u64);
        let mut out = self.send(node, conn, key, version, body);
        let mut waited = 0;
        while out == FrameOutcome::Pending {
            assert!(waited < 40_000, "{key:?} to node {node} never answered");
            self.run(10);
            waited += 10;
            if let Some(i) = self
                .done
                .iter()
                .position(|(n, c)| *n == node && c.conn == conn)
            {
                out = self.done.remove(i).1.outcome;
            }
        }
        let (cid, resp) = response(key, version, out);
        assert_eq!(cid, self.next_cid);
        resp
    }

    fn metadata(&mut self, node: i32, topics: Option<&[&str]>) -> MetadataResponse {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        self.call(node, ApiKey::Metadata, 12, &req)
    }

    fn brokers(&mut self, node: i32) -> Vec<i32> {
        let m = self.metadata(node, None);
        m.brokers.iter().map(|b| b.node_id.0).collect()
    }

    fn create(&mut self, node: i32, name: &str, partitions: i32, rf: i16) -> i16 {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(rf)]);
        let resp: CreateTopicsResponse = self.call(node, ApiKey::CreateTopics, 7, &req);
        resp.topics[0].error_code
    }

    fn leader(&self) -> Option<i32> {
        let ls: BTreeSet<i32> = self
            .nodes
            .values()
            .filter(|n| n.status().is_controller)
            .map(|n| n.config.node_id)
            .collect();
        assert!(ls.len() <= 1, "two active controllers: {ls:?}");
        ls.into_iter().next()
    }

    fn offsets(&self) -> BTreeMap<i32, i64> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.status().image_offset))
            .collect()
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A partition as Metadata shows it: index, leader, replicas, ISR, error.
type PartitionView = (i32, i32, Vec<i32>, Vec<i32>, i16);

fn partitions_of(m: &MetadataResponse, topic: &str) -> Vec<PartitionView> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .unwrap_or_else(|| panic!("{topic} not in metadata"));
    assert_eq!(t.error_code, 0, "{topic}: error {}", t.error_code);
    t.partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                p.leader_id.0,
                p.replica_nodes.iter().map(|b| b.0).collect(),
                p.isr_nodes.iter().map(|b| b.0).collect(),
                p.error_code,
            )
        })
        .collect()
}

#[test]
fn combined_nodes_elect_a_controller_and_list_every_broker() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let leader = c.leader().expect("a controller after 3 s");
    for id in 1..=3 {
        let m = c.metadata(id, None);
        let brokers: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
        assert_eq!(brokers, vec![1, 2, 3], "node {id}");
        assert_eq!(m.controller_id.0, leader, "node {id}");
        let b2 = m.brokers.iter().find(|b| b.node_id.0 == 2).unwrap();
        assert_eq!((b2.host.as_str(), b2.port), ("node2.test", 9092));
        assert_eq!(b2.rack.as_ref().map(|r| r.as_str()), Some("rack-0"));
        let s = c.nodes[&id].status();
        assert!(s.broker_epoch.is_some() && !s.fenced, "node {id}: {s:?}");
        let d: DescribeClusterResponse = c.call(
            id,
            ApiKey::DescribeCluster,
            1,
            &DescribeClusterRequest::default(),
        );
        assert_eq!(d.controller_id.0, leader);
        assert_eq!(d.brokers.len(), 3);
    }
    let offsets = c.offsets();
    assert!(
        offsets.values().all(|o| *o == offsets[&1]),
        "images differ: {offsets:?}"
    );
    // Every Metadata version encodes from the image.
    for v in 0..=12 {
        let req = MetadataRequest::default().with_topics(if v == 0 { Some(vec![]) } else { None });
        let m: MetadataResponse = c.call(2, ApiKey::Metadata, v, &req);
        assert_eq!(m.brokers.len(), 3, "v{v}");
    }
}

#[test]
fn metadata_auto_creates_through_the_controller() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("auto")))
        ]))
        .with_allow_auto_topic_creation(true);
    let m: MetadataResponse = c.call(3, ApiKey::Metadata, 12, &req);
    assert_eq!(m.topics[0].error_code, error::LEADER_NOT_AVAILABLE);
    c.run(300);
    for id in 1..=3 {
        let m = c.metadata(id, Some(&["auto"]));
        let ps = partitions_of(&m, "auto");
        assert_eq!(ps.len(), 1);
        assert!(ps[0].1 >= 1);
    }
}

#[test]
fn forwarded_requests_time_out_without_a_quorum() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let leader = c.leader().unwrap();
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    for id in 1..=3 {
        if id != survivor {
            c.kill(id);
        }
    }
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(2_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name("never"))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let start = c.clock.now;
    let resp: CreateTopicsResponse = c.call(survivor, ApiKey::CreateTopics, 7, &req);
    assert_eq!(resp.topics[0].error_code, error::REQUEST_TIMED_OUT);
    let waited = c.clock.now.as_millis() - start.as_millis();
    assert!(
        (2_000..3_000).contains(&waited),
        "answered after {waited} ms"
    );
    assert!(c.nodes[&survivor].image().topic("never").is_none());
}

#[test]
fn create_topics_through_a_non_controller_reaches_every_node() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let leader = c.leader().unwrap();
    let other = (1..=3).find(|i| *i != leader).unwrap();
    // validate_only creates nothing.
    let req = CreateTopicsRequest::default()
        .with_validate_only(true)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name("t"))
            .with_num_partitions(6)
            .with_replication_factor(3)]);
    let resp: CreateTopicsResponse = c.call(other, ApiKey::CreateTopics, 7, &req);
    assert_eq!(resp.topics[0].error_code, 0);
    c.run(500);
    let m = c.metadata(leader, Some(&["t"]));
    assert_eq!(m.topics[0].error_code, error::UNKNOWN_TOPIC_OR_PARTITION);
    // Too many replicas for three brokers: refused before anything is sent.
    assert_eq!(
        c.create(other, "t", 6, 4),
        error::INVALID_REPLICATION_FACTOR
    );

    assert_eq!(c.create(other, "t", 6, 3), 0);
    assert_eq!(c.create(other, "t", 6, 3), error::TOPIC_ALREADY_EXISTS);
    c.run(500);
    let mut seen = None;
    for id in 1..=3 {
        let m = c.metadata(id, None);
        let ps = partitions_of(&m, "t");
        assert_eq!(ps.len(), 6);
        for (_, leader, replicas, isr, code) in &ps {
            assert_eq!(*code, 0);
            assert_eq!(replicas.len(), 3);
            assert!(replicas.contains(leader));
            // No replication yet: a new partition's ISR is its leader.
            assert_eq!(isr, &vec![*leader]);
        }
        let leaders: BTreeSet<i32> = ps.iter().map(|p| p.1).collect();
        assert!(leaders.len() > 1, "every partition led by one broker");
        match &seen {
            None => seen = Some(ps),
            Some(s) => assert_eq!(s, &ps, "node {id} disagrees"),
        }
    }
    // The leader of each partition opened its log, the others did not
    // need to serve it.
    let ps = seen.unwrap();
    for (p, leader, _, _, _) in &ps {
        let b = c.nodes[leader].broker().unwrap();
        assert!(b.topic_names().contains(&"t".to_string()));
        let dir = format!("data/t-{p}");
        assert!(c.disks[leader].list(&dir).is_ok(), "{dir} on {leader}");
    }
    // Deletion goes through the controller too, and the files go.
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topic_names(vec![topic_name("t")]);
    let resp: DeleteTopicsResponse = c.call(other, ApiKey::DeleteTopics, 4, &req);
    assert_eq!(resp.responses[0].error_code, 0);
    c.run(500);
    for id in 1..=3 {
        let m = c.metadata(id, Some(&["t"]));
        assert_eq!(m.topics[0].error_code, error::UNKNOWN_TOPIC_OR_PARTITION);
        assert!(c.disks[&id]
            .list("data/t-0")
            .map_or(true, |files| files.is_empty()));
    }
}

#[test]
fn configs_and_partitions_are_changed_through_the_controller() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let leader = c.leader().unwrap();
    let other = (1..=3).find(|i| *i != leader).unwrap();
    assert_eq!(c.create(other, "cfg", 2, 1), 0);
    c.run(300);
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("cfg"))
            .with_configs(vec![
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str("12345"))),
            ]),
    ]);
    let resp: IncrementalAlterConfigsResponse =
        c.call(other, ApiKey::IncrementalAlterConfigs, 1, &req);
    assert_eq!(resp.responses[0].error_code, 0);
    c.run(300);
    for id in 1..=3 {
        let img = c.nodes[&id].image().clone();
        let cfg = img
            .configs
            .get(&crate::metadata::ConfigResource::Topic("cfg".into()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(cfg.get("retention.ms").map(String::as_str), Some("12345"));
    }
    let req = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(topic_name("cfg"))
                .with_count(5),
        ]);
    let resp: CreatePartitionsResponse = c.call(other, ApiKey::CreatePartitions, 3, &req);
    assert_eq!(resp.results[0].error_code, 0);
    c.run(300);
    let m = c.metadata(leader, None);
    assert_eq!(partitions_of(&m, "cfg").len(), 5);
}

#[test]
fn losing_the_quorum_leader_fences_its_broker_and_it_catches_up_on_return() {
    let mut c = Cluster::combined();
    c.run(3_000);
    assert_eq!(c.create(1, "before", 6, 3), 0);
    c.run(500);
    let dead = c.leader().unwrap();
    let m = c.metadata(1, None);
    let led_before: BTreeMap<i32, i32> = partitions_of(&m, "before")
        .into_iter()
        .map(|p| (p.0, p.1))
        .collect();
    let (&dead_p, _) = led_before
        .iter()
        .find(|(_, l)| **l == dead)
        .expect("a partition led by the controller's node");
    let resp: ProduceResponse = c.call(
        dead,
        ApiKey::Produce,
        9,
        &produce("before", dead_p, &["kept"]),
    );
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    c.kill(dead);
    // A new controller, and the dead broker's session runs out.
    c.run(12_000);
    let leader = c.leader().expect("a new controller");
    assert_ne!(leader, dead);
    let alive: Vec<i32> = (1..=3).filter(|i| *i != dead).collect();
    for id in &alive {
        assert_eq!(c.brokers(*id), alive, "node {id}");
        let m = c.metadata(*id, None);
        assert_eq!(m.controller_id.0, leader);
        for (p, l, _, isr, code) in partitions_of(&m, "before") {
            if led_before[&p] == dead {
                // Its only in-sync replica is gone (the others hold none
                // of its records): no leader until it returns.
                assert_eq!((l, code), (-1, error::LEADER_NOT_AVAILABLE));
                assert_eq!(isr, vec![dead]);
            } else {
                assert_eq!((l, code), (led_before[&p], 0));
            }
        }
    }
    assert_eq!(c.create(alive[0], "after", 4, 2), 0);
    c.run(500);
    let m = c.metadata(alive[1], None);
    for (_, l, replicas, _, _) in partitions_of(&m, "after") {
        assert!(!replicas.contains(&dead) && alive.contains(&l));
    }
    // The node comes back with its disk and catches up.
    c.start(dead);
    c.run(5_000);
    let offsets = c.offsets();
    assert!(
        offsets.values().all(|o| *o == offsets[&leader]),
        "images differ after the restart: {offsets:?}"
    );
    for id in 1..=3 {
        assert_eq!(c.brokers(id), vec![1, 2, 3], "node {id}");
        let m = c.metadata(id, None);
        for (p, l, _, _, code) in partitions_of(&m, "before") {
            assert_eq!((l, code), (led_before[&p], 0), "partition {p}");
        }
    }
    // What it acknowledged before the crash is served again.
    let m = c.metadata(dead, None);
    let epoch = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "before"))
        .unwrap()
        .partitions[dead_p as usize]
        .leader_epoch;
    assert!(epoch > 0, "leadership came back in a new epoch");
    let resp: FetchResponse = c.call(dead, ApiKey::Fetch, 12, &fetch("before", dead_p, epoch));
    let pd = &resp.responses[0].partitions[0];
    assert_eq!(pd.error_code, 0);
    assert_eq!(values(&pd.records), vec!["kept"]);
    for id in 1..=3 {
        let m = c.metadata(id, None);
        assert_eq!(partitions_of(&m, "after").len(), 4, "node {id}");
    }
}

#[test]
fn a_broker_only_node_catches_up_from_a_snapshot() {
    let mut c = Cluster::new(
        &[
            (1, CONTROLLER),
            (2, CONTROLLER),
            (3, CONTROLLER),
            (4, BROKER),
            (5, BROKER),
        ],
        5,
    );
    c.run(3_000);
    // Controllers are not brokers: only 4 and 5 are listed.
    assert_eq!(c.brokers(4), vec![4, 5]);
    // A topic on both brokers, deleted while node 5 is down: its files on
    // node 5 must go when it is back, though it never sees the deletion.
    assert_eq!(c.create(4, "doomed", 1, 2), 0);
    c.run(500);
    assert!(c.disks[&5]
        .list("data/doomed-0")
        .is_ok_and(|f| !f.is_empty()));
    assert!(c.nodes[&4].status().quorum_leader.is_some());
    // A controller-only node turns clients away.
    let frame = request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    let n1 = c.nodes.get_mut(&1).unwrap();
    assert!(matches!(
        n1.handle_frame(ConnId(9), &frame, &c.clock, &mut c.rng),
        FrameOutcome::Close(_)
    ));

    c.kill(5);
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topic_names(vec![topic_name("doomed")]);
    let resp: DeleteTopicsResponse = c.call(4, ApiKey::DeleteTopics, 4, &req);
    assert_eq!(resp.responses[0].error_code, 0);
    for i in 0..12 {
        assert_eq!(c.create(4, &format!("t{i}"), 1, 1), 0);
    }
    c.run(12_000);
    // Every voter has dropped the log prefix node 5 would need.
    for id in 1..=3 {
        let q = c.nodes[&id].quorum.as_ref().unwrap();
        assert!(q.raft().log_start_offset() > 5, "voter {id} kept its log");
    }
    assert_eq!(c.brokers(4), vec![4]);
    c.start(5);
    c.run(3_000);
    let want = c.nodes[&1].image().clone();
    for id in [4, 5] {
        let got = c.nodes[&id].image();
        assert_eq!(got.offset, want.offset, "node {id}");
        assert_eq!(got.topic_ids, want.topic_ids, "node {id}");
    }
    assert_eq!(c.brokers(5), vec![4, 5]);
    let m = c.metadata(5, None);
    assert_eq!(m.topics.len(), 12);
    assert!(c.disks[&5]
        .list("data/doomed-0")
        .map_or(true, |f| f.is_empty()));
}

fn produce(topic: &str, partition: i32, values: &[&str]) -> ProduceRequest {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for v in values {
        b = b.add(None, Some(v.as_bytes()), 1_700_000_000_000);
    }
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(b.build())))])])
}

fn fetch(topic: &str, partition: i32, epoch: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])])
}

fn values(records: &Option<Bytes>) -> Vec<String> {
    let mut out = Vec::new();
    for b in batch::Batches::new(records.as_deref().unwrap_or(&[])) {
        let b = b.unwrap();
        for r in batch::decode_records(b.bytes).unwrap() {
            out.push(String::from_utf8(r.value.unwrap()).unwrap());
        }
    }
    out
}

#[test]
fn produce_and_fetch_at_the_leader_only() {
    let mut c = Cluster::combined();
    c.run(3_000);
    assert_eq!(c.create(1, "p", 1, 3), 0);
    c.run(300);
    let m = c.metadata(2, None);
    let (_, leader, _, _, _) = partitions_of(&m, "p")[0].clone();
    let epoch = m.topics[0].partitions[0].leader_epoch;
    let other = (1..=3).find(|i| *i != leader).unwrap();

    let resp: ProduceResponse = c.call(leader, ApiKey::Produce, 9, &produce("p", 0, &["a", "b"]));
    let pr = &resp.responses[0].partition_responses[0];
    assert_eq!((pr.error_code, pr.base_offset), (0, 0));
    let resp: ProduceResponse = c.call(other, ApiKey::Produce, 9, &produce("p", 0, &["x"]));
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        error::NOT_LEADER_OR_FOLLOWER
    );

    let resp: FetchResponse = c.call(leader, ApiKey::Fetch, 12, &fetch("p", 0, epoch));
    let pd = &resp.responses[0].partitions[0];
    assert_eq!(pd.error_code, 0);
    assert_eq!(values(&pd.records), vec!["a", "b"]);
    assert_eq!(pd.high_watermark, 2);
    // The image's epoch is the one checked.
    let resp: FetchResponse = c.call(leader, ApiKey::Fetch, 12, &fetch("p", 0, epoch + 1));
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        error::UNKNOWN_LEADER_EPOCH
    );
    let resp: FetchResponse = c.call(other, ApiKey::Fetch, 12, &fetch("p", 0, -1));
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        error::NOT_LEADER_OR_FOLLOWER
    );
    // Producer ids come from the controller, in blocks: two brokers never
    // hand out the same.
    let mut pids = BTreeSet::new();
    for id in 1..=3 {
        let r: InitProducerIdResponse = c.call(
            id,
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_timeout_ms(60_000),
        );
        assert_eq!(r.error_code, 0);
        assert!(pids.insert(r.producer_id.0), "producer id handed out twice");
    }
}

#[test]
fn find_coordinator_points_at_the_offsets_partition_leader() {
    let mut c = Cluster::combined();
    c.run(3_000);
    let req = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![StrBytes::from_static_str("g")]);
    let first: FindCoordinatorResponse = c.call(1, ApiKey::FindCoordinator, 4, &req);
    assert_eq!(
        first.coordinators[0].error_code,
        error::COORDINATOR_NOT_AVAILABLE
    );
    c.run(500);
    let mut answers = BTreeSet::new();
    for id in 1..=3 {
        let r: FindCoordinatorResponse = c.call(id, ApiKey::FindCoordinator, 4, &req);
        let co = &r.coordinators[0];
        assert_eq!(co.error_code, 0, "node {id}");
        answers.insert((co.node_id.0, co.host.to_string(), co.port));
    }
    assert_eq!(answers.len(), 1, "nodes disagree: {answers:?}");
    let (coordinator, host, port) = answers.into_iter().next().unwrap();
    assert_eq!(host, format!("node{coordinator}.test"));
    assert_eq!(port, 9090 + coordinator);
    let m = c.metadata(1, Some(&[crate::kafka::OFFSETS_TOPIC]));
    let p = crate::group::partition_for("g", 3);
    assert_eq!(m.topics[0].partitions[p as usize].leader_id.0, coordinator);
    // Heartbeat to a broker that does not coordinate the group.
    let other = (1..=3).find(|i| *i != coordinator).unwrap();
    let hb = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let r: HeartbeatResponse = c.call(other, ApiKey::Heartbeat, 4, &hb);
    assert_eq!(r.error_code, error::NOT_COORDINATOR);
    let r: HeartbeatResponse = c.call(coordinator, ApiKey::Heartbeat, 4, &hb);
    assert_ne!(r.error_code, error::NOT_COORDINATOR);
}

#[test]
fn malformed_peer_payloads_are_dropped() {
    let mut c = Cluster::combined();
    c.run(2_000);
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![1, 1],
        vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 1],
        vec![7, 7, 7],
    ];
    let valid = rpc::encode_request(5, &Request::FetchMetadata { after: -1 });
    for cut in 0..valid.len() {
        junk.push(valid[..cut].to_vec());
    }
    let resp = rpc::encode_response(
        1,
        &Response::Metadata {
            leader: Some(1),
            update: MetadataUpdate::Snapshot(vec![0xff; 20]),
        },
    );
    junk.push(resp);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..300 {
        let mut b = vec![0u8; (rng.next_u32() % 64) as usize];
        rng.fill_bytes(&mut b);
        if let Some(first) = b.first_mut() {
            *first %= 2;
        }
        junk.push(b);
    }
    for p in &junk {
        for to in 1..=3 {
            for from in [1, 2, 3, 99, -1] {
                let n = c.nodes.get_mut(&to).unwrap();
                n.step_peer(from, p, &c.clock, &mut c.rng);
            }
        }
        c.deliver();
    }
    c.run(2_000);
    for id in 1..=3 {
        assert_eq!(c.brokers(id), vec![1, 2, 3]);
    }
    assert!(c.leader().is_some());
}
