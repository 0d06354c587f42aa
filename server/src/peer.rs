//! The network between cluster nodes: Raft, the controller channel and
//! metadata fetches, as opaque payloads addressed by node id.
//!
//! Every node dials every voter in `controller.quorum.voters` (but itself),
//! and a controller also accepts connections on its controller listener.
//! A connection starts with a handshake each way naming the cluster and the
//! node; a peer of another cluster, or speaking something else, is logged
//! and dropped, so a misconfigured node cannot feed votes into the wrong
//! quorum. After that both directions carry length-prefixed payloads.
//!
//! A voter replies to a broker-only node over the connection that node
//! opened: the newest live connection to a node, in either direction, is
//! its route. Nothing is queued for a node without a route, and a full
//! queue drops: the protocols above are built for a network that loses
//! messages, and an unbounded queue to a dead peer would grow without end.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const MAGIC: &[u8; 8] = b"ODRKPEER";
const VERSION: u16 = 1;
/// Larger than any Raft message (a snapshot chunk is at most 64 MiB) with
/// room for its header; anything longer is not from a peer.
pub const MAX_PAYLOAD: usize = (64 << 20) + 4096;
/// Payloads waiting for one peer's socket before new ones are dropped.
const QUEUE: usize = 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this node is and whom it dials.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub node_id: i32,
    pub cluster_id: String,
    /// Voter id → `host:port` of its controller listener.
    pub voters: BTreeMap<i32, String>,
}

type Deliver = Arc<dyn Fn(i32, Vec<u8>) + Send + Sync>;

/// A route to one peer: the connection's serial (so that a closing old
/// connection does not remove a newer one's route) and its queue.
type Routes = Arc<Mutex<BTreeMap<i32, (u64, mpsc::Sender<Vec<u8>>)>>>;

/// The sending side; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct PeerNet {
    routes: Routes,
}

impl PeerNet {
    /// Queues `payload` for node `to`; dropped if there is no connection to
    /// it or its queue is full.
    pub fn send(&self, to: i32, payload: Vec<u8>) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tx)) = routes.get(&to) {
            let _ = tx.try_send(payload);
        }
    }

    /// Nodes with a live connection, for logs and tests.
    pub fn connected(&self) -> Vec<i32> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.keys().copied().collect()
    }
}

/// Starts dialing the voters and, if `listener` is given, accepting peers
/// on it. Payloads received go to `deliver(from, payload)`. Everything
/// stops when `stop` turns true.
pub fn start(
    config: PeerConfig,
    listener: Option<TcpListener>,
    deliver: impl Fn(i32, Vec<u8>) + Send + Sync + 'static,
    stop: watch::Receiver<bool>,
) -> PeerNet {
    let shared = Shared {
        config: Arc::new(config),
        routes: Arc::new(Mutex::new(BTreeMap::new())),
        deliver: Arc::new(deliver),
        serial: Arc::new(AtomicU64::new(1)),
    };
    let voters: Vec<(i32, String)> = shared
        .config
        .voters
        .iter()
        .filter(|(id, _)| **id != shared.config.node_id)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    for (id, addr) in voters {
        tokio::spawn(dial_forever(shared.clone(), id, addr, stop.clone()));
    }
    if let Some(listener) = listener {
        tokio::spawn(accept_forever(shared.clone(), listener, stop));
    }
    PeerNet {
        routes: shared.routes,
    }
}

#[derive(Clone)]
struct Shared {
    config: Arc<PeerConfig>,
    routes: Routes,
    deliver: Deliver,
    serial: Arc<AtomicU64>,
}

async fn dial_forever(shared: Shared, id: i32, addr: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = async {
            let stream = TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
            Ok(Ok(stream)) => {
                backoff = Duration::from_millis(50);
                match connection(&shared, stream, Some(id), stop.clone()).await {
                    Ok(()) => {}
                    Err(e) => tracing::debug!(peer = id, %addr, "peer connection ended: {e}"),
                }
            }
            Ok(Err(e)) => tracing::debug!(peer = id, %addr, "cannot reach peer: {e}"),
            Err(_) => tracing::debug!(peer = id, %addr, "connecting to peer timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn accept_forever(shared: Shared, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(&shared, stream, None, stop).await {
                            tracing::debug!(%from, "peer connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!("accepting a peer failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

fn handshake(config: &PeerConfig) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + config.cluster_id.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_be_bytes());
    h.extend_from_slice(&config.node_id.to_be_bytes());
    h.extend_from_slice(&(config.cluster_id.len() as u16).to_be_bytes());
    h.extend_from_slice(config.cluster_id.as_bytes());
    h
}

/// Checks a peer's handshake; returns its node id.
fn check_handshake(config: &PeerConfig, h: &[u8]) -> Result<i32, String> {
    if h.len() < 16 || &h[..8] != MAGIC {
        return Err("not an odradek peer".into());
    }
    let version = u16::from_be_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(format!(
            "peer protocol version {version}, expected {VERSION}"
        ));
    }
    let node = i32::from_be_bytes([h[10], h[11], h[12], h[13]]);
    let len = u16::from_be_bytes([h[14], h[15]]) as usize;
    let cluster = h
        .get(16..16 + len)
        .filter(|_| h.len() == 16 + len)
        .ok_or("malformed handshake")?;
    if cluster != config.cluster_id.as_bytes() {
        return Err(format!(
            "node {node} belongs to cluster {:?}, this node to {:?}",
            String::from_utf8_lossy(cluster),
            config.cluster_id
        ));
    }
    if node == config.node_id {
        return Err(format!("the peer claims this node's own id {node}"));
    }
    if node < 0 {
        return Err(format!("bad node id {node}"));
    }
    Ok(node)
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a peer frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Runs one connection until it fails or `stop`; `expect` is the node
/// dialed, if this side dialed.
async fn connection(
    shared: &Shared,
    stream: TcpStream,
    expect: Option<i32>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mine = handshake(&shared.config);
    wr.write_u32(mine.len() as u32).await?;
    wr.write_all(&mine).await?;
    let theirs = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut rd, 1024))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no handshake from the peer"))??;
    let peer = match check_handshake(&shared.config, &theirs) {
        Ok(id) if expect.is_none_or(|e| e == id) => id,
        Ok(id) => {
            tracing::warn!(
                expected = expect,
                got = id,
                "the peer at a voter's address has another node id; check controller.quorum.voters"
            );
            return Ok(());
        }
        Err(why) => {
            tracing::warn!("refusing a peer connection: {why}");
            return Ok(());
        }
    };
    let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    shared
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, (serial, tx));
    tracing::debug!(peer, "peer connected");
    let writer = async {
        while let Some(payload) = rx.recv().await {
            wr.write_u32(payload.len() as u32).await?;
            wr.write_all(&payload).await?;
        }
        Ok::<(), io::Error>(())
    };
    let deliver = shared.deliver.clone();
    let reader = async {
        loop {
            let payload = read_frame(&mut rd, MAX_PAYLOAD).await?;
            deliver(peer, payload);
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
        _ = stop.changed() => Ok(()),
    };
    let mut routes = shared.routes.lock().unwrap_or_else(|e| e.into_inner());
    if routes.get(&peer).is_some_and(|(s, _)| *s == serial) {
        routes.remove(&peer);
    }
    result
}

/// Binds a controller listener.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: i32, cluster: &str) -> PeerConfig {
        PeerConfig {
            node_id: id,
            cluster_id: cluster.into(),
            voters: BTreeMap::new(),
        }
    }

    #[test]
    fn handshakes_are_checked() {
        let a = config(1, "abc");
        assert_eq!(check_handshake(&a, &handshake(&config(2, "abc"))), Ok(2));
        let foreign = check_handshake(&a, &handshake(&config(2, "xyz"))).unwrap_err();
        assert!(foreign.contains("xyz"), "{foreign}");
        assert!(check_handshake(&a, &handshake(&config(1, "abc"))).is_err());
        assert!(check_handshake(&a, b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut h = handshake(&config(2, "abc"));
        h.push(0);
        assert!(check_handshake(&a, &h).is_err());
        for cut in 0..h.len() - 1 {
            assert!(check_handshake(&a, &h[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn two_nodes_exchange_payloads_and_a_foreign_one_is_refused() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a1 = l1.local_addr().unwrap().to_string();
        let voters: BTreeMap<i32, String> = [(1, a1.clone())].into();
        let (stop_tx, stop) = watch::channel(false);
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let got1 = got_tx.clone();
        let n1 = start(
            PeerConfig {
                node_id: 1,
                cluster_id: "c".into(),
                voters: voters.clone(),
            },
            Some(l1),
            move |from, p| {
                let _ = got1.send((1, from, p));
            },
            stop.clone(),
        );
        let n2 = start(
            PeerConfig {
                node_id: 2,
                cluster_id: "c".into(),
                voters: voters.clone(),
            },
            None,
            move |from, p| {
                let _ = got_tx.send((2, from, p));
            },
            stop.clone(),
        );
        let n3 = start(
            PeerConfig {
                node_id: 3,
                cluster_id: "other".into(),
                voters,
            },
            None,
            |_, _| panic!("a foreign cluster's node must get nothing"),
            stop.clone(),
        );
        // Node 2 dials node 1; node 1 answers over the same connection.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(n2.connected().contains(&1) && n1.connected().contains(&2)) {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n2.send(1, b"hello".to_vec());
        assert_eq!(got.recv().await.unwrap(), (1, 2, b"hello".to_vec()));
        n1.send(2, b"back".to_vec());
        assert_eq!(got.recv().await.unwrap(), (2, 1, b"back".to_vec()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!n1.connected().contains(&3));
        assert!(n3.connected().is_empty());
        stop_tx.send(true).unwrap();
    }
}
