//! `odradek-model`: runs the models deeper than the test suite does.
//!
//!     cargo run -p odradek-model --release -- classic --depth 16 --max-faults 1
//!     cargo run -p odradek-model --release -- classic --depth 20 --max-faults 0 --bug keep-across-rejoin
//!     cargo run -p odradek-model --release -- raft --depth 10 --reliable
//!
//! Memory grows with the search frontier, which holds whole states (the
//! real coordinator's, or the three real Raft nodes', included).
//!
//! Prints the states explored and unique states (time a run from outside:
//! `time cargo run …`; the model crate never reads the clock), every
//! property's result, and the trace of each discovery. Exits non-zero if an `always`
//! property fails.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use odradek_model::check::{Outcome, Search};
use odradek_model::group::{
    self, ClientBug, Config, EXPELLED_OWNER, SAFETY, STABLE_AFTER_RESTART, STABLE_GROUP,
};
use odradek_model::raft;

#[derive(Parser)]
#[command(
    name = "odradek-model",
    about = "Model checking of Odradek's protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bug {
    None,
    KeepAcrossRejoin,
    AcceptStaleReplies,
}

#[derive(Subcommand)]
enum Command {
    /// The classic group protocol: the real coordinator, Kafka-style
    /// consumers, a lossy network, member crashes.
    Classic {
        /// BFS bound: every state at most this many steps from the start is
        /// checked.
        #[arg(long, default_value_t = 20)]
        depth: usize,
        /// Checker threads; only one gives an exact depth bound.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Depth first instead of breadth first: memory for fingerprints
        /// only, so much deeper, but the depth bound is not exact (a state
        /// first reached by a longer path is not searched again).
        #[arg(long)]
        dfs: bool,
        /// Stop once about this many states have been generated, and
        /// report what was searched.
        #[arg(long)]
        max_states: Option<usize>,
        #[arg(long, default_value_t = 2)]
        members: usize,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// A deliberately broken client, to see the properties fail.
        #[arg(long, value_enum, default_value_t = Bug::None)]
        bug: Bug,
        /// A reliable network instead of a lossy one.
        #[arg(long)]
        reliable: bool,
        /// No member crashes.
        #[arg(long)]
        no_crashes: bool,
        /// Time may also pass short of the next deadline (a quantum), so
        /// members' deadlines differ; otherwise the clock only jumps from
        /// deadline to deadline.
        #[arg(long)]
        time_passes: bool,
        /// Members may also close (LeaveGroup) and restart.
        #[arg(long)]
        leaves: bool,
        /// The coordinator may crash and come back from its records.
        #[arg(long)]
        failover: bool,
        /// Requests given up, member crashes and coordinator failovers, in
        /// all.
        #[arg(long, default_value_t = Config::default().max_faults)]
        max_faults: u32,
        #[arg(long, default_value_t = Config::default().max_generation)]
        max_generation: i32,
        /// Print every discovery's trace, examples included.
        #[arg(long)]
        traces: bool,
    },
    /// The metadata quorum's Raft: three real Raft nodes over in-memory
    /// stores, a lossy duplicating network, crashes that keep only what
    /// was synced, client proposals at the leader.
    Raft {
        /// BFS bound: every state at most this many steps from the start is
        /// checked.
        #[arg(long, default_value_t = 9)]
        depth: usize,
        /// Checker threads; only one gives an exact depth bound.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Depth first (fingerprints only, much deeper, inexact bound).
        #[arg(long)]
        dfs: bool,
        /// Stop once about this many states have been generated.
        #[arg(long)]
        max_states: Option<usize>,
        /// Instead of searching, follow the schedule on standard input
        /// (one action a line, as the traces print them) and check every
        /// property on the way.
        #[arg(long)]
        replay: bool,
        /// Stop at the first violation of an `always` property.
        #[arg(long)]
        first_violation: bool,
        /// With --first-violation, breadth first and one thread: then
        /// search every state one step short of the counterexample, to
        /// settle whether it is a shortest one (and print a shorter one if
        /// not).
        #[arg(long)]
        shortest: bool,
        #[arg(long, default_value_t = raft::Config::default().voters)]
        voters: usize,
        /// A network that never loses messages.
        #[arg(long)]
        reliable: bool,
        /// A network that delivers each message at most once.
        #[arg(long)]
        no_duplicates: bool,
        /// Node crashes, all nodes together.
        #[arg(long, default_value_t = raft::Config::default().max_crashes)]
        max_crashes: u32,
        /// Client proposals at the leader, all nodes together.
        #[arg(long, default_value_t = raft::Config::default().max_proposals)]
        max_proposals: u32,
        #[arg(long, default_value_t = raft::Config::default().max_epoch)]
        max_epoch: u64,
        /// Election timeout range, in ms: MIN or MIN..MAX.
        #[arg(long, default_value = "150")]
        election_timeout: String,
        #[arg(long, default_value_t = raft::Config::default().heartbeat_ms)]
        heartbeat_ms: u64,
        /// Nodes may compact their logs into snapshots.
        #[arg(long)]
        compaction: bool,
        /// The time budget: ticks, all nodes together (default: none).
        #[arg(long)]
        max_ticks: Option<u32>,
        /// Keep on the network the responses no node will act on.
        #[arg(long)]
        keep_dead_responses: bool,
        /// Entries per append message.
        #[arg(long, default_value_t = raft::Config::default().max_batch_entries)]
        max_batch_entries: usize,
        /// Print every discovery's trace, examples included.
        #[arg(long)]
        traces: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        c @ Command::Classic { .. } => classic(c),
        c @ Command::Raft { .. } => raft_command(c),
    }
}

fn classic(command: Command) -> ExitCode {
    let Command::Classic {
        depth,
        threads,
        dfs,
        max_states,
        members,
        partitions,
        bug,
        reliable,
        no_crashes,
        time_passes,
        leaves,
        failover,
        max_faults,
        max_generation,
        traces,
    } = command
    else {
        unreachable!("called with the classic command")
    };
    let cfg = Config {
        members,
        partitions,
        bug: match bug {
            Bug::None => ClientBug::None,
            Bug::KeepAcrossRejoin => ClientBug::KeepAcrossRejoin,
            Bug::AcceptStaleReplies => ClientBug::AcceptStaleReplies,
        },
        lossy: !reliable,
        time_passes,
        member_crashes: !no_crashes,
        member_leaves: leaves,
        coordinator_failover: failover,
        max_faults,
        max_generation,
    };
    println!("classic group model: {cfg:?}");
    if threads > 1 && !dfs {
        println!(
            "note: with {threads} threads the search is not level by level, so a few states \
             within the depth bound may go unchecked; use --threads 1 for an exact bound"
        );
    }
    let how = if dfs { Search::Dfs } else { Search::Bfs };
    if dfs {
        println!("note: depth-first, so the depth bound is not exact");
    }
    let out = group::search(cfg, depth, how, threads, max_states);
    report(
        &out,
        &[STABLE_GROUP, STABLE_AFTER_RESTART, EXPELLED_OWNER],
        traces,
    );
    debug_assert!(SAFETY.iter().all(|p| out.safety.contains(p)));
    exit(&out)
}

fn raft_command(command: Command) -> ExitCode {
    let Command::Raft {
        depth,
        threads,
        dfs,
        max_states,
        replay,
        first_violation,
        shortest,
        voters,
        reliable,
        no_duplicates,
        max_crashes,
        max_proposals,
        max_epoch,
        election_timeout,
        heartbeat_ms,
        compaction,
        max_ticks,
        max_batch_entries,
        keep_dead_responses,
        traces,
    } = command
    else {
        unreachable!("called with the raft command")
    };
    let parse = |s: &str| s.trim().parse::<u64>();
    let election_timeout_ms = match election_timeout.split_once("..") {
        Some((lo, hi)) => (parse(lo), parse(hi)),
        None => (parse(&election_timeout), parse(&election_timeout)),
    };
    let (Ok(lo), Ok(hi)) = election_timeout_ms else {
        eprintln!("--election-timeout takes MIN or MIN..MAX (milliseconds)");
        return ExitCode::from(2);
    };
    let cfg = raft::Config {
        voters,
        lossy: !reliable,
        duplicating: !no_duplicates,
        max_crashes,
        max_proposals,
        max_epoch,
        election_timeout_ms: (lo, hi),
        heartbeat_ms,
        compaction,
        max_ticks,
        max_batch_entries,
        drop_dead_responses: !keep_dead_responses,
    };
    println!("raft model: {cfg:?}");
    if threads > 1 && !dfs {
        println!(
            "note: with {threads} threads the search is not level by level, so a few states \
             within the depth bound may go unchecked; use --threads 1 for an exact bound"
        );
    }
    let how = if dfs { Search::Dfs } else { Search::Bfs };
    if dfs {
        println!("note: depth-first, so the depth bound is not exact");
    }
    if replay {
        return replay_command(cfg);
    }
    if !first_violation {
        let out = raft::search(cfg, depth, how, threads, max_states);
        report(&out, &raft::REACHABLE, traces);
        return exit(&out);
    }
    let out = raft::find_violation(cfg.clone(), depth, how, threads, max_states);
    report(&out, &raft::REACHABLE, traces);
    let Some((_, trace)) = out.first_violation() else {
        return exit(&out);
    };
    if shortest && how == Search::Bfs && threads == 1 {
        // Settle whether the counterexample is a shortest one: search
        // every state one step short of it, and again if that finds one.
        let mut steps = trace.len();
        loop {
            let shorter = raft::find_violation(cfg.clone(), steps - 1, how, 1, None);
            match shorter.first_violation() {
                Some((name, t)) => {
                    println!("shorter: {name}: {} steps", t.len());
                    for (i, step) in t.iter().enumerate() {
                        println!("  {:>3}. {step}", i + 1);
                    }
                    steps = t.len();
                }
                None => {
                    println!(
                        "shortest counterexample: {steps} steps (none within {}: {})",
                        steps - 1,
                        shorter.summary()
                    );
                    break;
                }
            }
        }
    }
    exit(&out)
}

/// Follows a schedule from standard input and reports as a search does.
fn replay_command(cfg: raft::Config) -> ExitCode {
    let mut schedule = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut schedule) {
        eprintln!("reading the schedule: {e}");
        return ExitCode::from(2);
    }
    let out = match raft::replay(cfg, &schedule) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("schedule {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "replayed a schedule of {} steps: 1 path, {} states",
        out.steps.len(),
        out.steps.len() + 1
    );
    for name in raft::SAFETY {
        let verdict = match out.violations.iter().find(|(n, _)| *n == name) {
            Some((_, at)) => format!("FAILS after {at} steps"),
            None => "holds".into(),
        };
        println!("  always    {name}: {verdict}");
    }
    for name in raft::REACHABLE {
        let verdict = match out.reached.iter().find(|(n, _)| *n == name) {
            Some((_, at)) => format!("found after {at} steps"),
            None => "not found".into(),
        };
        println!("  sometimes {name}: {verdict}");
    }
    for (name, at) in &out.violations {
        println!("\n{name}: {at} steps");
        for (i, step) in out.steps.iter().take(*at).enumerate() {
            println!("  {:>3}. {step}", i + 1);
        }
    }
    if out.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints the summary, each property's verdict and the traces.
fn report(out: &Outcome, reachable: &[&str], traces: bool) {
    println!("{}", out.summary());
    for name in &out.safety {
        let verdict = if out.found(name) {
            "FAILS"
        } else {
            "holds (to the bound)"
        };
        println!("  always    {name}: {verdict}");
    }
    for name in reachable {
        let verdict = if out.found(name) {
            "found"
        } else {
            "not found (to the bound)"
        };
        println!("  sometimes {name}: {verdict}");
    }
    for (name, trace) in &out.discoveries {
        if traces || out.safety.contains(name) {
            println!("\n{name}: {} steps", trace.len());
            for (i, step) in trace.iter().enumerate() {
                println!("  {:>3}. {step}", i + 1);
            }
        }
    }
}

fn exit(out: &Outcome) -> ExitCode {
    if out.violated().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
