//! `odradek server` as a node of a cluster: the core's [`Node`] (Raft
//! quorum member, controller, broker, in whichever roles) on the broker
//! thread, the peer network to the other nodes, and the Kafka listener if
//! the node is a broker.

use std::sync::{Arc, OnceLock};

use odradek_core::cluster::{Node, NodeConfig, Roles};
use odradek_core::io::clock::{Clock, Instant};
use odradek_core::io::Disk;
use odradek_core::kafka::{BrokerConfig, Completion, ConnId, FrameOutcome};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::broker_thread::{self, BrokerHandle, Engine, SystemClock};
use crate::format::Identity;
use crate::outln;
use crate::peer::{self, PeerConfig};
use crate::server_cmd::{
    bind_kafka_listener, open_data_dir, resolve_listen_addr, ClusterSettings, Endpoint,
    ServerConfig,
};

/// The cluster node with the randomness its elections draw from.
struct ClusterEngine<D: Disk + Clone> {
    node: Node<D>,
    rng: ChaCha20Rng,
}

impl<D: Disk + Clone> Engine for ClusterEngine<D> {
    fn handle_frame(&mut self, conn: ConnId, frame: &[u8], clock: &dyn Clock) -> FrameOutcome {
        self.node.handle_frame(conn, frame, clock, &mut self.rng)
    }
    fn poll(&mut self, clock: &dyn Clock) -> Vec<Completion> {
        self.node.poll(clock, &mut self.rng)
    }
    fn next_deadline(&self) -> Option<Instant> {
        Some(self.node.next_deadline())
    }
    fn connection_closed(&mut self, conn: ConnId) {
        self.node.conn_closed(conn)
    }
    fn set_client_host(&mut self, conn: ConnId, host: String) {
        if let Some(b) = self.node.broker_mut() {
            b.set_client_host(conn, host)
        }
    }
    fn peer_message(&mut self, from: i32, payload: &[u8], clock: &dyn Clock) {
        self.node.step_peer(from, payload, clock, &mut self.rng)
    }
    fn take_peer_messages(&mut self) -> Vec<(i32, Vec<u8>)> {
        self.node.take_peer_messages()
    }
    fn shutdown(self) -> Result<(), String> {
        self.node.shutdown()
    }
}

fn os_seeded_rng() -> Result<ChaCha20Rng, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// Runs the node until SIGTERM/SIGINT, or until its engine dies.
pub async fn run(
    config: ServerConfig,
    cluster: ClusterSettings,
    identity: Identity,
    mut broker_config: BrokerConfig,
    sigterm: &mut Signal,
    sigint: &mut Signal,
) -> Result<(), String> {
    let (stop, stop_rx) = watch::channel(false);
    let controller_listener = if cluster.controller {
        let endpoint: Endpoint = cluster
            .controller_listener
            .clone()
            .unwrap_or_else(|| cluster.voters[&config.node_id].clone());
        let addr = resolve_listen_addr(&endpoint)?;
        let l = peer::bind(addr).await.map_err(|e| {
            format!(
                "cannot listen for controllers on CONTROLLER://{}:{}: {e}",
                endpoint.host, endpoint.port
            )
        })?;
        Some((endpoint, l))
    } else {
        None
    };
    let kafka = if cluster.broker {
        let (listener, bound) = bind_kafka_listener(&config).await?;
        if config.advertised.port == 0 {
            broker_config.advertised_port = i32::from(bound.port());
        }
        Some((bound, listener))
    } else {
        None
    };

    let mut node_config = NodeConfig::new(
        config.node_id,
        Roles {
            broker: cluster.broker,
            controller: cluster.controller,
        },
        cluster.voters.keys().copied().collect(),
        &identity.cluster_id,
        "",
    );
    node_config.broker = broker_config;
    let clock = SystemClock::new();
    let mut rng = os_seeded_rng()?;
    let started = std::time::Instant::now();
    let engine = open_data_dir(&config.log_dir, move |disk| {
        Node::open(disk, node_config, &clock, &mut rng).map(|node| ClusterEngine { node, rng })
    })
    .await?;
    tracing::info!(
        recovery_ms = started.elapsed().as_millis() as u64,
        "data directory recovered"
    );

    let (controller_endpoint, controller_socket) = match controller_listener {
        Some((e, l)) => (Some(e), Some(l)),
        None => (None, None),
    };
    // The peer network hands payloads to the broker thread, whose handle
    // exists only once the thread does; anything arriving before is lost,
    // as the network may lose any message.
    let handle_slot: Arc<OnceLock<BrokerHandle>> = Arc::new(OnceLock::new());
    let deliver_slot = handle_slot.clone();
    let peers = peer::start(
        PeerConfig {
            node_id: config.node_id,
            cluster_id: identity.cluster_id.clone(),
            voters: cluster
                .voters
                .iter()
                .map(|(id, e)| (*id, format!("{}:{}", e.host, e.port)))
                .collect(),
        },
        controller_socket,
        move |from, payload| {
            if let Some(h) = deliver_slot.get() {
                h.peer(from, payload);
            }
        },
        stop_rx.clone(),
    );
    let sender = peers.clone();
    let (handle, mut engine_thread) = broker_thread::spawn_with_peers(
        engine,
        clock,
        Box::new(move |to, payload| sender.send(to, payload)),
    )
    .map_err(|e| format!("cannot start the node's thread: {e}"))?;
    let _ = handle_slot.set(handle.clone());

    let roles = match (cluster.broker, cluster.controller) {
        (true, true) => "broker,controller",
        (true, false) => "broker",
        _ => "controller",
    };
    outln!("odradek server");
    outln!("node id: {}", config.node_id);
    outln!("cluster id: {}", identity.cluster_id);
    outln!("process roles: {roles}");
    if let Some((bound, _)) = &kafka {
        outln!("listening on: PLAINTEXT://{bound}");
        outln!(
            "advertised as: PLAINTEXT://{}:{}",
            config.advertised.host,
            if config.advertised.port == 0 {
                bound.port()
            } else {
                config.advertised.port
            }
        );
    }
    if let Some(endpoint) = &controller_endpoint {
        outln!(
            "controller listener: CONTROLLER://{}:{}",
            endpoint.host,
            endpoint.port
        );
    }
    let voters: Vec<String> = cluster
        .voters
        .iter()
        .map(|(id, e)| format!("{id}@{}:{}", e.host, e.port))
        .collect();
    outln!("controller quorum voters: {}", voters.join(","));
    outln!("data dir: {}", config.log_dir.display());

    let serving = async {
        match kafka {
            Some((_, listener)) => listener
                .serve(handle, stop_rx.clone())
                .await
                .map_err(|e| format!("listener failed: {e}")),
            None => {
                drop(handle);
                let mut stopped = stop_rx.clone();
                let _ = stopped.wait_for(|s| *s).await;
                Ok(())
            }
        }
    };
    tokio::pin!(serving);
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok("SIGTERM"),
        _ = sigint.recv() => Ok("SIGINT"),
        _ = engine_thread.ended() => Err("the node's thread stopped unexpectedly".to_string()),
        finished = &mut serving => Err(match finished {
            Ok(()) => "the listener stopped".to_string(),
            Err(e) => e,
        }),
    };
    // Every handle must go for the node's thread to sync and end: the
    // listener's (it ends on the stop), the peer network's (its tasks end
    // on the stop) and this function's own.
    let _ = stop.send(true);
    let served = (&mut serving).await;
    drop(handle_slot);
    drop(peers);
    if let (Ok(_), Err(e)) = (&outcome, &served) {
        tracing::warn!("{e}");
    }
    match outcome {
        Ok(signal) => {
            tracing::info!(signal, "shutting down");
            tokio::task::spawn_blocking(move || engine_thread.join())
                .await
                .map_err(|e| format!("shutdown panicked: {e}"))??;
            tracing::info!("stopped; all data synced");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
