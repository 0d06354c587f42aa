//! The fault vocabulary: one description of each fault, executed by two
//! executors — the simulator (`sim/`), which applies it to simulated nodes,
//! disks and links, and the jepsen-style runner (`jepsen-style/`), which
//! applies it to real processes with signals, packet filters and clock
//! offsets.
//!
//! A [`Swarm`] decides, once per seed, which kinds of fault a run uses and
//! how often (swarm testing: a run that never crashes explores different
//! states from one that crashes every second, and both find bugs the
//! average run does not). A [`Schedule`] is the timed list of faults a run
//! applies during its safety phase; after it, faults stop and the liveness
//! phase checks that the system converges.

use odradek_core::io::{NodeId, Random};
use std::fmt;

/// One fault, as both executors understand it.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Power loss: the process dies and the page cache with it; unsynced
    /// writes may be lost or torn.
    Crash { node: NodeId },
    /// SIGKILL: the process dies, the machine (and its page cache) lives.
    Kill { node: NodeId },
    /// Bring a crashed or killed node back.
    Restart { node: NodeId },
    /// SIGSTOP for a while, then SIGCONT.
    Pause { node: NodeId, millis: u64 },
    /// Step the node's wall clock by this many milliseconds (either way).
    ClockJump { node: NodeId, delta_ms: i64 },
    /// Cut the links between the two sides, both ways.
    Partition {
        side_a: Vec<NodeId>,
        side_b: Vec<NodeId>,
    },
    /// Cut the links from `from` to `to` only.
    PartitionOneWay { from: Vec<NodeId>, to: Vec<NodeId> },
    /// Restore every link.
    Heal,
    /// Change a node's disk fault rates.
    Disk { node: NodeId, faults: DiskFaults },
    /// Cut the node that leads off from every other node, both ways. The
    /// executor resolves "the leader" when the fault strikes (the simulator
    /// looks at its nodes; a real cluster is asked), since a schedule drawn
    /// in advance cannot know it.
    IsolateLeader,
    /// Cut `side_a` from `side_b`, both ways, while `bridge` keeps its
    /// links to both: a node that sees two halves which cannot see each
    /// other (Jepsen's bridge).
    Bridge {
        bridge: NodeId,
        side_a: Vec<NodeId>,
        side_b: Vec<NodeId>,
    },
    /// Power loss of the node that leads (resolved by the executor when
    /// the fault strikes, as for [`Fault::IsolateLeader`]), brought back
    /// after `down_ms`: new leaders die young, before they have replicated
    /// what they appended, which is where commit-rule bugs hide.
    CrashLeader { down_ms: u64 },
    /// Power loss of the next node to become leader, within `within_ms` of
    /// its election, brought back after `down_ms`: a leader that dies
    /// before its first entries reach the others, and if several strike in
    /// a row, Raft's Figure 8 (an entry of an earlier epoch replicated by a
    /// later leader, which must not count it committed by its replicas).
    CrashNewLeader { within_ms: u64, down_ms: u64 },
    /// From now on the node's clocks, monotonic and wall, advance at
    /// `1 + ppm / 1_000_000` times real time (a fast or slow oscillator).
    ClockRate { node: NodeId, ppm: i64 },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { node } => write!(f, "crash n{node}"),
            Fault::Kill { node } => write!(f, "kill n{node}"),
            Fault::Restart { node } => write!(f, "restart n{node}"),
            Fault::Pause { node, millis } => write!(f, "pause n{node} {millis}ms"),
            Fault::ClockJump { node, delta_ms } => write!(f, "clock-jump n{node} {delta_ms:+}ms"),
            Fault::Partition { side_a, side_b } => write!(f, "partition {side_a:?} | {side_b:?}"),
            Fault::PartitionOneWay { from, to } => write!(f, "partition {from:?} -> {to:?}"),
            Fault::Heal => write!(f, "heal"),
            Fault::Disk { node, faults } => write!(f, "disk n{node} {faults}"),
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::Bridge {
                bridge,
                side_a,
                side_b,
            } => write!(f, "bridge n{bridge} between {side_a:?} | {side_b:?}"),
            Fault::ClockRate { node, ppm } => write!(f, "clock-rate n{node} {ppm:+}ppm"),
            Fault::CrashLeader { down_ms } => {
                write!(f, "crash the leader, restart it after {down_ms}ms")
            }
            Fault::CrashNewLeader { within_ms, down_ms } => write!(
                f,
                "crash the next leader within {within_ms}ms of its election, restart it after {down_ms}ms"
            ),
        }
    }
}

/// Per-operation probabilities of each disk fault. All zero is a perfect
/// disk. The simulated disk applies them; a real-cluster executor can only
/// approximate some (a full filesystem, a failing device mapper).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiskFaults {
    /// A read returns data with one bit flipped (on the wire from the disk;
    /// reading again gives the right data).
    pub read_flip: f64,
    /// Read flips land in the first 64 bytes of what is read: where a
    /// record batch's header sits when a read starts at a batch. Aims the
    /// flips at the fields that decide where data is, not what it says.
    pub read_flip_head: bool,
    /// After a sync, one bit of the file's durable content rots for good.
    pub latent_rot: f64,
    /// A write lands at the wrong position in the file; the right position
    /// keeps its old content.
    pub misdirect: f64,
    /// A write or create fails with ENOSPC.
    pub no_space: f64,
    /// A sync fails with EIO, and the writes it was to make durable are
    /// dropped from the cache's dirty list (Linux's fsync behaviour).
    pub sync_error: f64,
    /// At a crash, the chance that an unsynced write is kept whole.
    pub crash_keep: f64,
    /// At a crash, the chance that an unsynced write is kept in part.
    pub crash_tear: f64,
    /// Latency of a write, in microseconds: uniform in this range.
    pub write_us: (u64, u64),
    /// Latency of a sync, in microseconds.
    pub sync_us: (u64, u64),
}

impl DiskFaults {
    /// A disk that is slow in the usual way but never fails.
    pub fn none() -> DiskFaults {
        DiskFaults {
            crash_keep: 0.5,
            write_us: (5, 50),
            sync_us: (200, 2000),
            ..DiskFaults::default()
        }
    }

    /// Whether any fault that damages or loses synced data is on.
    pub fn damages_synced_data(&self) -> bool {
        self.latent_rot > 0.0 || self.misdirect > 0.0
    }

    /// The same latencies and crash behaviour with every fault off.
    pub fn quiet(&self) -> DiskFaults {
        DiskFaults {
            read_flip: 0.0,
            latent_rot: 0.0,
            misdirect: 0.0,
            no_space: 0.0,
            sync_error: 0.0,
            ..*self
        }
    }
}

impl fmt::Display for DiskFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read_flip={:.4} head={} latent_rot={:.4} misdirect={:.4} no_space={:.4} sync_error={:.4} crash_keep={:.2} crash_tear={:.2} write_us={:?} sync_us={:?}",
            self.read_flip,
            self.read_flip_head,
            self.latent_rot,
            self.misdirect,
            self.no_space,
            self.sync_error,
            self.crash_keep,
            self.crash_tear,
            self.write_us,
            self.sync_us
        )
    }
}

/// Per-message behaviour of links. Reordering is what delays that vary
/// per message produce; nothing keeps two messages on one link in order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetFaults {
    /// Chance that a message is dropped.
    pub loss: f64,
    /// Chance that a message is delivered twice (at independent times).
    pub duplicate: f64,
    /// One-way delay in microseconds: uniform in this range.
    pub delay_us: (u64, u64),
}

impl NetFaults {
    /// A LAN that never misbehaves: 50–500 µs one way.
    pub fn none() -> NetFaults {
        NetFaults {
            delay_us: (50, 500),
            ..NetFaults::default()
        }
    }

    /// The same delays with loss and duplication off.
    pub fn quiet(&self) -> NetFaults {
        NetFaults {
            loss: 0.0,
            duplicate: 0.0,
            ..*self
        }
    }

    /// Draws rates for a run: each fault off half the time.
    pub fn draw<R: Random + ?Sized>(rng: &mut R) -> NetFaults {
        let lo = rng.between(10, 1000);
        NetFaults {
            loss: maybe_rate(rng, 1e-3, 0.2),
            duplicate: maybe_rate(rng, 1e-3, 0.1),
            delay_us: (lo, lo * rng.between(1, 100)),
        }
    }
}

/// Which faults a run uses and how often, drawn once per seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    /// Mean milliseconds between crashes (power loss); `None` for never.
    pub crash_every_ms: Option<u64>,
    /// Mean milliseconds between kills (process only); `None` for never.
    pub kill_every_ms: Option<u64>,
    /// Mean milliseconds between wall-clock jumps.
    pub clock_jump_every_ms: Option<u64>,
    pub disk: DiskFaults,
}

/// A rate drawn log-uniformly between `lo` and `hi`, or zero half the time:
/// swarm testing wants some runs without each fault.
fn maybe_rate<R: Random + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    if rng.chance(0.5) {
        0.0
    } else {
        lo * (hi / lo).powf(rng.unit())
    }
}

fn maybe_every<R: Random + ?Sized>(rng: &mut R, lo: u64, hi: u64) -> Option<u64> {
    if rng.chance(0.5) {
        None
    } else {
        Some(rng.between(lo, hi))
    }
}

impl Swarm {
    /// Draws a swarm configuration for a run of a single-node storage
    /// workload.
    pub fn draw_storage<R: Random + ?Sized>(rng: &mut R) -> Swarm {
        let write_lo = rng.between(1, 100);
        let sync_lo = rng.between(50, 5000);
        Swarm {
            crash_every_ms: maybe_every(rng, 500, 8000),
            kill_every_ms: maybe_every(rng, 1000, 10000),
            clock_jump_every_ms: maybe_every(rng, 1000, 10000),
            disk: DiskFaults {
                read_flip: maybe_rate(rng, 1e-4, 2e-2),
                read_flip_head: rng.chance(0.5),
                latent_rot: maybe_rate(rng, 1e-4, 5e-3),
                misdirect: maybe_rate(rng, 1e-4, 5e-3),
                no_space: maybe_rate(rng, 1e-4, 2e-2),
                sync_error: maybe_rate(rng, 1e-4, 1e-2),
                crash_keep: rng.unit(),
                crash_tear: rng.unit() * 0.5,
                write_us: (write_lo, write_lo * rng.between(1, 20)),
                sync_us: (sync_lo, sync_lo * rng.between(1, 10)),
            },
        }
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash_every_ms={:?} kill_every_ms={:?} clock_jump_every_ms={:?} disk[{}]",
            self.crash_every_ms, self.kill_every_ms, self.clock_jump_every_ms, self.disk
        )
    }
}

/// Which faults a run of a multi-node cluster uses and how often, drawn
/// once per seed: a node's swarm (process, wall-clock and disk faults, on
/// every node), the links' behaviour, and the faults only a cluster has.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSwarm {
    /// Crashes, kills and clock jumps strike a random node (a crash may be
    /// the whole cluster's, see `crash_all`), crashes and kills more often
    /// than a single node's swarm draws them; the disk faults apply to
    /// every node's disk, except latent rot (see `rot_nodes`).
    pub node: Swarm,
    /// Loss, duplication, and delays that vary per message (so reorder).
    pub net: NetFaults,
    /// Mean milliseconds between partitions (halves, the leader isolated,
    /// a bridge, one way), each healed after 50 ms to 3 s.
    pub partition_every_ms: Option<u64>,
    /// Mean milliseconds between process pauses (10 ms to 3 s each).
    pub pause_every_ms: Option<u64>,
    /// Each node's clocks run up to this many ppm fast or slow, and change
    /// rate now and then; `None` for clocks that agree.
    pub clock_skew_ppm: Option<u64>,
    /// The nodes whose disks may rot synced data; the others' never do.
    pub rot_nodes: Vec<NodeId>,
    /// The chance that a crash is a power cut of every node at once.
    pub crash_all: f64,
    /// The chance that a crash strikes whichever node leads.
    pub crash_leader: f64,
    /// Mean milliseconds between crashes of new leaders right after their
    /// election.
    pub crash_new_leader_every_ms: Option<u64>,
}

impl ClusterSwarm {
    pub fn draw<R: Random + ?Sized>(rng: &mut R, nodes: &[NodeId]) -> ClusterSwarm {
        let mut node = Swarm::draw_storage(rng);
        // A cluster keeps working through a node's crash, so it can take
        // them more often than a single node can.
        node.crash_every_ms = maybe_every(rng, 200, 4000);
        node.kill_every_ms = maybe_every(rng, 200, 4000);
        let net = NetFaults::draw(rng);
        let partition_every_ms = maybe_every(rng, 200, 3000);
        let pause_every_ms = maybe_every(rng, 200, 3000);
        let clock_skew_ppm = if rng.chance(0.5) {
            None
        } else {
            Some(rng.between(100, 200_000))
        };
        let mut rot_nodes = Vec::new();
        for &n in nodes {
            if rng.chance(0.5) {
                rot_nodes.push(n);
            }
        }
        let crash_all = if rng.chance(0.5) {
            0.0
        } else {
            rng.unit() * 0.3
        };
        let crash_leader = if rng.chance(0.5) { 0.0 } else { rng.unit() };
        let crash_new_leader_every_ms = maybe_every(rng, 100, 2000);
        ClusterSwarm {
            node,
            net,
            partition_every_ms,
            pause_every_ms,
            clock_skew_ppm,
            rot_nodes,
            crash_all,
            crash_leader,
            crash_new_leader_every_ms,
        }
    }
}

impl fmt::Display for ClusterSwarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} net[loss={:.4} dup={:.4} delay_us={:?}] partition_every_ms={:?} pause_every_ms={:?} clock_skew_ppm={:?} rot_nodes={:?} crash_all={:.2} crash_leader={:.2} crash_new_leader_every_ms={:?}",
            self.node,
            self.net.loss,
            self.net.duplicate,
            self.net.delay_us,
            self.partition_every_ms,
            self.pause_every_ms,
            self.clock_skew_ppm,
            self.rot_nodes,
            self.crash_all,
            self.crash_leader,
            self.crash_new_leader_every_ms
        )
    }
}

/// A random order of `nodes`.
fn shuffled<R: Random + ?Sized>(rng: &mut R, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut v = nodes.to_vec();
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Faults at simulated (or real) times, in milliseconds from the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    pub faults: Vec<(u64, Fault)>,
}

/// Exponentially distributed gap with the given mean (a Poisson process).
fn next_gap<R: Random + ?Sized>(rng: &mut R, mean_ms: u64) -> u64 {
    let u = rng.unit().max(1e-12);
    ((-u.ln()) * mean_ms as f64).ceil().max(1.0) as u64
}

impl Schedule {
    /// The safety-phase schedule for `nodes` under `swarm`, lasting
    /// `duration_ms`. Every crash or kill is followed by a restart after a
    /// short outage, so that the node under test spends most of the run up.
    pub fn generate<R: Random + ?Sized>(
        rng: &mut R,
        swarm: &Swarm,
        nodes: &[NodeId],
        duration_ms: u64,
    ) -> Schedule {
        let mut faults = Vec::new();
        let mut add_process_faults =
            |every: Option<u64>, make: fn(NodeId) -> Fault, rng: &mut R| {
                let Some(mean) = every else { return };
                let mut t = next_gap(rng, mean);
                while t < duration_ms {
                    let node = nodes[rng.below(nodes.len() as u64) as usize];
                    faults.push((t, make(node)));
                    let down = rng.between(1, 200);
                    faults.push((t + down, Fault::Restart { node }));
                    t += down + next_gap(rng, mean);
                }
            };
        add_process_faults(swarm.crash_every_ms, |node| Fault::Crash { node }, rng);
        add_process_faults(swarm.kill_every_ms, |node| Fault::Kill { node }, rng);
        if let Some(mean) = swarm.clock_jump_every_ms {
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                let node = nodes[rng.below(nodes.len() as u64) as usize];
                let magnitude = rng.between(1, 3_600_000) as i64;
                let delta_ms = if rng.chance(0.5) {
                    magnitude
                } else {
                    -magnitude
                };
                faults.push((t, Fault::ClockJump { node, delta_ms }));
                t += next_gap(rng, mean);
            }
        }
        // Stable sort: equal times keep generation order, which is itself
        // determined by the seed.
        faults.sort_by_key(|(t, _)| *t);
        Schedule { faults }
    }
}

impl Schedule {
    /// The safety-phase schedule of a cluster of `nodes` under `swarm`,
    /// lasting `duration_ms`. Every crash or kill is followed by a restart
    /// after an outage of up to 2 s (a crash of the leader carries its own,
    /// up to 1 s), every partition by a heal; pauses end on their own. An executor ignores a crash of a node already down
    /// and a restart of one that is up.
    pub fn generate_cluster<R: Random + ?Sized>(
        rng: &mut R,
        swarm: &ClusterSwarm,
        nodes: &[NodeId],
        duration_ms: u64,
    ) -> Schedule {
        let mut faults = Vec::new();
        let n = nodes.len() as u64;
        let pick = |rng: &mut R| nodes[rng.below(n) as usize];
        for (every, crash) in [
            (swarm.node.crash_every_ms, true),
            (swarm.node.kill_every_ms, false),
        ] {
            let Some(mean) = every else { continue };
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                if crash && rng.chance(swarm.crash_leader) {
                    let down_ms = rng.between(1, 1000);
                    faults.push((t, Fault::CrashLeader { down_ms }));
                    t += down_ms + next_gap(rng, mean);
                    continue;
                }
                let all = crash && rng.chance(swarm.crash_all);
                let victims = if all { nodes.to_vec() } else { vec![pick(rng)] };
                let mut longest = 0;
                for node in victims {
                    faults.push((
                        t,
                        if crash {
                            Fault::Crash { node }
                        } else {
                            Fault::Kill { node }
                        },
                    ));
                    let down = rng.between(1, 2000);
                    longest = longest.max(down);
                    faults.push((t + down, Fault::Restart { node }));
                }
                t += longest + next_gap(rng, mean);
            }
        }
        if let Some(mean) = swarm.crash_new_leader_every_ms {
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                let within_ms = rng.between(1, 100);
                let down_ms = rng.between(1, 1000);
                faults.push((t, Fault::CrashNewLeader { within_ms, down_ms }));
                t += next_gap(rng, mean);
            }
        }
        if let Some(mean) = swarm.pause_every_ms {
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                let node = pick(rng);
                let millis = rng.between(10, 3000);
                faults.push((t, Fault::Pause { node, millis }));
                t += next_gap(rng, mean);
            }
        }
        if let Some(mean) = swarm.node.clock_jump_every_ms {
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                let node = pick(rng);
                let magnitude = rng.between(1, 3_600_000) as i64;
                let delta_ms = if rng.chance(0.5) {
                    magnitude
                } else {
                    -magnitude
                };
                faults.push((t, Fault::ClockJump { node, delta_ms }));
                t += next_gap(rng, mean);
            }
        }
        if let Some(max) = swarm.clock_skew_ppm {
            let rate = |rng: &mut R| rng.between(0, 2 * max) as i64 - max as i64;
            for &node in nodes {
                let ppm = rate(rng);
                faults.push((0, Fault::ClockRate { node, ppm }));
            }
            let mut t = next_gap(rng, 3000);
            while t < duration_ms {
                let node = pick(rng);
                let ppm = rate(rng);
                faults.push((t, Fault::ClockRate { node, ppm }));
                t += next_gap(rng, 3000);
            }
        }
        if let (Some(mean), true) = (swarm.partition_every_ms, n >= 2) {
            let mut t = next_gap(rng, mean);
            while t < duration_ms {
                let order = shuffled(rng, nodes);
                let fault = match rng.below(4) {
                    0 => Fault::IsolateLeader,
                    1 if n >= 3 => {
                        let cut = 1 + rng.below(n - 2) as usize;
                        Fault::Bridge {
                            bridge: order[0],
                            side_a: order[1..=cut].to_vec(),
                            side_b: order[cut + 1..].to_vec(),
                        }
                    }
                    2 => {
                        let cut = 1 + rng.below(n - 1) as usize;
                        Fault::PartitionOneWay {
                            from: order[..cut].to_vec(),
                            to: order[cut..].to_vec(),
                        }
                    }
                    _ => {
                        let cut = 1 + rng.below(n - 1) as usize;
                        Fault::Partition {
                            side_a: order[..cut].to_vec(),
                            side_b: order[cut..].to_vec(),
                        }
                    }
                };
                faults.push((t, fault));
                let lasts = rng.between(50, 3000);
                faults.push((t + lasts, Fault::Heal));
                t += lasts + next_gap(rng, mean);
            }
        }
        faults.sort_by_key(|(t, _)| *t);
        Schedule { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u64);
    impl Random for Counter {
        fn next_u64(&mut self) -> u64 {
            // splitmix64, a stand-in generator for the tests
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn schedules_are_deterministic_sorted_and_restart_what_they_stop() {
        for seed in 0..50 {
            let mut a = Counter(seed);
            let swarm = Swarm::draw_storage(&mut a);
            let s1 = Schedule::generate(&mut a, &swarm, &[1], 20_000);
            let mut b = Counter(seed);
            let swarm2 = Swarm::draw_storage(&mut b);
            let s2 = Schedule::generate(&mut b, &swarm2, &[1], 20_000);
            assert_eq!(swarm, swarm2);
            assert_eq!(s1, s2);
            assert!(s1.faults.windows(2).all(|w| w[0].0 <= w[1].0));
            let stops = s1
                .faults
                .iter()
                .filter(|(_, f)| matches!(f, Fault::Crash { .. } | Fault::Kill { .. }))
                .count();
            let restarts = s1
                .faults
                .iter()
                .filter(|(_, f)| matches!(f, Fault::Restart { .. }))
                .count();
            assert_eq!(stops, restarts);
        }
    }

    #[test]
    fn cluster_schedules_are_deterministic_and_undo_what_they_do() {
        let nodes = [1, 2, 3, 4, 5];
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut a = Counter(seed);
            let swarm = ClusterSwarm::draw(&mut a, &nodes);
            let s1 = Schedule::generate_cluster(&mut a, &swarm, &nodes, 20_000);
            let mut b = Counter(seed);
            let swarm2 = ClusterSwarm::draw(&mut b, &nodes);
            assert_eq!(swarm, swarm2);
            assert_eq!(
                s1,
                Schedule::generate_cluster(&mut b, &swarm2, &nodes, 20_000)
            );
            assert!(s1.faults.windows(2).all(|w| w[0].0 <= w[1].0));
            let count = |f: fn(&Fault) -> bool| s1.faults.iter().filter(|(_, x)| f(x)).count();
            assert_eq!(
                count(|f| matches!(f, Fault::Crash { .. } | Fault::Kill { .. })),
                count(|f| matches!(f, Fault::Restart { .. }))
            );
            assert_eq!(
                count(|f| matches!(
                    f,
                    Fault::Partition { .. }
                        | Fault::PartitionOneWay { .. }
                        | Fault::Bridge { .. }
                        | Fault::IsolateLeader
                )),
                count(|f| matches!(f, Fault::Heal))
            );
            for (_, f) in &s1.faults {
                if let Fault::Bridge {
                    bridge,
                    side_a,
                    side_b,
                } = f
                {
                    assert!(!side_a.is_empty() && !side_b.is_empty());
                    assert!(!side_a.contains(bridge) && !side_b.contains(bridge));
                }
                kinds.insert(f.to_string().split(' ').next().unwrap_or("").to_string());
            }
        }
        // Every kind of fault shows up somewhere in 200 seeds.
        assert!(kinds.len() >= 10, "{} kinds", kinds.len());
    }

    #[test]
    fn swarm_turns_faults_off_in_some_runs_and_on_in_others() {
        let draws: Vec<Swarm> = (0..200)
            .map(|s| Swarm::draw_storage(&mut Counter(s)))
            .collect();
        assert!(draws.iter().any(|s| s.crash_every_ms.is_none()));
        assert!(draws.iter().any(|s| s.crash_every_ms.is_some()));
        assert!(draws.iter().any(|s| s.disk.misdirect == 0.0));
        assert!(draws.iter().any(|s| s.disk.misdirect > 0.0));
    }
}
