//! The broker's own thread: it owns the sans-IO [`Broker`] and steps it,
//! while connection tasks on the tokio runtime hand it request frames.
//!
//! One thread rather than a mutex shared by the connections, because the
//! broker does blocking disk I/O (appends, fsync), which must not stall
//! runtime workers, and because a single owner makes group commit natural:
//! the thread takes every request already queued, handles them all, then
//! calls [`Broker::poll`] once — one fsync per dirty partition covers the
//! whole round — and only then do the acks=-1 answers leave. It sleeps
//! until the next request or the broker's next deadline (a long-poll fetch
//! expiring, retention).
//!
//! [`spawn_local`] runs the same rounds as a task on the caller's tokio
//! runtime instead, on tokio's time ([`TokioClock`]). The turmoil tests use
//! it: a thread answering on its own schedule and its own clock would make
//! the simulated network's runs differ from one another, whereas a task on
//! the simulation's runtime is stepped by the simulation like everything
//! else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use odradek_core::io::clock::{Clock, Instant};
use odradek_core::io::Disk;
use odradek_core::kafka::{Broker, Completion, ConnId, FrameOutcome};
use tokio::sync::oneshot;

/// What the broker thread steps: a single-node [`Broker`], or a cluster
/// node (Raft, controller and broker) that also talks to other nodes.
pub trait Engine {
    fn handle_frame(&mut self, conn: ConnId, frame: &[u8], clock: &dyn Clock) -> FrameOutcome;
    fn poll(&mut self, clock: &dyn Clock) -> Vec<Completion>;
    /// When the engine has work of its own; `None` for never.
    fn next_deadline(&self) -> Option<Instant>;
    fn connection_closed(&mut self, conn: ConnId);
    fn set_client_host(&mut self, conn: ConnId, host: String);
    /// A payload from another cluster node.
    fn peer_message(&mut self, _from: i32, _payload: &[u8], _clock: &dyn Clock) {}
    /// Payloads for other cluster nodes, as (node id, payload).
    fn take_peer_messages(&mut self) -> Vec<(i32, Vec<u8>)> {
        Vec::new()
    }
    /// Syncs and closes everything, after the last request.
    fn shutdown(self) -> Result<(), String>;
}

impl<D: Disk + Clone> Engine for Broker<D> {
    fn handle_frame(&mut self, conn: ConnId, frame: &[u8], clock: &dyn Clock) -> FrameOutcome {
        Broker::handle_frame(self, conn, frame, clock)
    }
    fn poll(&mut self, clock: &dyn Clock) -> Vec<Completion> {
        Broker::poll(self, clock)
    }
    fn next_deadline(&self) -> Option<Instant> {
        Broker::next_deadline(self)
    }
    fn connection_closed(&mut self, conn: ConnId) {
        Broker::connection_closed(self, conn)
    }
    fn set_client_host(&mut self, conn: ConnId, host: String) {
        Broker::set_client_host(self, conn, host)
    }
    fn shutdown(self) -> Result<(), String> {
        Broker::shutdown(self)
    }
}

/// Where the engine's messages for other nodes go (the peer network).
pub type PeerSender = Box<dyn Fn(i32, Vec<u8>) + Send>;

/// The real clock: monotonic time since the process started, and the
/// system's wall clock.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        // Starting at 1 ms keeps Instant::ZERO free to mean "due at once".
        let nanos = self.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        Instant(nanos.saturating_add(1_000_000))
    }

    fn wall_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
            // A clock set before 1970 is reported as it is.
            Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
        }
    }
}

/// Tokio's clock: monotonic time since the clock was made, and a wall clock
/// that starts at a given time and moves with it. On a runtime whose time is
/// paused (a simulation's), both are exactly what the simulation says, so a
/// broker stepped by [`spawn_local`] keeps its deadlines (long polls,
/// retention) in the same time as the network around it.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    wall_origin_ms: i64,
}

impl TokioClock {
    /// Must be called inside a tokio runtime with time enabled.
    pub fn new(wall_origin_ms: i64) -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
            wall_origin_ms,
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        // As SystemClock: Instant::ZERO stays free to mean "due at once".
        let nanos = self.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        Instant(nanos.saturating_add(1_000_000))
    }

    fn wall_ms(&self) -> i64 {
        let elapsed = self.origin.elapsed().as_millis().min(i64::MAX as u128) as i64;
        self.wall_origin_ms.saturating_add(elapsed)
    }
}

enum Command {
    Request {
        conn: ConnId,
        frame: Vec<u8>,
        reply: oneshot::Sender<FrameOutcome>,
    },
    Closed(ConnId),
    /// A new connection from this peer (as group descriptions show it).
    Opened(ConnId, String),
    /// A payload from another cluster node.
    Peer(i32, Vec<u8>),
}

/// The way into whichever driver owns the broker.
#[derive(Clone)]
enum Commands {
    Thread(mpsc::Sender<Command>),
    Task(tokio::sync::mpsc::UnboundedSender<Command>),
}

impl Commands {
    /// Fails only if the driver is gone.
    fn send(&self, cmd: Command) -> Result<(), ()> {
        match self {
            Commands::Thread(tx) => tx.send(cmd).map_err(|_| ()),
            Commands::Task(tx) => tx.send(cmd).map_err(|_| ()),
        }
    }
}

/// A connection's way to the broker thread. Cheap to clone; when the last
/// clone is dropped the thread shuts the broker down cleanly and ends.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: Commands,
    next_conn: std::sync::Arc<AtomicU64>,
}

/// Waits for the broker thread to finish; returns the clean shutdown's
/// result.
pub struct BrokerThread {
    join: JoinHandle<Result<(), String>>,
    ended: Option<oneshot::Receiver<()>>,
}

/// Fires when the thread ends, however it ends (a panic included).
struct EndSignal(Option<oneshot::Sender<()>>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl BrokerThread {
    /// Resolves when the broker thread has ended. Before shutdown that means
    /// it died (a panic): its state may be half-updated, so the server
    /// should stop and let recovery vouch for the data on the next start.
    pub async fn ended(&mut self) {
        match &mut self.ended {
            Some(rx) => {
                let _ = rx.await;
                self.ended = None;
            }
            None => std::future::pending().await,
        }
    }

    pub fn join(self) -> Result<(), String> {
        match self.join.join() {
            Ok(r) => r,
            Err(_) => Err("the broker thread panicked".into()),
        }
    }
}

pub fn spawn<E>(broker: E, clock: SystemClock) -> std::io::Result<(BrokerHandle, BrokerThread)>
where
    E: Engine + Send + 'static,
{
    spawn_with_peers(broker, clock, Box::new(|_, _| {}))
}

/// As [`spawn`], for an engine that talks to other nodes: what it has for
/// them goes to `peers` after every round.
pub fn spawn_with_peers<E>(
    broker: E,
    clock: SystemClock,
    peers: PeerSender,
) -> std::io::Result<(BrokerHandle, BrokerThread)>
where
    E: Engine + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let (end_tx, end_rx) = oneshot::channel();
    let join = std::thread::Builder::new()
        .name("odradek-broker".into())
        .spawn(move || {
            let _signal = EndSignal(Some(end_tx));
            run_thread(Driver::new(broker, clock, peers), rx)
        })?;
    Ok((
        BrokerHandle::new(Commands::Thread(tx)),
        BrokerThread {
            join,
            ended: Some(end_rx),
        },
    ))
}

/// Runs the broker as a task on the current [`tokio::task::LocalSet`]
/// (the disk need not be `Send`), stepping it exactly as the thread does.
/// Its disk calls block the runtime: this is for simulations and tests on a
/// current-thread runtime, not for serving real clients. The task ends, with
/// the clean shutdown's result, when the last handle is dropped.
pub fn spawn_local<D>(
    broker: Broker<D>,
    clock: TokioClock,
) -> (BrokerHandle, tokio::task::JoinHandle<Result<(), String>>)
where
    D: Disk + Clone + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::task::spawn_local(run_task(
        Driver::new(broker, clock, Box::new(|_, _| {})),
        rx,
    ));
    (BrokerHandle::new(Commands::Task(tx)), task)
}

impl BrokerHandle {
    fn new(tx: Commands) -> BrokerHandle {
        BrokerHandle {
            tx,
            next_conn: std::sync::Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn new_connection(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands a request to the broker and waits for its outcome. A broker
    /// that is gone (stopped, or panicked) closes the connection.
    pub async fn call(&self, conn: ConnId, frame: Vec<u8>) -> FrameOutcome {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Request { conn, frame, reply })
            .is_err()
        {
            return FrameOutcome::Close("the broker has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| FrameOutcome::Close("the broker has stopped".into()))
    }

    pub fn opened(&self, conn: ConnId, peer: std::net::SocketAddr) {
        let _ = self
            .tx
            .send(Command::Opened(conn, format!("/{}", peer.ip())));
    }

    pub fn closed(&self, conn: ConnId) {
        // The broker being gone already forgot the connection.
        let _ = self.tx.send(Command::Closed(conn));
    }

    /// A payload from cluster node `from`; dropped if the engine is gone,
    /// as the network may drop any message.
    pub fn peer(&self, from: i32, payload: Vec<u8>) {
        let _ = self.tx.send(Command::Peer(from, payload));
    }
}

/// The broker and the requests it has deferred: what both drivers share.
/// A driver waits for a command or [`Driver::wait`], hands it and every
/// command already queued to [`Driver::handle`], then calls
/// [`Driver::poll`] once (the round that group commit needs).
struct Driver<E: Engine, C: Clock> {
    broker: E,
    clock: C,
    waiting: BTreeMap<ConnId, oneshot::Sender<FrameOutcome>>,
    peers: PeerSender,
}

impl<E: Engine, C: Clock> Driver<E, C> {
    fn new(broker: E, clock: C, peers: PeerSender) -> Driver<E, C> {
        Driver {
            broker,
            clock,
            waiting: BTreeMap::new(),
            peers,
        }
    }

    /// How long the broker can wait for a request before it has work of its
    /// own.
    fn wait(&self) -> Duration {
        match self.broker.next_deadline() {
            Some(at) => Duration::from_nanos(at.saturating_nanos_since(self.clock.now())),
            None => Duration::from_secs(3600),
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Request { conn, frame, reply } => {
                match self.broker.handle_frame(conn, &frame, &self.clock) {
                    FrameOutcome::Pending => {
                        self.waiting.insert(conn, reply);
                    }
                    // A requester that went away no longer wants it.
                    outcome => {
                        let _ = reply.send(outcome);
                    }
                }
            }
            Command::Closed(conn) => {
                self.waiting.remove(&conn);
                self.broker.connection_closed(conn);
            }
            Command::Opened(conn, host) => self.broker.set_client_host(conn, host),
            Command::Peer(from, payload) => self.broker.peer_message(from, &payload, &self.clock),
        }
    }

    fn poll(&mut self) {
        for done in self.broker.poll(&self.clock) {
            if let Some(reply) = self.waiting.remove(&done.conn) {
                let _ = reply.send(done.outcome);
            }
        }
        for (to, payload) in self.broker.take_peer_messages() {
            (self.peers)(to, payload);
        }
    }

    fn shutdown(self) -> Result<(), String> {
        self.broker.shutdown()
    }
}

fn run_thread<E: Engine>(
    mut driver: Driver<E, SystemClock>,
    rx: mpsc::Receiver<Command>,
) -> Result<(), String> {
    loop {
        let mut next = match rx.recv_timeout(driver.wait()) {
            Ok(cmd) => Some(cmd),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        while let Some(cmd) = next {
            driver.handle(cmd);
            next = rx.try_recv().ok();
        }
        driver.poll();
    }
    driver.shutdown()
}

async fn run_task<E: Engine>(
    mut driver: Driver<E, TokioClock>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Command>,
) -> Result<(), String> {
    loop {
        // Biased: an unbiased select draws from the runtime's random
        // numbers, which a simulation does not control.
        let mut next = tokio::select! {
            biased;
            cmd = rx.recv() => match cmd {
                Some(cmd) => Some(cmd),
                None => break,
            },
            _ = tokio::time::sleep(driver.wait()) => None,
        };
        while let Some(cmd) = next {
            driver.handle(cmd);
            next = rx.try_recv().ok();
        }
        driver.poll();
    }
    driver.shutdown()
}
