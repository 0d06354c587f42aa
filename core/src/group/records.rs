//! The records the group coordinator keeps in `__consumer_offsets`.
//!
//! Keys start with a version that says what the record is, as in Kafka:
//! 0 and 1 are an offset commit (group, topic, partition), 2 a classic
//! group's metadata (group). Offset commits and classic group metadata use
//! Kafka's own value layouts, so Kafka's tools for reading the topic make
//! sense of them. Consumer groups (KIP-848) use key version 3 for the group
//! (its epoch) and 5 for a member, with value layouts of Odradek's own:
//! Kafka splits a member over four record types, a split that only pays
//! when the target assignment cannot be recomputed, and ours always can.
//! A record with no value is a tombstone: the thing it names is gone.
//!
//! Everything read back is untrusted: a value that does not parse is an
//! error for the caller to report, never a panic.

use std::collections::BTreeMap;

pub use crate::codec::BadRecord;
use crate::codec::{Reader as R, Writer as W};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    ClassicGroup {
        group: String,
    },
    ConsumerGroup {
        group: String,
    },
    ConsumerMember {
        group: String,
        member: String,
    },
}

impl Key {
    pub fn group(&self) -> &str {
        match self {
            Key::Offset { group, .. }
            | Key::ClassicGroup { group }
            | Key::ConsumerGroup { group }
            | Key::ConsumerMember { group, .. } => group,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Set by OffsetCommit v2–v4's `retention_time_ms`; -1 otherwise.
    pub expire_timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassicMemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassicGroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<ClassicMemberValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerGroupValue {
    pub epoch: i32,
}

/// A KIP-848 member: what it subscribes to and what it owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerMemberValue {
    pub instance_id: Option<String>,
    pub rack: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
    pub subscribed_topics: Vec<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    /// 0 stable, 1 unrevoked partitions, 2 unreleased partitions.
    pub state: i8,
    /// topic id → partitions
    pub assigned: BTreeMap<u128, Vec<i32>>,
    pub revoking: BTreeMap<u128, Vec<i32>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Offset(OffsetValue),
    ClassicGroup(ClassicGroupValue),
    ConsumerGroup(ConsumerGroupValue),
    ConsumerMember(ConsumerMemberValue),
}

fn write_partitions(w: &mut W, m: &BTreeMap<u128, Vec<i32>>) {
    w.len(m.len());
    for (id, ps) in m {
        w.u128(*id);
        w.i32s(ps);
    }
}

fn read_partitions(r: &mut R) -> Result<BTreeMap<u128, Vec<i32>>, BadRecord> {
    let mut m = BTreeMap::new();
    for _ in 0..r.len(20)? {
        let id = r.u128()?;
        m.insert(id, r.i32s()?);
    }
    Ok(m)
}

pub fn encode_key(k: &Key) -> Vec<u8> {
    let mut w = W(Vec::new());
    match k {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            w.i16(1);
            w.str(group);
            w.str(topic);
            w.i32(*partition);
        }
        Key::ClassicGroup { group } => {
            w.i16(2);
            w.str(group);
        }
        Key::ConsumerGroup { group } => {
            w.i16(3);
            w.str(group);
        }
        Key::ConsumerMember { group, member } => {
            w.i16(5);
            w.str(group);
            w.str(member);
        }
    }
    w.0
}

/// `Ok(None)` for a key version this broker does not use (Kafka's target
/// assignment records, say): skipped, as Kafka skips unknown record types.
pub fn decode_key(b: &[u8]) -> Result<Option<Key>, BadRecord> {
    let mut r = R::new(b);
    Ok(Some(match r.i16()? {
        0 | 1 => Key::Offset {
            group: r.str()?,
            topic: r.str()?,
            partition: r.i32()?,
        },
        2 => Key::ClassicGroup { group: r.str()? },
        3 => Key::ConsumerGroup { group: r.str()? },
        5 => Key::ConsumerMember {
            group: r.str()?,
            member: r.str()?,
        },
        _ => return Ok(None),
    }))
}

pub fn encode_value(v: &Value) -> Vec<u8> {
    let mut w = W(Vec::new());
    match v {
        Value::Offset(o) => {
            if o.expire_timestamp >= 0 {
                w.i16(1);
                w.i64(o.offset);
                w.str(&o.metadata);
                w.i64(o.commit_timestamp);
                w.i64(o.expire_timestamp);
            } else {
                w.i16(3);
                w.i64(o.offset);
                w.i32(o.leader_epoch);
                w.str(&o.metadata);
                w.i64(o.commit_timestamp);
            }
        }
        Value::ClassicGroup(g) => {
            w.i16(3);
            w.str(&g.protocol_type);
            w.i32(g.generation);
            w.opt_str(g.protocol.as_deref());
            w.opt_str(g.leader.as_deref());
            w.i64(g.state_timestamp);
            w.i32(g.members.len() as i32);
            for m in &g.members {
                w.str(&m.member_id);
                w.opt_str(m.instance_id.as_deref());
                w.str(&m.client_id);
                w.str(&m.client_host);
                w.i32(m.rebalance_timeout_ms);
                w.i32(m.session_timeout_ms);
                w.bytes(&m.subscription);
                w.bytes(&m.assignment);
            }
        }
        Value::ConsumerGroup(g) => {
            w.i16(0);
            w.i32(g.epoch);
        }
        Value::ConsumerMember(m) => {
            w.i16(0);
            w.opt_str(m.instance_id.as_deref());
            w.opt_str(m.rack.as_deref());
            w.str(&m.client_id);
            w.str(&m.client_host);
            w.i32(m.rebalance_timeout_ms);
            w.opt_str(m.server_assignor.as_deref());
            w.i32(m.subscribed_topics.len() as i32);
            for t in &m.subscribed_topics {
                w.str(t);
            }
            w.i32(m.epoch);
            w.i32(m.previous_epoch);
            w.i8(m.state);
            write_partitions(&mut w, &m.assigned);
            write_partitions(&mut w, &m.revoking);
        }
    }
    w.0
}

pub fn decode_value(key: &Key, b: &[u8]) -> Result<Value, BadRecord> {
    let mut r = R::new(b);
    let version = r.i16()?;
    let bad_version = || BadRecord(format!("unknown value version {version} for {key:?}"));
    Ok(match key {
        Key::Offset { .. } => {
            let offset = r.i64()?;
            match version {
                0 | 1 => {
                    let metadata = r.str()?;
                    let commit_timestamp = r.i64()?;
                    let expire_timestamp = if version == 1 { r.i64()? } else { -1 };
                    Value::Offset(OffsetValue {
                        offset,
                        leader_epoch: -1,
                        metadata,
                        commit_timestamp,
                        expire_timestamp,
                    })
                }
                3 | 4 => {
                    let leader_epoch = r.i32()?;
                    let metadata = r.str()?;
                    let commit_timestamp = r.i64()?;
                    Value::Offset(OffsetValue {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp,
                        expire_timestamp: -1,
                    })
                }
                _ => return Err(bad_version()),
            }
        }
        Key::ClassicGroup { .. } => {
            if version != 3 {
                return Err(bad_version());
            }
            let protocol_type = r.str()?;
            let generation = r.i32()?;
            let protocol = r.opt_str()?;
            let leader = r.opt_str()?;
            let state_timestamp = r.i64()?;
            let mut members = Vec::new();
            for _ in 0..r.len(24)? {
                members.push(ClassicMemberValue {
                    member_id: r.str()?,
                    instance_id: r.opt_str()?,
                    client_id: r.str()?,
                    client_host: r.str()?,
                    rebalance_timeout_ms: r.i32()?,
                    session_timeout_ms: r.i32()?,
                    subscription: r.bytes()?,
                    assignment: r.bytes()?,
                });
            }
            Value::ClassicGroup(ClassicGroupValue {
                protocol_type,
                generation,
                protocol,
                leader,
                state_timestamp,
                members,
            })
        }
        Key::ConsumerGroup { .. } => {
            if version != 0 {
                return Err(bad_version());
            }
            Value::ConsumerGroup(ConsumerGroupValue { epoch: r.i32()? })
        }
        Key::ConsumerMember { .. } => {
            if version != 0 {
                return Err(bad_version());
            }
            let instance_id = r.opt_str()?;
            let rack = r.opt_str()?;
            let client_id = r.str()?;
            let client_host = r.str()?;
            let rebalance_timeout_ms = r.i32()?;
            let server_assignor = r.opt_str()?;
            let mut subscribed_topics = Vec::new();
            for _ in 0..r.len(2)? {
                subscribed_topics.push(r.str()?);
            }
            Value::ConsumerMember(ConsumerMemberValue {
                instance_id,
                rack,
                client_id,
                client_host,
                rebalance_timeout_ms,
                server_assignor,
                subscribed_topics,
                epoch: r.i32()?,
                previous_epoch: r.i32()?,
                state: r.i8()?,
                assigned: read_partitions(&mut r)?,
                revoking: read_partitions(&mut r)?,
            })
        }
    })
}

/// The topics a classic consumer subscribes to, from its protocol metadata
/// (Kafka's ConsumerProtocolSubscription: a version, then the topic names).
/// `None` if the bytes are not a consumer subscription.
pub fn subscribed_topics(subscription: &[u8]) -> Option<Vec<String>> {
    let mut r = R::new(subscription);
    r.i16().ok()?;
    let n = r.len(2).ok()?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.str().ok()?);
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_truncations_are_errors() {
        let cases: Vec<(Key, Value)> = vec![
            (
                Key::Offset {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 3,
                },
                Value::Offset(OffsetValue {
                    offset: 42,
                    leader_epoch: 7,
                    metadata: "meta".into(),
                    commit_timestamp: 1000,
                    expire_timestamp: -1,
                }),
            ),
            (
                Key::Offset {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0,
                },
                Value::Offset(OffsetValue {
                    offset: 1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp: 5,
                    expire_timestamp: 99,
                }),
            ),
            (
                Key::ClassicGroup { group: "g".into() },
                Value::ClassicGroup(ClassicGroupValue {
                    protocol_type: "consumer".into(),
                    generation: 4,
                    protocol: Some("range".into()),
                    leader: Some("m1".into()),
                    state_timestamp: 77,
                    members: vec![ClassicMemberValue {
                        member_id: "m1".into(),
                        instance_id: Some("i".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout_ms: 300_000,
                        session_timeout_ms: 45_000,
                        subscription: vec![1, 2, 3],
                        assignment: vec![4],
                    }],
                }),
            ),
            (
                Key::ConsumerGroup { group: "g".into() },
                Value::ConsumerGroup(ConsumerGroupValue { epoch: 9 }),
            ),
            (
                Key::ConsumerMember {
                    group: "g".into(),
                    member: "m".into(),
                },
                Value::ConsumerMember(ConsumerMemberValue {
                    instance_id: None,
                    rack: Some("r".into()),
                    client_id: "c".into(),
                    client_host: "h".into(),
                    rebalance_timeout_ms: 1,
                    server_assignor: Some("uniform".into()),
                    subscribed_topics: vec!["a".into(), "b".into()],
                    epoch: 3,
                    previous_epoch: 2,
                    state: 1,
                    assigned: [(5u128, vec![0, 2])].into_iter().collect(),
                    revoking: [(5u128, vec![1])].into_iter().collect(),
                }),
            ),
        ];
        for (k, v) in cases {
            let kb = encode_key(&k);
            assert_eq!(decode_key(&kb).unwrap(), Some(k.clone()));
            let vb = encode_value(&v);
            assert_eq!(decode_value(&k, &vb).unwrap(), v);
            for cut in 0..vb.len() {
                assert!(decode_value(&k, &vb[..cut]).is_err(), "{k:?} cut at {cut}");
            }
            for cut in 0..kb.len() {
                assert!(decode_key(&kb[..cut]).is_err(), "{k:?} key cut at {cut}");
            }
        }
        assert_eq!(decode_key(&[0, 6, 0, 1, b'g']).unwrap(), None);
    }

    #[test]
    fn absurd_array_lengths_are_refused_without_allocating() {
        let k = Key::ClassicGroup { group: "g".into() };
        let mut w = W(Vec::new());
        w.i16(3);
        w.str("consumer");
        w.i32(1);
        w.opt_str(None);
        w.opt_str(None);
        w.i64(0);
        w.i32(i32::MAX);
        assert!(decode_value(&k, &w.0).is_err());
    }

    #[test]
    fn subscription_topics() {
        let mut w = W(Vec::new());
        w.i16(1);
        w.i32(2);
        w.str("a");
        w.str("bb");
        w.bytes(&[]);
        assert_eq!(
            subscribed_topics(&w.0),
            Some(vec!["a".to_string(), "bb".to_string()])
        );
        assert_eq!(subscribed_topics(&[0, 1, 0x7f, 0, 0, 0]), None);
    }
}
