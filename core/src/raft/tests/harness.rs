//! A hand-driven cluster for scenario tests: messages are delivered in the
//! order sent, through an optional filter; time moves only when a test
//! says so, and only the nodes it names are ticked.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::io::disk::mem::MemDisk;
use crate::io::{Instant, NodeId};
use crate::raft::codec::{put_blob, put_u64, Reader};
use crate::raft::{
    Apply, Config, DiskStore, EntryKind, MemStore, Message, ProposeError, Raft, RaftStore,
};

/// A store the harness can crash.
pub trait TestStore: RaftStore + Sized {
    /// Power loss: unsynced writes beyond the first `keep` are lost.
    fn crash(&mut self, keep: usize);
}

impl TestStore for MemStore {
    fn crash(&mut self, keep: usize) {
        MemStore::crash(self, keep)
    }
}

/// `MemDisk` makes every write durable at once: a crash loses nothing, and
/// reopening exercises recovery from the files.
impl TestStore for DiskStore<MemDisk> {
    fn crash(&mut self, _keep: usize) {}
}

/// The application a test runs on each node: it keeps every applied data
/// entry, and checks that entries come in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct App {
    /// (offset, epoch, data) of each applied data entry.
    pub state: Vec<(u64, u64, Vec<u8>)>,
    pub applied_end: u64,
}

impl App {
    pub fn apply(&mut self, node: NodeId, a: Apply) {
        match a {
            Apply::Restore(s) => {
                self.state = decode_state(&s.data);
                self.applied_end = s.end();
            }
            Apply::Entry(e) => {
                assert_eq!(
                    e.offset, self.applied_end,
                    "node {node} applied {e:?} out of order"
                );
                self.applied_end = e.offset + 1;
                if e.kind == EntryKind::Data {
                    self.state.push((e.offset, e.epoch, e.data));
                }
            }
        }
    }

    pub fn snapshot_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.state.len() as u64);
        for (o, e, d) in &self.state {
            put_u64(&mut out, *o);
            put_u64(&mut out, *e);
            put_blob(&mut out, d);
        }
        out
    }
}

pub fn decode_state(data: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut r = Reader::new(data);
    let n = r.u64().expect("count");
    (0..n)
        .map(|_| {
            (
                r.u64().expect("offset"),
                r.u64().expect("epoch"),
                r.blob(usize::MAX).expect("data"),
            )
        })
        .collect()
}

pub fn config(id: NodeId, n: i32) -> Config {
    Config::new(id, 1..=n)
}

/// Decides whether a message from `.0` to `.1` is delivered.
pub type Filter = Box<dyn Fn(NodeId, NodeId, &Message) -> bool>;

pub struct Net<S> {
    pub nodes: BTreeMap<NodeId, Option<Raft<S>>>,
    pub down: BTreeMap<NodeId, S>,
    pub configs: BTreeMap<NodeId, Config>,
    pub queue: VecDeque<(NodeId, NodeId, Message)>,
    pub filter: Option<Filter>,
    pub now: Instant,
    pub rng: ChaCha8Rng,
    pub apps: BTreeMap<NodeId, App>,
}

impl Net<MemStore> {
    pub fn mem(n: i32) -> Net<MemStore> {
        Net::with(n, config, |_| MemStore::new())
    }
}

impl<S: TestStore> Net<S> {
    pub fn with(
        n: i32,
        config: impl Fn(NodeId, i32) -> Config,
        store: impl Fn(NodeId) -> S,
    ) -> Net<S> {
        let mut net = Net {
            nodes: BTreeMap::new(),
            down: BTreeMap::new(),
            configs: BTreeMap::new(),
            queue: VecDeque::new(),
            filter: None,
            now: Instant::from_millis(1),
            rng: ChaCha8Rng::seed_from_u64(7),
            apps: BTreeMap::new(),
        };
        for id in 1..=n {
            let cfg = config(id, n);
            let raft = Raft::new(store(id), cfg.clone(), net.now, &mut net.rng).expect("new");
            net.configs.insert(id, cfg);
            net.nodes.insert(id, Some(raft));
            net.apps.insert(id, App::default());
        }
        net
    }

    pub fn raft(&self, id: NodeId) -> &Raft<S> {
        self.nodes[&id].as_ref().expect("node is up")
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft<S> {
        self.nodes
            .get_mut(&id)
            .and_then(Option::as_mut)
            .expect("node is up")
    }

    /// Takes a node's output: messages into the queue, applies into its app.
    pub fn collect(&mut self, id: NodeId) {
        let Some(raft) = self.nodes.get_mut(&id).and_then(Option::as_mut) else {
            return;
        };
        let ready = raft.take_ready();
        for out in ready.messages {
            self.queue.push_back((id, out.to, out.msg));
        }
        let app = self.apps.get_mut(&id).expect("app");
        for a in ready.apply {
            app.apply(id, a);
        }
    }

    /// Delivers until nothing is in flight.
    pub fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages never quiesce");
            if let Some(f) = &self.filter {
                if !f(from, to, &msg) {
                    continue;
                }
            }
            let now = self.now;
            let Some(raft) = self.nodes.get_mut(&to).and_then(Option::as_mut) else {
                continue;
            };
            raft.step(now, from, msg, &mut self.rng).expect("step");
            self.collect(to);
        }
    }

    /// Moves time on by `ms`, ticking the nodes in `tick` (every node if
    /// `None`) at their deadlines and delivering everything in between.
    pub fn advance(&mut self, ms: u64, tick: Option<&[NodeId]>) {
        let end = self.now.plus_millis(ms);
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|(id, _)| tick.is_none_or(|t| t.contains(id)))
                .filter_map(|(id, r)| r.as_ref().map(|r| (r.next_deadline(), *id)))
                .min();
            let Some((at, id)) = next else { break };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            let now = self.now;
            let raft = self
                .nodes
                .get_mut(&id)
                .and_then(Option::as_mut)
                .expect("up");
            raft.tick(now, &mut self.rng).expect("tick");
            self.collect(id);
            self.deliver_all();
        }
        self.now = end;
    }

    pub fn campaign(&mut self, id: NodeId) {
        let now = self.now;
        let raft = self
            .nodes
            .get_mut(&id)
            .and_then(Option::as_mut)
            .expect("up");
        raft.campaign(now, &mut self.rng).expect("campaign");
        self.collect(id);
        self.deliver_all();
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<u64, ProposeError> {
        let r = self.raft_mut(id).propose(data.to_vec());
        self.collect(id);
        r
    }

    /// Has the node's application snapshot everything it applied.
    pub fn compact(&mut self, id: NodeId) {
        let app = &self.apps[&id];
        let (last, data) = (app.applied_end - 1, app.snapshot_data());
        self.raft_mut(id).compact(last, data).expect("compact");
    }

    pub fn crash(&mut self, id: NodeId, keep: usize) {
        let raft = self.nodes.insert(id, None).flatten().expect("node is up");
        let mut store = raft.into_store();
        store.crash(keep);
        self.down.insert(id, store);
    }

    pub fn restart(&mut self, id: NodeId) {
        let store = self.down.remove(&id).expect("node is down");
        let raft =
            Raft::new(store, self.configs[&id].clone(), self.now, &mut self.rng).expect("restart");
        self.nodes.insert(id, Some(raft));
        self.apps.insert(id, App::default());
        self.collect(id);
    }

    /// The nodes that think they lead, with their epochs.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter_map(|(id, r)| {
                r.as_ref()
                    .filter(|r| r.is_leader())
                    .map(|r| (*id, r.epoch()))
            })
            .collect()
    }

    /// Runs until exactly one leader of the highest epoch exists.
    pub fn elect_any(&mut self) -> NodeId {
        for _ in 0..100 {
            self.advance(50, None);
            let leaders = self.leaders();
            let max_epoch = self.nodes.values().flatten().map(|r| r.epoch()).max();
            if let Some(&(id, e)) = leaders.iter().find(|(_, e)| Some(*e) == max_epoch) {
                let _ = e;
                return id;
            }
        }
        panic!("no leader elected");
    }

    /// Blocks every message to or from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        self.filter = Some(Box::new(move |from, to, _| from != id && to != id));
    }

    pub fn heal(&mut self) {
        self.filter = None;
    }

    /// The data entries applied by a node's application.
    pub fn applied(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.apps[&id].state.iter().map(|s| s.2.clone()).collect()
    }
}
