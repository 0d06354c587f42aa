//! The deterministic simulator. One seed decides everything: the swarm of
//! faults a run uses, the schedule of those faults, the workload's choices
//! and the disk's misbehaviour, each drawn from its own ChaCha stream.
//!
//! Nothing here reads the wall clock, spawns a thread or touches the real
//! file system; a run is a pure function of its seed, which
//! `--check-determinism` verifies by running it twice and comparing trace
//! hashes.

pub mod broker;
pub mod cluster;
pub mod disk;
pub mod groups;
pub mod net;
pub mod rng;
pub mod storage;
pub mod trace;
pub(crate) mod wire;

use std::fmt;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One node's partition logs on a faulty simulated disk: append, sync,
    /// read, crash, recover.
    Storage,
    /// One Kafka broker on a faulty simulated disk, and clients that create
    /// topics, produce, fetch, list offsets and delete records over the
    /// simulated network.
    Broker,
    /// Consumer groups (classic and KIP-848) on one broker: members that
    /// join, sync, heartbeat, consume and commit while they and the broker
    /// crash, pause and lose messages.
    Groups,
    /// A cluster of 3 or 5 combined broker and controller nodes, each a
    /// metadata quorum member (Raft, the image, the controller) on its own
    /// simulated disk, under partitions, crashes, pauses, clock skew and
    /// disk faults; brokers register and heartbeat, clients create and
    /// delete topics.
    Cluster,
}

impl Workload {
    pub const ALL: &'static [Workload] = &[
        Workload::Storage,
        Workload::Broker,
        Workload::Groups,
        Workload::Cluster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Storage => "storage",
            Workload::Broker => "broker",
            Workload::Groups => "groups",
            Workload::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.iter().copied().find(|w| w.name() == s)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub workload: Workload,
    /// Keep the readable event trace in the report (the hash is always kept).
    pub trace: bool,
    /// Changes to what the seed drew, for shrinking a failure.
    pub overrides: Overrides,
    /// The cluster workload's node count (3 or 5); `None` lets the seed
    /// choose. Other workloads run one node and ignore it.
    pub nodes: Option<usize>,
}

impl RunOptions {
    pub fn new(seed: u64, workload: Workload) -> RunOptions {
        RunOptions {
            seed,
            workload,
            trace: false,
            overrides: Overrides::default(),
            nodes: None,
        }
    }

    /// The command that reproduces this run.
    pub fn replay_command(&self) -> String {
        let nodes = match self.nodes {
            Some(n) => format!(" --nodes {n}"),
            None => String::new(),
        };
        format!(
            "odradek sim run --seed {} --workload {}{nodes}{}",
            self.seed,
            self.workload,
            self.overrides.to_args()
        )
    }
}

/// A kind of fault the swarm may turn on, which a shrink may turn off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Crash,
    /// The broker process killed; in the groups workload, members crash too.
    Kill,
    ClockJump,
    ReadFlip,
    LatentRot,
    Misdirect,
    NoSpace,
    SyncError,
    Buggify,
    /// Messages between clients and nodes dropped (a client connection
    /// resets).
    NetLoss,
    /// Clients stop for a while (a GC pause, SIGSTOP): the groups
    /// workload's members; the cluster workload's nodes.
    Pause,
    /// Links between nodes cut (halves, the leader isolated, a bridge,
    /// one way): the cluster workload.
    Partition,
    /// Messages between nodes delivered twice: the cluster workload.
    NetDup,
    /// Nodes' clocks running at different rates: the cluster workload.
    ClockSkew,
}

impl FaultKind {
    pub const ALL: &'static [FaultKind] = &[
        FaultKind::Crash,
        FaultKind::Kill,
        FaultKind::ClockJump,
        FaultKind::ReadFlip,
        FaultKind::LatentRot,
        FaultKind::Misdirect,
        FaultKind::NoSpace,
        FaultKind::SyncError,
        FaultKind::Buggify,
        FaultKind::NetLoss,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::NetDup,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Kill => "kill",
            FaultKind::ClockJump => "clock-jump",
            FaultKind::ReadFlip => "read-flip",
            FaultKind::LatentRot => "latent-rot",
            FaultKind::Misdirect => "misdirect",
            FaultKind::NoSpace => "no-space",
            FaultKind::SyncError => "sync-error",
            FaultKind::Buggify => "buggify",
            FaultKind::NetLoss => "net-loss",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::NetDup => "net-dup",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.iter().copied().find(|k| k.name() == s)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a run changes about its seed's draws. The draws themselves are
/// made as usual and then overridden, so that everything not overridden
/// stays as the seed decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Fault kinds off, whatever the swarm drew.
    pub disabled: std::collections::BTreeSet<FaultKind>,
    /// The safety phase lasts at most this long.
    pub safety_ms: Option<u64>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.disabled.is_empty() && self.safety_ms.is_none()
    }

    pub fn disables(&self, kind: FaultKind) -> bool {
        self.disabled.contains(&kind)
    }

    /// The command-line flags that express these overrides.
    pub fn to_args(&self) -> String {
        let mut out = String::new();
        if !self.disabled.is_empty() {
            let names: Vec<&str> = self.disabled.iter().map(|k| k.name()).collect();
            out.push_str(&format!(" --disable {}", names.join(",")));
        }
        if let Some(ms) = self.safety_ms {
            out.push_str(&format!(" --safety-ms {ms}"));
        }
        out
    }
}

/// The result of shrinking a failing seed.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub options: RunOptions,
    pub report: RunReport,
    /// The violation kind kept throughout (the text before the first ':').
    pub violation_kind: String,
    /// How many runs the shrink took.
    pub runs: u64,
}

/// The seed's swarm of disk and process faults, less the kinds the run's
/// overrides turn off. Shared by the workloads so that a seed draws the
/// same faults in each and a shrink turns them off the same way.
pub(crate) fn draw_swarm(
    opts: &RunOptions,
    swarm_rng: &mut rand_chacha::ChaCha8Rng,
) -> odradek_nemesis::Swarm {
    let off = |k: FaultKind| opts.overrides.disables(k);
    let mut swarm = odradek_nemesis::Swarm::draw_storage(swarm_rng);
    for (k, rate) in [
        (FaultKind::ReadFlip, &mut swarm.disk.read_flip),
        (FaultKind::LatentRot, &mut swarm.disk.latent_rot),
        (FaultKind::Misdirect, &mut swarm.disk.misdirect),
        (FaultKind::NoSpace, &mut swarm.disk.no_space),
        (FaultKind::SyncError, &mut swarm.disk.sync_error),
    ] {
        if off(k) {
            *rate = 0.0;
        }
    }
    for (k, every) in [
        (FaultKind::Crash, &mut swarm.crash_every_ms),
        (FaultKind::Kill, &mut swarm.kill_every_ms),
        (FaultKind::ClockJump, &mut swarm.clock_jump_every_ms),
    ] {
        if off(k) {
            *every = None;
        }
    }
    swarm
}

fn violation_kind(v: &str) -> &str {
    v.split(':').next().unwrap_or(v)
}

/// Shrinks a failing run: turns off every fault kind it can do without, then
/// shortens the safety phase as far as it can, keeping the same kind of
/// violation. Deterministic, like everything here: the same failing seed
/// always shrinks to the same options. `Err` if the run does not fail.
pub fn shrink(opts: &RunOptions) -> Result<Shrunk, String> {
    shrink_with(opts, run)
}

fn shrink_with(
    opts: &RunOptions,
    run: impl Fn(&RunOptions) -> RunReport,
) -> Result<Shrunk, String> {
    let mut runs = 1;
    let first = run(opts);
    let Some(violation) = first.violation.clone() else {
        return Err(format!("seed {} passes: nothing to shrink", opts.seed));
    };
    let kind = violation_kind(&violation).to_string();
    let mut fails = |o: &RunOptions| {
        runs += 1;
        run(o).violation.as_deref().map(violation_kind) == Some(kind.as_str())
    };
    let mut best = RunOptions {
        trace: false,
        ..opts.clone()
    };
    for &k in FaultKind::ALL {
        if best.overrides.disables(k) {
            continue;
        }
        let mut attempt = best.clone();
        attempt.overrides.disabled.insert(k);
        if fails(&attempt) {
            best = attempt;
        }
    }
    // The failure happened by the time the run ended; search below that.
    let (mut lo, mut hi) = (
        0u64,
        best.overrides
            .safety_ms
            .unwrap_or(first.simulated_ms)
            .max(1),
    );
    while hi - lo > 50 {
        let mid = lo + (hi - lo) / 2;
        let mut attempt = best.clone();
        attempt.overrides.safety_ms = Some(mid);
        if fails(&attempt) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut attempt = best.clone();
    attempt.overrides.safety_ms = Some(hi);
    if fails(&attempt) {
        best = attempt;
    }
    let report = run(&RunOptions {
        trace: opts.trace,
        ..best.clone()
    });
    runs += 1;
    Ok(Shrunk {
        options: RunOptions {
            trace: opts.trace,
            ..best
        },
        report,
        violation_kind: kind,
        runs,
    })
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub workload: Workload,
    pub ok: bool,
    /// FNV-1a over every trace line: equal hashes mean equal runs.
    pub trace_hash: u64,
    /// Number of events the run processed.
    pub events: u64,
    pub simulated_ms: u64,
    /// The first invariant violation, in the checker's vocabulary.
    pub violation: Option<String>,
    /// The readable trace, when asked for.
    pub trace: Vec<String>,
}

/// Runs one seed to completion.
pub fn run(opts: &RunOptions) -> RunReport {
    match opts.workload {
        Workload::Storage => storage::run(opts),
        Workload::Broker => broker::run(opts),
        Workload::Groups => groups::run(opts),
        Workload::Cluster => cluster::run(opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in run that fails with `lost-write` exactly when crashes are
    /// on and the safety phase lasts at least 700 ms, whatever else is on.
    fn fake(o: &RunOptions) -> RunReport {
        let safety = o.overrides.safety_ms.unwrap_or(5000).min(5000);
        let fails = !o.overrides.disables(FaultKind::Crash) && safety >= 700;
        RunReport {
            seed: o.seed,
            workload: o.workload,
            ok: !fails,
            trace_hash: safety ^ o.overrides.disabled.len() as u64,
            events: 1,
            simulated_ms: safety + 5000,
            violation: fails.then(|| "lost-write: p0: batch 1..=2 missing".to_string()),
            trace: Vec::new(),
        }
    }

    #[test]
    fn shrink_keeps_what_the_failure_needs_and_drops_the_rest() {
        let s = shrink_with(&RunOptions::new(5, Workload::Storage), fake).unwrap();
        assert_eq!(s.violation_kind, "lost-write");
        assert!(!s.options.overrides.disables(FaultKind::Crash));
        assert_eq!(s.options.overrides.disabled.len(), FaultKind::ALL.len() - 1);
        let ms = s.options.overrides.safety_ms.unwrap();
        assert!((700..=750).contains(&ms), "safety phase shrunk to {ms}");
        assert!(!s.report.ok);
        assert_eq!(
            s.options.replay_command(),
            format!(
                "odradek sim run --seed 5 --workload storage --disable kill,clock-jump,read-flip,latent-rot,misdirect,no-space,sync-error,buggify,net-loss,pause,partition,net-dup,clock-skew --safety-ms {ms}"
            )
        );
    }

    #[test]
    fn fault_kind_names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(*k));
        }
        assert_eq!(FaultKind::parse("meteor"), None);
    }
}
