//! The simulated network: every message between nodes, and between clients
//! and nodes, passes through here, where it is delayed, dropped, duplicated
//! or cut off by a partition, as the run's seed decides.
//!
//! Nodes send into their own `Outbox` (the core's `Network`); the simulator
//! drains each outbox after a node's step and hands the messages to
//! [`SimNetwork::submit`] with the current time, then delivers whatever
//! [`SimNetwork::deliver_due`] returns. A link cut while a message is in
//! flight drops the message at delivery, as a real partition would.

use odradek_core::io::{Address, Envelope, Instant, NodeId, Random, TimerQueue};
use odradek_nemesis::{Fault, NetFaults};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cut: u64,
}

pub struct SimNetwork {
    rng: ChaCha8Rng,
    faults: NetFaults,
    in_flight: TimerQueue<Envelope>,
    /// Directed links that are down: (from node, to node).
    cut: BTreeSet<(NodeId, NodeId)>,
    stats: NetStats,
}

/// The node a message leaves from or arrives at. A client talks to one node
/// and shares its fate: partitions are between nodes.
fn node_of(a: Address) -> Option<NodeId> {
    match a {
        Address::Node(n) => Some(n),
        Address::Client(_) => None,
    }
}

impl SimNetwork {
    pub fn new(rng: ChaCha8Rng, faults: NetFaults) -> SimNetwork {
        SimNetwork {
            rng,
            faults,
            in_flight: TimerQueue::new(),
            cut: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    pub fn set_faults(&mut self, faults: NetFaults) {
        self.faults = faults;
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    fn link_up(&self, e: &Envelope) -> bool {
        match (node_of(e.from), node_of(e.to)) {
            (Some(a), Some(b)) => !self.cut.contains(&(a, b)),
            _ => true,
        }
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.faults.delay_us;
        self.rng.between(lo, hi.max(lo)) * 1000
    }

    /// Takes a message sent at `now`. Returns when it will arrive (its
    /// first copy), or `None` if it is dropped: a connection-oriented
    /// driver turns a drop into a reset, as TCP gives up on a connection
    /// rather than lose a segment.
    pub fn submit(&mut self, now: Instant, envelope: Envelope) -> Option<Instant> {
        self.stats.sent += 1;
        let lost = self.rng.chance(self.faults.loss);
        let twice = self.rng.chance(self.faults.duplicate);
        if !self.link_up(&envelope) {
            self.stats.cut += 1;
            return None;
        }
        if lost {
            self.stats.lost += 1;
            return None;
        }
        let mut first = None;
        if twice {
            self.stats.duplicated += 1;
            let at = now + self.delay();
            self.in_flight.schedule(at, envelope.clone());
            first = Some(at);
        }
        let at = now + self.delay();
        self.in_flight.schedule(at, envelope);
        Some(first.map_or(at, |f: Instant| f.min(at)))
    }

    /// When the next message arrives, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.next_deadline()
    }

    /// Every message due by `now`, in arrival order, minus those whose link
    /// went down while they were in flight.
    pub fn deliver_due(&mut self, now: Instant) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some((_, e)) = self.in_flight.pop_due(now) {
            if self.link_up(&e) {
                self.stats.delivered += 1;
                out.push(e);
            } else {
                self.stats.cut += 1;
            }
        }
        out
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    pub fn partition_one_way(&mut self, from: &[NodeId], to: &[NodeId]) {
        for &f in from {
            for &t in to {
                if f != t {
                    self.cut.insert((f, t));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether the link from `from` to `to` is up.
    pub fn link_is_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Applies a nemesis fault if it is a network fault; returns whether it
    /// was one. [`Fault::IsolateLeader`] is not: only the executor knows
    /// who leads, and it applies the partition that names the node.
    pub fn apply(&mut self, fault: &Fault) -> bool {
        match fault {
            Fault::Partition { side_a, side_b } => self.partition(side_a, side_b),
            Fault::PartitionOneWay { from, to } => self.partition_one_way(from, to),
            Fault::Bridge { side_a, side_b, .. } => self.partition(side_a, side_b),
            Fault::Heal => self.heal(),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn msg(from: Address, to: Address, tag: u8) -> Envelope {
        Envelope {
            from,
            to,
            payload: vec![tag],
        }
    }

    fn net(seed: u64, faults: NetFaults) -> SimNetwork {
        SimNetwork::new(ChaCha8Rng::seed_from_u64(seed), faults)
    }

    fn drain(n: &mut SimNetwork) -> Vec<Envelope> {
        n.deliver_due(Instant(u64::MAX))
    }

    #[test]
    fn delivers_after_delay_and_reorders() {
        let mut n = net(
            1,
            NetFaults {
                delay_us: (10, 5000),
                ..NetFaults::default()
            },
        );
        for i in 0..100u8 {
            n.submit(Instant::ZERO, msg(Address::Node(1), Address::Node(2), i));
        }
        assert!(
            n.deliver_due(Instant(9_999)).is_empty(),
            "nothing arrives before the minimum delay"
        );
        let got: Vec<u8> = drain(&mut n).iter().map(|e| e.payload[0]).collect();
        assert_eq!(got.len(), 100);
        assert_ne!(got, (0..100).collect::<Vec<u8>>(), "varying delays reorder");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn loss_and_duplication_happen_at_their_rates() {
        let mut n = net(
            2,
            NetFaults {
                loss: 0.3,
                duplicate: 0.2,
                delay_us: (1, 1),
            },
        );
        for _ in 0..10_000 {
            n.submit(Instant::ZERO, msg(Address::Node(1), Address::Node(2), 0));
        }
        let delivered = drain(&mut n).len();
        let s = n.stats().clone();
        assert_eq!(s.delivered as usize, delivered);
        assert!((2700..3300).contains(&s.lost), "{s:?}");
        assert!((1100..1700).contains(&s.duplicated), "{s:?}");
        assert_eq!(delivered as u64, 10_000 - s.lost + s.duplicated);
    }

    #[test]
    fn partitions_cut_links_including_messages_in_flight() {
        let mut n = net(3, NetFaults::none());
        n.submit(Instant::ZERO, msg(Address::Node(1), Address::Node(2), 0));
        n.apply(&Fault::PartitionOneWay {
            from: vec![1],
            to: vec![2],
        });
        n.submit(Instant::ZERO, msg(Address::Node(1), Address::Node(2), 1));
        n.submit(Instant::ZERO, msg(Address::Node(2), Address::Node(1), 2));
        n.submit(Instant::ZERO, msg(Address::Client(7), Address::Node(2), 3));
        let got: BTreeSet<u8> = drain(&mut n).iter().map(|e| e.payload[0]).collect();
        assert_eq!(
            got,
            BTreeSet::from([2, 3]),
            "one way: 1->2 cut, in flight too; 2->1 and clients flow"
        );
        n.apply(&Fault::Partition {
            side_a: vec![1],
            side_b: vec![2, 3],
        });
        n.submit(Instant::ZERO, msg(Address::Node(3), Address::Node(1), 4));
        n.submit(Instant::ZERO, msg(Address::Node(2), Address::Node(3), 5));
        let got: Vec<u8> = drain(&mut n).iter().map(|e| e.payload[0]).collect();
        assert_eq!(got, vec![5]);
        assert!(n.apply(&Fault::Heal));
        assert!(!n.apply(&Fault::Crash { node: 1 }));
        n.submit(Instant::ZERO, msg(Address::Node(1), Address::Node(2), 6));
        assert_eq!(drain(&mut n).len(), 1);
    }

    #[test]
    fn same_seed_same_network() {
        let run = |seed| {
            let mut n = net(
                seed,
                NetFaults {
                    loss: 0.1,
                    duplicate: 0.1,
                    delay_us: (1, 900),
                },
            );
            for i in 0..500u32 {
                n.submit(
                    Instant(i as u64 * 1000),
                    msg(Address::Node(1), Address::Node(2), i as u8),
                );
            }
            drain(&mut n)
                .iter()
                .map(|e| e.payload[0])
                .collect::<Vec<u8>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
