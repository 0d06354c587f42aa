//! The Kafka client listener: TCP connections speaking Kafka's framing, each
//! request handed to the sans-IO [`Broker`] and its response written back.
//!
//! # Framing
//!
//! A request is a 4-byte big-endian signed size followed by that many bytes;
//! a response is the same. A size of zero or less, or above
//! `socket.request.max.bytes`, closes the connection: there is no way to find
//! the next frame boundary, and the size is never allocated up front (the
//! buffer grows only as bytes actually arrive, so a client that claims
//! 100 MB and sends nothing costs nothing).
//!
//! # Ordering, pipelining, backpressure
//!
//! A connection's requests are handled one after the other by the task that
//! reads them (each handed to the broker thread, see
//! [`crate::broker_thread`]), and each response is written before the next
//! request is read — Kafka's own broker likewise mutes a connection while one
//! of its requests is in flight.
//! So responses leave in request order, a client may send many requests
//! before reading (they wait in the socket buffers), and a client that stops
//! reading stops being read from: TCP flow control is the backpressure.
//! Responses to pipelined requests are coalesced: the writer is flushed only
//! when no further complete request is already buffered.
//!
//! # Limits and shutdown
//!
//! `connections.max.idle.ms` closes a connection on which no request has
//! arrived (or no response could be written) for that long. Over
//! `max.connections`, a new connection is accepted and closed at once, so
//! the client sees a prompt close rather than a hanging connect. The
//! shutdown signal stops the accept loop (the listening socket is closed, so
//! new connects are refused); each connection finishes the request it is
//! handling, writes the response, and closes; requests not yet fully read are
//! dropped, which the client sees as a broken connection and retries.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use odradek_core::kafka::FrameOutcome;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::broker_thread::BrokerHandle;

/// Kafka's `socket.request.max.bytes` default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 104_857_600;
/// Kafka's `connections.max.idle.ms` default.
pub const DEFAULT_CONNECTIONS_MAX_IDLE_MS: u64 = 600_000;
/// Kafka's `max.connections` default is unlimited; a bound keeps a
/// connection flood from exhausting file descriptors, which would stop
/// well-behaved clients from connecting at all.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The body buffer starts at most this large and grows as bytes arrive.
const INITIAL_FRAME_CAPACITY: usize = 64 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// An accept error is usually resource exhaustion (EMFILE): retrying at once
/// would spin without anything having changed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Tuning for [`KafkaListener`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `socket.request.max.bytes`: the largest request size accepted.
    pub max_request_bytes: usize,
    /// `connections.max.idle.ms`; `None` never closes idle connections
    /// (Kafka's negative value).
    pub connections_max_idle: Option<Duration>,
    /// `max.connections`: concurrent client connections.
    pub max_connections: usize,
    /// After shutdown is signalled, how long to wait for connections to
    /// finish before abandoning them: a client that never reads its last
    /// response must not hold the process up for the whole idle timeout.
    pub shutdown_grace: Duration,
}

impl Default for ListenerConfig {
    fn default() -> ListenerConfig {
        ListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            connections_max_idle: Some(Duration::from_millis(DEFAULT_CONNECTIONS_MAX_IDLE_MS)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A bound listener that has not started serving yet. Binding first lets
/// the caller learn the port (port 0 in tests) before building the broker,
/// which must advertise it.
pub struct KafkaListener {
    listener: TcpListener,
    config: ListenerConfig,
}

impl KafkaListener {
    pub async fn bind(config: ListenerConfig) -> io::Result<KafkaListener> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(KafkaListener { listener, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` becomes true (or its sender is dropped), then
    /// waits for connections to finish (see the module documentation).
    ///
    /// Returns an error if a connection task panicked, which can only be the
    /// broker panicking: its state may be half-updated, so the process should
    /// stop and recover from disk rather than keep serving from it.
    pub async fn serve(
        self,
        broker: BrokerHandle,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let KafkaListener { listener, config } = self;
        serve_on(listener, config, broker, shutdown).await
    }
}

/// Where connections come from: tokio's TCP listener in production, a
/// simulated network's listener in the turmoil tests, so that both run the
/// same accept loop ([`serve_on`]).
pub trait Acceptor {
    type Stream: AsyncRead + AsyncWrite + Send + 'static;

    /// The next connection and its peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Responses are coalesced by hand (see `complete_frame_buffered`),
        // so Nagle's delay would only add latency to the last one.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        Ok((stream, peer))
    }
}

/// The accept loop of [`KafkaListener::serve`], over any [`Acceptor`]. The
/// acceptor is dropped when shutdown is signalled.
pub async fn serve_on<A: Acceptor>(
    mut acceptor: A,
    config: ListenerConfig,
    broker: BrokerHandle,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = check_joined(joined) {
                    failure = Some(e);
                    break;
                }
            }
            accepted = acceptor.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tracing::debug!(%peer, "accepted connection");
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            broker.clone(),
                            config.clone(),
                            shutdown.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        tracing::warn!(
                            %peer,
                            max_connections = config.max_connections,
                            "too many connections; closing the new one"
                        );
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Biased like every select here: an unbiased one draws
                    // from the runtime's random numbers, which the turmoil
                    // tests' seed does not reach.
                    tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    // Closing the socket now makes new connects fail at once instead of
    // queueing in the backlog while the connections drain.
    drop(acceptor);
    if failure.is_some() {
        connections.abort_all();
    }
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(joined) = connections.join_next().await {
            if let Err(e) = check_joined(joined) {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "connections still open after the shutdown grace period; abandoning them"
        );
        connections.shutdown().await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Binds `config.listen` and serves on it; see [`KafkaListener::serve`].
/// Tests that need the bound port use [`KafkaListener::bind`] and
/// [`KafkaListener::local_addr`] instead.
pub async fn serve(
    config: ListenerConfig,
    broker: BrokerHandle,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    KafkaListener::bind(config)
        .await?
        .serve(broker, shutdown)
        .await
}

/// A cancelled task is not a failure (it happens only when we abort them);
/// a panicked one is.
fn check_joined(joined: Result<(), tokio::task::JoinError>) -> io::Result<()> {
    match joined {
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "a connection task panicked; stopping the listener");
            Err(io::Error::other(format!("connection task panicked: {e}")))
        }
        _ => Ok(()),
    }
}

/// Resolves once shutdown is signalled or its sender is dropped. Checks the
/// current value first, so a receiver cloned after the signal stops too.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is also a stop.
    let _ = shutdown.wait_for(|&s| s).await;
}

/// Why reading a request failed.
#[derive(Debug)]
enum FrameError {
    /// A size the framing cannot accept.
    BadSize(i32),
    /// The peer closed inside a frame.
    Short {
        expected: usize,
        got: usize,
    },
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

/// Reads one request frame (without its size). `Ok(None)` is a clean close
/// between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_request_bytes: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut size = [0u8; 4];
    // A plain read first, so that a close before any byte of the next frame
    // (the normal way for a client to leave) is told apart from a close
    // inside the size.
    let first = reader.read(&mut size).await?;
    if first == 0 {
        return Ok(None);
    }
    let mut got = first;
    while got < size.len() {
        let n = reader.read(&mut size[got..]).await?;
        if n == 0 {
            return Err(FrameError::Short { expected: 4, got });
        }
        got += n;
    }
    let size = i32::from_be_bytes(size);
    let len = match usize::try_from(size) {
        Ok(len) if len > 0 && len <= max_request_bytes => len,
        _ => return Err(FrameError::BadSize(size)),
    };
    let mut frame = Vec::with_capacity(len.min(INITIAL_FRAME_CAPACITY));
    // `len` came from an i32, so it fits a u64.
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if frame.len() < len {
        return Err(FrameError::Short {
            expected: len,
            got: frame.len(),
        });
    }
    Ok(Some(frame))
}

/// Whether `buffered` already holds a whole frame (size and body), i.e. the
/// client pipelined another request and the response may wait to be
/// written together with the next one.
fn complete_frame_buffered(buffered: &[u8]) -> bool {
    let Some(size) = buffered.get(..4) else {
        return false;
    };
    let size = i32::from_be_bytes([size[0], size[1], size[2], size[3]]);
    usize::try_from(size).is_ok_and(|len| buffered.len() - 4 >= len)
}

/// Runs `fut` under the idle timeout, if there is one; `None` if it expired.
async fn within<T>(idle: Option<Duration>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    match idle {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Serves one client connection until it closes, goes idle, misbehaves or
/// the listener shuts down. Generic over the stream so the same code runs
/// on tokio's TCP and on a simulated network (the turmoil tests).
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    broker: BrokerHandle,
    config: Arc<ListenerConfig>,
    shutdown: watch::Receiver<bool>,
    // Held for the connection's lifetime: dropping it frees the slot.
    _permit: OwnedSemaphorePermit,
) {
    let conn = broker.new_connection();
    broker.opened(conn, peer);
    connection(stream, peer, conn, &broker, &config, shutdown).await;
    broker.closed(conn);
}

async fn connection<S: AsyncRead + AsyncWrite>(
    stream: S,
    peer: SocketAddr,
    conn: odradek_core::kafka::ConnId,
    broker: &BrokerHandle,
    config: &ListenerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    let idle = config.connections_max_idle;
    loop {
        let read = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => {
                tracing::debug!(%peer, "closing connection: shutting down");
                break;
            }
            read = within(idle, read_frame(&mut reader, config.max_request_bytes)) => read,
        };
        let frame = match read {
            None => {
                tracing::debug!(
                    %peer,
                    idle_ms = idle.map_or(0, |d| d.as_millis() as u64),
                    "closing idle connection"
                );
                break;
            }
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => {
                tracing::debug!(%peer, "client closed the connection");
                break;
            }
            Some(Err(FrameError::BadSize(size))) => {
                tracing::warn!(
                    %peer,
                    size,
                    max_request_bytes = config.max_request_bytes,
                    "invalid request size; closing connection"
                );
                break;
            }
            Some(Err(FrameError::Short { expected, got })) => {
                tracing::debug!(%peer, expected, got, "connection closed inside a request");
                break;
            }
            Some(Err(FrameError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "read failed; closing connection");
                break;
            }
        };
        // No idle limit while the broker works on it: a long-poll fetch
        // may rightly take its max_wait_ms. A shutdown stops the wait.
        let outcome = tokio::select! {
            biased;
            outcome = broker.call(conn, frame) => outcome,
            _ = stopped(&mut shutdown) => {
                tracing::debug!(%peer, "closing connection: shutting down during a request");
                break;
            }
        };
        let close = match outcome {
            FrameOutcome::Respond(bytes) => {
                let Ok(size) = i32::try_from(bytes.len()) else {
                    tracing::error!(%peer, len = bytes.len(), "response too large to frame; closing connection");
                    break;
                };
                let written = within(idle, async {
                    writer.write_all(&size.to_be_bytes()).await?;
                    writer.write_all(&bytes).await
                })
                .await;
                if !write_ok(peer, written) {
                    break;
                }
                false
            }
            FrameOutcome::NoResponse => false,
            FrameOutcome::Close(reason) => {
                tracing::warn!(%peer, %reason, "closing connection");
                true
            }
            FrameOutcome::Pending => {
                tracing::error!(%peer, "the broker thread passed on a pending outcome; closing connection");
                true
            }
        };
        // On a close, the flush after the loop sends what was answered.
        if close {
            break;
        }
        if !complete_frame_buffered(reader.buffer())
            && !write_ok(peer, within(idle, writer.flush()).await)
        {
            break;
        }
    }
    // Whatever was answered before the close still goes out; a failure here
    // means the client is gone, and there is nothing left to tell it.
    let _ = within(idle, async {
        writer.flush().await?;
        writer.shutdown().await
    })
    .await;
}

/// Logs a failed or stalled write; `true` if the write went through.
fn write_ok(peer: SocketAddr, written: Option<io::Result<()>>) -> bool {
    match written {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "write failed; closing connection");
            false
        }
        None => {
            tracing::debug!(%peer, "client stopped reading responses; closing idle connection");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all_frames(input: &[u8], max: usize) -> Vec<Result<Option<Vec<u8>>, String>> {
        let mut reader = input;
        let mut out = Vec::new();
        loop {
            let r = read_frame(&mut reader, max).await;
            let end = !matches!(r, Ok(Some(_)));
            out.push(r.map_err(|e| format!("{e:?}")));
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_are_split_by_their_size() {
        let mut input = Vec::new();
        for body in [&b"abc"[..], b"", b"z"] {
            if !body.is_empty() {
                input.extend_from_slice(&(body.len() as i32).to_be_bytes());
                input.extend_from_slice(body);
            }
        }
        let frames = read_all_frames(&input, 100).await;
        assert_eq!(
            frames,
            vec![Ok(Some(b"abc".to_vec())), Ok(Some(b"z".to_vec())), Ok(None)]
        );
    }

    #[tokio::test]
    async fn bad_sizes_and_short_frames_are_errors() {
        for (input, want) in [
            (0i32.to_be_bytes().to_vec(), "BadSize(0)"),
            ((-1i32).to_be_bytes().to_vec(), "BadSize(-1)"),
            (101i32.to_be_bytes().to_vec(), "BadSize(101)"),
            (i32::MAX.to_be_bytes().to_vec(), "BadSize(2147483647)"),
            (vec![0, 0, 0], "Short { expected: 4, got: 3 }"),
            (
                [&10i32.to_be_bytes()[..], b"abc"].concat(),
                "Short { expected: 10, got: 3 }",
            ),
        ] {
            let frames = read_all_frames(&input, 100).await;
            assert_eq!(frames, vec![Err(want.to_string())], "{input:?}");
        }
        // Exactly the maximum is accepted.
        let input = [&4i32.to_be_bytes()[..], b"abcd"].concat();
        assert_eq!(
            read_all_frames(&input, 4).await[0],
            Ok(Some(b"abcd".to_vec()))
        );
    }

    #[test]
    fn complete_frame_detection() {
        assert!(!complete_frame_buffered(b""));
        assert!(!complete_frame_buffered(&[0, 0, 0]));
        assert!(!complete_frame_buffered(&[0, 0, 0, 2, 1]));
        assert!(complete_frame_buffered(&[0, 0, 0, 2, 1, 2]));
        assert!(complete_frame_buffered(&[0, 0, 0, 2, 1, 2, 9]));
        // A bad size is for the reader to reject; nothing to wait for.
        assert!(!complete_frame_buffered(&[0xff, 0xff, 0xff, 0xff, 1]));
    }
}
