//! The real network between nodes: [`odradek_core::io::net::Network`] over
//! TCP.
//!
//! Each node listens on one address. It opens one outbound connection per
//! peer and writes only on it; it reads only on the connections others opened
//! to it. So a pair of nodes talks over two connections, one per direction,
//! and neither side needs to work out which of two simultaneous connects
//! should win.
//!
//! # Frame format
//!
//! A connection carries a sequence of frames, with no handshake before them:
//!
//! ```text
//! +----------------------+--------------------------+-----------------+
//! | length: u32, BE      | sender node id: i32, BE  | payload         |
//! | (bytes that follow)  |                          | (length - 4)    |
//! +----------------------+--------------------------+-----------------+
//! ```
//!
//! The receiver accepts a length from 4 to `max_frame_bytes + 4`. Anything
//! else means the stream is not ours or is out of step, and there is no way
//! to find the next frame boundary, so the connection is closed (with a
//! warning) before any buffer of that size is allocated. The sender id is
//! taken on trust: this layer does not authenticate peers.
//!
//! # Delivery
//!
//! As the core's contract says, delivery is not guaranteed, and a lost
//! message looks like a slow one:
//!
//! * [`Network::send`] never blocks. Each peer has a bounded queue; when it
//!   is full the *newest* message (the one being sent) is dropped, because a
//!   bounded channel cannot evict from its head and the queued messages are
//!   no more stale than a message dropped on the wire.
//! * While a peer is unreachable its messages wait in the queue, and the
//!   connection is retried with capped exponential backoff.
//! * Frames written to a connection that then breaks are lost, not resent:
//!   how much of them reached the peer is unknowable, and resending could
//!   deliver them twice.
//! * Messages from one sender to one receiver therefore arrive in the order
//!   sent, with gaps where a connection broke, and never duplicated.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use odradek_core::io::net::{Address, Envelope, Network, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Bytes of a frame before its payload: the length and the sender id.
const HEADER_BYTES: usize = 8;

/// A writer gathers whatever is queued, up to about this much, into one
/// write: with `TCP_NODELAY` set, a write per small message would be a
/// segment per small message.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A connect to a host that has vanished can otherwise wait for the kernel's
/// SYN retries (minutes); giving up sooner lets the backoff loop try again
/// once the host is back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An accept error is usually resource exhaustion (EMFILE): retrying at once
/// would spin without anything having changed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Tuning for [`TcpNetwork`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The largest payload sent or accepted. Larger outbound payloads are
    /// dropped by `send`; a larger inbound frame closes its connection.
    pub max_frame_bytes: usize,
    /// Messages waiting per peer before `send` drops new ones. Also the
    /// capacity of the inbound channel.
    pub queue_per_peer: usize,
    /// Reconnect delay in milliseconds: starts at the first value, doubles
    /// after each failure, never exceeds the second.
    pub reconnect_backoff_ms: (u64, u64),
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            max_frame_bytes: 8 * 1024 * 1024,
            queue_per_peer: 4096,
            reconnect_backoff_ms: (50, 2000),
        }
    }
}

/// The outbound side of one peer.
struct Peer {
    addr: SocketAddr,
    queue: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

/// Node-to-node messaging over TCP; see the module documentation.
///
/// Dropping it stops its tasks as [`TcpNetwork::shutdown`] does, but without
/// waiting for them to finish.
pub struct TcpNetwork {
    node: NodeId,
    local_addr: SocketAddr,
    config: NetConfig,
    /// Kept so that [`TcpNetwork::add_peer`] can spawn from any thread, not
    /// only from inside the runtime.
    runtime: Handle,
    peers: BTreeMap<NodeId, Peer>,
    /// For messages addressed to this node itself.
    inbound: mpsc::Sender<Envelope>,
    dropped: AtomicU64,
    /// Every task waits on this; dropping the sender also stops them, which
    /// is what makes dropping the network enough to stop it.
    stop: watch::Sender<bool>,
    listener_task: JoinHandle<()>,
}

impl TcpNetwork {
    /// Binds `listen` (port 0 picks a free port) and starts the listener and
    /// one connection task per peer. Returns the network, the channel on
    /// which messages to this node arrive, and the address actually bound.
    ///
    /// An entry for `node` itself in `peers` is ignored: messages to self are
    /// delivered without a socket. Must be called within a tokio runtime.
    pub async fn start(
        node: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        config: NetConfig,
    ) -> io::Result<(TcpNetwork, mpsc::Receiver<Envelope>, SocketAddr)> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        // A zero-capacity channel would make tokio panic; a queue of one is
        // the least that still means something.
        let (inbound, inbound_rx) = mpsc::channel(config.queue_per_peer.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let listener_task = tokio::spawn(accept_loop(
            listener,
            node,
            config.max_frame_bytes,
            inbound.clone(),
            stop_rx,
        ));
        let mut network = TcpNetwork {
            node,
            local_addr,
            config,
            runtime: Handle::current(),
            peers: BTreeMap::new(),
            inbound,
            dropped: AtomicU64::new(0),
            stop,
            listener_task,
        };
        for (peer, addr) in peers {
            network.add_peer(peer, addr);
        }
        Ok((network, inbound_rx, local_addr))
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds a peer, or moves an existing one to a new address. Moving it
    /// discards the messages queued for the old address: they were meant for
    /// a process that is no longer there. Adding the same address again, or
    /// this node itself, does nothing.
    pub fn add_peer(&mut self, node: NodeId, addr: SocketAddr) {
        if node == self.node {
            return;
        }
        if let Some(existing) = self.peers.get(&node) {
            if existing.addr == addr {
                return;
            }
        }
        let (queue, queue_rx) = mpsc::channel(self.config.queue_per_peer.max(1));
        let task = self.runtime.spawn(peer_loop(
            self.node,
            node,
            addr,
            self.config.reconnect_backoff_ms,
            queue_rx,
            self.stop.subscribe(),
        ));
        if let Some(old) = self.peers.insert(node, Peer { addr, queue, task }) {
            // Closing its queue would stop it only once it next waits for a
            // message, not while it is connecting or backing off.
            old.task.abort();
        }
    }

    /// Messages refused by [`Network::send`] so far: queue full, unknown
    /// peer, client address, payload too large, or inbound channel full for
    /// a message to self. Frames lost with a broken connection are not
    /// counted, because nobody knows how many of them arrived.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops the listener, every connection task and every reader, and waits
    /// until they have finished, so that the listening port is free again
    /// when this returns. Queued messages are discarded.
    pub async fn shutdown(self) {
        let TcpNetwork {
            stop,
            peers,
            listener_task,
            ..
        } = self;
        // Fails only if every receiver is gone, i.e. every task already ended.
        let _ = stop.send(true);
        // A task's result says only whether it panicked or was aborted, and
        // either way it is over, which is all that is waited for.
        let _ = listener_task.await;
        for peer in peers.into_values() {
            let _ = peer.task.await;
        }
    }

    fn drop_message(&self, envelope: &Envelope, reason: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(node = self.node, ?envelope, reason, "message dropped");
    }
}

impl Network for TcpNetwork {
    /// Queues `envelope` for its node and returns at once.
    ///
    /// Messages to [`Address::Client`] are dropped and counted: client
    /// connections belong to the Kafka listener, which answers on the socket
    /// the request came in on. A message to this node itself goes straight
    /// to the inbound channel. The receiver sees `from` as the sending node
    /// whatever the envelope said, because a frame carries only the sender's
    /// node id; the self path does the same so that both look alike.
    fn send(&mut self, envelope: Envelope) {
        let to = match envelope.to {
            Address::Node(n) => n,
            Address::Client(_) => {
                self.drop_message(&envelope, "client addresses are not served here");
                return;
            }
        };
        if envelope.payload.len() > self.config.max_frame_bytes
            || envelope.payload.len() > u32::MAX as usize - 4
        {
            // The receiver would close the connection on it, losing the
            // frames behind it too.
            self.drop_message(&envelope, "payload exceeds max_frame_bytes");
            return;
        }
        if to == self.node {
            let local = Envelope {
                from: Address::Node(self.node),
                to: envelope.to,
                payload: envelope.payload,
            };
            if let Err(e) = self.inbound.try_send(local) {
                let envelope = match e {
                    mpsc::error::TrySendError::Full(env)
                    | mpsc::error::TrySendError::Closed(env) => env,
                };
                self.drop_message(&envelope, "inbound channel full or closed");
            }
            return;
        }
        let Some(peer) = self.peers.get(&to) else {
            self.drop_message(&envelope, "unknown peer");
            return;
        };
        if let Err(e) = peer.queue.try_send(envelope.payload) {
            let (reason, payload) = match e {
                mpsc::error::TrySendError::Full(p) => ("peer queue full", p),
                mpsc::error::TrySendError::Closed(p) => ("peer task stopped", p),
            };
            let envelope = Envelope {
                from: envelope.from,
                to: envelope.to,
                payload,
            };
            self.drop_message(&envelope, reason);
        }
    }
}

/// Resolves once shutdown is signalled or the network is dropped. Checks the
/// current value first, so a receiver subscribed after the signal stops too.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is also a stop.
    let _ = stop.wait_for(|&s| s).await;
}

async fn accept_loop(
    listener: TcpListener,
    node: NodeId,
    max_frame_bytes: usize,
    inbound: mpsc::Sender<Envelope>,
    mut stop: watch::Receiver<bool>,
) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    tracing::debug!(node, %remote, "accepted connection");
                    readers.spawn(read_frames(
                        stream,
                        remote,
                        node,
                        max_frame_bytes,
                        inbound.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "accept failed");
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
        // Reap finished readers so the set does not grow with every
        // connection ever accepted.
        while readers.try_join_next().is_some() {}
    }
    drop(listener);
    // Readers stop on the same signal; waiting for them means the caller of
    // `shutdown` knows every accepted socket is closed.
    readers.shutdown().await;
}

/// Why a connection ended, as far as the reader is concerned.
enum ReadEnd {
    /// The peer closed at a frame boundary, or we are stopping.
    Done,
    /// The consumer dropped the inbound channel.
    ConsumerGone,
}

async fn read_frames(
    stream: TcpStream,
    remote: SocketAddr,
    node: NodeId,
    max_frame_bytes: usize,
    inbound: mpsc::Sender<Envelope>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = BufReader::new(stream);
    let result = tokio::select! {
        biased;
        _ = stopped(&mut stop) => Ok(ReadEnd::Done),
        r = read_frames_until_end(&mut reader, remote, node, max_frame_bytes, &inbound) => r,
    };
    match result {
        Ok(ReadEnd::Done) => tracing::debug!(node, %remote, "inbound connection closed"),
        Ok(ReadEnd::ConsumerGone) => {
            tracing::debug!(node, %remote, "inbound channel closed; dropping connection")
        }
        Err(e) => tracing::debug!(node, %remote, error = %e, "inbound connection failed"),
    }
}

async fn read_frames_until_end(
    reader: &mut BufReader<TcpStream>,
    remote: SocketAddr,
    node: NodeId,
    max_frame_bytes: usize,
    inbound: &mpsc::Sender<Envelope>,
) -> io::Result<ReadEnd> {
    let max_len = max_frame_bytes.saturating_add(4);
    loop {
        let mut len_bytes = [0u8; 4];
        match reader.read_exact(&mut len_bytes).await {
            Ok(_) => {}
            // A close between frames, or inside a length, where nothing of
            // the next frame was taken yet; a close later in a frame comes
            // out of the reads below as an error.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadEnd::Done),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len_bytes);
        // u32 fits usize on every platform tokio supports for TCP; failing
        // the conversion means "too long" anyway.
        let len_ok = usize::try_from(len).is_ok_and(|l| (4..=max_len).contains(&l));
        if !len_ok {
            tracing::warn!(
                node,
                %remote,
                len,
                as_i32 = len as i32,
                max = max_len,
                "bad frame length; closing connection"
            );
            return Ok(ReadEnd::Done);
        }
        let mut sender = [0u8; 4];
        reader.read_exact(&mut sender).await?;
        let sender = NodeId::from_be_bytes(sender);
        let mut payload = vec![0u8; len as usize - 4];
        reader.read_exact(&mut payload).await?;
        let envelope = Envelope {
            from: Address::Node(sender),
            to: Address::Node(node),
            payload,
        };
        // Awaiting here is the backpressure: a slow consumer slows the
        // reader, TCP's window fills, and the sender's queue absorbs it.
        if inbound.send(envelope).await.is_err() {
            return Ok(ReadEnd::ConsumerGone);
        }
    }
}

/// Why an outbound connection ended.
enum WriteEnd {
    /// The network dropped the peer's queue.
    QueueClosed,
    /// A read or write on the connection failed.
    Broken(io::Error),
    /// The peer closed its side (it stopped, or it is restarting).
    PeerClosed,
}

async fn peer_loop(
    node: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    (backoff_min_ms, backoff_max_ms): (u64, u64),
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    let backoff_min = Duration::from_millis(backoff_min_ms);
    let backoff_max = Duration::from_millis(backoff_max_ms.max(backoff_min_ms));
    let mut backoff = backoff_min;
    let mut batch = Vec::new();
    loop {
        let connected = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            c = connect(addr) => c,
        };
        match connected {
            Ok(mut stream) => {
                tracing::debug!(node, peer, %addr, "connected");
                let connected_at = tokio::time::Instant::now();
                let mut wrote = false;
                let (mut rd, mut wr) = stream.split();
                let end = tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => return,
                    // Before writing, so that a peer already known to be
                    // gone is not handed frames that would be lost.
                    closed = watch_for_close(&mut rd) => match closed {
                        Ok(()) => WriteEnd::PeerClosed,
                        Err(e) => WriteEnd::Broken(e),
                    },
                    end = write_frames(&mut queue, &mut wr, node, &mut batch, &mut wrote) => end,
                };
                match end {
                    WriteEnd::QueueClosed => return,
                    WriteEnd::PeerClosed => {
                        tracing::debug!(node, peer, %addr, "connection closed by peer")
                    }
                    WriteEnd::Broken(e) => {
                        tracing::debug!(node, peer, %addr, error = %e, "connection lost")
                    }
                }
                // A connection that carried something, or stayed up a while,
                // proves the peer healthy; one that accepts and hangs up at
                // once should not be retried at full speed.
                if wrote || connected_at.elapsed() >= backoff_max {
                    backoff = backoff_min;
                }
            }
            Err(e) => tracing::debug!(node, peer, %addr, error = %e, "connect failed"),
        }
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // Connecting to a free port on this host can pick that same port as the
    // source and connect the socket to itself (TCP simultaneous open). The
    // frames would vanish, and the port would be taken from the peer that
    // is about to start on it.
    if stream.local_addr()? == stream.peer_addr()? {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connected to itself",
        ));
    }
    // The protocols on top are request/response; Nagle would hold a small
    // request back waiting for the previous one's ACK.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Resolves when the peer closes its side. Peers never write on a connection
/// they accepted, so any bytes read are ignored.
async fn watch_for_close(rd: &mut ReadHalf<'_>) -> io::Result<()> {
    let mut scratch = [0u8; 64];
    loop {
        if rd.read(&mut scratch).await? == 0 {
            return Ok(());
        }
    }
}

async fn write_frames(
    queue: &mut mpsc::Receiver<Vec<u8>>,
    wr: &mut WriteHalf<'_>,
    node: NodeId,
    batch: &mut Vec<u8>,
    wrote: &mut bool,
) -> WriteEnd {
    loop {
        // Cancellation-safe: a message is either still queued or in `batch`,
        // and a batch interrupted by a close is lost like any in-flight data.
        let Some(first) = queue.recv().await else {
            return WriteEnd::QueueClosed;
        };
        batch.clear();
        push_frame(batch, node, &first);
        while batch.len() < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(payload) => push_frame(batch, node, &payload),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(batch).await {
            return WriteEnd::Broken(e);
        }
        *wrote = true;
        // One large message should not pin its size in memory per peer.
        batch.shrink_to(WRITE_BATCH_BYTES);
    }
}

fn push_frame(batch: &mut Vec<u8>, node: NodeId, payload: &[u8]) {
    // `send` refused payloads that do not fit, so this cannot truncate.
    let len = (payload.len() + 4) as u32;
    batch.reserve(HEADER_BYTES + payload.len());
    batch.extend_from_slice(&len.to_be_bytes());
    batch.extend_from_slice(&node.to_be_bytes());
    batch.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn test_config() -> NetConfig {
        NetConfig {
            reconnect_backoff_ms: (10, 100),
            ..NetConfig::default()
        }
    }

    fn msg(from: NodeId, to: NodeId, payload: Vec<u8>) -> Envelope {
        Envelope {
            from: Address::Node(from),
            to: Address::Node(to),
            payload,
        }
    }

    async fn recv(rx: &mut mpsc::Receiver<Envelope>) -> Envelope {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("inbound channel closed")
    }

    /// Two nodes, each knowing the other.
    async fn pair(
        config: NetConfig,
    ) -> (
        (TcpNetwork, mpsc::Receiver<Envelope>),
        (TcpNetwork, mpsc::Receiver<Envelope>),
    ) {
        let (mut n1, rx1, addr1) =
            TcpNetwork::start(1, localhost(), BTreeMap::new(), config.clone())
                .await
                .unwrap();
        let (n2, rx2, addr2) =
            TcpNetwork::start(2, localhost(), BTreeMap::from([(1, addr1)]), config)
                .await
                .unwrap();
        n1.add_peer(2, addr2);
        ((n1, rx1), (n2, rx2))
    }

    fn payloads() -> Vec<Vec<u8>> {
        let mut payloads = vec![Vec::new(), vec![42]];
        payloads.push((0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect());
        payloads.extend((0u32..100).map(|i| i.to_be_bytes().to_vec()));
        payloads.push(Vec::new());
        payloads
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_flow_both_ways_in_order_and_intact() {
        let ((mut n1, mut rx1), (mut n2, mut rx2)) = pair(test_config()).await;
        let sent = payloads();
        for p in &sent {
            n1.send(msg(1, 2, p.clone()));
            n2.send(msg(2, 1, p.clone()));
        }
        for p in &sent {
            assert_eq!(recv(&mut rx2).await, msg(1, 2, p.clone()));
            assert_eq!(recv(&mut rx1).await, msg(2, 1, p.clone()));
        }
        assert_eq!(n1.dropped(), 0);
        assert_eq!(n2.dropped(), 0);
        n1.shutdown().await;
        n2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_frame_lengths_close_the_connection_only() {
        let config = NetConfig {
            max_frame_bytes: 1024,
            ..test_config()
        };
        let ((mut n1, mut rx1), (mut n2, _rx2)) = pair(config).await;
        let addr1 = n1.local_addr();

        for bad_len in [0xFFFF_FFF0u32, 2, 0, 1024 + 5] {
            let mut raw = TcpStream::connect(addr1).await.unwrap();
            raw.write_all(&bad_len.to_be_bytes()).await.unwrap();
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(WAIT, raw.read(&mut buf))
                .await
                .expect("connection was not closed");
            // A reset is as good as an orderly close.
            assert!(matches!(read, Ok(0) | Err(_)), "len {bad_len:#x}: {read:?}");
        }

        // A well-formed frame from anyone is accepted, with its stated sender.
        let mut raw = TcpStream::connect(addr1).await.unwrap();
        let mut frame = Vec::new();
        push_frame(&mut frame, 7, b"hello");
        raw.write_all(&frame).await.unwrap();
        assert_eq!(recv(&mut rx1).await, msg(7, 1, b"hello".to_vec()));

        n2.send(msg(2, 1, b"still here".to_vec()));
        assert_eq!(recv(&mut rx1).await, msg(2, 1, b"still here".to_vec()));
        n1.send(msg(1, 1, Vec::new()));
        assert_eq!(recv(&mut rx1).await, msg(1, 1, Vec::new()));
        n1.shutdown().await;
        n2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undeliverable_messages_are_counted_not_fatal() {
        let config = NetConfig {
            max_frame_bytes: 16,
            queue_per_peer: 2,
            ..test_config()
        };
        // Port 1 on loopback refuses connections, so the peer's queue is
        // never drained and fills deterministically.
        let unreachable = SocketAddr::from(([127, 0, 0, 1], 1));
        let (mut n1, _rx1, _) =
            TcpNetwork::start(1, localhost(), BTreeMap::from([(9, unreachable)]), config)
                .await
                .unwrap();

        n1.send(msg(1, 5, b"nobody".to_vec()));
        assert_eq!(n1.dropped(), 1);
        n1.send(Envelope {
            from: Address::Node(1),
            to: Address::Client(3),
            payload: b"not ours".to_vec(),
        });
        assert_eq!(n1.dropped(), 2);
        n1.send(msg(1, 9, vec![0; 17]));
        assert_eq!(n1.dropped(), 3);
        for _ in 0..10 {
            n1.send(msg(1, 9, b"queued".to_vec()));
        }
        assert_eq!(n1.dropped(), 3 + 8);
        n1.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_queued_before_the_peer_starts_are_delivered() {
        // A port that was free a moment ago, for a peer that is not up yet.
        let addr2 = std::net::TcpListener::bind(localhost())
            .unwrap()
            .local_addr()
            .unwrap();
        let (mut n1, _rx1, _) =
            TcpNetwork::start(1, localhost(), BTreeMap::from([(2, addr2)]), test_config())
                .await
                .unwrap();
        for i in 0u32..10 {
            n1.send(msg(1, 2, i.to_be_bytes().to_vec()));
        }
        // Let a few connection attempts fail first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (n2, mut rx2, _) = TcpNetwork::start(2, addr2, BTreeMap::new(), test_config())
            .await
            .unwrap();
        for i in 0u32..10 {
            assert_eq!(recv(&mut rx2).await, msg(1, 2, i.to_be_bytes().to_vec()));
        }
        n1.shutdown().await;
        n2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_to_a_restarted_peer() {
        let ((mut n1, _rx1), (n2, mut rx2)) = pair(test_config()).await;
        let addr2 = n2.local_addr();
        n1.send(msg(1, 2, u32::MAX.to_be_bytes().to_vec()));
        recv(&mut rx2).await;

        n2.shutdown().await;
        drop(rx2);
        // Sent while the peer is down: queued, or lost with the old
        // connection if the writer had not yet noticed it closed.
        let mut next = 0u32;
        while next < 5 {
            n1.send(msg(1, 2, next.to_be_bytes().to_vec()));
            next += 1;
        }
        let (n2, mut rx2, _) = TcpNetwork::start(2, addr2, BTreeMap::new(), test_config())
            .await
            .unwrap();

        // Keep sending until something gets through.
        let first = tokio::time::timeout(WAIT, async {
            loop {
                n1.send(msg(1, 2, next.to_be_bytes().to_vec()));
                next += 1;
                if let Ok(Some(env)) =
                    tokio::time::timeout(Duration::from_millis(20), rx2.recv()).await
                {
                    return env;
                }
            }
        })
        .await
        .expect("no message reached the restarted peer");
        let seq = |env: &Envelope| u32::from_be_bytes(env.payload[..].try_into().unwrap());

        // After a gap, everything later arrives, in order, exactly once.
        let mut expected = seq(&first) + 1;
        let last = next + 10;
        for i in next..last {
            n1.send(msg(1, 2, i.to_be_bytes().to_vec()));
        }
        while expected < last {
            let env = recv(&mut rx2).await;
            assert_eq!(env.from, Address::Node(1));
            assert_eq!(seq(&env), expected);
            expected += 1;
        }
        n1.shutdown().await;
        n2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_to_self_arrives() {
        let (mut n1, mut rx1, _) =
            TcpNetwork::start(1, localhost(), BTreeMap::new(), test_config())
                .await
                .unwrap();
        n1.send(Envelope {
            from: Address::Client(8),
            to: Address::Node(1),
            payload: b"me".to_vec(),
        });
        assert_eq!(recv(&mut rx1).await, msg(1, 1, b"me".to_vec()));
        assert_eq!(n1.dropped(), 0);
        n1.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_network_frees_its_port() {
        let (n1, _rx1, addr1) = TcpNetwork::start(1, localhost(), BTreeMap::new(), test_config())
            .await
            .unwrap();
        drop(n1);
        // Dropping does not wait for the tasks, so poll for the port.
        tokio::time::timeout(WAIT, async {
            while TcpListener::bind(addr1).await.is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the listener outlived the network");
    }
}
