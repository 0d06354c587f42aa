//! The `odradek` binary as users and later checks drive it: exit codes,
//! the fields of `--json`, and the swarm's closing line. These hold whether
//! the seeds pass or fail, so they pin the interface, not the simulator.

use std::process::{Command, Output};

use serde_json::Value;

fn odradek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_odradek"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run odradek")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["sim", "run"][..],
        &["sim", "run", "--seed", "-3"],
        &["sim", "run", "--seed", "1", "--workload", "nope"],
        &["sim", "swarm", "--seeds", "9..2"],
        &["sim", "swarm", "--seeds", "0-9"],
        &["perf", "disk", "--seconds", "-1"],
        &["no-such-command"],
    ] {
        let out = odradek(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?} printed no error");
    }
}

#[test]
fn sim_run_json_is_one_object_with_the_promised_fields() {
    let out = odradek(&["sim", "run", "--seed", "1", "--json", "--check-determinism"]);
    let text = stdout(&out);
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    let v: Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["seed"], 1);
    assert_eq!(v["workload"], "storage");
    for field in [
        "ok",
        "trace_hash",
        "events",
        "simulated_ms",
        "wall_ms",
        "deterministic",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    if let Some(h) = v["trace_hash"].as_str() {
        assert_eq!(h.len(), 16, "{h}");
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()), "{h}");
    }
    let ok = v["ok"].as_bool().expect("ok is a bool");
    assert_eq!(out.status.code(), Some(if ok { 0 } else { 1 }), "{v}");
    if !ok {
        assert!(v["violation"].is_string(), "{v}");
        let replay = v["replay"].as_str().expect("replay");
        assert!(
            replay.starts_with("odradek sim run --seed 1 --workload storage"),
            "{replay}"
        );
    }
}

#[test]
fn swarm_ends_with_the_summary_line() {
    let out = odradek(&["sim", "swarm", "--seeds", "0..4", "--jobs", "2"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let closing = lines
        .iter()
        .find(|l| l.starts_with("swarm: "))
        .unwrap_or_else(|| panic!("no closing line in {text}"));
    let rest = closing.strip_prefix("swarm: 4 seeds, ").expect(closing);
    let failed: usize = rest.split(' ').next().unwrap().parse().expect(closing);
    assert!(rest.ends_with(" simulated-s per wall-s"), "{closing}");
    assert!(
        lines.iter().any(|l| l.starts_with("seeds per minute: ")),
        "{text}"
    );
    let live_fails = lines.iter().filter(|l| l.starts_with("FAIL seed=")).count();
    assert_eq!(live_fails, failed, "{text}");
    for l in lines.iter().filter(|l| l.starts_with("FAIL seed=")) {
        assert!(l.contains(" replay: odradek sim run --seed "), "{l}");
    }
    assert_eq!(out.status.code(), Some(if failed == 0 { 0 } else { 1 }));
}
