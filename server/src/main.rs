//! The `odradek` command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use odradek::dev_cmd::{self, DevArgs};
use odradek::perf::{self, DiskArgs};
use odradek::server_cmd::{self, ServerArgs};
use odradek::sim_cmd::{self, RunArgs, ShrinkArgs, SwarmArgs};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "odradek",
    version,
    about = "A Kafka-compatible log, and the simulator that breaks it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Kafka-compatible node: a single broker, or with
    /// `--process-roles` and `--controller-quorum-voters` a broker and/or
    /// controller of a cluster.
    Server(Box<ServerArgs>),
    /// Start a local cluster of `odradek server` processes, for trying it
    /// out; Ctrl-C stops them all.
    Dev(DevArgs),
    /// The deterministic simulator.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Benchmarks on this machine's real hardware.
    Perf {
        #[command(subcommand)]
        command: PerfCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PerfCommand {
    /// The storage engine on the real disk (sync per batch, group commit),
    /// beside dd on the same file system.
    Disk(DiskArgs),
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// Run one seed; exit 0 iff every invariant holds.
    Run(RunArgs),
    /// Run a range of seeds across threads and report every failure.
    Swarm(SwarmArgs),
    /// Shrink a failing seed: fewer fault kinds, a shorter safety phase.
    Shrink(ShrinkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr so that stdout stays machine-readable under --json.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let ok = match &cli.command {
        // It has its own exit codes: 2 for a bad configuration.
        Command::Server(args) => return server_cmd::cmd_server(args),
        Command::Dev(args) => return dev_cmd::cmd_dev(args),
        Command::Sim { command } => match command {
            SimCommand::Run(args) => sim_cmd::cmd_run(args),
            SimCommand::Swarm(args) => sim_cmd::cmd_swarm(args),
            SimCommand::Shrink(args) => sim_cmd::cmd_shrink(args),
        },
        Command::Perf { command } => match command {
            PerfCommand::Disk(args) => match perf::cmd_disk(args) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("odradek perf disk: {e}");
                    false
                }
            },
        },
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sim_run() {
        let cli = Cli::try_parse_from([
            "odradek",
            "sim",
            "run",
            "--seed",
            "7",
            "--json",
            "--check-determinism",
        ])
        .unwrap();
        match cli.command {
            Command::Sim {
                command: SimCommand::Run(a),
            } => {
                assert_eq!(a.seed, 7);
                assert!(a.json && a.check_determinism && !a.trace);
                assert_eq!(a.workload.name(), "storage");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_sim_swarm() {
        let cli = Cli::try_parse_from([
            "odradek", "sim", "swarm", "--seeds", "10..=19", "--jobs", "3",
        ])
        .unwrap();
        match cli.command {
            Command::Sim {
                command: SimCommand::Swarm(a),
            } => {
                assert_eq!(a.seeds, 10..20);
                assert_eq!(a.jobs.map(|j| j.get()), Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_perf_disk() {
        let cli = Cli::try_parse_from(["odradek", "perf", "disk", "--seconds", "0.5"]).unwrap();
        match cli.command {
            Command::Perf {
                command: PerfCommand::Disk(a),
            } => {
                assert_eq!(a.seconds, 0.5);
                assert_eq!(a.batch_bytes, 16384);
                assert_eq!(a.writers.get(), 4);
                assert!(a.dir.is_none() && !a.json);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_server() {
        let cli = Cli::try_parse_from(["odradek", "server"]).unwrap();
        match cli.command {
            Command::Server(a) => assert!(a.listeners.is_none() && a.config.is_none()),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "odradek",
            "server",
            "--listeners",
            "PLAINTEXT://127.0.0.1:0",
            "--advertised-listeners",
            "PLAINTEXT://localhost:9092",
            "--node-id",
            "3",
            "--log-dirs",
            "/tmp/x",
            "--socket-request-max-bytes",
            "1000",
            "--connections-max-idle-ms",
            "-1",
            "--max-connections",
            "5",
            "--config",
            "server.properties",
        ])
        .unwrap();
        match cli.command {
            Command::Server(a) => {
                assert_eq!(a.listeners.as_deref(), Some("PLAINTEXT://127.0.0.1:0"));
                assert_eq!(a.node_id.as_deref(), Some("3"));
                assert_eq!(a.connections_max_idle_ms.as_deref(), Some("-1"));
                assert_eq!(a.config.unwrap().to_str(), Some("server.properties"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        for args in [
            &["odradek", "sim", "run"][..],
            &["odradek", "sim", "run", "--seed", "x"],
            &["odradek", "sim", "run", "--seed", "1", "--workload", "nope"],
            &["odradek", "sim", "swarm", "--seeds", "5..2"],
            &["odradek", "sim", "swarm", "--seeds", "0..9", "--jobs", "0"],
            &["odradek", "perf", "disk", "--seconds", "0"],
            &["odradek", "perf", "disk", "--writers", "0"],
            &["odradek", "perf", "disk", "--batch-bytes", "10"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
