//! The records of the metadata log, in the spirit of KRaft's: each change
//! to the cluster's metadata is a record, a Raft entry carries a batch of
//! them (applied all or nothing, so a topic and its partitions appear
//! together), and replaying the log from a snapshot rebuilds the image.
//!
//! The layout is Odradek's own (KRaft's records come from schemas the
//! `kafka-protocol` crate does not generate): a one-byte type, then the
//! fields, big-endian. A batch is a version byte, a count and the records.
//! Bytes come from disk and from peers: decoding is total and checked.

use crate::codec::{BadRecord, Reader, Writer};

/// An address a broker is reached at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The listener's name, as in `listeners` (`PLAINTEXT`).
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A broker as registered: `epoch` is the offset of the entry that
/// registered it (KRaft's broker epoch), set when the entry is applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrokerRegistration {
    pub id: i32,
    /// Random per process start: tells a restart from a second process
    /// claiming the same id.
    pub incarnation: u128,
    pub epoch: i64,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionRecord {
    pub topic_id: u128,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1 when no in-sync replica is alive.
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by every change to the partition.
    pub partition_epoch: i32,
}

/// What a config record is about (Kafka's ConfigResource types).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigResource {
    /// Cluster-wide broker defaults (a broker resource with an empty name).
    Cluster,
    Broker(i32),
    Topic(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MetadataRecord {
    RegisterBroker(BrokerRegistration),
    UnregisterBroker {
        id: i32,
        epoch: i64,
    },
    FenceBroker {
        id: i32,
        epoch: i64,
    },
    UnfenceBroker {
        id: i32,
        epoch: i64,
    },
    Topic {
        name: String,
        id: u128,
    },
    Partition(PartitionRecord),
    /// A change of ISR or leader; a new leader bumps the leader epoch.
    PartitionChange {
        topic_id: u128,
        partition: i32,
        isr: Option<Vec<i32>>,
        leader: Option<i32>,
    },
    RemoveTopic {
        id: u128,
    },
    /// `value: None` deletes the setting (back to the default).
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    /// A block of producer ids handed to a broker: ids below `next` are
    /// taken.
    ProducerIds {
        broker: i32,
        next: i64,
    },
}

const BATCH_VERSION: u8 = 1;

pub(super) fn write_endpoints(w: &mut Writer, endpoints: &[Endpoint]) {
    w.len(endpoints.len());
    for e in endpoints {
        w.str(&e.name);
        w.str(&e.host);
        w.i32(i32::from(e.port));
    }
}

pub(super) fn read_endpoints(r: &mut Reader) -> Result<Vec<Endpoint>, BadRecord> {
    let mut endpoints = Vec::new();
    for _ in 0..r.len(8)? {
        let name = r.str()?;
        let host = r.str()?;
        let port = u16::try_from(r.i32()?)
            .map_err(|_| BadRecord("an endpoint's port is out of range".into()))?;
        endpoints.push(Endpoint { name, host, port });
    }
    Ok(endpoints)
}

pub(super) fn write_resource(w: &mut Writer, r: &ConfigResource) {
    match r {
        ConfigResource::Cluster => w.i8(0),
        ConfigResource::Broker(id) => {
            w.i8(1);
            w.i32(*id);
        }
        ConfigResource::Topic(name) => {
            w.i8(2);
            w.str(name);
        }
    }
}

pub(super) fn read_resource(r: &mut Reader) -> Result<ConfigResource, BadRecord> {
    Ok(match r.i8()? {
        0 => ConfigResource::Cluster,
        1 => ConfigResource::Broker(r.i32()?),
        2 => ConfigResource::Topic(r.str()?),
        t => return Err(BadRecord(format!("unknown config resource type {t}"))),
    })
}

fn write_record(w: &mut Writer, rec: &MetadataRecord) {
    match rec {
        MetadataRecord::RegisterBroker(b) => {
            w.i8(1);
            w.i32(b.id);
            w.u128(b.incarnation);
            w.i64(b.epoch);
            write_endpoints(w, &b.endpoints);
            w.opt_str(b.rack.as_deref());
            w.bool(b.fenced);
        }
        MetadataRecord::UnregisterBroker { id, epoch } => {
            w.i8(2);
            w.i32(*id);
            w.i64(*epoch);
        }
        MetadataRecord::FenceBroker { id, epoch } => {
            w.i8(3);
            w.i32(*id);
            w.i64(*epoch);
        }
        MetadataRecord::UnfenceBroker { id, epoch } => {
            w.i8(4);
            w.i32(*id);
            w.i64(*epoch);
        }
        MetadataRecord::Topic { name, id } => {
            w.i8(5);
            w.str(name);
            w.u128(*id);
        }
        MetadataRecord::Partition(p) => {
            w.i8(6);
            w.u128(p.topic_id);
            w.i32(p.partition);
            w.i32s(&p.replicas);
            w.i32s(&p.isr);
            w.i32(p.leader);
            w.i32(p.leader_epoch);
            w.i32(p.partition_epoch);
        }
        MetadataRecord::PartitionChange {
            topic_id,
            partition,
            isr,
            leader,
        } => {
            w.i8(7);
            w.u128(*topic_id);
            w.i32(*partition);
            match isr {
                Some(isr) => {
                    w.bool(true);
                    w.i32s(isr);
                }
                None => w.bool(false),
            }
            match leader {
                Some(l) => {
                    w.bool(true);
                    w.i32(*l);
                }
                None => w.bool(false),
            }
        }
        MetadataRecord::RemoveTopic { id } => {
            w.i8(8);
            w.u128(*id);
        }
        MetadataRecord::Config {
            resource,
            name,
            value,
        } => {
            w.i8(9);
            write_resource(w, resource);
            w.str(name);
            w.opt_str(value.as_deref());
        }
        MetadataRecord::ProducerIds { broker, next } => {
            w.i8(10);
            w.i32(*broker);
            w.i64(*next);
        }
    }
}

fn read_record(r: &mut Reader) -> Result<MetadataRecord, BadRecord> {
    Ok(match r.i8()? {
        1 => {
            let id = r.i32()?;
            let incarnation = r.u128()?;
            let epoch = r.i64()?;
            let endpoints = read_endpoints(r)?;
            let rack = r.opt_str()?;
            let fenced = r.bool()?;
            MetadataRecord::RegisterBroker(BrokerRegistration {
                id,
                incarnation,
                epoch,
                endpoints,
                rack,
                fenced,
            })
        }
        2 => MetadataRecord::UnregisterBroker {
            id: r.i32()?,
            epoch: r.i64()?,
        },
        3 => MetadataRecord::FenceBroker {
            id: r.i32()?,
            epoch: r.i64()?,
        },
        4 => MetadataRecord::UnfenceBroker {
            id: r.i32()?,
            epoch: r.i64()?,
        },
        5 => MetadataRecord::Topic {
            name: r.str()?,
            id: r.u128()?,
        },
        6 => MetadataRecord::Partition(PartitionRecord {
            topic_id: r.u128()?,
            partition: r.i32()?,
            replicas: r.i32s()?,
            isr: r.i32s()?,
            leader: r.i32()?,
            leader_epoch: r.i32()?,
            partition_epoch: r.i32()?,
        }),
        7 => {
            let topic_id = r.u128()?;
            let partition = r.i32()?;
            let isr = if r.bool()? { Some(r.i32s()?) } else { None };
            let leader = if r.bool()? { Some(r.i32()?) } else { None };
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                isr,
                leader,
            }
        }
        8 => MetadataRecord::RemoveTopic { id: r.u128()? },
        9 => MetadataRecord::Config {
            resource: read_resource(r)?,
            name: r.str()?,
            value: r.opt_str()?,
        },
        10 => MetadataRecord::ProducerIds {
            broker: r.i32()?,
            next: r.i64()?,
        },
        t => return Err(BadRecord(format!("unknown metadata record type {t}"))),
    })
}

/// One Raft entry's payload: records applied together.
pub fn encode_batch(records: &[MetadataRecord]) -> Vec<u8> {
    let mut w = Writer::new();
    w.i8(BATCH_VERSION as i8);
    w.len(records.len());
    for r in records {
        write_record(&mut w, r);
    }
    w.into_bytes()
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<MetadataRecord>, BadRecord> {
    let mut r = Reader::new(bytes);
    let v = r.i8()? as u8;
    if v != BATCH_VERSION {
        return Err(BadRecord(format!("unknown metadata batch version {v}")));
    }
    let n = r.len(1)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_record(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}
