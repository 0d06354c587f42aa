//! Requests brokers send to the controller, on node-to-node channel 1:
//! registration and heartbeats (KRaft's BrokerRegistration and
//! BrokerHeartbeat), and the client requests only the controller may carry
//! out (CreateTopics, DeleteTopics, CreatePartitions, config changes,
//! producer id blocks), forwarded by whichever broker received them.
//!
//! Every request carries a correlation id; the answer comes when the
//! records it caused are committed and applied on the controller, or at
//! once when nothing needs writing or it is refused. A node that is not
//! the controller answers NOT_CONTROLLER with the leader it knows of, and
//! the sender retries there. The layout is our own (brokers talk only to
//! brokers here); decoding is total.

use std::collections::BTreeMap;

use super::controller::{Heartbeat, NewTopic, Registration};
use super::records::{
    read_endpoints, read_resource, write_endpoints, write_resource, ConfigResource,
};
use crate::codec::{BadRecord, Reader, Writer};

pub const CHANNEL_CONTROLLER: u8 = 1;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Register(Registration),
    Heartbeat(Heartbeat),
    CreateTopics(Vec<NewTopic>),
    DeleteTopics(Vec<String>),
    CreatePartitions {
        topic: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    },
    AlterConfigs {
        resource: ConfigResource,
        changes: Vec<(String, Option<String>)>,
    },
    AllocateProducerIds {
        broker: i32,
    },
}

/// An error code and message, per item where the request has items.
pub type Status = (i16, String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Not the controller; the leader this node knows of.
    NotController(Option<i32>),
    Register {
        status: Status,
        epoch: i64,
    },
    Heartbeat {
        status: Status,
        fenced: bool,
    },
    /// One status per item of the request, in its order.
    Items(Vec<Status>),
    ProducerIds {
        status: Status,
        first: i64,
        count: i64,
    },
}

fn ok() -> Status {
    (0, String::new())
}

impl Response {
    /// The response a request gets when its proposal failed as a whole.
    pub fn failed(req: &Request, status: Status) -> Response {
        match req {
            Request::Register(_) => Response::Register { status, epoch: -1 },
            Request::Heartbeat(_) => Response::Heartbeat {
                status,
                fenced: true,
            },
            Request::CreateTopics(t) => Response::Items(vec![status; t.len()]),
            Request::DeleteTopics(t) => Response::Items(vec![status; t.len()]),
            Request::CreatePartitions { .. } | Request::AlterConfigs { .. } => {
                Response::Items(vec![status])
            }
            Request::AllocateProducerIds { .. } => Response::ProducerIds {
                status,
                first: -1,
                count: 0,
            },
        }
    }

    pub fn ok_status() -> Status {
        ok()
    }
}

fn write_status(w: &mut Writer, s: &Status) {
    w.i16(s.0);
    w.str(&s.1);
}

fn read_status(r: &mut Reader) -> Result<Status, BadRecord> {
    Ok((r.i16()?, r.str()?))
}

fn write_opt_i32s(w: &mut Writer, v: &Option<Vec<i32>>) {
    match v {
        Some(v) => {
            w.bool(true);
            w.i32s(v);
        }
        None => w.bool(false),
    }
}

pub fn encode_request(correlation: u64, req: &Request) -> Vec<u8> {
    let mut w = Writer::new();
    w.i8(CHANNEL_CONTROLLER as i8);
    w.i8(REQUEST as i8);
    w.u64(correlation);
    match req {
        Request::Register(r) => {
            w.i8(1);
            w.i32(r.id);
            w.str(&r.cluster_id);
            w.u128(r.incarnation);
            write_endpoints(&mut w, &r.endpoints);
            w.opt_str(r.rack.as_deref());
        }
        Request::Heartbeat(h) => {
            w.i8(2);
            w.i32(h.id);
            w.i64(h.epoch);
            w.i64(h.metadata_offset);
            w.bool(h.want_fence);
        }
        Request::CreateTopics(ts) => {
            w.i8(3);
            w.len(ts.len());
            for t in ts {
                w.str(&t.name);
                w.i32(t.partitions);
                w.i16(t.replication_factor);
                w.len(t.assignments.len());
                for (p, rs) in &t.assignments {
                    w.i32(*p);
                    w.i32s(rs);
                }
                w.len(t.configs.len());
                for (k, v) in &t.configs {
                    w.str(k);
                    w.str(v);
                }
            }
        }
        Request::DeleteTopics(names) => {
            w.i8(4);
            w.len(names.len());
            for n in names {
                w.str(n);
            }
        }
        Request::CreatePartitions {
            topic,
            count,
            assignments,
        } => {
            w.i8(5);
            w.str(topic);
            w.i32(*count);
            match assignments {
                Some(a) => {
                    w.bool(true);
                    w.len(a.len());
                    for rs in a {
                        w.i32s(rs);
                    }
                }
                None => w.bool(false),
            }
        }
        Request::AlterConfigs { resource, changes } => {
            w.i8(6);
            write_resource(&mut w, resource);
            w.len(changes.len());
            for (k, v) in changes {
                w.str(k);
                w.opt_str(v.as_deref());
            }
        }
        Request::AllocateProducerIds { broker } => {
            w.i8(7);
            w.i32(*broker);
        }
    }
    w.into_bytes()
}

pub fn encode_response(correlation: u64, resp: &Response) -> Vec<u8> {
    let mut w = Writer::new();
    w.i8(CHANNEL_CONTROLLER as i8);
    w.i8(RESPONSE as i8);
    w.u64(correlation);
    match resp {
        Response::NotController(l) => {
            w.i8(1);
            write_opt_i32s(&mut w, &l.map(|l| vec![l]));
        }
        Response::Register { status, epoch } => {
            w.i8(2);
            write_status(&mut w, status);
            w.i64(*epoch);
        }
        Response::Heartbeat { status, fenced } => {
            w.i8(3);
            write_status(&mut w, status);
            w.bool(*fenced);
        }
        Response::Items(items) => {
            w.i8(4);
            w.len(items.len());
            for s in items {
                write_status(&mut w, s);
            }
        }
        Response::ProducerIds {
            status,
            first,
            count,
        } => {
            w.i8(5);
            write_status(&mut w, status);
            w.i64(*first);
            w.i64(*count);
        }
    }
    w.into_bytes()
}

/// A decoded controller-channel payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Request(u64, Request),
    Response(u64, Response),
}

pub fn decode(payload: &[u8]) -> Result<Frame, BadRecord> {
    let mut r = Reader::new(payload);
    if r.i8()? as u8 != CHANNEL_CONTROLLER {
        return Err(BadRecord("not a controller-channel payload".into()));
    }
    let kind = r.i8()? as u8;
    let correlation = r.u64()?;
    let frame = match kind {
        REQUEST => Frame::Request(correlation, read_request(&mut r)?),
        RESPONSE => Frame::Response(correlation, read_response(&mut r)?),
        k => return Err(BadRecord(format!("unknown controller frame kind {k}"))),
    };
    r.finish()?;
    Ok(frame)
}

fn read_request(r: &mut Reader) -> Result<Request, BadRecord> {
    Ok(match r.i8()? {
        1 => {
            let id = r.i32()?;
            let cluster_id = r.str()?;
            let incarnation = r.u128()?;
            let endpoints = read_endpoints(r)?;
            Request::Register(Registration {
                id,
                cluster_id,
                incarnation,
                endpoints,
                rack: r.opt_str()?,
            })
        }
        2 => Request::Heartbeat(Heartbeat {
            id: r.i32()?,
            epoch: r.i64()?,
            metadata_offset: r.i64()?,
            want_fence: r.bool()?,
        }),
        3 => {
            let mut ts = Vec::new();
            for _ in 0..r.len(14)? {
                let name = r.str()?;
                let partitions = r.i32()?;
                let replication_factor = r.i16()?;
                let mut assignments = BTreeMap::new();
                for _ in 0..r.len(8)? {
                    let p = r.i32()?;
                    assignments.insert(p, r.i32s()?);
                }
                let mut configs = BTreeMap::new();
                for _ in 0..r.len(4)? {
                    let k = r.str()?;
                    configs.insert(k, r.str()?);
                }
                ts.push(NewTopic {
                    name,
                    partitions,
                    replication_factor,
                    assignments,
                    configs,
                });
            }
            Request::CreateTopics(ts)
        }
        4 => {
            let n = r.len(2)?;
            Request::DeleteTopics((0..n).map(|_| r.str()).collect::<Result<_, _>>()?)
        }
        5 => {
            let topic = r.str()?;
            let count = r.i32()?;
            let assignments = if r.bool()? {
                let n = r.len(4)?;
                Some((0..n).map(|_| r.i32s()).collect::<Result<_, _>>()?)
            } else {
                None
            };
            Request::CreatePartitions {
                topic,
                count,
                assignments,
            }
        }
        6 => {
            let resource = read_resource(r)?;
            let mut changes = Vec::new();
            for _ in 0..r.len(4)? {
                let k = r.str()?;
                changes.push((k, r.opt_str()?));
            }
            Request::AlterConfigs { resource, changes }
        }
        7 => Request::AllocateProducerIds { broker: r.i32()? },
        t => return Err(BadRecord(format!("unknown controller request {t}"))),
    })
}

fn read_response(r: &mut Reader) -> Result<Response, BadRecord> {
    Ok(match r.i8()? {
        1 => {
            let l = if r.bool()? { r.i32s()? } else { Vec::new() };
            Response::NotController(l.first().copied())
        }
        2 => Response::Register {
            status: read_status(r)?,
            epoch: r.i64()?,
        },
        3 => Response::Heartbeat {
            status: read_status(r)?,
            fenced: r.bool()?,
        },
        4 => {
            let n = r.len(4)?;
            Response::Items((0..n).map(|_| read_status(r)).collect::<Result<_, _>>()?)
        }
        5 => Response::ProducerIds {
            status: read_status(r)?,
            first: r.i64()?,
            count: r.i64()?,
        },
        t => return Err(BadRecord(format!("unknown controller response {t}"))),
    })
}
