//! `odradek server`: configuration (flags, environment, properties file)
//! and the process around the Kafka listener.
//!
//! Settings use Kafka's broker config names. Each can come from a flag
//! (`--log-dirs`), an environment variable (`ODRADEK_LOG_DIRS`) or a line of
//! the `--config` file (`log.dirs=...`); the first of those that is present
//! wins, then the default. Every source goes through the same parser, so a
//! bad value is reported the same way wherever it came from, naming where
//! it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use odradek_core::group::GroupConfig;
use odradek_core::kafka::{configs, Broker, BrokerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::broker_thread::{self, SystemClock};
use crate::cluster_run;
use crate::disk::FsDisk;
use crate::format;
use crate::kafka_listener::{
    KafkaListener, ListenerConfig, DEFAULT_CONNECTIONS_MAX_IDLE_MS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BYTES,
};
use crate::outln;

const DEFAULT_LISTENERS: &str = "PLAINTEXT://127.0.0.1:9092";
const DEFAULT_LOG_DIRS: &str = "./odradek-data";
const DEFAULT_NODE_ID: i32 = 1;

/// The server's own settings, by their Kafka names.
pub const KEYS: &[&str] = &[
    "listeners",
    "advertised.listeners",
    "node.id",
    "log.dirs",
    "socket.request.max.bytes",
    "connections.max.idle.ms",
    "max.connections",
    "num.partitions",
    "default.replication.factor",
    "auto.create.topics.enable",
    "log.retention.check.interval.ms",
    "offsets.topic.num.partitions",
    "offsets.topic.replication.factor",
    "offsets.retention.minutes",
    "offsets.retention.check.interval.ms",
    "offset.metadata.max.bytes",
    "group.initial.rebalance.delay.ms",
    "group.min.session.timeout.ms",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.consumer.session.timeout.ms",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.max.size",
    "group.consumer.min.session.timeout.ms",
    "group.consumer.max.session.timeout.ms",
    "group.consumer.min.heartbeat.interval.ms",
    "group.consumer.max.heartbeat.interval.ms",
    "process.roles",
    "controller.quorum.voters",
    "cluster.id",
];

/// Coarser spellings Kafka accepts for two topic defaults, as (key, the
/// millisecond key it stands for).
const SCALED_KEYS: &[(&str, &str)] = &[
    ("log.retention.hours", "log.retention.ms"),
    ("log.retention.minutes", "log.retention.ms"),
    ("log.roll.hours", "log.roll.ms"),
];

/// Every setting understood: the server's own, and the broker-wide defaults
/// of topic configs (`log.retention.ms` for `retention.ms`, …).
pub fn known_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = KEYS.to_vec();
    for def in configs::TOPIC_CONFIGS {
        if let Some(syn) = def.broker_synonym {
            if !keys.contains(&syn) {
                keys.push(syn);
            }
        }
    }
    keys.extend(SCALED_KEYS.iter().map(|(k, _)| *k));
    keys
}

/// The topic config a broker-wide default stands for.
fn topic_def_for(key: &str) -> Option<&'static configs::ConfigDef> {
    let key = SCALED_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, ms)| ms);
    configs::TOPIC_CONFIGS
        .iter()
        .find(|d| d.broker_synonym == Some(key))
}

/// Values are taken as strings here and parsed in [`resolve`], so that a
/// flag, a variable and a file line share one parser and one error format.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// A Kafka-style properties file: `key=value` lines, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `listeners`: where to accept clients [default: PLAINTEXT://127.0.0.1:9092]
    #[arg(long, value_name = "PLAINTEXT://HOST:PORT")]
    pub listeners: Option<String>,
    /// `advertised.listeners`: the address clients are told to use
    /// [default: the listener; port 0 means the port actually bound]
    #[arg(long, value_name = "PLAINTEXT://HOST:PORT")]
    pub advertised_listeners: Option<String>,
    /// `node.id` [default: 1]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// `log.dirs`: the data directory [default: ./odradek-data]
    #[arg(long, value_name = "DIR")]
    pub log_dirs: Option<String>,
    /// `socket.request.max.bytes` [default: 104857600]
    #[arg(long, value_name = "BYTES")]
    pub socket_request_max_bytes: Option<String>,
    /// `connections.max.idle.ms`; -1 never closes idle connections
    /// [default: 600000]
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub connections_max_idle_ms: Option<String>,
    /// `max.connections`: concurrent client connections [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// `num.partitions`: partitions of auto-created topics [default: 1]
    #[arg(long, value_name = "N")]
    pub num_partitions: Option<String>,
    /// `default.replication.factor` [default: 1]
    #[arg(long, value_name = "N")]
    pub default_replication_factor: Option<String>,
    /// `auto.create.topics.enable` [default: true]
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics_enable: Option<String>,
    /// `log.retention.ms`: default retention of topics [default: 604800000]
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub log_retention_ms: Option<String>,
    /// `log.segment.bytes`: default segment size [default: 1073741824]
    #[arg(long, value_name = "BYTES")]
    pub log_segment_bytes: Option<String>,
    /// `message.max.bytes`: default largest batch [default: 1048588]
    #[arg(long, value_name = "BYTES")]
    pub message_max_bytes: Option<String>,
    /// `process.roles`: `broker`, `controller` or `broker,controller`; unset
    /// runs a single node without a metadata quorum
    #[arg(long, value_name = "ROLES")]
    pub process_roles: Option<String>,
    /// `controller.quorum.voters`: `ID@HOST:PORT,…`, every controller's id and
    /// controller listener
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub controller_quorum_voters: Option<String>,
    /// `cluster.id`: formats a new data directory for this cluster (every
    /// node of a cluster the same); a directory of another cluster is
    /// refused [default: a new id for a single node; required for a new
    /// cluster node]
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Any other setting, by its Kafka name (repeatable), as Kafka's
    /// `kafka-server-start --override`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl ServerArgs {
    fn flag(&self, key: &str) -> Option<&str> {
        match key {
            "listeners" => self.listeners.as_deref(),
            "advertised.listeners" => self.advertised_listeners.as_deref(),
            "node.id" => self.node_id.as_deref(),
            "log.dirs" => self.log_dirs.as_deref(),
            "socket.request.max.bytes" => self.socket_request_max_bytes.as_deref(),
            "connections.max.idle.ms" => self.connections_max_idle_ms.as_deref(),
            "max.connections" => self.max_connections.as_deref(),
            "num.partitions" => self.num_partitions.as_deref(),
            "default.replication.factor" => self.default_replication_factor.as_deref(),
            "auto.create.topics.enable" => self.auto_create_topics_enable.as_deref(),
            "log.retention.ms" => self.log_retention_ms.as_deref(),
            "log.segment.bytes" => self.log_segment_bytes.as_deref(),
            "message.max.bytes" => self.message_max_bytes.as_deref(),
            "process.roles" => self.process_roles.as_deref(),
            "controller.quorum.voters" => self.controller_quorum_voters.as_deref(),
            "cluster.id" => self.cluster_id.as_deref(),
            _ => self
                .overrides
                .iter()
                .rev()
                .find_map(|o| o.split_once('=').filter(|(k, _)| k.trim() == key))
                .map(|(_, v)| v.trim()),
        }
    }
}

/// The environment variable for a key: `log.dirs` is `ODRADEK_LOG_DIRS`.
pub fn env_var_name(key: &str) -> String {
    format!("ODRADEK_{}", key.to_ascii_uppercase().replace('.', "_"))
}

fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('.', "-"))
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration that cannot be used; the command exits 2 on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One listener: `PLAINTEXT://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Without IPv6 brackets; empty means all interfaces (Kafka's
    /// `PLAINTEXT://:9092`).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "PLAINTEXT://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "PLAINTEXT://{}:{}", self.host, self.port)
        }
    }
}

/// The resolved configuration of `odradek server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub listener: Endpoint,
    pub advertised: Endpoint,
    pub node_id: i32,
    pub log_dir: PathBuf,
    pub socket_request_max_bytes: usize,
    /// `None`: idle connections are never closed.
    pub connections_max_idle_ms: Option<u64>,
    pub max_connections: usize,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics: bool,
    pub retention_check_interval_ms: u64,
    /// `offsets.topic.num.partitions`
    pub offsets_topic_num_partitions: i32,
    /// The group coordinator's `group.*` and `offsets.*` settings.
    pub group: GroupConfig,
    /// Broker-wide topic defaults the operator set, by Kafka name.
    pub topic_defaults: BTreeMap<String, String>,
    /// `cluster.id`, if given.
    pub cluster_id: Option<String>,
    /// `None`: a single node without a metadata quorum.
    pub cluster: Option<ClusterSettings>,
}

/// A node of a cluster with a Raft metadata quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub broker: bool,
    pub controller: bool,
    /// `controller.quorum.voters`: id → its controller listener.
    pub voters: BTreeMap<i32, Endpoint>,
    /// Where a controller accepts other nodes: the `CONTROLLER://` entry of
    /// `listeners`, else its own entry in the voters.
    pub controller_listener: Option<Endpoint>,
}

/// Parses a properties file: `key=value` per line, surrounding whitespace
/// ignored, blank lines and lines starting with `#` or `!` skipped (Java
/// properties' comment markers). Returns (key, value, line number).
pub fn parse_properties(
    text: &str,
    path: &Path,
) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError(format!(
                "{}:{}: expected key=value, found {line:?}",
                path.display(),
                index + 1
            )));
        };
        entries.push((key.trim().to_string(), value.trim().to_string(), index + 1));
    }
    Ok(entries)
}

/// Combines the sources (flag > environment > file > default) and validates
/// the result. `file` is the properties file's path and text, if one was
/// given. Returns the configuration and warnings to log (unknown keys).
pub fn resolve(
    args: &ServerArgs,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<(&Path, &str)>,
) -> Result<(ServerConfig, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let keys = known_keys();
    let mut chosen: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    for o in &args.overrides {
        let known = o
            .split_once('=')
            .and_then(|(k, _)| keys.iter().find(|known| **known == k.trim()));
        if known.is_none() {
            return Err(ConfigError(format!(
                "--override {o:?}: expected KEY=VALUE with a known setting (one of: {})",
                keys.join(", ")
            )));
        }
    }
    if let Some((path, text)) = file {
        for (key, value, line) in parse_properties(text, path)? {
            match keys.iter().find(|k| **k == key) {
                Some(known) => {
                    // A later line wins, as in Java's Properties.
                    let source = Source::File {
                        path: path.to_path_buf(),
                        line,
                    };
                    chosen.insert(known, (value, source));
                }
                None => warnings.push(format!(
                    "{}:{line}: unknown setting {key:?} ignored",
                    path.display()
                )),
            }
        }
    }
    for key in keys.iter().copied() {
        let var = env_var_name(key);
        if let Some(value) = env(&var) {
            chosen.insert(key, (value, Source::Env(var)));
        }
        if let Some(value) = args.flag(key) {
            let name = if args
                .overrides
                .iter()
                .any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key))
            {
                format!("--override {key}")
            } else {
                flag_name(key)
            };
            chosen.insert(key, (value.to_string(), Source::Flag(name)));
        }
    }
    let get = |key: &'static str, default: &str| -> (String, Source) {
        chosen
            .get(key)
            .cloned()
            .unwrap_or_else(|| (default.to_string(), Source::Default))
    };
    let bad = |key: &str, (value, source): &(String, Source), why: &str| {
        ConfigError(format!(
            "invalid value {value:?} for {key} (from {source}): {why}"
        ))
    };

    let listeners = get("listeners", DEFAULT_LISTENERS);
    let (plaintext, controller_listener) =
        parse_listeners(&listeners.0).map_err(|why| bad("listeners", &listeners, &why))?;
    let roles = chosen.get("process.roles").cloned();
    let voters_given = chosen.get("controller.quorum.voters").cloned();
    let cluster = match (&roles, &voters_given) {
        (None, None) => {
            if controller_listener.is_some() {
                return Err(bad(
                    "listeners",
                    &listeners,
                    "a CONTROLLER listener needs process.roles and controller.quorum.voters",
                ));
            }
            None
        }
        (None, Some(v)) => {
            return Err(bad(
                "controller.quorum.voters",
                v,
                "process.roles must be set too (broker, controller, or broker,controller)",
            ))
        }
        (Some(r), None) => {
            return Err(bad(
                "process.roles",
                r,
                "controller.quorum.voters must be set too (ID@HOST:PORT,…)",
            ))
        }
        (Some(r), Some(v)) => {
            let (broker, controller) =
                parse_roles(&r.0).map_err(|why| bad("process.roles", r, &why))?;
            let voters =
                parse_voters(&v.0).map_err(|why| bad("controller.quorum.voters", v, &why))?;
            Some(ClusterSettings {
                broker,
                controller,
                voters,
                controller_listener: controller_listener.clone(),
            })
        }
    };
    let listener = match (&plaintext, &cluster) {
        (Some(l), _) => l.clone(),
        (None, Some(c)) if !c.broker => Endpoint {
            host: "127.0.0.1".into(),
            port: 0,
        },
        (None, _) => {
            return Err(bad(
                "listeners",
                &listeners,
                "a broker needs a PLAINTEXT listener",
            ))
        }
    };
    let advertised = match chosen.get("advertised.listeners") {
        Some(given) => {
            let e = parse_listeners(&given.0)
                .and_then(|(p, _)| p.ok_or_else(|| "expected PLAINTEXT://HOST:PORT".to_string()))
                .map_err(|why| bad("advertised.listeners", given, &why))?;
            check_routable(&e).map_err(|why| bad("advertised.listeners", given, &why))?;
            e
        }
        None => {
            check_routable(&listener).map_err(|why| {
                bad(
                    "listeners",
                    &listeners,
                    &format!("{why}; set advertised.listeners to a routable address"),
                )
            })?;
            listener.clone()
        }
    };

    let node = get("node.id", &DEFAULT_NODE_ID.to_string());
    let node_id = match node.0.parse::<i32>() {
        Ok(id) if id >= 0 => id,
        _ => {
            return Err(bad(
                "node.id",
                &node,
                "expected an integer from 0 to 2147483647",
            ))
        }
    };

    if let (Some(c), Some(r)) = (&cluster, &roles) {
        let voter = c.voters.contains_key(&node_id);
        if c.controller && !voter {
            return Err(bad(
                "process.roles",
                r,
                &format!(
                    "a controller must be one of controller.quorum.voters, and node.id {node_id} is not"
                ),
            ));
        }
        if !c.controller && voter {
            return Err(bad(
                "process.roles",
                r,
                &format!(
                    "node.id {node_id} is in controller.quorum.voters, so it must have the controller role"
                ),
            ));
        }
    }
    let cluster_id = match chosen.get("cluster.id") {
        Some(given) => {
            check_cluster_id(given.0.trim()).map_err(|why| bad("cluster.id", given, &why))?;
            Some(given.0.trim().to_string())
        }
        None => None,
    };

    let dirs = get("log.dirs", DEFAULT_LOG_DIRS);
    let dir_list: Vec<&str> = dirs.0.split(',').map(str::trim).collect();
    let log_dir = match dir_list[..] {
        [one] if !one.is_empty() => PathBuf::from(one),
        [""] => return Err(bad("log.dirs", &dirs, "expected a directory")),
        _ => {
            return Err(bad(
                "log.dirs",
                &dirs,
                "only one log directory is supported so far",
            ))
        }
    };

    let max_bytes = get(
        "socket.request.max.bytes",
        &DEFAULT_MAX_REQUEST_BYTES.to_string(),
    );
    let socket_request_max_bytes = match max_bytes.0.parse::<i32>() {
        // Kafka's own bound: sizes are i32 on the wire.
        Ok(n) if n >= 1 => n as usize,
        _ => {
            return Err(bad(
                "socket.request.max.bytes",
                &max_bytes,
                "expected an integer from 1 to 2147483647",
            ))
        }
    };

    let idle = get(
        "connections.max.idle.ms",
        &DEFAULT_CONNECTIONS_MAX_IDLE_MS.to_string(),
    );
    let connections_max_idle_ms = match idle.0.parse::<i64>() {
        // Kafka disables idle expiry for any negative value.
        Ok(n) if n < 0 => None,
        Ok(n) if n > 0 => Some(n as u64),
        _ => {
            return Err(bad(
                "connections.max.idle.ms",
                &idle,
                "expected a positive number of milliseconds, or -1 for no limit",
            ))
        }
    };

    let max_conn = get("max.connections", &DEFAULT_MAX_CONNECTIONS.to_string());
    let max_connections = match max_conn.0.parse::<i32>() {
        Ok(n) if n >= 1 => n as usize,
        _ => {
            return Err(bad(
                "max.connections",
                &max_conn,
                "expected an integer from 1 to 2147483647",
            ))
        }
    };

    let int_in = |key: &'static str, default: &str, lo: i64, hi: i64| -> Result<i64, ConfigError> {
        let v = get(key, default);
        match v.0.trim().parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(bad(
                key,
                &v,
                &format!("expected an integer from {lo} to {hi}"),
            )),
        }
    };
    let num_partitions = int_in("num.partitions", "1", 1, 10_000)? as i32;
    // One copy is all a single node can keep; a cluster's controller checks
    // the factor against the brokers it has.
    let max_rf = if cluster.is_some() {
        i64::from(i16::MAX)
    } else {
        1
    };
    let default_replication_factor = int_in("default.replication.factor", "1", 1, max_rf)? as i16;
    let retention_check_interval_ms =
        int_in("log.retention.check.interval.ms", "300000", 1, i64::MAX)? as u64;
    let offsets_topic_num_partitions =
        int_in("offsets.topic.num.partitions", "50", 1, 1000)? as i32;
    int_in("offsets.topic.replication.factor", "1", 1, max_rf)?;
    let max = i64::from(i32::MAX);
    let group = GroupConfig {
        offsets_retention_ms: int_in("offsets.retention.minutes", "10080", 1, max)? * 60_000,
        offsets_retention_check_interval_ms: int_in(
            "offsets.retention.check.interval.ms",
            "600000",
            1,
            max,
        )? as u64,
        offset_metadata_max_bytes: int_in("offset.metadata.max.bytes", "4096", 0, max)? as usize,
        initial_rebalance_delay_ms: int_in("group.initial.rebalance.delay.ms", "3000", 0, max)?
            as i32,
        min_session_timeout_ms: int_in("group.min.session.timeout.ms", "6000", 1, max)? as i32,
        max_session_timeout_ms: int_in("group.max.session.timeout.ms", "1800000", 1, max)? as i32,
        max_size: int_in("group.max.size", &max.to_string(), 1, max)? as usize,
        consumer_session_timeout_ms: int_in("group.consumer.session.timeout.ms", "45000", 1, max)?
            as i32,
        consumer_heartbeat_interval_ms: int_in(
            "group.consumer.heartbeat.interval.ms",
            "5000",
            1,
            max,
        )? as i32,
        consumer_max_size: int_in("group.consumer.max.size", &max.to_string(), 1, max)? as usize,
    };
    // Kafka's bounds on the KIP-848 timings: the value must lie within them.
    for (key, value, lo_key, lo, hi_key, hi) in [
        (
            "group.consumer.session.timeout.ms",
            "45000",
            "group.consumer.min.session.timeout.ms",
            "45000",
            "group.consumer.max.session.timeout.ms",
            "60000",
        ),
        (
            "group.consumer.heartbeat.interval.ms",
            "5000",
            "group.consumer.min.heartbeat.interval.ms",
            "5000",
            "group.consumer.max.heartbeat.interval.ms",
            "15000",
        ),
    ] {
        let v = int_in(key, value, 1, max)?;
        let lo_v = int_in(lo_key, lo, 1, max)?;
        let hi_v = int_in(hi_key, hi, 1, max)?;
        if v < lo_v || v > hi_v {
            return Err(bad(
                key,
                &get(key, value),
                &format!("must lie within {lo_key} ({lo_v}) and {hi_key} ({hi_v})"),
            ));
        }
    }
    if group.min_session_timeout_ms > group.max_session_timeout_ms {
        let v = get("group.min.session.timeout.ms", "6000");
        return Err(bad(
            "group.min.session.timeout.ms",
            &v,
            "must not be larger than group.max.session.timeout.ms",
        ));
    }
    let auto = get("auto.create.topics.enable", "true");
    let auto_create_topics = match auto.0.trim() {
        t if t.eq_ignore_ascii_case("true") => true,
        f if f.eq_ignore_ascii_case("false") => false,
        _ => {
            return Err(bad(
                "auto.create.topics.enable",
                &auto,
                "expected true or false",
            ))
        }
    };
    let mut topic_defaults = BTreeMap::new();
    for (key, given) in &chosen {
        if let Some(def) = topic_def_for(key) {
            let scaled = SCALED_KEYS.iter().any(|(k, _)| k == key);
            let check = if scaled {
                given
                    .0
                    .trim()
                    .parse::<i64>()
                    .map(|_| ())
                    .map_err(|_| "expected an integer".to_string())
            } else {
                configs::validate(def, given.0.trim())
            };
            check.map_err(|why| bad(key, given, &why))?;
            topic_defaults.insert(key.to_string(), given.0.trim().to_string());
        }
    }

    Ok((
        ServerConfig {
            listener,
            advertised,
            node_id,
            log_dir,
            socket_request_max_bytes,
            connections_max_idle_ms,
            max_connections,
            num_partitions,
            default_replication_factor,
            auto_create_topics,
            retention_check_interval_ms,
            offsets_topic_num_partitions,
            group,
            topic_defaults,
            cluster_id,
            cluster,
        },
        warnings,
    ))
}

/// Parses `listeners`: `PLAINTEXT://HOST:PORT`, optionally with a
/// `CONTROLLER://HOST:PORT` beside it, comma-separated.
fn parse_listeners(value: &str) -> Result<(Option<Endpoint>, Option<Endpoint>), String> {
    let mut plaintext = None;
    let mut controller = None;
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = part
            .split_once("://")
            .ok_or_else(|| format!("{part:?}: expected NAME://HOST:PORT"))?;
        let slot = match name {
            "PLAINTEXT" => &mut plaintext,
            "CONTROLLER" => &mut controller,
            other => {
                return Err(format!(
                    "listener {other:?} is not supported; only PLAINTEXT (and CONTROLLER, for a controller) are, so far"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!(
                "{part}: only one listener of each name is supported"
            ));
        }
        *slot = Some(parse_endpoint(&format!("PLAINTEXT://{rest}"))?);
    }
    if plaintext.is_none() && controller.is_none() {
        return Err("expected PLAINTEXT://HOST:PORT".into());
    }
    Ok((plaintext, controller))
}

fn parse_roles(value: &str) -> Result<(bool, bool), String> {
    let mut broker = false;
    let mut controller = false;
    for role in value.split(',').map(str::trim) {
        match role {
            "broker" if !broker => broker = true,
            "controller" if !controller => controller = true,
            "broker" | "controller" => return Err(format!("role {role:?} given twice")),
            other => {
                return Err(format!(
                    "unknown role {other:?}: expected broker, controller, or broker,controller"
                ))
            }
        }
    }
    Ok((broker, controller))
}

/// Parses `controller.quorum.voters`: `ID@HOST:PORT,…`.
pub fn parse_voters(value: &str) -> Result<BTreeMap<i32, Endpoint>, String> {
    let mut voters = BTreeMap::new();
    for part in value.split(',').map(str::trim) {
        let (id, addr) = part
            .split_once('@')
            .ok_or_else(|| format!("{part:?}: expected ID@HOST:PORT"))?;
        let id: i32 =
            id.parse().ok().filter(|i| *i >= 0).ok_or_else(|| {
                format!("{part:?}: the id must be an integer from 0 to 2147483647")
            })?;
        let endpoint = parse_endpoint(&format!("PLAINTEXT://{addr}"))
            .map_err(|why| format!("{part:?}: {why}"))?;
        if endpoint.port == 0 || endpoint.host.is_empty() {
            return Err(format!("{part:?}: a voter needs a host and a port"));
        }
        if voters.insert(id, endpoint).is_some() {
            return Err(format!("voter {id} is listed twice"));
        }
    }
    Ok(voters)
}

/// Kafka's cluster ids are 22 characters of URL-safe base64; any id of
/// those characters is taken, as long as it is not absurd.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("expected 1 to 64 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("expected letters, digits, '-' and '_' only".into());
    }
    Ok(())
}

/// Parses `PLAINTEXT://HOST:PORT` (one listener; IPv6 hosts in brackets).
fn parse_endpoint(value: &str) -> Result<Endpoint, String> {
    let value = value.trim();
    if value.contains(',') {
        return Err("only one listener is supported so far".to_string());
    }
    let Some((protocol, rest)) = value.split_once("://") else {
        return Err("expected PLAINTEXT://HOST:PORT".to_string());
    };
    if protocol != "PLAINTEXT" {
        return Err(format!(
            "listener {protocol:?} is not supported; only PLAINTEXT is, so far"
        ));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err("expected PLAINTEXT://HOST:PORT (the port is missing)".to_string());
    };
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| "unclosed '[' in the host".to_string())?,
        None if host.contains(':') => {
            return Err("an IPv6 host must be in brackets: PLAINTEXT://[::1]:9092".to_string())
        }
        None => host,
    };
    if host.contains(['/', ' ', '[', ']']) {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// Kafka refuses to advertise the wildcard address: clients could not use
/// it to connect back.
fn check_routable(endpoint: &Endpoint) -> Result<(), String> {
    match endpoint.host.as_str() {
        "" | "0.0.0.0" | "::" => Err(format!(
            "{endpoint} cannot be advertised: clients cannot connect to a wildcard address"
        )),
        _ => Ok(()),
    }
}

/// Runs `odradek server`: exit 0 after a clean shutdown, 2 for a bad
/// configuration, 1 when the server could not start or failed.
pub fn cmd_server(args: &ServerArgs) -> ExitCode {
    let file_text = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.as_path(), text)),
            Err(e) => {
                eprintln!(
                    "odradek server: cannot read config file {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let env = |var: &str| std::env::var(var).ok();
    let file = file_text
        .as_ref()
        .map(|(path, text)| (*path, text.as_str()));
    let config = match resolve(args, &env, file) {
        Ok((config, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            config
        }
        Err(e) => {
            eprintln!("odradek server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odradek server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odradek server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ServerConfig) -> Result<(), String> {
    // Installed before the address is printed: whoever reads it may signal
    // at once, and a signal before the handler exists would kill the
    // process without the clean shutdown.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    std::fs::create_dir_all(&config.log_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.log_dir.display()
        )
    })?;
    let identity = format::ensure(
        &config.log_dir,
        config.node_id,
        config.cluster_id.as_deref(),
        config.cluster.is_some(),
    )?;
    if identity.formatted {
        tracing::info!(cluster_id = %identity.cluster_id, dir = %config.log_dir.display(), "formatted the data directory");
    }
    let mut broker_config = BrokerConfig::new(config.node_id, "");
    broker_config.advertised_host = config.advertised.host.clone();
    broker_config.advertised_port = i32::from(config.advertised.port);
    broker_config.cluster_id = identity.cluster_id.clone();
    broker_config.num_partitions = config.num_partitions;
    broker_config.default_replication_factor = config.default_replication_factor;
    broker_config.auto_create_topics = config.auto_create_topics;
    broker_config.retention_check_interval_ms = config.retention_check_interval_ms;
    broker_config.settings = config.topic_defaults.clone();
    broker_config.offsets_topic_num_partitions = config.offsets_topic_num_partitions;
    broker_config.group = config.group.clone();
    broker_config.incarnation = incarnation()?;
    if let Some(cluster) = config.cluster.clone() {
        return cluster_run::run(
            config,
            cluster,
            identity,
            broker_config,
            &mut sigterm,
            &mut sigint,
        )
        .await;
    }
    let (listener, bound) = bind_kafka_listener(&config).await?;
    let mut advertised = config.advertised.clone();
    if advertised.port == 0 {
        advertised.port = bound.port();
    }
    broker_config.advertised_port = i32::from(advertised.port);
    let clock = SystemClock::new();
    let started = std::time::Instant::now();
    let broker = open_data_dir(&config.log_dir, move |disk| {
        Broker::open(disk, broker_config, &clock)
    })
    .await?;
    let topics = broker.topic_names().len();
    tracing::info!(
        topics,
        recovery_ms = started.elapsed().as_millis() as u64,
        "data directory recovered"
    );
    let (handle, mut broker_thread) = broker_thread::spawn(broker, clock)
        .map_err(|e| format!("cannot start the broker thread: {e}"))?;

    outln!("odradek server");
    outln!("node id: {}", config.node_id);
    outln!("cluster id: {}", identity.cluster_id);
    outln!("listening on: PLAINTEXT://{bound}");
    outln!("advertised as: {advertised}");
    outln!("data dir: {}", config.log_dir.display());
    outln!("topics: {topics}");

    let (stop, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(listener.serve(handle, stop_rx));
    tokio::pin!(serving);
    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        _ = broker_thread.ended() => {
            tracing::error!("the broker thread stopped unexpectedly; stopping the server");
            let _ = stop.send(true);
            let _ = serving.await;
            let why = tokio::task::spawn_blocking(move || broker_thread.join())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .err()
                .unwrap_or_else(|| "no reason given".into());
            return Err(format!("the broker thread stopped: {why}"));
        }
        finished = &mut serving => {
            // The listener only stops by itself on a failure.
            return match finished {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("listener failed: {e}")),
                Err(e) => Err(format!("listener task failed: {e}")),
            };
        }
    };
    tracing::info!(signal = signal_name, "shutting down");
    // Fails only if the listener already ended, which the await reports.
    let _ = stop.send(true);
    let served = match serving.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("listener failed: {e}")),
        Err(e) => Err(format!("listener task failed: {e}")),
    };
    // The listener's end dropped every handle, so the broker thread syncs
    // and closes the logs and ends.
    let closed = tokio::task::spawn_blocking(move || broker_thread.join())
        .await
        .map_err(|e| format!("broker shutdown panicked: {e}"))?;
    match (&served, closed) {
        (_, Err(e)) => Err(format!("closing the logs failed: {e}")),
        (Ok(()), Ok(())) => {
            tracing::info!("stopped; all data synced");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e.clone()),
    }
}

/// Opens the data directory with `open`, off the runtime's workers:
/// recovery reads and checks every partition's unflushed tail, blocking
/// work.
pub(crate) async fn open_data_dir<T: Send + 'static>(
    dir: &Path,
    open: impl FnOnce(FsDisk) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let disk = FsDisk::new(dir.to_path_buf());
    tokio::task::spawn_blocking(move || open(disk))
        .await
        .map_err(|e| format!("recovery panicked: {e}"))?
        .map_err(|e| format!("cannot open the data directory {}: {e}", dir.display()))
}

/// Binds the client listener with the connection settings; returns it
/// and the address it got (the port, when 0 was asked for).
pub(crate) async fn bind_kafka_listener(
    config: &ServerConfig,
) -> Result<(KafkaListener, SocketAddr), String> {
    let listen = resolve_listen_addr(&config.listener)?;
    let listener = KafkaListener::bind(ListenerConfig {
        listen,
        max_request_bytes: config.socket_request_max_bytes,
        connections_max_idle: config.connections_max_idle_ms.map(Duration::from_millis),
        max_connections: config.max_connections,
        ..ListenerConfig::default()
    })
    .await
    .map_err(|e| format!("cannot listen on {}: {e}", config.listener))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    Ok((listener, bound))
}

/// The first address the listener's host resolves to; an empty host is
/// every IPv4 interface, as Kafka binds it.
pub(crate) fn resolve_listen_addr(endpoint: &Endpoint) -> Result<SocketAddr, String> {
    let host = if endpoint.host.is_empty() {
        "0.0.0.0"
    } else {
        endpoint.host.as_str()
    };
    (host, endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve listener host {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("listener host {host:?} resolves to no address"))
}

/// A fresh random number for this start of the process (Kafka's broker
/// incarnation id).
fn incarnation() -> Result<u64, String> {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn resolve_ok(
        args: &ServerArgs,
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<&str>,
    ) -> (ServerConfig, Vec<String>) {
        resolve(args, env, file.map(|t| (Path::new("test.properties"), t))).unwrap()
    }

    fn resolve_err(
        args: &ServerArgs,
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<&str>,
    ) -> String {
        resolve(args, env, file.map(|t| (Path::new("test.properties"), t)))
            .unwrap_err()
            .0
    }

    #[test]
    fn defaults() {
        let (c, warnings) = resolve_ok(&ServerArgs::default(), &no_env, None);
        assert!(warnings.is_empty());
        assert_eq!(
            c,
            ServerConfig {
                listener: Endpoint {
                    host: "127.0.0.1".into(),
                    port: 9092
                },
                advertised: Endpoint {
                    host: "127.0.0.1".into(),
                    port: 9092
                },
                node_id: 1,
                log_dir: PathBuf::from("./odradek-data"),
                socket_request_max_bytes: 104_857_600,
                connections_max_idle_ms: Some(600_000),
                max_connections: 10_000,
                num_partitions: 1,
                default_replication_factor: 1,
                auto_create_topics: true,
                retention_check_interval_ms: 300_000,
                offsets_topic_num_partitions: 50,
                group: GroupConfig::default(),
                topic_defaults: BTreeMap::new(),
                cluster_id: None,
                cluster: None,
            }
        );
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = "# comment\n\n  node.id = 7 \nlog.dirs=/from/file\nlisteners=PLAINTEXT://127.0.0.1:1111\n! another comment\nconnections.max.idle.ms=5\n";
        let env = |var: &str| match var {
            "ODRADEK_NODE_ID" => Some("8".to_string()),
            "ODRADEK_LOG_DIRS" => Some("/from/env".to_string()),
            "ODRADEK_SOCKET_REQUEST_MAX_BYTES" => Some("2048".to_string()),
            _ => None,
        };
        let args = ServerArgs {
            node_id: Some("9".into()),
            ..ServerArgs::default()
        };
        let (c, warnings) = resolve_ok(&args, &env, Some(file));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.node_id, 9, "flag beats env and file");
        assert_eq!(c.log_dir, PathBuf::from("/from/env"), "env beats file");
        assert_eq!(c.socket_request_max_bytes, 2048, "env beats default");
        assert_eq!(c.connections_max_idle_ms, Some(5), "file beats default");
        assert_eq!(c.listener.port, 1111);
        assert_eq!(c.advertised, c.listener, "advertised defaults to listeners");
        assert_eq!(c.max_connections, 10_000);
    }

    #[test]
    fn advertised_listener_separate_from_bind_address() {
        let args = ServerArgs {
            listeners: Some("PLAINTEXT://0.0.0.0:9092".into()),
            advertised_listeners: Some("PLAINTEXT://broker1.example:19092".into()),
            ..ServerArgs::default()
        };
        let (c, _) = resolve_ok(&args, &no_env, None);
        assert_eq!(c.listener.host, "0.0.0.0");
        assert_eq!(
            c.advertised,
            Endpoint {
                host: "broker1.example".into(),
                port: 19092
            }
        );
        let args = ServerArgs {
            listeners: Some("PLAINTEXT://[::1]:0".into()),
            ..ServerArgs::default()
        };
        let (c, _) = resolve_ok(&args, &no_env, None);
        assert_eq!(c.listener.host, "::1");
        assert_eq!(c.advertised.to_string(), "PLAINTEXT://[::1]:0");
    }

    #[test]
    fn unknown_file_keys_are_warned_about_and_ignored() {
        let (c, warnings) = resolve_ok(
            &ServerArgs::default(),
            &no_env,
            Some("num.network.threads=3\nnode.id=4\n"),
        );
        assert_eq!(c.node_id, 4);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("test.properties:1")
                && warnings[0].contains("num.network.threads"),
            "{warnings:?}"
        );
    }

    fn cluster_args(roles: &str, voters: &str, node: &str, listeners: &str) -> ServerArgs {
        ServerArgs {
            process_roles: Some(roles.into()),
            controller_quorum_voters: Some(voters.into()),
            node_id: Some(node.into()),
            listeners: Some(listeners.into()),
            ..ServerArgs::default()
        }
    }

    #[test]
    fn cluster_roles_voters_and_listeners() {
        let voters = "1@127.0.0.1:19092,2@127.0.0.1:19093,3@localhost:19094";
        let (c, _) = resolve_ok(
            &cluster_args(
                "broker,controller",
                voters,
                "2",
                "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:19093",
            ),
            &no_env,
            None,
        );
        let cl = c.cluster.unwrap();
        assert!(cl.broker && cl.controller);
        assert_eq!(cl.voters.len(), 3);
        assert_eq!(cl.voters[&3].host, "localhost");
        assert_eq!(cl.controller_listener.unwrap().port, 19093);
        assert_eq!(c.listener.port, 9093);
        // A broker-only node outside the voters, no controller listener.
        let (c, _) = resolve_ok(
            &cluster_args("broker", voters, "4", "PLAINTEXT://127.0.0.1:9095"),
            &no_env,
            None,
        );
        let cl = c.cluster.unwrap();
        assert!(cl.broker && !cl.controller && cl.controller_listener.is_none());
        // A controller-only node needs no PLAINTEXT listener.
        let (c, _) = resolve_ok(
            &cluster_args("controller", voters, "1", "CONTROLLER://127.0.0.1:19092"),
            &no_env,
            None,
        );
        assert!(!c.cluster.unwrap().broker);
        for (args, want) in [
            (
                cluster_args("broker", voters, "1", "PLAINTEXT://127.0.0.1:9092"),
                "must have the controller role",
            ),
            (
                cluster_args("controller", voters, "7", "PLAINTEXT://127.0.0.1:9092"),
                "is not",
            ),
            (
                cluster_args("broker,broker", voters, "7", "PLAINTEXT://127.0.0.1:9092"),
                "twice",
            ),
            (
                cluster_args("zookeeper", voters, "7", "PLAINTEXT://127.0.0.1:9092"),
                "unknown role",
            ),
            (
                cluster_args("broker", "1@h:1,1@h:2", "7", "PLAINTEXT://127.0.0.1:9092"),
                "listed twice",
            ),
            (
                cluster_args("broker", "1-h:1", "7", "PLAINTEXT://127.0.0.1:9092"),
                "ID@HOST:PORT",
            ),
            (
                cluster_args("broker", "x@h:1", "7", "PLAINTEXT://127.0.0.1:9092"),
                "the id must be",
            ),
            (
                cluster_args("broker", voters, "7", "CONTROLLER://127.0.0.1:1"),
                "needs a PLAINTEXT listener",
            ),
            (
                ServerArgs {
                    process_roles: Some("broker".into()),
                    ..ServerArgs::default()
                },
                "controller.quorum.voters must be set",
            ),
            (
                ServerArgs {
                    controller_quorum_voters: Some(voters.into()),
                    ..ServerArgs::default()
                },
                "process.roles must be set",
            ),
            (
                ServerArgs {
                    listeners: Some("PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2".into()),
                    ..ServerArgs::default()
                },
                "needs process.roles",
            ),
            (
                ServerArgs {
                    cluster_id: Some("has space".into()),
                    ..ServerArgs::default()
                },
                "cluster.id",
            ),
        ] {
            let e = resolve_err(&args, &no_env, None);
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_the_source() {
        let flag = |f: fn(&mut ServerArgs)| {
            let mut a = ServerArgs::default();
            f(&mut a);
            a
        };
        let cases: Vec<(ServerArgs, &str)> = vec![
            (flag(|a| a.node_id = Some("x".into())), "node.id"),
            (flag(|a| a.node_id = Some("-1".into())), "node.id"),
            (
                flag(|a| a.listeners = Some("127.0.0.1:9092".into())),
                "listeners",
            ),
            (
                flag(|a| a.listeners = Some("SSL://127.0.0.1:9093".into())),
                "listeners",
            ),
            (
                flag(|a| a.listeners = Some("PLAINTEXT://127.0.0.1".into())),
                "listeners",
            ),
            (
                flag(|a| a.listeners = Some("PLAINTEXT://127.0.0.1:70000".into())),
                "listeners",
            ),
            (
                flag(|a| a.listeners = Some("PLAINTEXT://::1:9092".into())),
                "listeners",
            ),
            (
                flag(|a| {
                    a.listeners =
                        Some("PLAINTEXT://127.0.0.1:9092,PLAINTEXT://127.0.0.1:9093".into())
                }),
                "listeners",
            ),
            // Defaulting advertised.listeners to a wildcard bind address.
            (
                flag(|a| a.listeners = Some("PLAINTEXT://0.0.0.0:9092".into())),
                "listeners",
            ),
            (
                flag(|a| a.advertised_listeners = Some("PLAINTEXT://:9092".into())),
                "advertised.listeners",
            ),
            (flag(|a| a.log_dirs = Some("".into())), "log.dirs"),
            (flag(|a| a.log_dirs = Some("/a,/b".into())), "log.dirs"),
            (
                flag(|a| a.socket_request_max_bytes = Some("0".into())),
                "socket.request.max.bytes",
            ),
            (
                flag(|a| a.socket_request_max_bytes = Some("2147483648".into())),
                "socket.request.max.bytes",
            ),
            (
                flag(|a| a.connections_max_idle_ms = Some("0".into())),
                "connections.max.idle.ms",
            ),
            (
                flag(|a| a.connections_max_idle_ms = Some("10s".into())),
                "connections.max.idle.ms",
            ),
            (
                flag(|a| a.max_connections = Some("0".into())),
                "max.connections",
            ),
        ];
        for (args, key) in cases {
            let e = resolve_err(&args, &no_env, None);
            assert!(
                e.contains(key) && e.contains("(from flag --"),
                "{args:?}: {e}"
            );
        }
        let env = |var: &str| (var == "ODRADEK_NODE_ID").then(|| "one".to_string());
        let e = resolve_err(&ServerArgs::default(), &env, None);
        assert!(
            e.contains("\"one\"") && e.contains("environment variable ODRADEK_NODE_ID"),
            "{e}"
        );
        let e = resolve_err(&ServerArgs::default(), &no_env, Some("\nnode.id=abc\n"));
        assert!(
            e.contains("test.properties:2") && e.contains("node.id"),
            "{e}"
        );
        let e = resolve_err(&ServerArgs::default(), &no_env, Some("node.id 3\n"));
        assert!(
            e.contains("test.properties:1") && e.contains("key=value"),
            "{e}"
        );
    }

    #[test]
    fn negative_idle_disables_the_timeout() {
        let args = ServerArgs {
            connections_max_idle_ms: Some("-1".into()),
            ..ServerArgs::default()
        };
        assert_eq!(
            resolve_ok(&args, &no_env, None).0.connections_max_idle_ms,
            None
        );
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("listeners"), "ODRADEK_LISTENERS");
        assert_eq!(
            env_var_name("advertised.listeners"),
            "ODRADEK_ADVERTISED_LISTENERS"
        );
        assert_eq!(
            env_var_name("connections.max.idle.ms"),
            "ODRADEK_CONNECTIONS_MAX_IDLE_MS"
        );
    }

    #[test]
    fn listen_address_resolution() {
        let e = |host: &str| Endpoint {
            host: host.into(),
            port: 5,
        };
        assert_eq!(
            resolve_listen_addr(&e("127.0.0.1")).unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            resolve_listen_addr(&e("")).unwrap(),
            "0.0.0.0:5".parse().unwrap()
        );
        assert_eq!(
            resolve_listen_addr(&e("::1")).unwrap(),
            "[::1]:5".parse().unwrap()
        );
    }
}
