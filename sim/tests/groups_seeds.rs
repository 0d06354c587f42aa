//! The groups workload over a fixed range of seeds, each run twice: every
//! invariant must hold, and both runs must produce the same trace hash.
//! Split in four so the harness can spread them over the cores.

use odradek_sim::{run, RunOptions, Workload};

mod common;

/// Seeds that find a coordinator bug not fixed yet, left out until it is:
/// member ids repeat across broker restarts (the coordinator's id salt is
/// the cluster id and node id, its counter restarts at zero), so a KIP-848
/// member that joins with no id (ConsumerGroupHeartbeat v0) can be handed
/// the id another live client already holds, and the two are then one
/// member to the coordinator: `double-ownership` (or, as they keep fencing
/// each other, `unstable`). Replay: `odradek sim run --seed 244 --workload
/// groups --trace`.
const MEMBER_ID_REUSE: &[u64] = &[244, 247, 311, 395];

fn check_seeds(seeds: std::ops::Range<u64>) {
    for s in seeds {
        if !MEMBER_ID_REUSE.contains(&s) {
            common::check_seeds(Workload::Groups, s..s + 1);
        }
    }
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

/// The known bug still shows on its seeds: when it is fixed, this fails,
/// and the seeds go back into the ranges above.
#[test]
fn groups_member_id_reuse_still_found() {
    for &seed in MEMBER_ID_REUSE {
        let r = run(&RunOptions::new(seed, Workload::Groups));
        let v = r.violation.unwrap_or_default();
        assert!(
            v.starts_with("double-ownership") || v.starts_with("unstable"),
            "seed {seed}: {v:?}"
        );
    }
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
