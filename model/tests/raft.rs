//! The Raft model, checked to a bound inside the test suite: three real
//! `odradek_core::raft::Raft` nodes keep election safety, log matching,
//! state-machine safety and leader completeness on a lossy, duplicating
//! network with a crash, and can commit a client's entry and elect a later
//! leader that keeps it.
//!
//! Deeper runs: `time cargo run -p odradek-model --release -- raft --depth N`.
//! The deliberate Raft bugs that show these properties have teeth are
//! patches (`ci/mutations/raft-*.patch`), run by `ci/teeth-model.sh`.

use odradek_model::check::Outcome;
use odradek_model::raft::{
    check, replay, Config, CLIENT_ENTRY_COMMITTED, COMMITTED, LEADER_AFTER_COMMIT, SAFETY,
};

/// Runs a search and prints what it covered (the time a test takes is the
/// harness's to report: the model crate does not read the clock).
fn checked(name: &str, search: impl FnOnce() -> Outcome) -> Outcome {
    let out = search();
    println!("{name}: {}", out.summary());
    for (property, trace) in &out.discoveries {
        println!("  discovery: {property} ({} steps)", trace.len());
    }
    out
}

fn assert_safe(out: &Outcome) {
    for property in SAFETY {
        if out.found(property) {
            for (i, step) in out.trace(property).unwrap_or_default().iter().enumerate() {
                println!("    {:>3}. {step}", i + 1);
            }
        }
        assert!(!out.found(property), "{property} fails");
    }
}

/// The whole environment: a lossy, duplicating network, one crash (that
/// keeps only what was synced) and one client proposal anywhere, epochs
/// up to 3, time unbounded; every state within 8 steps (an election takes
/// 5; nothing is applied on a majority this shallow, which the next test
/// reaches).
#[test]
fn raft_is_safe_on_a_lossy_duplicating_network_with_a_crash() {
    let out = checked("raft, lossy, 1 crash", || check(Config::default(), 8));
    assert_safe(&out);
    assert!(out.unique_states > 100_000, "the search was too small");
}

/// Time budgeted to two ticks (say, one election timeout and one
/// heartbeat, in any nodes), no crash, a reliable network: deep enough
/// (12 steps) for a client's entry to commit and reach a majority's state
/// machines, and for a later leader to be elected after a commit.
#[test]
fn raft_commits_a_clients_entry_and_a_later_leader_keeps_it() {
    let cfg = Config {
        lossy: false,
        max_crashes: 0,
        max_ticks: Some(2),
        ..Config::default()
    };
    let out = checked("raft, 2 ticks, no crash", || check(cfg, 12));
    assert_safe(&out);
    assert!(out.found(COMMITTED), "no entry committed within the bound");
    assert!(
        out.found(CLIENT_ENTRY_COMMITTED),
        "no client's entry committed within the bound"
    );
    assert!(
        out.found(LEADER_AFTER_COMMIT),
        "no later leader after a commit within the bound"
    );
}

/// Two ticks and a crash, reliable network: the budget within which
/// unsynced acknowledgements are caught (ci/mutations/raft-*-before-sync),
/// to 11 steps.
#[test]
fn raft_is_safe_across_a_crash() {
    let cfg = Config {
        lossy: false,
        max_ticks: Some(2),
        max_epoch: 2,
        ..Config::default()
    };
    let out = checked("raft, 2 ticks, 1 crash", || check(cfg, 11));
    assert_safe(&out);
    assert!(out.found(COMMITTED), "no entry committed within the bound");
}

/// A schedule copied from a trace replays to the same state: the client's
/// entry commits after the 12th step and nothing fails; a step the model
/// does not offer is refused, naming the line.
#[test]
fn a_printed_trace_replays() {
    let cfg = Config {
        lossy: false,
        max_crashes: 0,
        max_ticks: Some(2),
        max_epoch: 2,
        ..Config::default()
    };
    let schedule = "\
    1. node 2: Tick
    2. deliver 2 → 0: PreVote(e1, log ..0@e0)
    3. deliver 0 → 2: PreVoteResponse(e1, granted=true)
    4. deliver 2 → 1: Vote(e1, log ..0@e0)
    5. deliver 1 → 2: VoteResponse(e1, granted=true)
    6. deliver 2 → 1: Append(e1, after 0@e0, [0@e1:LeaderChange(0B)], hw 0)
    7. node 2: Propose
    8. node 2: Tick
    9. deliver 2 → 0: Append(e1, after 0@e0, [0@e1:LeaderChange(0B), 1@e1:Data(2B)], hw 0)
   10. deliver 0 → 2: AppendResponse(e1, success=true, end 2)
   11. deliver 1 → 2: AppendResponse(e1, success=true, end 1)
   12. deliver 2 → 1: Append(e1, after 1@e1, [1@e1:Data(2B)], hw 2)
";
    let out = replay(cfg.clone(), schedule).expect("the schedule replays");
    assert_eq!(out.steps.len(), 12);
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert!(out
        .reached
        .iter()
        .any(|&(p, at)| p == CLIENT_ENTRY_COMMITTED && at == 12));
    assert!(!out.reached.iter().any(|&(p, _)| p == LEADER_AFTER_COMMIT));
    let err = replay(cfg, "node 2: Tick\nnode 2: Propose\n").unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
}

/// Raft's Figure 8, the schedule `ci/mutations/raft-commit-earlier-epoch`
/// needs: on the real commit rule the leader of epoch 3 does not commit
/// its predecessor's entry by counting, so the leader of epoch 4 that
/// overwrites it breaks nothing. (With the patch, leader completeness
/// fails at the last step.)
#[test]
fn figure_8_schedule_breaks_nothing() {
    let cfg = Config {
        lossy: false,
        max_crashes: 1,
        max_proposals: 0,
        max_epoch: 4,
        max_ticks: Some(5),
        max_batch_entries: 1,
        ..Config::default()
    };
    let schedule = include_str!("../../ci/mutations/raft-commit-earlier-epoch.schedule");
    let out = replay(cfg, schedule).expect("the schedule replays");
    assert_eq!(out.steps.len(), 29);
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert!(!out.reached.iter().any(|&(p, _)| p == COMMITTED));
}
