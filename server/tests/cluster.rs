//! Real processes: three `odradek server` nodes, each broker and controller,
//! on 127.0.0.1. The quorum leader is killed with SIGKILL; a new leader
//! must be elected, Metadata must list exactly the brokers still alive,
//! and topics must still be created. Then the killed node comes back and
//! rejoins. Also: `odradek dev` starts a cluster and stops it on SIGINT,
//! and a node refuses another cluster's data directory.
//!
//! Requests are encoded with the `kafka-protocol` crate, not the broker's
//! own code. The waits are generous (a loaded 2-core CI machine); each is a
//! poll until the condition holds, so a healthy run takes seconds.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

const WAIT: Duration = Duration::from_secs(60);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Bound all at once so that they differ; released just before use.
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `n` consecutive free ports.
fn free_block(n: u16) -> u16 {
    loop {
        let base = free_ports(1)[0];
        if base > 65535 - n {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return base;
        }
    }
}

fn call<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    port: u16,
    key: ApiKey,
    version: i16,
    body: &Req,
) -> Result<Resp, String> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("odradek-cluster-test")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, Req::header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    s.write_all(&frame).map_err(|e| e.to_string())?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).map_err(|e| e.to_string())?;
    let mut body = vec![0; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let mut b = Bytes::from(body);
    let h =
        ResponseHeader::decode(&mut b, Resp::header_version(version)).map_err(|e| e.to_string())?;
    assert_eq!(h.correlation_id, 7);
    let r = Resp::decode(&mut b, version).map_err(|e| e.to_string())?;
    assert!(!b.has_remaining());
    Ok(r)
}

fn metadata(port: u16, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
    let req = MetadataRequest::default()
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(false);
    call(port, ApiKey::Metadata, 12, &req)
}

fn brokers(m: &MetadataResponse) -> BTreeSet<i32> {
    m.brokers.iter().map(|b| b.node_id.0).collect()
}

fn create_topic(port: u16, name: &str, partitions: i32) -> Result<CreateTopicsResponse, String> {
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(30_000);
    call(port, ApiKey::CreateTopics, 7, &req)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `WAIT`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    brokers: Vec<u16>,
    voters: String,
    controllers: Vec<u16>,
    nodes: Vec<Option<Proc>>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let ports = free_ports(2 * n);
        let brokers = ports[..n].to_vec();
        let controllers = ports[n..].to_vec();
        let voters: Vec<String> = controllers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            brokers,
            voters: voters.join(","),
            controllers,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let p = c.spawn(i + 1);
            c.nodes.push(Some(p));
        }
        c
    }

    fn spawn(&self, id: usize) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("node-{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_odradek"))
            .args([
                "server",
                "--node-id",
                &id.to_string(),
                "--process-roles",
                "broker,controller",
                "--controller-quorum-voters",
                &self.voters,
                "--listeners",
                &format!(
                    "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    self.brokers[id - 1],
                    self.controllers[id - 1]
                ),
                "--cluster-id",
                "odradek-cluster-test",
                "--log-dirs",
            ])
            .arg(self.dir.path().join(format!("node-{id}")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.brokers.len() {
            let path = self.dir.path().join(format!("node-{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!(
                "--- node {i} (last lines, newest first)\n{}\n",
                tail.join("\n")
            ));
        }
        all
    }

    /// Metadata from node `id`'s broker once it lists exactly `want` and
    /// names a controller among them.
    fn settled(&self, id: usize, want: &BTreeSet<i32>) -> MetadataResponse {
        let port = self.brokers[id - 1];
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(m) = metadata(port, None) {
                if &brokers(&m) == want && want.contains(&m.controller_id.0) {
                    return m;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node {id} never listed brokers {want:?} with a controller among them: {:?}\n{}",
                    metadata(port, None).map(|m| (brokers(&m), m.controller_id.0)),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn three_processes_survive_a_sigkill_of_the_quorum_leader() {
    let mut c = Cluster::start(3);
    let all: BTreeSet<i32> = [1, 2, 3].into();
    let mut leader = 0;
    for id in 1..=3 {
        leader = c.settled(id, &all).controller_id.0;
    }
    // Every node names the same controller.
    for id in 1..=3 {
        assert_eq!(c.settled(id, &all).controller_id.0, leader);
    }
    let created = create_topic(c.brokers[0], "before", 3).unwrap();
    assert_eq!(created.topics[0].error_code, 0, "{created:?}\n{}", c.logs());

    // SIGKILL: no shutdown, no goodbye to the quorum.
    let mut killed = c.nodes[leader as usize - 1].take().unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let alive: BTreeSet<i32> = all.iter().copied().filter(|b| *b != leader).collect();
    let mut new_leader = 0;
    for &id in &alive {
        let m = c.settled(id as usize, &alive);
        assert_ne!(m.controller_id.0, leader);
        new_leader = m.controller_id.0;
    }
    for &id in &alive {
        assert_eq!(c.settled(id as usize, &alive).controller_id.0, new_leader);
    }

    // Topic creation through the broker that is not the controller, so the
    // request is forwarded.
    let via = *alive.iter().find(|b| **b != new_leader).unwrap();
    let port = c.brokers[via as usize - 1];
    let created = wait_for("CreateTopics after the failover", || {
        create_topic(port, "after", 4)
            .ok()
            .filter(|r| r.topics[0].error_code == 0)
    });
    assert_eq!(created.topics[0].num_partitions, 4);
    // Every live broker sees it, every partition led by a live broker.
    for &id in &alive {
        let port = c.brokers[id as usize - 1];
        let m = wait_for("the new topic's metadata", || {
            metadata(port, Some(&["after", "before"]))
                .ok()
                .filter(|m| m.topics.iter().all(|t| t.error_code == 0))
        });
        let after = m
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "after"))
            .unwrap();
        assert_eq!(after.partitions.len(), 4);
        for p in &after.partitions {
            assert!(alive.contains(&p.leader_id.0), "{p:?}");
        }
    }
    // The name is taken now, whichever broker is asked.
    let again = create_topic(c.brokers[new_leader as usize - 1], "after", 1).unwrap();
    assert_eq!(again.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");

    // The killed node comes back with its data and rejoins.
    c.nodes[leader as usize - 1] = Some(c.spawn(leader as usize));
    for id in 1..=3 {
        c.settled(id, &all);
    }
    let m = wait_for("the returning node to see both topics", || {
        metadata(c.brokers[leader as usize - 1], Some(&["after", "before"]))
            .ok()
            .filter(|m| m.topics.iter().all(|t| t.error_code == 0))
    });
    assert_eq!(m.topics.len(), 2);
}

#[test]
fn a_node_refuses_another_clusters_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let run = |cluster: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_odradek"))
            .args([
                "server",
                "--node-id",
                "1",
                "--process-roles",
                "broker,controller",
                "--controller-quorum-voters",
                &format!("1@127.0.0.1:{}", ports[1]),
                "--listeners",
                &format!("PLAINTEXT://127.0.0.1:{}", ports[0]),
                "--cluster-id",
                cluster,
                "--log-dirs",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child_until_ready_or_exit(child_wrap(out))
    };
    // First start formats the directory for cluster "first".
    let (mut first, ready) = run("first");
    assert!(ready, "the first start did not come up");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(first.0.id().to_string())
        .status();
    assert!(first.0.wait().unwrap().success());
    let (mut second, ready) = run("second");
    assert!(!ready);
    let status = second.0.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("\"first\"") && err.contains("\"second\""),
        "the refusal should name both clusters: {err}"
    );
    assert!(Path::new(&dir.path().join("meta.properties")).exists());
}

fn child_wrap(c: Child) -> Proc {
    Proc(c)
}

/// Reads the node's banner until its data directory line (it is up) or
/// the end of its output (it exited).
fn child_until_ready_or_exit(mut p: Proc) -> (Proc, bool) {
    let out = p.0.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if line.starts_with("data dir:") {
            ready = true;
            break;
        }
    }
    (p, ready)
}

#[test]
fn odradek_dev_starts_three_nodes_and_stops_them_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let broker_base = free_block(3);
    let controller_base = free_block(3);
    let mut dev = Proc(
        Command::new(env!("CARGO_BIN_EXE_odradek"))
            .args([
                "dev",
                "--nodes",
                "3",
                "--broker-port",
                &broker_base.to_string(),
                "--controller-port",
                &controller_base.to_string(),
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = BufReader::new(dev.0.stdout.take().unwrap());
    let mut lines = out.lines();
    let mut pids = Vec::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("node ") {
            if let Some((_, after)) = rest.split_once(": pid ") {
                pids.push(after.split(',').next().unwrap().to_string());
            }
        }
        if line.contains("brokers accept connections") {
            break;
        }
        assert!(Instant::now() < deadline, "dev never came up: {seen:?}");
    }
    assert_eq!(pids.len(), 3, "{seen:?}");
    let m = wait_for("the dev cluster's three brokers", || {
        metadata(broker_base, None)
            .ok()
            .filter(|m| brokers(m) == [1, 2, 3].into())
    });
    assert!(m
        .brokers
        .iter()
        .any(|b| b.node_id == BrokerId(2) && b.port == i32::from(broker_base + 1)));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(dev.0.id().to_string())
        .status();
    let status = dev.0.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "node pid {pid} still runs after dev stopped"
        );
    }
}

#[test]
fn a_controller_only_node_and_two_broker_only_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let voters = format!("1@127.0.0.1:{}", ports[0]);
    let start = |id: &str, roles: &str, listeners: String| {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_odradek"))
                .args([
                    "server",
                    "--node-id",
                    id,
                    "--process-roles",
                    roles,
                    "--controller-quorum-voters",
                    &voters,
                    "--listeners",
                    &listeners,
                    "--cluster-id",
                    "roles-test",
                    "--log-dirs",
                ])
                .arg(dir.path().join(id))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _controller = start(
        "1",
        "controller",
        format!("CONTROLLER://127.0.0.1:{}", ports[0]),
    );
    let _b4 = start("4", "broker", format!("PLAINTEXT://127.0.0.1:{}", ports[1]));
    let _b5 = start("5", "broker", format!("PLAINTEXT://127.0.0.1:{}", ports[2]));
    for port in [ports[1], ports[2]] {
        wait_for("both brokers in Metadata", || {
            metadata(port, None)
                .ok()
                .filter(|m| brokers(m) == [4, 5].into())
        });
    }
    // The controller serves no clients: it has no Kafka listener at all.
    let created = wait_for("CreateTopics through a broker-only node", || {
        create_topic(ports[2], "split", 2)
            .ok()
            .filter(|r| r.topics[0].error_code == 0)
    });
    assert_eq!(created.topics[0].num_partitions, 2);
    let m = wait_for("the topic on the other broker", || {
        metadata(ports[1], Some(&["split"]))
            .ok()
            .filter(|m| m.topics[0].error_code == 0)
    });
    let leaders: BTreeSet<i32> = m.topics[0]
        .partitions
        .iter()
        .map(|p| p.leader_id.0)
        .collect();
    assert!(leaders.is_subset(&[4, 5].into()), "{leaders:?}");
}
