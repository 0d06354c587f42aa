//! The seed loop the workload tests share: each seed run twice, every
//! invariant held, both runs with the same trace hash, and every failure
//! reported with its replay command.

use odradek_sim::{run, RunOptions, Workload};

// Not every test crate that includes this module calls both.
#[allow(dead_code)]
pub fn check_seeds(workload: Workload, seeds: std::ops::Range<u64>) {
    check_seeds_with(workload, None, seeds);
}

/// The same, with the node count fixed (the cluster workload's `--nodes`).
pub fn check_seeds_with(workload: Workload, nodes: Option<usize>, seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        let opts = RunOptions {
            nodes,
            ..RunOptions::new(seed, workload)
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
                "seed {seed}: nondeterministic ({:016x} vs {:016x}); replay: {} --check-determinism",
                first.trace_hash,
                second.trace_hash,
                opts.replay_command()
            ));
        }
        if let Some(v) = first.violation {
            failures.push(format!(
                "seed {seed}: {v}; replay: {} --trace",
                opts.replay_command()
            ));
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
