//! The storage workload over a fixed range of seeds, each run twice: every
//! invariant must hold, and both runs must produce the same trace hash.
//! Split into four tests so the harness can spread them over the cores.

use odradek_sim::{run, RunOptions, Workload};

fn check_seeds(seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        let opts = RunOptions {
            seed,
            workload: Workload::Storage,
            trace: false,
        };
        let first = run(&opts);
        let second = run(&opts);
        assert!(
            first.events > 10,
            "seed {seed} did almost nothing: {} events",
            first.events
        );
        if first.trace_hash != second.trace_hash {
            failures.push(format!(
                "seed {seed}: nondeterministic ({:016x} vs {:016x}); replay: odradek sim run --seed {seed} --check-determinism",
                first.trace_hash, second.trace_hash
            ));
        }
        if let Some(v) = first.violation {
            failures.push(format!("seed {seed}: {v}; replay: odradek sim run --seed {seed} --workload storage --trace"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.end - seeds.start,
        failures.join("\n")
    );
}

#[test]
fn storage_seeds_0_to_250() {
    check_seeds(0..250);
}

#[test]
fn storage_seeds_250_to_500() {
    check_seeds(250..500);
}

#[test]
fn storage_seeds_500_to_750() {
    check_seeds(500..750);
}

#[test]
fn storage_seeds_750_to_1000() {
    check_seeds(750..1000);
}

/// Different seeds must explore different runs, or "1000 seeds" means one.
#[test]
fn seeds_differ() {
    let hashes: std::collections::BTreeSet<u64> = (0..50)
        .map(|seed| {
            run(&RunOptions {
                seed,
                workload: Workload::Storage,
                trace: false,
            })
            .trace_hash
        })
        .collect();
    assert_eq!(hashes.len(), 50);
}

/// The readable trace is the hashed one, line for line.
#[test]
fn trace_lines_match_the_event_count() {
    let r = run(&RunOptions {
        seed: 7,
        workload: Workload::Storage,
        trace: true,
    });
    assert_eq!(r.trace.len() as u64, r.events);
    assert!(r.trace[0].contains("seed 7"));
    assert!(r.trace.iter().any(|l| l.contains("append")));
}
