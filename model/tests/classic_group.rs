//! The classic group model, checked to a bound inside the test suite:
//! the real coordinator with Kafka-style consumers is safe and can reach a
//! stable group; deliberately broken consumers are caught.
//!
//! Deeper runs: `cargo run -p odradek-model --release -- classic --depth N`.

use odradek_model::group::{
    check, find, ClientBug, Config, Outcome, SAFETY, SINGLE_OWNER_PER_GENERATION,
    STABLE_AFTER_RESTART, STABLE_GROUP,
};

fn show(name: &str, out: &Outcome) {
    println!("{name}: {}", out.summary());
    for (property, trace) in &out.discoveries {
        println!("  discovery: {property} ({} steps)", trace.len());
    }
}

fn print_trace(out: &Outcome, property: &str) {
    for (i, step) in out.trace(property).unwrap_or_default().iter().enumerate() {
        println!("    {:>3}. {step}", i + 1);
    }
}

/// Two members, two partitions, a lossy network, one fault (a request
/// given up or a member crash, at any point), every state within 16 steps:
/// enough for the group to form (14 steps at the least), and for a member
/// to crash and its successor to be in a stable group again.
#[test]
fn classic_group_is_safe_and_reaches_a_stable_group() {
    let cfg = Config {
        max_faults: 1,
        ..Config::default()
    };
    let out = check(cfg, 16, 1);
    show("classic group, 1 fault", &out);
    for property in SAFETY {
        if out.found(property) {
            print_trace(&out, property);
        }
        assert!(!out.found(property), "{property} fails");
    }
    assert!(out.found(STABLE_GROUP), "no stable group within the bound");
    assert!(
        out.found(STABLE_AFTER_RESTART),
        "no stable group after a restart within the bound"
    );
    assert!(out.unique_states > 100_000, "the search was too small");
}

/// Coordinator failover: the coordinator may crash at any point and the
/// next one loads the group from its records.
#[test]
fn classic_group_is_safe_across_coordinator_failover() {
    let cfg = Config {
        max_faults: 1,
        member_crashes: false,
        coordinator_failover: true,
        ..Config::default()
    };
    let out = check(cfg, 14, 1);
    show("classic group, coordinator failover, 1 fault", &out);
    for property in SAFETY {
        if out.found(property) {
            print_trace(&out, property);
        }
        assert!(!out.found(property), "{property} fails");
    }
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
    let out = find(cfg, 20, SINGLE_OWNER_PER_GENERATION);
    show("keep-across-rejoin", &out);
    print_trace(&out, SINGLE_OWNER_PER_GENERATION);
    assert!(out.found(SINGLE_OWNER_PER_GENERATION));
}

/// Teeth: a consumer that reads replies on connections it gave up is
/// caught: a SyncGroup answer from the generation before lands in the
/// next one. It takes one fault (the given-up request). The network is
/// reliable here only to keep the search small: losing a message adds
/// nothing to what members and coordinator can reach (a lost message is
/// one never delivered), it only adds network states.
#[test]
fn a_client_that_reads_stale_replies_is_caught() {
    let cfg = Config {
        bug: ClientBug::AcceptStaleReplies,
        max_faults: 1,
        member_crashes: false,
        lossy: false,
        ..Config::default()
    };
    let out = find(cfg, 17, SINGLE_OWNER_PER_GENERATION);
    show("accept-stale-replies", &out);
    print_trace(&out, SINGLE_OWNER_PER_GENERATION);
    assert!(out.found(SINGLE_OWNER_PER_GENERATION));
}
