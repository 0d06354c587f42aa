//! The cluster workload over a fixed range of seeds, for 3 and for 5 nodes,
//! each seed run twice: every invariant must hold, and both runs must
//! produce the same trace hash. Split so the harness can spread them over
//! the cores.

use odradek_sim::{run, RunOptions, Workload};

mod common;

fn check(nodes: usize, seeds: std::ops::Range<u64>) {
    common::check_seeds_with(Workload::Cluster, Some(nodes), seeds);
}

#[test]
fn cluster_3_nodes_seeds_0_to_250() {
    check(3, 0..250);
}

#[test]
fn cluster_3_nodes_seeds_250_to_500() {
    check(3, 250..500);
}

#[test]
fn cluster_5_nodes_seeds_0_to_250() {
    check(5, 0..250);
}

#[test]
fn cluster_5_nodes_seeds_250_to_500() {
    check(5, 250..500);
}

/// Different seeds must explore different runs.
#[test]
fn cluster_seeds_differ() {
    let hashes: std::collections::BTreeSet<u64> = (0..20)
        .map(|seed| run(&RunOptions::new(seed, Workload::Cluster)).trace_hash)
        .collect();
    assert_eq!(hashes.len(), 20);
}

/// The run does what it is for: a leader is elected and becomes the
/// controller, brokers register and heartbeat through the controller
/// channel, topics are created, the nemesis strikes, and after the faults
/// the cluster converges and commits one more topic on every node.
#[test]
fn cluster_trace_shows_the_workload() {
    let r = run(&RunOptions {
        trace: true,
        nodes: Some(5),
        ..RunOptions::new(4, Workload::Cluster)
    });
    assert!(r.ok, "{:?}", r.violation);
    assert_eq!(r.trace.len() as u64, r.events);
    assert!(r.trace[0].contains("nodes=5"), "{}", r.trace[0]);
    for needle in [
        "n5 started",
        "Leader e",
        " controller",
        "controller request #",
        "Register(b",
        "Register { status: (0",
        "Heartbeat { status: (0",
        "CreateTopics(",
        "Items([(0",
        "nemesis",
        "converged",
        "reached every node",
    ] {
        assert!(
            r.trace.iter().any(|l| l.contains(needle)),
            "no {needle:?} in the trace"
        );
    }
}
