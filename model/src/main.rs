//! `odradek-model`: runs the models deeper than the test suite does.
//!
//!     cargo run -p odradek-model --release -- classic --depth 16 --max-faults 1
//!     cargo run -p odradek-model --release -- classic --depth 20 --max-faults 0 --bug keep-across-rejoin
//!
//! Memory grows with the search frontier, which holds whole states (the
//! real coordinator's included): about 3 KB per unique state.
//!
//! Prints the states explored, unique states and time, every property's
//! result, and the trace of each discovery. Exits non-zero if an `always`
//! property fails.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use odradek_model::group::{
    self, ClientBug, Config, Search, EXPELLED_OWNER, SAFETY, STABLE_AFTER_RESTART, STABLE_GROUP,
};

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
}

fn main() -> ExitCode {
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
    } = Cli::parse().command;
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
    println!("{}", out.summary());
    for name in SAFETY {
        let verdict = if out.found(name) {
            "FAILS"
        } else {
            "holds (to the bound)"
        };
        println!("  always    {name}: {verdict}");
    }
    for name in [STABLE_GROUP, STABLE_AFTER_RESTART, EXPELLED_OWNER] {
        let verdict = if out.found(name) {
            "found"
        } else {
            "not found (to the bound)"
        };
        println!("  sometimes {name}: {verdict}");
    }
    for (name, trace) in &out.discoveries {
        if traces || SAFETY.contains(name) {
            println!("\n{name}: {} steps", trace.len());
            for (i, step) in trace.iter().enumerate() {
                println!("  {:>3}. {step}", i + 1);
            }
        }
    }
    if out.violated().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
