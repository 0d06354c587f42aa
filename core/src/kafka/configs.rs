//! Topic configuration: the catalogue of topic configs this broker accepts,
//! with Kafka's names, types, defaults and broker-level synonyms, their
//! validation, and how they turn into a [`LogConfig`].
//!
//! A topic's effective value of a config comes from, in order: the topic's
//! own override (source DYNAMIC_TOPIC_CONFIG), the broker's setting of the
//! synonym if the operator set one (STATIC_BROKER_CONFIG), else Kafka's
//! default (DEFAULT_CONFIG) — the same resolution and the same source codes
//! Kafka reports in DescribeConfigs.

use std::collections::BTreeMap;

use crate::storage::log::{FlushPolicy, LogConfig};

/// DescribeConfigs `config_source` codes.
pub mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// DescribeConfigs `config_type` codes (v3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Boolean = 1,
    Str = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One topic config Kafka defines and this broker honours.
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    /// The broker config that sets the default for every topic.
    pub broker_synonym: Option<&'static str>,
    /// Allowed values for enumerations, or empty.
    pub choices: &'static [&'static str],
    /// Inclusive lower bound for numbers.
    pub min: Option<i64>,
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config this broker accepts, sorted by name (DescribeConfigs
/// lists them in this order).
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        kind: Kind::List,
        default: "delete",
        broker_synonym: Some("log.cleanup.policy"),
        choices: &["delete", "compact"],
        min: None,
        doc: "delete: old segments are removed by retention; compact: retention never removes data and records must have keys (log compaction itself is not implemented yet).",
    },
    ConfigDef {
        name: "compression.type",
        kind: Kind::Str,
        default: "producer",
        broker_synonym: Some("compression.type"),
        choices: &["producer"],
        min: None,
        doc: "Batches are stored as the producer compressed them; recompression to a topic codec is not supported.",
    },
    ConfigDef {
        name: "delete.retention.ms",
        kind: Kind::Long,
        default: "86400000",
        broker_synonym: Some("log.cleaner.delete.retention.ms"),
        choices: &[],
        min: Some(0),
        doc: "How long delete tombstones are kept on compacted topics.",
    },
    ConfigDef {
        name: "file.delete.delay.ms",
        kind: Kind::Long,
        default: "60000",
        broker_synonym: Some("log.segment.delete.delay.ms"),
        choices: &[],
        min: Some(0),
        doc: "Accepted for compatibility; Odradek deletes segment files at once.",
    },
    ConfigDef {
        name: "flush.messages",
        kind: Kind::Long,
        default: LONG_MAX,
        broker_synonym: Some("log.flush.interval.messages"),
        choices: &[],
        min: Some(1),
        doc: "Accepted for compatibility. Odradek syncs appended data in every processing round (group commit) before it counts toward the high watermark, whatever this says.",
    },
    ConfigDef {
        name: "flush.ms",
        kind: Kind::Long,
        default: LONG_MAX,
        broker_synonym: Some("log.flush.interval.ms"),
        choices: &[],
        min: Some(0),
        doc: "Accepted for compatibility; see flush.messages.",
    },
    ConfigDef {
        name: "index.interval.bytes",
        kind: Kind::Int,
        default: "4096",
        broker_synonym: Some("log.index.interval.bytes"),
        choices: &[],
        min: Some(0),
        doc: "Bytes between entries of the offset index.",
    },
    ConfigDef {
        name: "max.message.bytes",
        kind: Kind::Int,
        default: "1048588",
        broker_synonym: Some("message.max.bytes"),
        choices: &[],
        min: Some(0),
        doc: "The largest record batch (after compression) the topic accepts.",
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        kind: Kind::Long,
        default: LONG_MAX,
        broker_synonym: Some("log.message.timestamp.after.max.ms"),
        choices: &[],
        min: Some(0),
        doc: "With CreateTime, how far a batch's timestamp may lie ahead of the broker's clock.",
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        kind: Kind::Long,
        default: LONG_MAX,
        broker_synonym: Some("log.message.timestamp.before.max.ms"),
        choices: &[],
        min: Some(0),
        doc: "With CreateTime, how far a batch's timestamp may lie behind the broker's clock.",
    },
    ConfigDef {
        name: "message.timestamp.type",
        kind: Kind::Str,
        default: "CreateTime",
        broker_synonym: Some("log.message.timestamp.type"),
        choices: &["CreateTime", "LogAppendTime"],
        min: None,
        doc: "CreateTime keeps the producer's timestamps; LogAppendTime stamps each batch with the broker's clock.",
    },
    ConfigDef {
        name: "min.insync.replicas",
        kind: Kind::Int,
        default: "1",
        broker_synonym: Some("min.insync.replicas"),
        choices: &[],
        min: Some(1),
        doc: "The fewest in-sync replicas an acks=all produce needs.",
    },
    ConfigDef {
        name: "retention.bytes",
        kind: Kind::Long,
        default: "-1",
        broker_synonym: Some("log.retention.bytes"),
        choices: &[],
        min: Some(-1),
        doc: "The largest a partition's log may grow before old segments are deleted; -1 for no limit.",
    },
    ConfigDef {
        name: "retention.ms",
        kind: Kind::Long,
        default: "604800000",
        broker_synonym: Some("log.retention.ms"),
        choices: &[],
        min: Some(-1),
        doc: "How long a segment is kept after its newest record; -1 for ever.",
    },
    ConfigDef {
        name: "segment.bytes",
        kind: Kind::Int,
        default: "1073741824",
        broker_synonym: Some("log.segment.bytes"),
        choices: &[],
        min: Some(14),
        doc: "The size at which a new segment file is started.",
    },
    ConfigDef {
        name: "segment.ms",
        kind: Kind::Long,
        default: "604800000",
        broker_synonym: Some("log.roll.ms"),
        choices: &[],
        min: Some(1),
        doc: "The age at which a new segment file is started.",
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        kind: Kind::Boolean,
        default: "false",
        broker_synonym: Some("unclean.leader.election.enable"),
        choices: &["true", "false"],
        min: None,
        doc: "Whether a replica outside the ISR may become leader, losing data.",
    },
];

pub fn find(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a value against its definition; the error is Kafka-style text for
/// INVALID_CONFIG.
pub fn validate(def: &ConfigDef, value: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "Invalid value {value} for configuration {}: {why}",
            def.name
        ))
    };
    match def.kind {
        Kind::Int | Kind::Long => {
            let parsed = if def.kind == Kind::Int {
                value.trim().parse::<i32>().map(i64::from).ok()
            } else {
                value.trim().parse::<i64>().ok()
            };
            let Some(n) = parsed else {
                return bad(if def.kind == Kind::Int {
                    "Not a number of type INT"
                } else {
                    "Not a number of type LONG"
                });
            };
            if let Some(min) = def.min {
                if n < min {
                    return bad(&format!("Value must be at least {min}"));
                }
            }
        }
        Kind::Double => {
            if value.trim().parse::<f64>().is_err() {
                return bad("Not a number of type DOUBLE");
            }
        }
        Kind::Boolean => {
            if !value.trim().eq_ignore_ascii_case("true")
                && !value.trim().eq_ignore_ascii_case("false")
            {
                return bad("Expected value to be either true or false");
            }
        }
        Kind::Str => {
            if !def.choices.is_empty() && !def.choices.contains(&value.trim()) {
                return bad(&format!(
                    "String must be one of: {}",
                    def.choices.join(", ")
                ));
            }
        }
        Kind::List => {
            let items = list_items(value);
            if items.is_empty() {
                return bad("Empty list");
            }
            for item in items {
                if !def.choices.is_empty() && !def.choices.contains(&item) {
                    return bad(&format!(
                        "List items must be from: {}",
                        def.choices.join(", ")
                    ));
                }
            }
        }
    }
    if value.contains('\n') || value.contains('\r') {
        return bad("line breaks are not allowed");
    }
    Ok(())
}

pub fn list_items(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Validates a whole set of topic overrides.
pub fn validate_all(overrides: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in overrides {
        let def = find(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
        validate(def, value)?;
    }
    Ok(())
}

/// A topic config's value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub value: String,
    pub source: i8,
    /// (name, value, source) from the most to the least specific.
    pub synonyms: Vec<(String, String, i8)>,
}

/// Broker-level settings an operator made explicitly (Kafka config names),
/// against which topic defaults resolve.
pub type BrokerSettings = BTreeMap<String, String>;

pub fn resolve(
    def: &ConfigDef,
    overrides: &BTreeMap<String, String>,
    broker: &BrokerSettings,
) -> Resolved {
    let mut synonyms = Vec::new();
    if let Some(v) = overrides.get(def.name) {
        synonyms.push((
            def.name.to_string(),
            v.clone(),
            source::DYNAMIC_TOPIC_CONFIG,
        ));
    }
    if let Some(syn) = def.broker_synonym {
        if let Some(v) = broker_value(syn, broker) {
            synonyms.push((syn.to_string(), v, source::STATIC_BROKER_CONFIG));
        }
    }
    synonyms.push((
        def.broker_synonym.unwrap_or(def.name).to_string(),
        def.default.to_string(),
        source::DEFAULT_CONFIG,
    ));
    let (_, value, source) = synonyms[0].clone();
    Resolved {
        value,
        source,
        synonyms,
    }
}

/// The operator's broker setting for `key`, accepting Kafka's coarser
/// spellings (`log.retention.hours`, `log.roll.hours`, …) where Kafka does.
fn broker_value(key: &str, broker: &BrokerSettings) -> Option<String> {
    if let Some(v) = broker.get(key) {
        return Some(v.clone());
    }
    let scaled = |k: &str, factor: i64| {
        broker
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|n| n.saturating_mul(factor).to_string())
    };
    match key {
        "log.retention.ms" => scaled("log.retention.minutes", 60_000)
            .or_else(|| scaled("log.retention.hours", 3_600_000)),
        "log.roll.ms" => scaled("log.roll.hours", 3_600_000),
        _ => None,
    }
}

/// Every topic config resolved, in catalogue order.
pub fn resolve_all(
    overrides: &BTreeMap<String, String>,
    broker: &BrokerSettings,
) -> Vec<(&'static ConfigDef, Resolved)> {
    TOPIC_CONFIGS
        .iter()
        .map(|d| (d, resolve(d, overrides, broker)))
        .collect()
}

/// The effective value of one config, parsed as a number; falls back to the
/// default if an operator's broker setting does not parse (the server
/// validates those at start, so this is belt and braces).
pub fn effective_i64(
    name: &str,
    overrides: &BTreeMap<String, String>,
    broker: &BrokerSettings,
) -> i64 {
    let def = find(name).expect("a catalogued config");
    let r = resolve(def, overrides, broker);
    r.value
        .trim()
        .parse()
        .unwrap_or_else(|_| def.default.parse().expect("numeric default"))
}

pub fn effective_str(
    name: &str,
    overrides: &BTreeMap<String, String>,
    broker: &BrokerSettings,
) -> String {
    let def = find(name).expect("a catalogued config");
    resolve(def, overrides, broker).value.trim().to_string()
}

/// The topic's settings the broker acts on directly.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub compact: bool,
    pub log_append_time: bool,
    pub min_insync_replicas: i64,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
}

pub fn topic_settings(
    overrides: &BTreeMap<String, String>,
    broker: &BrokerSettings,
) -> TopicSettings {
    let num = |n: &str| effective_i64(n, overrides, broker);
    let policy = effective_str("cleanup.policy", overrides, broker);
    let items = list_items(&policy);
    let compact = items.contains(&"compact");
    let delete = items.contains(&"delete");
    let log = LogConfig {
        segment_bytes: num("segment.bytes").max(14) as u64,
        segment_ms: num("segment.ms"),
        // A compact-only topic is never trimmed by retention.
        retention_bytes: if delete { num("retention.bytes") } else { -1 },
        retention_ms: if delete { num("retention.ms") } else { -1 },
        index_interval_bytes: num("index.interval.bytes").max(0) as u64,
        max_message_bytes: num("max.message.bytes").max(0) as usize,
        // The broker group-commits every round itself (see flush.messages).
        flush: FlushPolicy::Never,
        checkpoint_every_flushes: LogConfig::default().checkpoint_every_flushes,
    };
    TopicSettings {
        log,
        compact,
        log_append_time: effective_str("message.timestamp.type", overrides, broker)
            == "LogAppendTime",
        min_insync_replicas: num("min.insync.replicas"),
        timestamp_before_max_ms: num("message.timestamp.before.max.ms"),
        timestamp_after_max_ms: num("message.timestamp.after.max.ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_and_defaults_validate() {
        let names: Vec<&str> = TOPIC_CONFIGS.iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for d in TOPIC_CONFIGS {
            validate(d, d.default).unwrap_or_else(|e| panic!("default of {}: {e}", d.name));
        }
    }

    #[test]
    fn resolution_order_and_sources() {
        let mut broker = BrokerSettings::new();
        let none = BTreeMap::new();
        let d = find("retention.ms").unwrap();
        assert_eq!(resolve(d, &none, &broker).source, source::DEFAULT_CONFIG);
        broker.insert("log.retention.hours".into(), "2".into());
        let r = resolve(d, &none, &broker);
        assert_eq!(
            (r.value.as_str(), r.source),
            ("7200000", source::STATIC_BROKER_CONFIG)
        );
        let mut topic = BTreeMap::new();
        topic.insert("retention.ms".into(), "1000".into());
        let r = resolve(d, &topic, &broker);
        assert_eq!(
            (r.value.as_str(), r.source),
            ("1000", source::DYNAMIC_TOPIC_CONFIG)
        );
        assert_eq!(r.synonyms.len(), 3);
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(validate(find("retention.ms").unwrap(), "abc").is_err());
        assert!(validate(find("retention.ms").unwrap(), "-2").is_err());
        assert!(validate(find("segment.bytes").unwrap(), "9999999999").is_err());
        assert!(validate(find("cleanup.policy").unwrap(), "delete,compact").is_ok());
        assert!(validate(find("cleanup.policy").unwrap(), "shred").is_err());
        assert!(validate(find("message.timestamp.type").unwrap(), "LogAppendTime").is_ok());
        assert!(validate(find("message.timestamp.type").unwrap(), "Whenever").is_err());
        let mut o = BTreeMap::new();
        o.insert("no.such.config".to_string(), "1".to_string());
        assert!(validate_all(&o)
            .unwrap_err()
            .contains("Unknown topic config"));
    }

    #[test]
    fn compact_only_topics_are_never_trimmed() {
        let mut o = BTreeMap::new();
        o.insert("cleanup.policy".to_string(), "compact".to_string());
        o.insert("retention.ms".to_string(), "10".to_string());
        let s = topic_settings(&o, &BrokerSettings::new());
        assert!(s.compact);
        assert_eq!(s.log.retention_ms, -1);
    }
}
