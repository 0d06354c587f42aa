//! Three quorum nodes on a reliable in-process network: the leader becomes
//! the controller, brokers register and topics are created through it,
//! every node's image agrees, snapshots are taken and restored, and when
//! the controller's node crashes another takes over and serves.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::controller::{Heartbeat, NewTopic, Registration};
use super::quorum::{Outcome, QuorumConfig, QuorumNode};
use super::*;
use crate::io::{Address, Instant};
use crate::raft::{self, MemStore};

type Node = QuorumNode<MemStore, u32>;

struct Net {
    nodes: BTreeMap<i32, Node>,
    /// Stores of crashed nodes.
    down: BTreeMap<i32, MemStore>,
    now: Instant,
    rng: ChaCha8Rng,
    done: Vec<(u32, Outcome)>,
}

fn config(id: i32) -> QuorumConfig {
    QuorumConfig {
        raft: raft::Config::new(id, [1, 2, 3]),
        controller: ControllerConfig {
            cluster_id: "c".into(),
            ..ControllerConfig::default()
        },
        snapshot_every: 5,
    }
}

impl Net {
    fn new() -> Net {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let now = Instant::from_millis(1);
        let nodes = (1..=3)
            .map(|id| {
                (
                    id,
                    Node::new(MemStore::new(), config(id), now, &mut rng).unwrap(),
                )
            })
            .collect();
        Net {
            nodes,
            down: BTreeMap::new(),
            now,
            rng,
            done: Vec::new(),
        }
    }

    /// Delivers every message until none is left, then lets `ms` pass in
    /// 10 ms steps, ticking every node.
    fn run(&mut self, ms: u64) {
        let end = self.now.as_millis() + ms;
        loop {
            loop {
                let mut msgs = Vec::new();
                for n in self.nodes.values_mut() {
                    msgs.extend(n.take_messages());
                    self.done.extend(n.take_done());
                }
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    let (Address::Node(from), Address::Node(to)) = (m.from, m.to) else {
                        continue;
                    };
                    if let Some(n) = self.nodes.get_mut(&to) {
                        n.step(self.now, from, &m.payload, &mut self.rng).unwrap();
                    }
                }
            }
            if self.now.as_millis() >= end {
                break;
            }
            self.now = self.now.plus_millis(10);
            for n in self.nodes.values_mut() {
                if n.next_deadline() <= self.now {
                    n.tick(self.now, &mut self.rng).unwrap();
                }
            }
        }
    }

    fn controller(&mut self) -> (i32, &mut Node) {
        let (id, n) = self
            .nodes
            .iter_mut()
            .find(|(_, n)| n.controller().is_some())
            .expect("a controller");
        (*id, n)
    }

    fn images_agree(&self) {
        let images: Vec<&MetadataImage> = self.nodes.values().map(|n| n.image()).collect();
        let max = images.iter().map(|i| i.offset).max().unwrap();
        for i in &images {
            assert_eq!(i.offset, max, "a node lags after quiet");
            assert_eq!(*i, images[0]);
        }
    }

    fn crash(&mut self, id: i32) {
        let n = self.nodes.remove(&id).unwrap();
        let mut store = n.raft().store().clone();
        store.crash(0);
        self.down.insert(id, store);
    }

    fn restart(&mut self, id: i32) {
        let store = self.down.remove(&id).unwrap();
        let n = Node::new(store, config(id), self.now, &mut self.rng).unwrap();
        self.nodes.insert(id, n);
    }
}

fn register(net: &mut Net, broker: i32, waiter: u32) {
    let now = net.now;
    let (_, node) = net.controller();
    let req = Registration {
        id: broker,
        cluster_id: "c".into(),
        incarnation: broker as u128,
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "h".into(),
            port: 9000 + broker as u16,
        }],
        rack: None,
    };
    let batch = node
        .controller_mut()
        .unwrap()
        .register(&req, now.as_millis())
        .unwrap();
    node.propose(now, batch, waiter).unwrap();
}

/// Every registered broker heartbeats, caught up with the controller.
fn heartbeat_all(net: &mut Net) {
    let now = net.now;
    let (_, node) = net.controller();
    let brokers: Vec<(i32, i64)> = node
        .image()
        .brokers
        .values()
        .map(|b| (b.id, b.epoch))
        .collect();
    let offset = node.image().offset;
    for (id, epoch) in brokers {
        let req = Heartbeat {
            id,
            epoch,
            metadata_offset: offset,
            want_fence: false,
        };
        let (batch, _) = node
            .controller_mut()
            .unwrap()
            .heartbeat(&req, now.as_millis())
            .unwrap();
        if !batch.is_empty() {
            node.propose(now, batch, 1000 + id as u32).unwrap();
        }
    }
}

fn create(net: &mut Net, name: &str, waiter: u32) {
    let now = net.now;
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(waiter));
    let (_, node) = net.controller();
    let t = NewTopic {
        name: name.into(),
        partitions: 3,
        replication_factor: 1,
        assignments: BTreeMap::new(),
        configs: BTreeMap::new(),
    };
    let batch = node
        .controller()
        .unwrap()
        .create_topic(&t, &mut rng)
        .unwrap();
    node.propose(now, batch, waiter).unwrap();
}

#[test]
fn the_leader_controls_the_images_agree_and_a_crash_hands_over() {
    let mut net = Net::new();
    net.run(2_000);
    let (first, _) = net.controller();
    for b in 1..=3 {
        register(&mut net, b, b as u32);
    }
    net.run(100);
    heartbeat_all(&mut net);
    net.run(100);
    assert!(net.nodes[&first]
        .image()
        .brokers
        .values()
        .all(|b| !b.fenced));
    create(&mut net, "a", 10);
    net.run(100);
    for w in [1, 2, 3, 10] {
        assert!(
            net.done
                .iter()
                .any(|(x, o)| *x == w && matches!(o, Outcome::Committed(_))),
            "{w}: {:?}",
            net.done
        );
    }
    net.images_agree();
    assert_eq!(net.nodes[&first].image().brokers.len(), 3);
    assert!(net.nodes[&first].image().topic("a").is_some());
    // Enough entries for snapshots: more topics.
    for i in 0..8 {
        create(&mut net, &format!("t{i}"), 20 + i);
        net.run(50);
    }
    net.images_agree();
    assert!(
        net.nodes.values().all(|n| n.raft().snapshot().is_some()),
        "every node snapshotted"
    );

    // The controller's node crashes: another is elected and serves.
    net.crash(first);
    net.run(3_000);
    let (second, _) = net.controller();
    assert_ne!(second, first);
    create(&mut net, "after", 99);
    net.run(100);
    assert!(net
        .done
        .iter()
        .any(|(w, o)| *w == 99 && matches!(o, Outcome::Committed(_))));
    // The crashed node comes back from its snapshot and log and catches up.
    net.restart(first);
    net.run(1_000);
    net.images_agree();
    let img = net.nodes[&first].image();
    assert!(img.topic("after").is_some() && img.topic("t7").is_some());
    // The brokers went silent: the controller fenced them.
    net.run(10_000);
    assert!(net.nodes[&first].image().brokers.values().all(|b| b.fenced));
}

#[test]
fn a_follower_refuses_to_propose_and_names_the_leader() {
    let mut net = Net::new();
    net.run(2_000);
    let (leader, _) = net.controller();
    let now = net.now;
    let follower = net
        .nodes
        .values_mut()
        .find(|n| n.controller().is_none())
        .unwrap();
    let err = follower.propose(now, vec![], 1).unwrap_err();
    assert_eq!(err, (quorum::NOT_CONTROLLER, Some(leader)));
}
