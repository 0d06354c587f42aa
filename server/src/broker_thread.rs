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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use odradek_core::io::clock::{Clock, Instant};
use odradek_core::io::Disk;
use odradek_core::kafka::{Broker, ConnId, FrameOutcome};
use tokio::sync::oneshot;

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

enum Command {
    Request {
        conn: ConnId,
        frame: Vec<u8>,
        reply: oneshot::Sender<FrameOutcome>,
    },
    Closed(ConnId),
}

/// A connection's way to the broker thread. Cheap to clone; when the last
/// clone is dropped the thread shuts the broker down cleanly and ends.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::Sender<Command>,
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

pub fn spawn<D>(
    broker: Broker<D>,
    clock: SystemClock,
) -> std::io::Result<(BrokerHandle, BrokerThread)>
where
    D: Disk + Clone + Send + 'static,
    D::File: Send,
{
    let (tx, rx) = mpsc::channel();
    let (end_tx, end_rx) = oneshot::channel();
    let join = std::thread::Builder::new()
        .name("odradek-broker".into())
        .spawn(move || {
            let _signal = EndSignal(Some(end_tx));
            run(broker, clock, rx)
        })?;
    Ok((
        BrokerHandle {
            tx,
            next_conn: std::sync::Arc::new(AtomicU64::new(1)),
        },
        BrokerThread {
            join,
            ended: Some(end_rx),
        },
    ))
}

impl BrokerHandle {
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

    pub fn closed(&self, conn: ConnId) {
        // The broker being gone already forgot the connection.
        let _ = self.tx.send(Command::Closed(conn));
    }
}

fn run<D: Disk + Clone>(
    mut broker: Broker<D>,
    clock: SystemClock,
    rx: mpsc::Receiver<Command>,
) -> Result<(), String> {
    let mut waiting: BTreeMap<ConnId, oneshot::Sender<FrameOutcome>> = BTreeMap::new();
    loop {
        let wait = match broker.next_deadline() {
            Some(at) => Duration::from_nanos(at.saturating_nanos_since(clock.now())),
            None => Duration::from_secs(3600),
        };
        let first = match rx.recv_timeout(wait) {
            Ok(cmd) => Some(cmd),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = first;
        while let Some(cmd) = next {
            match cmd {
                Command::Request { conn, frame, reply } => {
                    match broker.handle_frame(conn, &frame, &clock) {
                        FrameOutcome::Pending => {
                            waiting.insert(conn, reply);
                        }
                        // A requester that went away no longer wants it.
                        outcome => {
                            let _ = reply.send(outcome);
                        }
                    }
                }
                Command::Closed(conn) => {
                    waiting.remove(&conn);
                    broker.connection_closed(conn);
                }
            }
            next = rx.try_recv().ok();
        }
        for done in broker.poll(&clock) {
            if let Some(reply) = waiting.remove(&done.conn) {
                let _ = reply.send(done.outcome);
            }
        }
    }
    broker.shutdown()
}
