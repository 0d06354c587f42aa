//! The network as the core sees it: addressed, unreliable message passing.
//!
//! A protocol state machine never opens a socket. It is handed inbound
//! [`Envelope`]s by its driver and emits outbound ones through [`Network`].
//! The driver decides what that means: TCP connections in `server/`, a
//! simulated network that delays, drops, duplicates, reorders and partitions
//! in `sim/`. Delivery is not guaranteed and order is not guaranteed, so the
//! protocols on top must not assume either.

use std::fmt;

/// A broker or controller node, as in Kafka's `node.id`.
pub type NodeId = i32;

/// One end of a message: a cluster node, or a client connection to a node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Node(NodeId),
    /// A client connection, numbered by whoever accepted it.
    Client(u64),
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Node(n) => write!(f, "n{n}"),
            Address::Client(c) => write!(f, "c{c}"),
        }
    }
}

/// A message in flight. The payload is opaque bytes: Kafka wire frames
/// between clients and brokers, and the inter-node protocols' own encodings.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub from: Address,
    pub to: Address,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}->{:?} ({} bytes)",
            self.from,
            self.to,
            self.payload.len()
        )
    }
}

/// Where the core sends messages. Sending never blocks and never fails
/// visibly: a lost message looks exactly like a slow one, as on a real network.
pub trait Network {
    fn send(&mut self, envelope: Envelope);
}

/// Collects outbound messages for a driver to take after a step, in the style
/// of etcd raft's `Ready`: the state machine appends, the driver drains.
#[derive(Default, Debug)]
pub struct Outbox {
    pub messages: Vec<Envelope>,
}

impl Outbox {
    pub fn drain(&mut self) -> std::vec::Drain<'_, Envelope> {
        self.messages.drain(..)
    }
}

impl Network for Outbox {
    fn send(&mut self, envelope: Envelope) {
        self.messages.push(envelope);
    }
}
