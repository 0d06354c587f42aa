//! One voter: the real [`Raft`] over a [`MemStore`], driven as a driver
//! drives it. Every input (a message, a tick, a proposal, a compaction) is
//! one call at the node's clock, followed by [`Raft::take_ready`]: the
//! messages go on the network as bytes ([`Message::encode`]), and what is
//! to be applied is applied to the node's application, which is where the
//! model keeps its ghost history for the properties.
//!
//! **Time.** Each node has a clock of its own, a function of its history:
//! it starts at zero and moves only when the node's `Tick` timer fires,
//! jumping to [`Raft::next_deadline`] (never backwards), where
//! [`Raft::tick`] is called, as the server's driver does when its timer
//! goes off. Messages are handled at the clock's current reading. The
//! nodes' clocks are unrelated, so any node's deadline can pass between any
//! two events anywhere: every relative timing of elections, heartbeats,
//! check-quorum and leases is in the search. Time short of a deadline is
//! not (nothing in Raft happens there).
//!
//! **Randomness.** Raft draws its election timeout from an RNG on every
//! reset of its election timer. The model hands it [`StateRng`], seeded
//! afresh for every call from the node's id, its epoch, its clock and its
//! log end offset, so that the draw is a function of the state (the same
//! state always takes the same step). With the model's default timeout
//! range collapsed to one value ([`super::Config::election_timeout_ms`])
//! the draw does not matter at all; a wider range gives each state one
//! timeout, never a choice of several.
//!
//! **Crashes.** A `Crash(keep)` timer is power loss: the store keeps what
//! it had synced plus the first `keep` writes not yet synced
//! ([`MemStore::crash`]; a correct node has none at rest, so only
//! `Crash(0)` is offered then), and the node restarts at once, at the same
//! clock reading, through [`Raft::new`] from that store, with all its
//! volatile state gone. A crash followed later by a restart adds nothing:
//! the node may already be left alone for as long as the search likes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use odradek_core::io::{Instant, NodeId};
use odradek_core::raft::{Apply, Config, Entry, EntryKind, MemStore, Raft};
use rand_core::RngCore;
use stateright::actor::{model_timeout, Id, Out};

use super::{Timer, Wire, MAX_KEEP};

/// What the actor is: the static part of a node.
#[derive(Clone, Debug)]
pub struct RaftNode {
    pub config: Config,
    /// This node may crash while it has crashed fewer times than this.
    pub max_crashes: u32,
    /// This node may propose while it has proposed fewer entries than this.
    pub max_proposals: u32,
    /// The node may compact its log up to what it has applied.
    pub compaction: bool,
}

/// One entry as a node applied it, for the properties.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Applied {
    pub entry: Entry,
    /// The node's epoch when it first applied the entry. The entry was
    /// committed in this epoch or an earlier one (a node applies only
    /// below the high watermark it learnt from its leader in its epoch, or
    /// that it set as that leader).
    pub epoch: u64,
}

/// A node's state: the real Raft, the clock, and the model's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeState {
    pub raft: Raft<MemStore>,
    pub clock: Instant,
    pub crashes: u32,
    /// How many times the node's timer has fired.
    pub ticks: u32,
    pub proposals: u32,
    /// The application: the next offset it expects (entries must come in
    /// order, each once per process lifetime, after the snapshot if any).
    pub app_end: u64,
    /// Ghost state, kept across crashes. Every epoch in which this node
    /// has been leader.
    pub led: BTreeSet<u64>,
    /// Ghost: every entry this node has applied, in any incarnation, by
    /// offset (a restored snapshot counts as applying what it holds).
    pub applied: BTreeMap<u64, Applied>,
    /// Ghost: why this node went wrong on its own, if it did: it applied an
    /// entry out of order, or at an offset where it had applied a different
    /// one before; a snapshot it could not read; a store error; a store it
    /// could not restart from. A node that failed takes no more steps.
    pub failed: Option<String>,
}

/// The timers a node wants set, given its state: `Tick` always (Raft
/// always has a deadline), `Propose` while it leads and may propose,
/// `Crash(k)` for every `k` up to the writes not yet synced while it may
/// crash, `Compact` while it has applied entries its log still holds.
fn wanted(node: &RaftNode, s: &NodeState) -> BTreeSet<Timer> {
    let mut t = BTreeSet::new();
    if s.failed.is_some() {
        return t;
    }
    t.insert(Timer::Tick);
    if s.raft.is_leader() && s.proposals < node.max_proposals {
        t.insert(Timer::Propose);
    }
    if s.crashes < node.max_crashes {
        let pending = s.raft.store().pending().min(MAX_KEEP as usize) as u8;
        for k in 0..=pending {
            t.insert(Timer::Crash(k));
        }
    }
    if node.compaction && s.raft.applied_end() > s.raft.log_start_offset() {
        t.insert(Timer::Compact);
    }
    t
}

impl RaftNode {
    pub(super) fn on_start(&self, o: &mut Out<super::Node>) -> NodeState {
        let id = self.config.node_id;
        let clock = Instant::ZERO;
        let mut rng = StateRng::new(id, 0, clock, 0);
        let raft = Raft::new(MemStore::new(), self.config.clone(), clock, &mut rng)
            .expect("a node starts from an empty store");
        let s = NodeState {
            raft,
            clock,
            crashes: 0,
            ticks: 0,
            proposals: 0,
            app_end: 0,
            led: BTreeSet::new(),
            applied: BTreeMap::new(),
            failed: None,
        };
        for t in wanted(self, &s) {
            o.set_timer(t, model_timeout());
        }
        s
    }

    pub(super) fn on_msg(
        &self,
        state: &mut Cow<NodeState>,
        src: Id,
        msg: Wire,
        o: &mut Out<super::Node>,
    ) {
        if state.failed.is_some() {
            return;
        }
        let mut s = (**state).clone();
        let mut rng = s.rng();
        let from = usize::from(src) as NodeId;
        if let Err(e) = s.raft.step_bytes(s.clock, from, &msg.0, &mut rng) {
            s.failed = Some(format!("step: {e}"));
        }
        self.after(state, s, None, o);
    }

    pub(super) fn on_timeout(
        &self,
        state: &mut Cow<NodeState>,
        timer: Timer,
        o: &mut Out<super::Node>,
    ) {
        if !wanted(self, state).contains(&timer) {
            // Not on offer in this state (cannot happen: the timers set
            // are always the wanted ones). Renewing it marks a no-op.
            o.set_timer(timer, model_timeout());
            return;
        }
        let mut s = (**state).clone();
        match timer {
            Timer::Tick => {
                s.ticks += 1;
                s.clock = s.clock.max(s.raft.next_deadline());
                let mut rng = s.rng();
                if let Err(e) = s.raft.tick(s.clock, &mut rng) {
                    s.failed = Some(format!("tick: {e}"));
                }
            }
            Timer::Propose => {
                s.proposals += 1;
                let data = vec![self.config.node_id as u8, s.proposals as u8];
                if let Err(e) = s.raft.propose(data) {
                    s.failed = Some(format!("propose: {e:?}"));
                }
            }
            Timer::Crash(keep) => {
                s.crashes += 1;
                let mut store = s.raft.store().clone();
                store.crash(keep as usize);
                s.app_end = 0;
                let mut rng = s.rng();
                match Raft::new(store, self.config.clone(), s.clock, &mut rng) {
                    Ok(raft) => s.raft = raft,
                    Err(e) => s.failed = Some(format!("restart: {e}")),
                }
            }
            Timer::Compact => {
                let last = s.raft.applied_end() - 1;
                let data = snapshot_data(&s.applied, last);
                if let Err(e) = s.raft.compact(last, data) {
                    s.failed = Some(format!("compact: {e:?}"));
                }
            }
        }
        self.after(state, s, Some(timer), o);
    }

    /// Takes what Raft made ready, applies it, records leadership, and
    /// brings the timers in line with the new state: only the changes, so
    /// that a step that changes nothing is seen as a no-op.
    fn after(
        &self,
        state: &mut Cow<NodeState>,
        mut s: NodeState,
        fired: Option<Timer>,
        o: &mut Out<super::Node>,
    ) {
        let ready = s.raft.take_ready();
        for m in ready.messages {
            o.send(Id::from(m.to as usize), Wire(m.msg.encode()));
        }
        for a in ready.apply {
            s.apply(a);
        }
        if s.raft.is_leader() {
            s.led.insert(s.raft.epoch());
        }
        let before = wanted(self, state);
        let after = wanted(self, &s);
        for t in &before {
            if !after.contains(t) && Some(*t) != fired {
                o.cancel_timer(*t);
            }
        }
        for t in &after {
            // The timer that fired is gone from the model's set: renew it.
            if !before.contains(t) || Some(*t) == fired {
                o.set_timer(*t, model_timeout());
            }
        }
        if s != **state {
            *state = Cow::Owned(s);
        }
    }
}

impl NodeState {
    /// The RNG for one call: a function of the node's state.
    fn rng(&self) -> StateRng {
        StateRng::new(
            self.raft.node_id(),
            self.raft.epoch(),
            self.clock,
            self.raft.log_end_offset(),
        )
    }

    fn apply(&mut self, a: Apply) {
        if self.failed.is_some() {
            return;
        }
        let epoch = self.raft.epoch();
        match a {
            Apply::Restore(snap) => {
                let Some(entries) = read_snapshot(&snap.data) else {
                    self.failed = Some(format!("unreadable snapshot {snap:?}"));
                    return;
                };
                if entries.len() as u64 != snap.end()
                    || entries
                        .iter()
                        .enumerate()
                        .any(|(i, e)| e.offset != i as u64)
                {
                    self.failed = Some(format!("snapshot {snap:?} holds {entries:?}"));
                    return;
                }
                for e in entries {
                    self.record(e, epoch);
                }
                self.app_end = snap.end();
            }
            Apply::Entry(e) => {
                if e.offset != self.app_end {
                    self.failed = Some(format!(
                        "applied {e:?} when the next offset was {}",
                        self.app_end
                    ));
                    return;
                }
                self.app_end = e.offset + 1;
                self.record(e, epoch);
            }
        }
    }

    fn record(&mut self, entry: Entry, epoch: u64) {
        match self.applied.get(&entry.offset) {
            Some(a) if a.entry != entry => {
                self.failed = Some(format!(
                    "applied {entry:?} where it had applied {:?}",
                    a.entry
                ));
            }
            Some(_) => {}
            None => {
                self.applied.insert(entry.offset, Applied { entry, epoch });
            }
        }
    }
}

/// The application's state at `last` as a snapshot: every entry up to it,
/// in order (the model's application is the list of entries applied).
fn snapshot_data(applied: &BTreeMap<u64, Applied>, last: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for a in applied.range(..=last).map(|(_, a)| &a.entry) {
        out.extend_from_slice(&a.offset.to_be_bytes());
        out.extend_from_slice(&a.epoch.to_be_bytes());
        out.push(match a.kind {
            EntryKind::LeaderChange => 0,
            EntryKind::Data => 1,
        });
        out.push(a.data.len() as u8);
        out.extend_from_slice(&a.data);
    }
    out
}

fn read_snapshot(mut b: &[u8]) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let u64_at = |b: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        let offset = u64_at(b, 0)?;
        let epoch = u64_at(b, 8)?;
        let kind = match b.get(16)? {
            0 => EntryKind::LeaderChange,
            1 => EntryKind::Data,
            _ => return None,
        };
        let len = *b.get(17)? as usize;
        let data = b.get(18..18 + len)?.to_vec();
        out.push(Entry {
            offset,
            epoch,
            kind,
            data,
        });
        b = &b[18 + len..];
    }
    Some(out)
}

/// A SplitMix64 stream seeded from a node's state (see the module's
/// documentation): deterministic, and the same for the same state.
#[derive(Clone, Debug)]
pub struct StateRng(u64);

impl StateRng {
    pub fn new(node: NodeId, epoch: u64, clock: Instant, log_end: u64) -> StateRng {
        let mut r = StateRng(0x6f64_7261_6465_6b00 ^ node as u64);
        for v in [epoch, clock.as_nanos(), log_end] {
            r.0 ^= v;
            r.0 = r.next_u64();
        }
        r
    }
}

impl RngCore for StateRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
