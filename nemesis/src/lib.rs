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
