//! `odradek sim run` and `odradek sim swarm`: the simulator's front door.
//!
//! The simulator is single-threaded and one seed decides a whole run, so the
//! only parallelism here is across seeds. Everything printed about a seed
//! ends with the one command that replays it.

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use odradek_sim::{FaultKind, Overrides, RunOptions, RunReport, Workload};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The seed that decides the whole run.
    #[arg(long)]
    pub seed: u64,
    #[arg(long, default_value = "storage", value_parser = parse_workload)]
    pub workload: Workload,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// Print the readable event trace before the summary.
    #[arg(long)]
    pub trace: bool,
    /// Run the seed twice and fail if the two trace hashes differ.
    #[arg(long)]
    pub check_determinism: bool,
    /// Turn these fault kinds off whatever the seed drew (comma-separated:
    /// crash, kill, clock-jump, read-flip, latent-rot, misdirect, no-space,
    /// sync-error, buggify, net-loss, pause, partition, net-dup,
    /// clock-skew). What `sim shrink` prints uses this.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault_kind)]
    pub disable: Vec<FaultKind>,
    /// End the safety phase after at most this many simulated milliseconds.
    #[arg(long)]
    pub safety_ms: Option<u64>,
    /// The cluster workload's node count (3 or 5) [default: the seed's choice].
    #[arg(long)]
    pub nodes: Option<usize>,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            trace: self.trace,
            overrides: Overrides {
                disabled: self.disable.iter().copied().collect(),
                safety_ms: self.safety_ms,
            },
            nodes: self.nodes,
            ..RunOptions::new(self.seed, self.workload)
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ShrinkArgs {
    /// The failing seed to shrink.
    #[arg(long)]
    pub seed: u64,
    #[arg(long, default_value = "storage", value_parser = parse_workload)]
    pub workload: Workload,
    /// Print the shrunk run's trace.
    #[arg(long)]
    pub trace: bool,
    /// The cluster workload's node count [default: the seed's choice].
    #[arg(long)]
    pub nodes: Option<usize>,
}

pub fn parse_fault_kind(s: &str) -> Result<FaultKind, String> {
    FaultKind::parse(s.trim()).ok_or_else(|| {
        let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {s:?}; known: {}", known.join(", "))
    })
}

#[derive(Args, Debug, Clone)]
pub struct SwarmArgs {
    /// Seeds to run: `A..B` (B excluded) or `A..=B`.
    #[arg(long, value_parser = parse_seed_range)]
    pub seeds: Range<u64>,
    #[arg(long, default_value = "storage", value_parser = parse_workload)]
    pub workload: Workload,
    /// Seeds run at once [default: available parallelism].
    #[arg(long)]
    pub jobs: Option<NonZeroUsize>,
    /// Run every seed twice and fail it if the trace hashes differ.
    #[arg(long)]
    pub check_determinism: bool,
    /// Print one JSON object at the end (live failures go to stderr).
    #[arg(long)]
    pub json: bool,
    /// The cluster workload's node count (3 or 5) [default: each seed's choice].
    #[arg(long)]
    pub nodes: Option<usize>,
}

pub fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
        format!("unknown workload {s:?}; known: {}", known.join(", "))
    })
}

/// Parses `A..B` (half-open, as in Rust) or `A..=B` into a half-open range.
/// Empty and reversed ranges are refused: a swarm over no seeds is a typo,
/// not a request.
pub fn parse_seed_range(s: &str) -> Result<Range<u64>, String> {
    let s = s.trim();
    let malformed = || format!("malformed seed range {s:?}: expected A..B or A..=B, e.g. 0..500");
    let (a, b, inclusive) = match s.split_once("..") {
        Some((a, rest)) => match rest.strip_prefix('=') {
            Some(b) => (a, b, true),
            None => (a, rest, false),
        },
        None => return Err(malformed()),
    };
    let num = |t: &str| -> Result<u64, String> {
        t.trim()
            .parse::<u64>()
            .map_err(|e| format!("{} ({t:?}: {e})", malformed()))
    };
    let start = num(a)?;
    let last_or_end = num(b)?;
    let end = if inclusive {
        last_or_end
            .checked_add(1)
            .ok_or_else(|| format!("seed range {s:?} is too large"))?
    } else {
        last_or_end
    };
    if end <= start {
        return Err(format!(
            "seed range {s:?} is empty: the end must be above the start"
        ));
    }
    Ok(start..end)
}

/// One seed's result as this command reports it. A panic inside the
/// simulator is a failure of the seed like any other, so it becomes one of
/// these rather than taking down a swarm.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub workload: Workload,
    pub ok: bool,
    /// `None` when the run panicked before producing a report.
    pub trace_hash: Option<u64>,
    pub events: u64,
    pub simulated_ms: u64,
    pub violation: Option<String>,
    pub trace: Vec<String>,
    pub wall: Duration,
    /// Filled only when determinism was checked.
    pub determinism: Option<Determinism>,
    /// The command that reproduces the run (before any determinism flag).
    pub replay_base: String,
}

#[derive(Clone, Debug)]
pub struct Determinism {
    pub deterministic: bool,
    pub trace_hash_second: Option<u64>,
}

impl Outcome {
    fn from_report(opts: &RunOptions, r: RunReport, wall: Duration) -> Outcome {
        Outcome {
            replay_base: opts.replay_command(),
            seed: r.seed,
            workload: r.workload,
            ok: r.ok && r.violation.is_none(),
            trace_hash: Some(r.trace_hash),
            events: r.events,
            simulated_ms: r.simulated_ms,
            violation: r.violation,
            trace: r.trace,
            wall,
            determinism: None,
        }
    }

    fn from_panic(opts: &RunOptions, violation: String, wall: Duration) -> Outcome {
        Outcome {
            replay_base: opts.replay_command(),
            seed: opts.seed,
            workload: opts.workload,
            ok: false,
            trace_hash: None,
            events: 0,
            simulated_ms: 0,
            violation: Some(violation),
            trace: Vec::new(),
            wall,
            determinism: None,
        }
    }

    /// The exact command that reproduces this outcome.
    pub fn replay(&self) -> String {
        let mut cmd = self.replay_base.clone();
        if matches!(&self.determinism, Some(d) if !d.deterministic) {
            cmd.push_str(" --check-determinism");
        }
        cmd
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "seed": self.seed,
            "workload": self.workload.name(),
            "ok": self.ok,
            "trace_hash": self.trace_hash.map(hex),
            "events": self.events,
            "simulated_ms": self.simulated_ms,
            "wall_ms": millis(self.wall),
        });
        if let Some(d) = &self.determinism {
            v["deterministic"] = json!(d.deterministic);
            v["trace_hash_second"] = json!(d.trace_hash_second.map(hex));
        }
        if !self.ok {
            v["violation"] = json!(self.violation.as_deref().unwrap_or("unknown failure"));
            v["replay"] = json!(self.replay());
        }
        v
    }
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

thread_local! {
    /// Where the last panic on this thread happened: the payload carries only
    /// the message, and the location is what a reader of a FAIL line needs.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records panic locations for [`run_once`]. With `quiet`, the default
/// report (and backtrace) is not printed: a swarm reports each panicking seed
/// in its FAIL line, and replaying that seed alone shows the backtrace.
pub fn install_panic_hook(quiet: bool) {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let loc = info.location().map(|l| l.to_string());
        PANIC_LOCATION.with(|cell| *cell.borrow_mut() = loc);
        if !quiet {
            default(info);
        }
    }));
}

/// Runs one seed once, timing it and turning a panic into a failed outcome.
pub fn run_once(opts: &RunOptions) -> Outcome {
    PANIC_LOCATION.with(|cell| cell.borrow_mut().take());
    let start = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| odradek_sim::run(opts)));
    let wall = start.elapsed();
    match result {
        Ok(report) => Outcome::from_report(opts, report, wall),
        Err(payload) => {
            let message = panic_message(&*payload);
            let violation = match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
                Some(loc) => format!("panic at {loc}: {message}"),
                None => format!("panic: {message}"),
            };
            Outcome::from_panic(opts, violation, wall)
        }
    }
}

/// Runs one seed, and a second time when `check_determinism` is set.
pub fn run_seed(opts: &RunOptions, check_determinism: bool) -> Outcome {
    let mut first = run_once(opts);
    if !check_determinism {
        return first;
    }
    // The second run never keeps a trace: the hash covers every trace line
    // whether or not the lines are kept, and the first run's trace is the
    // one shown.
    let second = run_once(&RunOptions {
        trace: false,
        ..opts.clone()
    });
    let same = match (first.trace_hash, second.trace_hash) {
        (Some(a), Some(b)) => a == b,
        // Both panicked: the same panic twice is deterministic.
        (None, None) => first.violation == second.violation,
        _ => false,
    };
    first.wall += second.wall;
    first.determinism = Some(Determinism {
        deterministic: same,
        trace_hash_second: second.trace_hash,
    });
    if !same {
        let show = |h: Option<u64>| h.map(hex).unwrap_or_else(|| "(panicked)".to_string());
        let mut msg = format!(
            "nondeterminism: trace hashes {} and {} differ",
            show(first.trace_hash),
            show(second.trace_hash)
        );
        if let Some(v) = &first.violation {
            msg.push_str(&format!(" (first run: {v})"));
        }
        first.ok = false;
        first.violation = Some(msg);
    }
    first
}

/// `odradek sim shrink`: the smallest set of fault kinds and the shortest
/// safety phase with which the seed still fails the same way. Returns
/// whether a shrink was found (so a passing seed exits non-zero: there was
/// nothing to shrink, which is worth knowing in a script).
pub fn cmd_shrink(args: &ShrinkArgs) -> bool {
    install_panic_hook(true);
    let opts = RunOptions {
        trace: args.trace,
        nodes: args.nodes,
        ..RunOptions::new(args.seed, args.workload)
    };
    let start = Instant::now();
    match odradek_sim::shrink(&opts) {
        Ok(s) => {
            if args.trace {
                for line in &s.report.trace {
                    crate::outln!("{line}");
                }
            }
            let off: Vec<&str> = s
                .options
                .overrides
                .disabled
                .iter()
                .map(|k| k.name())
                .collect();
            crate::outln!(
                "seed {} ({}): shrunk in {} runs, {} ms",
                args.seed,
                args.workload,
                s.runs,
                millis(start.elapsed())
            );
            crate::outln!("  violation kind  {}", s.violation_kind);
            crate::outln!(
                "  violation       {}",
                s.report.violation.as_deref().unwrap_or("(none)")
            );
            crate::outln!(
                "  faults off      {}",
                if off.is_empty() {
                    "none".to_string()
                } else {
                    off.join(", ")
                }
            );
            if let Some(ms) = s.options.overrides.safety_ms {
                crate::outln!("  safety phase    {ms} ms");
            }
            crate::outln!("  events          {}", s.report.events);
            crate::outln!("  replay          {} --trace", s.options.replay_command());
            true
        }
        Err(e) => {
            eprintln!("odradek sim shrink: {e}");
            false
        }
    }
}

/// `odradek sim run`. Returns whether the seed passed.
pub fn cmd_run(args: &RunArgs) -> bool {
    install_panic_hook(false);
    let opts = args.options();
    let outcome = run_seed(&opts, args.check_determinism);
    if args.json {
        let mut v = outcome.to_json();
        if args.trace {
            v["trace"] = json!(outcome.trace);
        }
        crate::outln!("{v}");
    } else {
        if args.trace {
            for line in &outcome.trace {
                crate::outln!("{line}");
            }
        }
        crate::out!("{}", HumanSummary(&outcome));
    }
    outcome.ok
}

struct HumanSummary<'a>(&'a Outcome);

impl fmt::Display for HumanSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        let verdict = if o.ok { "ok" } else { "FAILED" };
        writeln!(f, "seed {} ({}): {verdict}", o.seed, o.workload)?;
        match o.trace_hash {
            Some(h) => writeln!(f, "  trace hash   {}", hex(h))?,
            None => writeln!(f, "  trace hash   none (the run panicked)")?,
        }
        writeln!(f, "  events       {}", o.events)?;
        writeln!(f, "  simulated    {} ms", o.simulated_ms)?;
        writeln!(f, "  wall         {} ms", millis(o.wall))?;
        if let Some(d) = &o.determinism {
            let second = d
                .trace_hash_second
                .map(hex)
                .unwrap_or_else(|| "none (the run panicked)".to_string());
            let verdict = if d.deterministic { "same" } else { "DIFFERENT" };
            writeln!(f, "  second run   {second} ({verdict})")?;
        }
        if !o.ok {
            let v = o.violation.as_deref().unwrap_or("unknown failure");
            writeln!(f, "  violation    {v}")?;
            writeln!(f, "  replay       {}", o.replay())?;
            writeln!(f, "               (add --trace for the event trace)")?;
        }
        Ok(())
    }
}

/// Totals of a swarm, in a form that does not depend on thread timing.
#[derive(Debug)]
pub struct SwarmSummary {
    pub seeds: u64,
    /// Sorted by seed.
    pub failures: Vec<Outcome>,
    /// Simulated time of every run executed (both runs of a seed when
    /// determinism is checked: that is work the simulator did).
    pub simulated_ms: u64,
    pub events: u64,
    pub wall: Duration,
}

impl SwarmSummary {
    pub fn simulated_s_per_wall_s(&self) -> f64 {
        (self.simulated_ms as f64 / 1000.0) / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn seeds_per_minute(&self) -> f64 {
        self.seeds as f64 * 60.0 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn closing_line(&self) -> String {
        format!(
            "swarm: {} seeds, {} failed, {:.1} simulated-s per wall-s",
            self.seeds,
            self.failures.len(),
            self.simulated_s_per_wall_s()
        )
    }
}

fn fail_line(o: &Outcome) -> String {
    format!(
        "FAIL seed={} violation={} replay: {}",
        o.seed,
        o.violation.as_deref().unwrap_or("unknown failure"),
        o.replay()
    )
}

/// Runs every seed of `seeds` on `jobs` threads; `on_failure` is called from
/// the worker thread as each failure happens.
pub fn swarm<F>(
    seeds: Range<u64>,
    workload: Workload,
    nodes: Option<usize>,
    jobs: usize,
    check_determinism: bool,
    on_failure: F,
) -> SwarmSummary
where
    F: Fn(&Outcome) + Sync,
{
    let start = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let failures = Mutex::new(Vec::new());
    let simulated_ms = AtomicU64::new(0);
    let events = AtomicU64::new(0);
    let total = seeds.end - seeds.start;
    let jobs = jobs
        .max(1)
        .min(usize::try_from(total).unwrap_or(usize::MAX));
    // The workers borrow all of these; `move` below copies the references.
    let (next, failures_ref, simulated_ref, events_ref, on_failure) =
        (&next, &failures, &simulated_ms, &events, &on_failure);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            // Seeds are handed out one at a time rather than in fixed stripes
            // so that one slow seed does not idle a thread.
            let claim = || {
                next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    (s < seeds.end).then_some(s + 1)
                })
                .ok()
            };
            s.spawn(move || {
                while let Some(seed) = claim() {
                    let opts = RunOptions {
                        nodes,
                        ..RunOptions::new(seed, workload)
                    };
                    let o = run_seed(&opts, check_determinism);
                    let runs = if check_determinism { 2 } else { 1 };
                    simulated_ref.fetch_add(o.simulated_ms * runs, Ordering::Relaxed);
                    events_ref.fetch_add(o.events * runs, Ordering::Relaxed);
                    if !o.ok {
                        on_failure(&o);
                        failures_ref
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(o);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|o| o.seed);
    SwarmSummary {
        seeds: total,
        failures,
        simulated_ms: simulated_ms.into_inner(),
        events: events.into_inner(),
        wall: start.elapsed(),
    }
}

/// `odradek sim swarm`. Returns whether every seed passed.
pub fn cmd_swarm(args: &SwarmArgs) -> bool {
    install_panic_hook(true);
    let jobs = args
        .jobs
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    tracing::info!(
        seeds = %format!("{}..{}", args.seeds.start, args.seeds.end),
        workload = %args.workload,
        jobs,
        "swarm starting"
    );
    let json = args.json;
    let summary = swarm(
        args.seeds.clone(),
        args.workload,
        args.nodes,
        jobs,
        args.check_determinism,
        |o| {
            // In JSON mode stdout carries only the final object.
            if json {
                eprintln!("{}", fail_line(o));
            } else {
                crate::outln!("{}", fail_line(o));
            }
        },
    );
    if json {
        let failures: Vec<Value> = summary
            .failures
            .iter()
            .map(|o| {
                json!({
                    "seed": o.seed,
                    "violation": o.violation,
                    "replay": o.replay(),
                })
            })
            .collect();
        let v = json!({
            "seeds": summary.seeds,
            "first_seed": args.seeds.start,
            "end_seed": args.seeds.end,
            "workload": args.workload.name(),
            "jobs": jobs,
            "check_determinism": args.check_determinism,
            "ok": summary.failures.is_empty(),
            "failed": summary.failures.len(),
            "failures": failures,
            "events": summary.events,
            "simulated_ms": summary.simulated_ms,
            "wall_ms": millis(summary.wall),
            "simulated_s_per_wall_s": round1(summary.simulated_s_per_wall_s()),
            "seeds_per_minute": round1(summary.seeds_per_minute()),
        });
        crate::outln!("{v}");
    } else {
        if !summary.failures.is_empty() {
            crate::outln!("failures, by seed:");
            for o in &summary.failures {
                crate::outln!("  {}", fail_line(o));
            }
        }
        crate::outln!("{}", summary.closing_line());
        crate::outln!("seeds per minute: {:.1}", summary.seeds_per_minute());
    }
    summary.failures.is_empty()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seed_range("0..500"), Ok(0..500));
        assert_eq!(parse_seed_range("3..=5"), Ok(3..6));
        assert_eq!(parse_seed_range(" 7 .. 9 "), Ok(7..9));
        assert_eq!(
            parse_seed_range("0..=18446744073709551614"),
            Ok(0..u64::MAX)
        );
        for bad in [
            "", "5", "..5", "5..", "a..b", "1...3", "-1..3", "5..3", "4..4", "1..=x",
        ] {
            assert!(parse_seed_range(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_seed_range("0..=18446744073709551615")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_seed_range("1-5").unwrap_err().contains("A..B"));
    }

    #[test]
    fn workloads() {
        assert_eq!(parse_workload("storage"), Ok(Workload::Storage));
        assert_eq!(parse_workload("broker"), Ok(Workload::Broker));
        assert_eq!(parse_workload("groups"), Ok(Workload::Groups));
        assert_eq!(parse_workload("cluster"), Ok(Workload::Cluster));
        assert!(parse_workload("nope").unwrap_err().contains("storage"));
    }

    fn outcome(seed: u64, ok: bool) -> Outcome {
        Outcome {
            seed,
            workload: Workload::Storage,
            ok,
            trace_hash: Some(0xab),
            events: 10,
            simulated_ms: 1500,
            violation: (!ok).then(|| "lost-write: offset 3".to_string()),
            trace: vec![],
            wall: Duration::from_millis(2),
            determinism: None,
            replay_base: RunOptions::new(seed, Workload::Storage).replay_command(),
        }
    }

    #[test]
    fn json_fields() {
        let v = outcome(42, true).to_json();
        assert_eq!(v["seed"], 42);
        assert_eq!(v["ok"], true);
        assert_eq!(v["trace_hash"], "00000000000000ab");
        assert_eq!(v["events"], 10);
        assert_eq!(v["simulated_ms"], 1500);
        assert_eq!(v["wall_ms"], 2);
        assert!(v.get("violation").is_none());
        assert!(v.get("replay").is_none());

        let v = outcome(42, false).to_json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["violation"], "lost-write: offset 3");
        assert_eq!(v["replay"], "odradek sim run --seed 42 --workload storage");
    }

    #[test]
    fn nondeterminism_replays_with_the_check() {
        let mut o = outcome(9, false);
        o.determinism = Some(Determinism {
            deterministic: false,
            trace_hash_second: Some(1),
        });
        let v = o.to_json();
        assert_eq!(v["deterministic"], false);
        assert_eq!(v["trace_hash_second"], "0000000000000001");
        assert_eq!(
            v["replay"],
            "odradek sim run --seed 9 --workload storage --check-determinism"
        );
    }

    #[test]
    fn human_summary_names_the_replay() {
        let text = HumanSummary(&outcome(5, false)).to_string();
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("lost-write: offset 3"), "{text}");
        assert!(text.contains("odradek sim run --seed 5 --workload storage"));
        let text = HumanSummary(&outcome(5, true)).to_string();
        assert!(!text.contains("replay"), "{text}");
    }

    #[test]
    fn closing_line_format() {
        let s = SwarmSummary {
            seeds: 500,
            failures: vec![outcome(3, false)],
            simulated_ms: 1_234_000,
            events: 0,
            wall: Duration::from_secs(2),
        };
        assert_eq!(
            s.closing_line(),
            "swarm: 500 seeds, 1 failed, 617.0 simulated-s per wall-s"
        );
        assert!((s.seeds_per_minute() - 15000.0).abs() < 1e-6);
        assert_eq!(
            fail_line(&s.failures[0]),
            "FAIL seed=3 violation=lost-write: offset 3 \
             replay: odradek sim run --seed 3 --workload storage"
        );
    }
}
