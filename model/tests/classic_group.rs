//! The classic group model, checked to a bound inside the test suite:
//! the real coordinator with Kafka-style consumers is safe and can reach a
//! stable group; deliberately broken consumers are caught.
//!
//! Deeper runs: `cargo run -p odradek-model --release -- classic --depth N`.

use odradek_model::group::{
    check, find, ClientBug, Config, Outcome, EXPELLED_OWNER, SAFETY, SINGLE_OWNER_PER_GENERATION,
    STABLE_AFTER_RESTART, STABLE_GROUP,
};

/// Runs a search and prints what it covered (the time a test takes is
/// the harness's to report: the model crate does not read the clock).
fn checked(name: &str, search: impl FnOnce() -> Outcome) -> Outcome {
    let out = search();
    show(name, &out);
    out
}

fn show(name: &str, out: &Outcome) {
    println!("{name}: {}", out.summary());
    for (property, trace) in &out.discoveries {
        println!("  discovery: {property} ({} steps)", trace.len());
    }
}

fn assert_safe(out: &Outcome) {
    for property in SAFETY {
        if out.found(property) {
            print_trace(out, property);
        }
        assert!(!out.found(property), "{property} fails");
    }
}

fn print_trace(out: &Outcome, property: &str) {
    for (i, step) in out.trace(property).unwrap_or_default().iter().enumerate() {
        println!("    {:>3}. {step}", i + 1);
    }
}

/// Two members, two partitions, a lossy network, one fault (a request
/// given up or a member crash, at any point), every state within 16 steps:
/// enough for the group to form (14 steps at the least), for a member to
/// crash and its successor to be in a stable group again, and for a member
/// the group dropped to hold partitions given to the other.
#[test]
fn classic_group_is_safe_and_reaches_a_stable_group() {
    let cfg = Config {
        max_faults: 1,
        ..Config::default()
    };
    let out = checked("classic group, 1 fault", || check(cfg, 16));
    assert_safe(&out);
    assert!(out.found(STABLE_GROUP), "no stable group within the bound");
    assert!(
        out.found(STABLE_AFTER_RESTART),
        "no stable group after a restart within the bound"
    );
    assert!(
        out.found(EXPELLED_OWNER),
        "no expelled owner within the bound"
    );
    assert!(out.unique_states > 500_000, "the search was too small");
}

/// Time also passes short of deadlines, so one member's session can run
/// out while the other's does not; no faults.
#[test]
fn classic_group_is_safe_when_time_passes_between_deadlines() {
    let cfg = Config {
        max_faults: 0,
        time_passes: true,
        lossy: false,
        ..Config::default()
    };
    let out = checked("classic group, time passing, no fault", || check(cfg, 22));
    assert_safe(&out);
    assert!(out.found(STABLE_GROUP), "no stable group within the bound");
    assert!(
        out.found(EXPELLED_OWNER),
        "no expelled owner within the bound"
    );
}

/// Coordinator failover (the coordinator crashes at any point and the next
/// one loads the group from its records) and members that close with a
/// LeaveGroup: one of them, or one request given up. The network is
/// reliable here only to keep the search small: losing a message adds
/// nothing to what members and coordinator can reach (a lost message is
/// one never delivered), it only adds network states.
#[test]
fn classic_group_is_safe_across_failover_and_leaves() {
    let cfg = Config {
        max_faults: 1,
        member_crashes: false,
        member_leaves: true,
        coordinator_failover: true,
        lossy: false,
        ..Config::default()
    };
    let out = checked("classic group, failover and leaves, 1 fault", || {
        check(cfg, 14)
    });
    assert_safe(&out);
    assert!(out.found(STABLE_GROUP), "no stable group within the bound");
}

/// Teeth: a consumer that keeps its partitions across a rejoin (and
/// carries them into the new generation) is caught, without any fault.
#[test]
fn a_client_that_keeps_partitions_across_a_rejoin_is_caught() {
    let cfg = Config {
        bug: ClientBug::KeepAcrossRejoin,
        max_faults: 0,
        ..Config::default()
    };
    let out = checked("keep-across-rejoin", || {
        find(cfg, 20, SINGLE_OWNER_PER_GENERATION)
    });
    print_trace(&out, SINGLE_OWNER_PER_GENERATION);
    assert!(out.found(SINGLE_OWNER_PER_GENERATION));
}

/// Teeth: a consumer that reads replies on connections it gave up is
/// caught: a SyncGroup answer from the generation before lands in the
/// next one. It takes one fault (the given-up request). Reliable network,
/// as above.
#[test]
fn a_client_that_reads_stale_replies_is_caught() {
    let cfg = Config {
        bug: ClientBug::AcceptStaleReplies,
        max_faults: 1,
        member_crashes: false,
        lossy: false,
        ..Config::default()
    };
    let out = checked("accept-stale-replies", || {
        find(cfg, 17, SINGLE_OWNER_PER_GENERATION)
    });
    print_trace(&out, SINGLE_OWNER_PER_GENERATION);
    assert!(out.found(SINGLE_OWNER_PER_GENERATION));
}
