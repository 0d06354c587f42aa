//! The Kafka listener from the outside: requests encoded with the
//! `kafka-protocol` crate (not with the broker's own code), bad input over
//! raw sockets, connection limits, shutdown, the `odradek server` binary, and
//! kcat as a real client. Everything listens on 127.0.0.1 port 0.

use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use odradek::broker_thread::{self, BrokerThread, SystemClock};
use odradek::disk::FsDisk;
use odradek::kafka_listener::{KafkaListener, ListenerConfig};
use odradek_core::kafka::{Broker, BrokerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
const WAIT: Duration = Duration::from_secs(5);

struct TestBroker {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
    thread: BrokerThread,
    _data: tempfile::TempDir,
}

impl TestBroker {
    async fn start(config: ListenerConfig) -> TestBroker {
        let listener = KafkaListener::bind(ListenerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        })
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = BrokerConfig::new(1, "");
        config.advertised_host = "127.0.0.1".to_string();
        config.advertised_port = i32::from(addr.port());
        config.cluster_id = "odradek-test".to_string();
        let clock = SystemClock::new();
        let data = tempfile::tempdir().unwrap();
        let disk = FsDisk::new(data.path().to_path_buf());
        let broker = Broker::open(disk, config, &clock).unwrap();
        let (handle, thread) = broker_thread::spawn(broker, clock).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(listener.serve(handle, stop_rx));
        TestBroker {
            addr,
            stop,
            task,
            thread,
            _data: data,
        }
    }

    async fn default() -> TestBroker {
        TestBroker::start(ListenerConfig::default()).await
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("listener stops promptly")
            .expect("listener task did not panic")
            .expect("listener ended without error");
        // The listener dropped its handles: the broker closes its logs.
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .unwrap()
            .expect("the broker shut down cleanly");
    }
}

/// A request frame, size prefix included.
fn request<R: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("odradek-test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    frame
}

fn api_versions_v3(correlation_id: i32) -> Vec<u8> {
    let body = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("odradek-test"))
        .with_client_software_version(StrBytes::from_static_str("0"));
    request(ApiKey::ApiVersions, 3, correlation_id, &body)
}

fn metadata_v12(correlation_id: i32) -> Vec<u8> {
    let body = MetadataRequest::default().with_topics(None);
    request(ApiKey::Metadata, 12, correlation_id, &body)
}

/// Decodes a response body (without the size) as `R` at `version`.
fn decode<R: Decodable + HeaderVersion>(frame: Bytes, version: i16) -> (ResponseHeader, R) {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, R::header_version(version)).unwrap();
    let body = R::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining(), "{} bytes left over", buf.remaining());
    (header, body)
}

async fn read_response(stream: &mut TcpStream) -> Bytes {
    tokio::time::timeout(WAIT, async {
        let size = stream.read_i32().await.expect("response size");
        assert!(size > 0, "response size {size}");
        let mut body = vec![0; size as usize];
        stream.read_exact(&mut body).await.expect("response body");
        Bytes::from(body)
    })
    .await
    .expect("response within the timeout")
}

fn assert_api_versions_ok(frame: Bytes, correlation_id: i32) {
    let (header, body) = decode::<ApiVersionsResponse>(frame, 3);
    assert_eq!(header.correlation_id, correlation_id);
    assert_eq!(body.error_code, 0);
    assert!(
        body.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version >= 3),
        "{body:?}"
    );
}

async fn api_versions_round_trip(addr: SocketAddr, correlation_id: i32) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&api_versions_v3(correlation_id))
        .await
        .unwrap();
    assert_api_versions_ok(read_response(&mut stream).await, correlation_id);
}

/// Reads until the server closes the connection, discarding what it sends;
/// panics if it is still open after [`WAIT`]. A reset counts as closed.
async fn assert_closed(stream: &mut TcpStream, what: &str) -> usize {
    let mut seen = 0;
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: connection still open after {WAIT:?}"
    );
    seen
}

#[tokio::test]
async fn api_versions_v3_is_answered() {
    let broker = TestBroker::default().await;
    api_versions_round_trip(broker.addr, 12345).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let broker = TestBroker::default().await;
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let mut both = api_versions_v3(1);
    both.extend_from_slice(&metadata_v12(2));
    stream.write_all(&both).await.unwrap();

    assert_api_versions_ok(read_response(&mut stream).await, 1);
    let (header, metadata) = decode::<MetadataResponse>(read_response(&mut stream).await, 12);
    assert_eq!(header.correlation_id, 2);
    assert_eq!(metadata.brokers.len(), 1, "{metadata:?}");
    let b = &metadata.brokers[0];
    assert_eq!(*b.node_id, 1);
    assert_eq!(b.host.as_str(), "127.0.0.1");
    assert_eq!(b.port, i32::from(broker.addr.port()));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelining_connections_each_get_their_own_responses_in_order() {
    let broker = TestBroker::default().await;
    let mut clients = Vec::new();
    for c in 0..8 {
        let addr = broker.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let ids: Vec<i32> = (0..100).map(|i| c * 1000 + i).collect();
            let mut all = Vec::new();
            for &id in &ids {
                all.extend_from_slice(&if id % 2 == 0 {
                    api_versions_v3(id)
                } else {
                    metadata_v12(id)
                });
            }
            stream.write_all(&all).await.unwrap();
            for &id in &ids {
                let frame = read_response(&mut stream).await;
                if id % 2 == 0 {
                    assert_api_versions_ok(frame, id);
                } else {
                    let (header, _) = decode::<MetadataResponse>(frame, 12);
                    assert_eq!(header.correlation_id, id);
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    broker.shutdown().await;
}

/// A deterministic stand-in for random bytes (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn bad_input_closes_the_connection_and_the_broker_keeps_serving() {
    let broker = TestBroker::default().await;

    let mut unknown_key = Vec::new();
    unknown_key.extend_from_slice(&9999i16.to_be_bytes()); // api key
    unknown_key.extend_from_slice(&0i16.to_be_bytes()); // api version
    unknown_key.extend_from_slice(&77i32.to_be_bytes()); // correlation id
    unknown_key.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    let mut unknown_key_frame = (unknown_key.len() as i32).to_be_bytes().to_vec();
    unknown_key_frame.extend_from_slice(&unknown_key);

    let mut sized_noise = 996i32.to_be_bytes().to_vec();
    sized_noise.extend_from_slice(&noise(7, 996));

    let mut truncated = 100i32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0; 10]);

    // (what, bytes, whether to close our side after sending)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("negative size", (-1i32).to_be_bytes().to_vec(), false),
        ("size 0", 0i32.to_be_bytes().to_vec(), false),
        (
            "size 0x7fffffff",
            0x7fff_ffffi32.to_be_bytes().to_vec(),
            false,
        ),
        ("3-byte frame then EOF", vec![0, 0, 0], true),
        ("truncated body then EOF", truncated, true),
        ("1000 random bytes", noise(42, 1000), true),
        ("random body with a valid size", sized_noise, true),
        ("unknown api key 9999", unknown_key_frame, false),
    ];
    for (what, bytes, half_close) in cases {
        let mut stream = TcpStream::connect(broker.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        if half_close {
            stream.shutdown().await.unwrap();
        }
        let answered = assert_closed(&mut stream, what).await;
        assert_eq!(answered, 0, "{what}: the broker answered garbage");
        // One bad client must not affect the next.
        api_versions_round_trip(broker.addr, 1).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let broker = TestBroker::start(ListenerConfig {
        connections_max_idle: Some(Duration::from_millis(200)),
        ..ListenerConfig::default()
    })
    .await;
    let start = Instant::now();
    let mut idle = TcpStream::connect(broker.addr).await.unwrap();
    // A connection in use is not idle, however long it lives.
    let mut busy = TcpStream::connect(broker.addr).await.unwrap();
    for i in 0..4 {
        busy.write_all(&api_versions_v3(i)).await.unwrap();
        assert_api_versions_ok(read_response(&mut busy).await, i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_closed(&mut idle, "idle connection").await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_connections_do_not_stop_a_new_client() {
    let broker = TestBroker::default().await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    // Some of them half-way through a request, too.
    for stream in idle.iter_mut().take(100) {
        stream.write_all(&[0, 0, 1]).await.unwrap();
    }
    api_versions_round_trip(broker.addr, 9).await;
    // And the idle ones are still being served.
    let last = idle.last_mut().unwrap();
    last.write_all(&api_versions_v3(10)).await.unwrap();
    assert_api_versions_ok(read_response(last).await, 10);
    drop(idle);
    broker.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let broker = TestBroker::start(ListenerConfig {
        max_connections: 2,
        ..ListenerConfig::default()
    })
    .await;
    let mut first = TcpStream::connect(broker.addr).await.unwrap();
    let mut second = TcpStream::connect(broker.addr).await.unwrap();
    // Served, so certainly accepted before the third connects.
    for (i, s) in [&mut first, &mut second].into_iter().enumerate() {
        s.write_all(&api_versions_v3(i as i32)).await.unwrap();
        assert_api_versions_ok(read_response(s).await, i as i32);
    }
    let mut third = TcpStream::connect(broker.addr).await.unwrap();
    assert_closed(&mut third, "connection over the cap").await;

    // A freed slot is usable again (once the broker has seen the close).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(broker.addr).await.unwrap();
        s.write_all(&api_versions_v3(5)).await.unwrap();
        let mut size = [0u8; 4];
        if s.read_exact(&mut size).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_accepting() {
    let broker = TestBroker::default().await;
    let addr = broker.addr;
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(&api_versions_v3(1)).await.unwrap();
    assert_api_versions_ok(read_response(&mut open).await, 1);
    broker.shutdown().await;
    assert_closed(&mut open, "connection after shutdown").await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

// ---- the `odradek server` binary ----

/// Kills the child on drop, so a failing assertion leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api_versions_blocking(addr: SocketAddr) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&api_versions_v3(4242)).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    assert_api_versions_ok(Bytes::from(body), 4242);
}

#[test]
fn odradek_server_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Command::new(env!("CARGO_BIN_EXE_odradek"))
        .args([
            "server",
            "--listeners",
            "PLAINTEXT://127.0.0.1:0",
            "--log-dirs",
        ])
        .arg(&data)
        .env("RUST_LOG", "info")
        .env_remove("ODRADEK_LISTENERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let stdout = server.0.stdout.take().unwrap();
    let mut lines = io::BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        printed.push(line.clone());
        if let Some(a) = line.strip_prefix("listening on: PLAINTEXT://") {
            break a.parse().unwrap();
        }
    };
    for _ in 0..2 {
        printed.push(lines.next().unwrap().unwrap());
    }
    let printed = printed.join("\n");
    assert!(printed.contains("node id: 1"), "{printed}");
    assert!(
        printed.contains(&format!("advertised as: PLAINTEXT://{addr}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("data dir: {}", data.display())),
        "{printed}"
    );
    assert!(data.is_dir(), "data dir not created");

    api_versions_blocking(addr);

    let pid = server.0.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within {WAIT:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(stderr.contains("all data synced"), "{stderr}");
}

#[test]
fn odradek_server_rejects_bad_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("server.properties");
    std::fs::write(&props, "node.id=seven\n").unwrap();
    let p = props.to_str().unwrap();
    for (args, env, want) in [
        (&["--node-id", "x"][..], None, "node.id"),
        (&["--listeners", "SSL://127.0.0.1:0"], None, "listeners"),
        (&["--config", p], None, "server.properties:1"),
        (
            &["--config", "/nonexistent/odradek.properties"],
            None,
            "cannot read",
        ),
        (
            &[],
            Some(("ODRADEK_SOCKET_REQUEST_MAX_BYTES", "-5")),
            "ODRADEK_SOCKET_REQUEST_MAX_BYTES",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_odradek"));
        cmd.arg("server").args(args).env("RUST_LOG", "warn");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

// ---- kcat, a real librdkafka client ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_lists_the_broker() {
    if Command::new("kcat").arg("-V").output().is_err() {
        println!("kcat not installed: skipping (ci/setup.sh installs it)");
        return;
    }
    let broker = TestBroker::default().await;
    let target = broker.addr.to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            Command::new("kcat")
                .args(["-L", "-b", &target, "-m", "5"])
                .output()
        }),
    )
    .await
    .expect("kcat finished")
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("kcat -L stdout:\n{stdout}\nkcat -L stderr:\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("broker 1 at {}", broker.addr)),
        "{stdout}"
    );
    broker.shutdown().await;
}
