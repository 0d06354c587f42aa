//! The messages Raft nodes exchange, and their encoding.
//!
//! Messages arrive from the network, so [`Message::decode`] treats its
//! input as hostile: every length is checked against what is left, nothing
//! is allocated beyond the input's own size, unknown tags and trailing bytes
//! are errors. The sender is not part of the message: the driver knows it
//! from the connection (or envelope) it came on.

use super::codec::{err, get_entry, put_blob, put_entry, put_u64, DecodeError, Reader};
use super::{Entry, Snapshot};

/// The largest snapshot (and entry) a message may carry.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// Version byte at the head of every encoded message.
const VERSION: u8 = 1;

/// A message between voters. `epoch` is the sender's current epoch, except
/// in a [`Body::PreVote`] (the epoch the sender would campaign in) and a
/// granted [`Body::PreVoteResponse`] (which echoes it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub epoch: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// "Would you vote for me in `epoch`?" Changes nothing at the receiver.
    PreVote {
        last_epoch: u64,
        log_end: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// A vote request from a candidate whose log ends at `log_end`, with
    /// its last entry in `last_epoch`.
    Vote {
        last_epoch: u64,
        log_end: u64,
    },
    VoteResponse {
        granted: bool,
    },
    /// Entries from `start_offset` on (possibly none: a heartbeat). The
    /// entry before `start_offset` is in `prev_epoch` (0 when
    /// `start_offset` is 0). `high_watermark` is the leader's.
    Append {
        start_offset: u64,
        prev_epoch: u64,
        entries: Vec<Entry>,
        high_watermark: u64,
    },
    /// On success, `end` is the offset up to which the follower's log now
    /// matches the leader's (the end of the entries it was sent). On
    /// failure, `end` is a hint where the leader should try next.
    AppendResponse {
        success: bool,
        end: u64,
    },
    /// The leader's snapshot, for a follower whose next entry was compacted.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// The follower's log now matches the leader's up to `end`.
    InstallSnapshotResponse {
        end: u64,
    },
}

/// Offsets and epochs are at most this (Kafka's are signed 64- and 32-bit):
/// arithmetic on values from the network then cannot overflow.
pub const MAX_VALUE: u64 = i64::MAX as u64;

impl Message {
    /// Whether every offset and epoch is within [`MAX_VALUE`].
    pub fn in_range(&self) -> bool {
        let ok = |v: u64| v <= MAX_VALUE;
        ok(self.epoch)
            && match &self.body {
                Body::PreVote {
                    last_epoch,
                    log_end,
                }
                | Body::Vote {
                    last_epoch,
                    log_end,
                } => ok(*last_epoch) && ok(*log_end),
                Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => true,
                Body::Append {
                    start_offset,
                    prev_epoch,
                    entries,
                    high_watermark,
                } => {
                    ok(*start_offset)
                        && ok(*prev_epoch)
                        && ok(*high_watermark)
                        && entries.iter().all(|e| ok(e.offset) && ok(e.epoch))
                }
                Body::AppendResponse { end, .. } | Body::InstallSnapshotResponse { end } => {
                    ok(*end)
                }
                Body::InstallSnapshot { snapshot } => {
                    ok(snapshot.last_offset) && ok(snapshot.last_epoch)
                }
            }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.push(VERSION);
        match &self.body {
            Body::PreVote { .. } => out.push(1),
            Body::PreVoteResponse { .. } => out.push(2),
            Body::Vote { .. } => out.push(3),
            Body::VoteResponse { .. } => out.push(4),
            Body::Append { .. } => out.push(5),
            Body::AppendResponse { .. } => out.push(6),
            Body::InstallSnapshot { .. } => out.push(7),
            Body::InstallSnapshotResponse { .. } => out.push(8),
        }
        put_u64(&mut out, self.epoch);
        match &self.body {
            Body::PreVote {
                last_epoch,
                log_end,
            }
            | Body::Vote {
                last_epoch,
                log_end,
            } => {
                put_u64(&mut out, *last_epoch);
                put_u64(&mut out, *log_end);
            }
            Body::PreVoteResponse { granted } | Body::VoteResponse { granted } => {
                out.push(*granted as u8)
            }
            Body::Append {
                start_offset,
                prev_epoch,
                entries,
                high_watermark,
            } => {
                put_u64(&mut out, *start_offset);
                put_u64(&mut out, *prev_epoch);
                put_u64(&mut out, *high_watermark);
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    put_entry(&mut out, e);
                }
            }
            Body::AppendResponse { success, end } => {
                out.push(*success as u8);
                put_u64(&mut out, *end);
            }
            Body::InstallSnapshot { snapshot } => {
                put_u64(&mut out, snapshot.last_offset);
                put_u64(&mut out, snapshot.last_epoch);
                put_blob(&mut out, &snapshot.data);
            }
            Body::InstallSnapshotResponse { end } => put_u64(&mut out, *end),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return err(format!("unknown message version {version}"));
        }
        let tag = r.u8()?;
        let epoch = r.u64()?;
        let body = match tag {
            1 | 3 => {
                let last_epoch = r.u64()?;
                let log_end = r.u64()?;
                if tag == 1 {
                    Body::PreVote {
                        last_epoch,
                        log_end,
                    }
                } else {
                    Body::Vote {
                        last_epoch,
                        log_end,
                    }
                }
            }
            2 => Body::PreVoteResponse { granted: r.bool()? },
            4 => Body::VoteResponse { granted: r.bool()? },
            5 => {
                let start_offset = r.u64()?;
                let prev_epoch = r.u64()?;
                let high_watermark = r.u64()?;
                let count = r.u32()?;
                // No preallocation from an untrusted count: entries are
                // pushed as they decode, so memory follows the input.
                let mut entries = Vec::new();
                for _ in 0..count {
                    entries.push(get_entry(&mut r, MAX_SNAPSHOT_BYTES)?);
                }
                Body::Append {
                    start_offset,
                    prev_epoch,
                    entries,
                    high_watermark,
                }
            }
            6 => Body::AppendResponse {
                success: r.bool()?,
                end: r.u64()?,
            },
            7 => {
                let last_offset = r.u64()?;
                let last_epoch = r.u64()?;
                let data = r.blob(MAX_SNAPSHOT_BYTES)?;
                Body::InstallSnapshot {
                    snapshot: Snapshot {
                        last_offset,
                        last_epoch,
                        data,
                    },
                }
            }
            8 => Body::InstallSnapshotResponse { end: r.u64()? },
            t => return err(format!("unknown message type {t}")),
        };
        r.finish()?;
        let m = Message { epoch, body };
        if !m.in_range() {
            return err("offset or epoch out of range");
        }
        Ok(m)
    }
}
