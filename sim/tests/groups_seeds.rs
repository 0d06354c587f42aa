//! The groups workload over a fixed range of seeds, each run twice: every
//! invariant must hold, and both runs must produce the same trace hash.
//! Split in four so the harness can spread them over the cores.

use odradek_sim::{run, RunOptions, Workload};

mod common;

fn check_seeds(seeds: std::ops::Range<u64>) {
    common::check_seeds(Workload::Groups, seeds);
}

#[test]
fn groups_seeds_0_to_100() {
    check_seeds(0..100);
}

#[test]
fn groups_seeds_100_to_200() {
    check_seeds(100..200);
}

#[test]
fn groups_seeds_200_to_300() {
    check_seeds(200..300);
}

#[test]
fn groups_seeds_300_to_400() {
    check_seeds(300..400);
}

/// Different seeds must explore different runs.
#[test]
fn groups_seeds_differ() {
    let hashes: std::collections::BTreeSet<u64> = (0..20)
        .map(|seed| run(&RunOptions::new(seed, Workload::Groups)).trace_hash)
        .collect();
    assert_eq!(hashes.len(), 20);
}

/// The run does what it is for: members join, sync, commit, settle after
/// the faults, and the committed offsets are read back after a restart.
#[test]
fn groups_trace_shows_the_workload() {
    let r = run(&RunOptions {
        trace: true,
        ..RunOptions::new(4, Workload::Groups)
    });
    assert!(r.ok, "{:?}", r.violation);
    assert_eq!(r.trace.len() as u64, r.events);
    for needle in [
        "JoinGroup",
        "SyncGroup",
        "OffsetCommit",
        "settled",
        "final read complete",
    ] {
        assert!(
            r.trace.iter().any(|l| l.contains(needle)),
            "no {needle:?} in the trace"
        );
    }
}
