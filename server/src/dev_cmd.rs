//! `odradek dev --nodes 3`: a local cluster in one command, for trying
//! Odradek out. Each node is its own `odradek server` process with both
//! roles (broker and controller), brokers on consecutive ports from 9092
//! and controllers from 19092, data under one directory. The nodes' logs
//! go to files beside their data, so the terminal shows the cluster, not
//! three interleaved logs.
//!
//! A node that dies is reported and the others go on (killing one is what
//! a cluster is for); Ctrl-C or SIGTERM stops every node, each with
//! SIGTERM and so cleanly, and the command exits when all have.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::format;
use crate::outln;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Nodes in the cluster, each broker and controller.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Where the nodes' data and logs live (node-1, node-2, …); kept
    /// between runs, so a second `odradek dev` restarts the same cluster.
    #[arg(long, default_value = "./odradek-dev")]
    pub dir: PathBuf,
    /// The first broker's port; the others follow it.
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    /// The first controller's port; the others follow it.
    #[arg(long, default_value_t = 19092)]
    pub controller_port: u16,
    /// Host the nodes listen on and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// More settings for every node, by Kafka name (repeatable), passed
    /// on as `--override KEY=VALUE`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

struct Node {
    id: u16,
    child: Child,
    broker: String,
    controller: String,
    dir: PathBuf,
    log: PathBuf,
    exited: bool,
}

pub fn cmd_dev(args: &DevArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("odradek dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster id of the directory: made once, then reused, so that the
/// nodes' data stays theirs across runs.
fn cluster_id(dir: &Path) -> Result<String, String> {
    let path = dir.join("cluster-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            crate::server_cmd::check_cluster_id(&id)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format::new_cluster_id()?;
            fs::write(&path, format!("{id}\n"))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn run(args: &DevArgs) -> Result<ExitCode, String> {
    let n = args.nodes;
    let last_broker = u32::from(args.broker_port) + u32::from(n) - 1;
    let last_controller = u32::from(args.controller_port) + u32::from(n) - 1;
    if last_broker > 65535 || last_controller > 65535 {
        return Err("the ports run past 65535".into());
    }
    let brokers: Vec<u16> = (0..n).map(|i| args.broker_port + i).collect();
    let controllers: Vec<u16> = (0..n).map(|i| args.controller_port + i).collect();
    if brokers.iter().any(|p| controllers.contains(p)) {
        return Err("the broker and controller port ranges overlap".into());
    }
    fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let cluster = cluster_id(&args.dir)?;
    let voters: Vec<String> = (0..n)
        .map(|i| format!("{}@{}:{}", i + 1, args.host, controllers[i as usize]))
        .collect();
    let voters = voters.join(",");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;

    // Signals first: a Ctrl-C while the nodes start must still stop them.
    let stop = signals()?;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let id = i + 1;
        let dir = args.dir.join(format!("node-{id}"));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log = args.dir.join(format!("node-{id}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let broker = format!("{}:{}", args.host, brokers[i as usize]);
        let controller = format!("{}:{}", args.host, controllers[i as usize]);
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--process-roles")
            .arg("broker,controller")
            .arg("--controller-quorum-voters")
            .arg(&voters)
            .arg("--listeners")
            .arg(format!("PLAINTEXT://{broker},CONTROLLER://{controller}"))
            .arg("--log-dirs")
            .arg(&dir)
            // One argument: an id may start with '-'.
            .arg(format!("--cluster-id={cluster}"));
        for o in &args.overrides {
            cmd.arg("--override").arg(o);
        }
        // Its own process group: the terminal's Ctrl-C reaches only this
        // command, which stops the nodes in order rather than all at once
        // behind its back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn();
        match child {
            Ok(child) => nodes.push(Node {
                id,
                child,
                broker,
                controller,
                dir,
                log,
                exited: false,
            }),
            Err(e) => {
                stop_all(&mut nodes);
                return Err(format!("cannot start node {id}: {e}"));
            }
        }
    }
    outln!("odradek dev: a {n}-node cluster, cluster id {cluster}");
    for node in &nodes {
        outln!(
            "node {}: pid {}, broker PLAINTEXT://{}, controller {}, data {}, log {}",
            node.id,
            node.child.id(),
            node.broker,
            node.controller,
            node.dir.display(),
            node.log.display()
        );
    }
    let bootstrap: Vec<&str> = nodes.iter().map(|n| n.broker.as_str()).collect();
    outln!("bootstrap servers: {}", bootstrap.join(","));

    let mut announced = false;
    let started = Instant::now();
    loop {
        if stop.try_recv().is_ok() {
            outln!("stopping the nodes");
            stop_all(&mut nodes);
            outln!("all nodes stopped");
            return Ok(ExitCode::SUCCESS);
        }
        for node in &mut nodes {
            if node.exited {
                continue;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = true;
                outln!(
                    "node {} (pid {}) exited: {status}; see {}",
                    node.id,
                    node.child.id(),
                    node.log.display()
                );
            }
        }
        if nodes.iter().all(|n| n.exited) {
            outln!("every node has exited");
            return Ok(ExitCode::FAILURE);
        }
        if !announced {
            let up = nodes
                .iter()
                .filter(|n| std::net::TcpStream::connect(&n.broker).is_ok())
                .count();
            if up == nodes.len() {
                announced = true;
                outln!(
                    "all {n} brokers accept connections ({} ms); Ctrl-C stops the cluster",
                    started.elapsed().as_millis()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to every node still running, then a wait for each; a node that
/// has not stopped after 30 s gets SIGKILL.
fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|n| !n.exited) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(node.child.id().to_string())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in nodes.iter_mut().filter(|n| !n.exited) {
        loop {
            match node.child.try_wait() {
                Ok(Some(status)) => {
                    outln!("node {} stopped: {status}", node.id);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    outln!("node {} did not stop in time and was killed", node.id);
                    break;
                }
            }
        }
        node.exited = true;
    }
}

/// A receiver that gets a message on SIGINT or SIGTERM.
fn signals() -> Result<std::sync::mpsc::Receiver<()>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let handlers = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                );
                let (Ok(mut int), Ok(mut term)) = handlers else {
                    let _ = ready_tx.send(Err("cannot handle SIGINT or SIGTERM".to_string()));
                    return;
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                let _ = tx.send(());
            })
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the signal thread died".to_string())??;
    Ok(rx)
}
