//! The deterministic simulator. One seed decides everything: the swarm of
//! faults a run uses, the schedule of those faults, the workload's choices
//! and the disk's misbehaviour, each drawn from its own ChaCha stream.
//!
//! Nothing here reads the wall clock, spawns a thread or touches the real
//! file system; a run is a pure function of its seed, which
//! `--check-determinism` verifies by running it twice and comparing trace
//! hashes.

pub mod disk;
pub mod rng;
pub mod storage;
pub mod trace;

use std::fmt;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One node's partition logs on a faulty simulated disk: append, sync,
    /// read, crash, recover.
    Storage,
}

impl Workload {
    pub const ALL: &'static [Workload] = &[Workload::Storage];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Storage => "storage",
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
    }
}
