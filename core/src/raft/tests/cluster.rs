//! A seeded, deterministic cluster under faults, with the Raft guarantees
//! checked after every event.
//!
//! Each seed runs a safety phase — messages dropped, duplicated, delayed
//! and so reordered; partitions (one node, two halves, one-way links);
//! power loss (unsynced writes lost); process kills; syncs that fail —
//! then a liveness phase with every fault healed, in which the cluster must
//! elect a leader, commit a fresh entry and converge within a bound.
//! Messages travel encoded, so the codec is exercised too. Checked
//! throughout:
//!
//! * election safety: at most one leader per epoch, ever;
//! * committed entries never change: the first node to pass an offset with
//!   its high watermark fixes the entry there, and every other node's
//!   committed entry, applied entry and restored snapshot must agree;
//! * log matching: two logs with an entry of the same epoch at the same
//!   offset are identical up to there;
//! * leader completeness: a new leader holds every committed entry;
//! * high watermarks never move back within a process lifetime and never
//!   pass the log end; applied entries come in order, once each.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::harness::{decode_state, App};
use crate::io::{Instant, NodeId, Random};
use crate::raft::{Apply, Config, Entry, EntryKind, MemStore, Raft, RaftError, Role};

const MS: u64 = 1_000_000;

struct Node {
    raft: Option<Raft<MemStore>>,
    /// While down: the store, and when the node comes back.
    down: Option<(MemStore, Instant)>,
    app: App,
    /// What the invariants last saw: high watermark checked up to, role,
    /// and a signature of the log.
    hw_checked: u64,
    role: Role,
    log_sig: (u64, u64, u64),
}

#[derive(Clone, Copy, Debug)]
struct Rates {
    drop: f64,
    dup: f64,
    max_delay_ms: u64,
}

/// Which directed links are cut.
#[derive(Default)]
struct Partition {
    cut: BTreeSet<(NodeId, NodeId)>,
}

struct Sim {
    seed: u64,
    n: i32,
    config: Config,
    /// Faults, delays, client choices.
    rng: ChaCha8Rng,
    /// Handed to the nodes (election timeouts).
    node_rng: ChaCha8Rng,
    nodes: BTreeMap<NodeId, Node>,
    in_flight: BTreeMap<(Instant, u64), (NodeId, NodeId, Vec<u8>)>,
    seq: u64,
    now: Instant,
    faults: bool,
    rates: Rates,
    partition: Partition,
    next_fault: Instant,
    heal_at: Option<Instant>,
    next_propose: Instant,
    proposals: u64,
    proposing: bool,
    // The oracle.
    leaders: BTreeMap<u64, NodeId>,
    committed: Vec<(u64, EntryKind, Vec<u8>)>,
    trace: u64,
    events: u64,
    stats: Stats,
}

/// How much of each thing happened, to keep the test honest about coverage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    power_losses: u64,
    kills: u64,
    sync_failures: u64,
    partitions: u64,
    compactions: u64,
    snapshots_installed: u64,
    elections: u64,
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

impl Sim {
    fn new(seed: u64, n: i32) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut config = Config::new(1, 1..=n);
        config.max_batch_entries = rng.between(1, 8) as usize;
        let rates = Rates {
            drop: rng.unit() * 0.2,
            dup: rng.unit() * 0.1,
            max_delay_ms: rng.between(2, 40),
        };
        let mut node_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let now = Instant::from_millis(1);
        let nodes = (1..=n)
            .map(|id| {
                let cfg = Config {
                    node_id: id,
                    ..config.clone()
                };
                let raft = Raft::new(MemStore::new(), cfg, now, &mut node_rng).expect("new");
                (
                    id,
                    Node {
                        raft: Some(raft),
                        down: None,
                        app: App::default(),
                        hw_checked: 0,
                        role: Role::Follower,
                        log_sig: (0, 0, 0),
                    },
                )
            })
            .collect();
        Sim {
            seed,
            n,
            config,
            rng,
            node_rng,
            nodes,
            in_flight: BTreeMap::new(),
            seq: 0,
            now,
            faults: true,
            rates,
            partition: Partition::default(),
            next_fault: now.plus_millis(100),
            heal_at: None,
            next_propose: now.plus_millis(10),
            proposals: 0,
            proposing: true,
            leaders: BTreeMap::new(),
            committed: Vec::new(),
            trace: 0xcbf29ce484222325,
            events: 0,
            stats: Stats::default(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {} ({} nodes) at {:?}: {what}",
            self.seed, self.n, self.now
        )
    }

    fn trace(&mut self, tag: &str, id: NodeId, bytes: &[u8]) {
        self.events += 1;
        fnv(&mut self.trace, &self.now.0.to_be_bytes());
        fnv(&mut self.trace, tag.as_bytes());
        fnv(&mut self.trace, &id.to_be_bytes());
        fnv(&mut self.trace, bytes);
    }

    fn send(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let copies = if self.faults {
            if self.rng.chance(self.rates.drop) {
                0
            } else if self.rng.chance(self.rates.dup) {
                2
            } else {
                1
            }
        } else {
            1
        };
        let max_delay = if self.faults {
            self.rates.max_delay_ms
        } else {
            5
        };
        for _ in 0..copies {
            let delay = self.rng.between(MS / 10, max_delay * MS);
            self.seq += 1;
            self.in_flight
                .insert((self.now + delay, self.seq), (from, to, bytes.clone()));
        }
    }

    // ----- the oracle -----

    /// Runs after every call into node `id`: checks, then takes its output.
    fn after(&mut self, id: NodeId) {
        let Some(raft) = self.nodes[&id].raft.as_ref() else {
            return;
        };
        let (epoch, role, hw) = (raft.epoch(), raft.role(), raft.high_watermark());
        let (start, end) = (raft.log_start_offset(), raft.log_end_offset());
        if role == Role::Leader {
            if !self.leaders.contains_key(&epoch) {
                self.stats.elections += 1;
            }
            let prev = *self.leaders.entry(epoch).or_insert(id);
            if prev != id {
                self.fail(format!("two leaders in epoch {epoch}: {prev} and {id}"));
            }
        }
        if hw > end {
            self.fail(format!("node {id}: high watermark {hw} past log end {end}"));
        }
        let node = &self.nodes[&id];
        if hw < node.hw_checked {
            self.fail(format!(
                "node {id}: high watermark went back from {} to {hw}",
                node.hw_checked
            ));
        }
        // Committed entries: the first to commit an offset fixes it.
        let newly: Vec<Entry> = (node.hw_checked.max(start)..hw)
            .map(|o| raft.entry(o).expect("entry below hw").clone())
            .collect();
        let became_leader = role == Role::Leader && node.role != Role::Leader;
        let sig = (start, end, raft.last_epoch());
        let log_changed = sig != node.log_sig;
        for e in &newly {
            self.check_committed(id, e);
        }
        if became_leader {
            // Leader completeness.
            let raft = self.nodes[&id].raft.as_ref().expect("up");
            if raft.log_end_offset() < self.committed.len() as u64 {
                self.fail(format!(
                    "new leader {id} (epoch {epoch}) ends at {} but {} entries are committed",
                    raft.log_end_offset(),
                    self.committed.len()
                ));
            }
            for o in start..self.committed.len() as u64 {
                let e = raft.entry(o).expect("entry");
                if !self.same(e) {
                    self.fail(format!(
                        "new leader {id} (epoch {epoch}) lacks committed entry {o}: has {e:?}"
                    ));
                }
            }
        }
        if log_changed {
            self.check_matching(id);
        }
        let node = self.nodes.get_mut(&id).expect("node");
        node.hw_checked = hw;
        node.role = role;
        node.log_sig = sig;

        let ready = node.raft.as_mut().expect("up").take_ready();
        for a in ready.apply {
            self.check_apply(id, &a);
            if matches!(a, Apply::Restore(_)) && self.nodes[&id].app.applied_end > 0 {
                self.stats.snapshots_installed += 1;
            }
            self.nodes.get_mut(&id).expect("node").app.apply(id, a);
        }
        for out in ready.messages {
            let bytes = out.msg.encode();
            self.trace("send", id, &bytes);
            self.send(id, out.to, bytes);
        }
        self.maybe_compact(id);
    }

    fn same(&self, e: &Entry) -> bool {
        self.committed
            .get(e.offset as usize)
            .is_some_and(|(ep, k, d)| *ep == e.epoch && *k == e.kind && *d == e.data)
    }

    fn check_committed(&mut self, id: NodeId, e: &Entry) {
        let len = self.committed.len() as u64;
        if e.offset == len {
            self.committed.push((e.epoch, e.kind, e.data.clone()));
        } else if e.offset > len {
            self.fail(format!(
                "node {id} committed {e:?} beyond the known committed prefix {len}"
            ));
        } else if !self.same(e) {
            self.fail(format!(
                "node {id} committed {e:?}, but offset {} was committed as {:?}",
                e.offset, self.committed[e.offset as usize]
            ));
        }
    }

    fn check_apply(&self, id: NodeId, a: &Apply) {
        match a {
            Apply::Entry(e) => {
                if !self.same(e) {
                    self.fail(format!("node {id} applied uncommitted or changed {e:?}"));
                }
            }
            Apply::Restore(s) => {
                let want: Vec<_> = self
                    .committed
                    .iter()
                    .take(s.end() as usize)
                    .enumerate()
                    .filter(|(_, c)| c.1 == EntryKind::Data)
                    .map(|(o, c)| (o as u64, c.0, c.2.clone()))
                    .collect();
                if self.committed.len() < s.end() as usize || decode_state(&s.data) != want {
                    self.fail(format!("node {id} restored a wrong snapshot {s:?}"));
                }
            }
        }
    }

    /// Log matching between `id` and every other live node.
    fn check_matching(&self, id: NodeId) {
        let a = self.nodes[&id].raft.as_ref().expect("up");
        for (other, node) in &self.nodes {
            let Some(b) = node.raft.as_ref() else {
                continue;
            };
            if *other == id {
                continue;
            }
            let lo = a.log_start_offset().max(b.log_start_offset());
            let hi = a.log_end_offset().min(b.log_end_offset());
            let top = (lo..hi)
                .rev()
                .find(|&o| a.entry(o).map(|e| e.epoch) == b.entry(o).map(|e| e.epoch));
            if let Some(top) = top {
                for o in lo..=top {
                    if a.entry(o) != b.entry(o) {
                        self.fail(format!(
                            "log matching: nodes {id} and {other} agree on the epoch at {top} \
                             but differ at {o}: {:?} vs {:?}",
                            a.entry(o),
                            b.entry(o)
                        ));
                    }
                }
            }
        }
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let applied = node.app.applied_end;
        if applied > raft.log_start_offset() + 12 && self.rng.chance(0.1) {
            let data = node.app.snapshot_data();
            self.stats.compactions += 1;
            if let Err(e) = raft.compact(applied - 1, data) {
                if !raft.is_poisoned() {
                    self.fail(format!("node {id}: compact failed: {e:?}"));
                }
                self.kill(id);
            }
        }
    }

    // ----- faults -----

    /// The process dies; the machine does not (the store keeps what it
    /// showed, and loading it makes that durable).
    fn kill(&mut self, id: NodeId) {
        let back = self.now.plus_millis(self.rng.between(5, 300));
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(raft) = node.raft.take() {
            node.down = Some((raft.into_store(), back));
        }
    }

    /// Power loss: unsynced writes beyond a random prefix are lost.
    fn power_loss(&mut self, id: NodeId) {
        self.kill(id);
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some((store, _)) = node.down.as_mut() {
            let keep = self.rng.below(store.pending() as u64 + 1) as usize;
            store.crash(keep);
        }
    }

    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some((store, _)) = node.down.take() else {
            return;
        };
        let cfg = Config {
            node_id: id,
            ..self.config.clone()
        };
        let raft = match Raft::new(store, cfg, self.now, &mut self.node_rng) {
            Ok(r) => r,
            Err(e) => self.fail(format!("node {id} cannot restart: {e}")),
        };
        let node = self.nodes.get_mut(&id).expect("node");
        node.hw_checked = raft.high_watermark();
        node.role = raft.role();
        node.log_sig = (0, 0, 0);
        node.raft = Some(raft);
        node.app = App::default();
        self.trace("restart", id, &[]);
        self.after(id);
    }

    fn inject_fault(&mut self) {
        let id = self.rng.between(1, self.n as u64) as NodeId;
        let roll = self.rng.below(100);
        self.trace("fault", id, &roll.to_be_bytes());
        match roll {
            0..=19 => {
                self.stats.power_losses += 1;
                self.power_loss(id)
            }
            20..=34 => {
                self.stats.kills += 1;
                self.kill(id)
            }
            35..=49 => {
                if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                    self.stats.sync_failures += 1;
                    r.store_mut().fail_next_sync();
                }
            }
            50..=84 => {
                self.stats.partitions += 1;
                let mut cut = BTreeSet::new();
                let kind = self.rng.below(3);
                let side: BTreeSet<NodeId> = match kind {
                    0 => BTreeSet::from([id]),
                    _ => (1..=self.n).filter(|_| self.rng.chance(0.5)).collect(),
                };
                for a in 1..=self.n {
                    for b in 1..=self.n {
                        if side.contains(&a) && !side.contains(&b) {
                            cut.insert((a, b));
                            if kind != 2 {
                                cut.insert((b, a));
                            }
                        }
                    }
                }
                self.partition.cut = cut;
                self.heal_at = Some(self.now.plus_millis(self.rng.between(100, 1_500)));
            }
            _ => self.partition.cut.clear(),
        }
    }

    // ----- the event loop -----

    fn call(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Raft<MemStore>, &mut ChaCha8Rng) -> Result<(), RaftError>,
    ) {
        let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) else {
            return;
        };
        match f(raft, &mut self.node_rng) {
            Ok(()) => self.after(id),
            Err(RaftError::Store(_)) => {
                // A failed sync: the node must not have said anything that
                // depends on it. Its outbox is gone; restart it.
                if !raft.is_poisoned() || !raft.take_ready().is_empty() {
                    self.fail(format!("node {id}: a failed store call left output"));
                }
                self.trace("poisoned", id, &[]);
                self.kill(id);
            }
            Err(e) => self.fail(format!("node {id}: {e}")),
        }
    }

    fn run_until(&mut self, end: Instant) {
        loop {
            let net = self.in_flight.keys().next().map(|k| k.0);
            let timer = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.raft.as_ref().map(|r| (r.next_deadline(), *id)))
                .min();
            let restart = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.down.as_ref().map(|d| (d.1, *id)))
                .min();
            let fault = self.faults.then_some(self.next_fault);
            let heal = self.heal_at;
            let propose = self.next_propose;
            let t = [
                net,
                timer.map(|t| t.0),
                restart.map(|r| r.0),
                fault,
                heal,
                Some(propose),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("always a proposal timer");
            if t > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(t);
            if net == Some(t) {
                let (_, (from, to, bytes)) = self.in_flight.pop_first().expect("due");
                if self.partition.cut.contains(&(from, to)) {
                    continue;
                }
                self.trace("recv", to, &bytes);
                let now = self.now;
                self.call(to, |r, rng| {
                    r.step_bytes(now, from, &bytes, rng).map(|_| ())
                });
            } else if let Some((_, id)) = timer.filter(|t| t.0 == self.now) {
                self.trace("tick", id, &[]);
                let now = self.now;
                self.call(id, |r, rng| r.tick(now, rng));
            } else if let Some((_, id)) = restart.filter(|r| r.0 == self.now) {
                self.restart(id);
            } else if fault == Some(t) {
                self.inject_fault();
                self.next_fault = self.now.plus_millis(self.rng.between(20, 400));
            } else if heal == Some(t) {
                self.partition.cut.clear();
                self.heal_at = None;
            } else {
                self.next_propose = self.now.plus_millis(self.rng.between(1, 20));
                self.propose_somewhere();
            }
        }
    }

    fn propose_somewhere(&mut self) {
        // Mostly at a node that believes it leads (there may be several, in
        // different epochs), sometimes at any node (which refuses).
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.is_leader()))
            .map(|(id, _)| *id)
            .collect();
        let id = if !leaders.is_empty() && self.rng.chance(0.9) {
            leaders[self.rng.below(leaders.len() as u64) as usize]
        } else {
            self.rng.between(1, self.n as u64) as NodeId
        };
        let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) else {
            return;
        };
        if !r.is_leader() {
            let refused = matches!(
                r.propose(b"x".to_vec()),
                Err(crate::raft::ProposeError::NotLeader { .. })
            );
            if !refused {
                self.fail(format!("node {id}: a follower accepted a proposal"));
            }
            return;
        }
        if self.proposals >= 2_000 || !self.proposing {
            return;
        }
        self.proposals += 1;
        let data = format!("v{}-{}", self.seed, self.proposals).into_bytes();
        self.trace("propose", id, &data);
        let r = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .expect("up");
        match r.propose(data) {
            Ok(_) => self.after(id),
            Err(_) if r.is_poisoned() => self.kill(id),
            Err(e) => self.fail(format!("node {id}: propose: {e:?}")),
        }
    }

    /// Faults off, partitions healed, every node back.
    fn heal_all(&mut self) {
        self.faults = false;
        self.partition.cut.clear();
        self.heal_at = None;
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.down.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.restart(id);
        }
    }

    /// Whether every node agrees on one leader, and every log, high
    /// watermark and application is the same and complete.
    fn converged(&self) -> Option<NodeId> {
        let rafts: Vec<&Raft<MemStore>> = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .collect();
        if rafts.len() != self.n as usize {
            return None;
        }
        let leader = rafts.iter().find(|r| r.is_leader())?;
        let id = leader.node_id();
        let end = leader.log_end_offset();
        let all = rafts.iter().all(|r| {
            r.epoch() == leader.epoch()
                && r.leader() == Some(id)
                && r.log_end_offset() == end
                && r.high_watermark() == end
                && r.last_epoch() == leader.epoch()
        });
        let apps = self
            .nodes
            .values()
            .all(|n| n.app.applied_end == end && n.app.state == self.nodes[&id].app.state);
        (all && apps).then_some(id)
    }
}

/// Once faults stop, the cluster must have converged within this.
const LIVENESS_BOUND_MS: u64 = 5_000;

/// Runs one seed; returns the trace hash, how many events it took, and how
/// long convergence took after the faults stopped (ms).
fn run(seed: u64, n: i32, safety_ms: u64) -> (u64, u64, u64) {
    let mut sim = Sim::new(seed, n);
    sim.run_until(Instant::from_millis(safety_ms));
    sim.heal_all();
    // Liveness: converge within a bound once the faults stop. A fresh
    // entry must commit too (proposals continue, at any leader).
    let committed_before = sim.committed.len();
    let healed = sim.now;
    let deadline = sim.now.plus_millis(LIVENESS_BOUND_MS);
    loop {
        let step = sim.now.plus_millis(10);
        sim.run_until(step);
        if sim.committed.len() > committed_before {
            // Something new committed: stop the clients, let it settle.
            sim.proposing = false;
            if sim.converged().is_some() {
                break;
            }
        }
        if sim.now >= deadline {
            let state: Vec<_> = sim
                .nodes
                .iter()
                .map(|(id, n)| {
                    n.raft.as_ref().map(|r| {
                        (
                            *id,
                            r.role(),
                            r.epoch(),
                            r.leader(),
                            r.log_end_offset(),
                            r.high_watermark(),
                        )
                    })
                })
                .collect();
            sim.fail(format!("did not converge after faults stopped: {state:?}"));
        }
    }
    // Every entry of the applications is committed, in order, once.
    for node in sim.nodes.values() {
        let offsets: Vec<u64> = node.app.state.iter().map(|s| s.0).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
    }
    (sim.trace, sim.events, (sim.now - healed) / MS)
}

const SEEDS_3: u64 = 150;
const SEEDS_5: u64 = 100;

#[test]
fn three_node_clusters_stay_safe_and_converge() {
    let worst = (0..SEEDS_3).map(|seed| run(seed, 3, 4_000).2).max();
    eprintln!("3 nodes: slowest convergence {worst:?} ms");
}

#[test]
fn five_node_clusters_stay_safe_and_converge() {
    let worst = (1_000..1_000 + SEEDS_5)
        .map(|seed| run(seed, 5, 4_000).2)
        .max();
    eprintln!("5 nodes: slowest convergence {worst:?} ms");
}

#[test]
fn a_seed_replays_bit_for_bit() {
    for seed in [3, 1_007] {
        let n = if seed < 1_000 { 3 } else { 5 };
        let a = run(seed, n, 2_000);
        let b = run(seed, n, 2_000);
        assert_eq!(a, b, "seed {seed}");
        assert!(a.1 > 100, "seed {seed} did something");
    }
}

/// A longer hunt over 5,000 seeds a size: `cargo test -p odradek-core --lib
/// raft::tests::cluster::sweep -- --ignored --nocapture`.
#[test]
#[ignore = "a long hunt, run by hand; the suite runs the fixed seeds above"]
fn sweep() {
    let seeds: u64 = 5_000;
    for n in [3, 5] {
        let worst = (0..seeds).map(|s| run(100_000 + s, n, 6_000).2).max();
        eprintln!("{n} nodes, {seeds} seeds: slowest convergence {worst:?} ms");
    }
}
