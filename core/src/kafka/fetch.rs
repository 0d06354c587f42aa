//! Fetch: whole batches served from the segment files up to the high
//! watermark, with Kafka's limits (the response's `max_bytes`, each
//! partition's `partition_max_bytes`, but always at least one batch for
//! the first partition with data, KIP-74) and long polling: a fetch that
//! finds fewer than `min_bytes` waits until more arrive or `max_wait_ms`
//! passes.
//!
//! Incremental fetch sessions (KIP-227) are declined: every response says
//! session 0, which tells the client to keep sending full fetch requests.

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};

use super::{error, log_error_code, uuid, Broker, Completion, Ctx, FrameOutcome};
use crate::io::clock::Instant;
use crate::io::disk::Disk;

pub(crate) struct PendingFetch {
    ctx: Ctx,
    req: FetchRequest,
    pub deadline: Instant,
    /// The high watermarks seen when the fetch last ran: it is only worth
    /// running again once one of them moves.
    seen: Vec<Option<i64>>,
}

struct FetchResult {
    response: FetchResponse,
    bytes: usize,
    errors: bool,
    watermarks: Vec<Option<i64>>,
}

/// Kafka's epoch check on a client's `current_leader_epoch`.
pub(crate) fn epoch_error(current_leader_epoch: i32, leader_epoch: i32) -> Option<i16> {
    if current_leader_epoch < 0 || current_leader_epoch == leader_epoch {
        None
    } else if current_leader_epoch < leader_epoch {
        Some(error::FENCED_LEADER_EPOCH)
    } else {
        Some(error::UNKNOWN_LEADER_EPOCH)
    }
}

impl<D: Disk + Clone> Broker<D> {
    pub(crate) fn fetch(&mut self, ctx: &Ctx, req: FetchRequest) -> FrameOutcome {
        if ctx.version >= 7 && req.session_id != 0 {
            // We never hand out sessions, so a client naming one is
            // confused; Kafka's answer sends it back to full fetches.
            let resp = FetchResponse::default()
                .with_error_code(error::FETCH_SESSION_ID_NOT_FOUND)
                .with_session_id(0);
            return ctx.respond(&resp);
        }
        let result = self.read_fetch(ctx, &req);
        let min_bytes = req.min_bytes.max(0) as usize;
        let partitions: usize = req.topics.iter().map(|t| t.partitions.len()).sum();
        if req.max_wait_ms <= 0 || partitions == 0 || result.errors || result.bytes >= min_bytes {
            return ctx.respond(&result.response);
        }
        self.pending_fetch.insert(
            ctx.conn,
            PendingFetch {
                ctx: *ctx,
                deadline: ctx.now.plus_millis(req.max_wait_ms as u64),
                req,
                seen: result.watermarks,
            },
        );
        FrameOutcome::Pending
    }

    fn read_fetch(&self, ctx: &Ctx, req: &FetchRequest) -> FetchResult {
        let by_id = ctx.version >= 13;
        let asked = if req.max_bytes > 0 {
            req.max_bytes as usize
        } else {
            usize::MAX
        };
        let mut remaining = asked.min(self.config.fetch_max_bytes);
        let read_committed = req.isolation_level == 1;
        let mut out = FetchResult {
            response: FetchResponse::default().with_session_id(0),
            bytes: 0,
            errors: false,
            watermarks: Vec::new(),
        };
        for ft in &req.topics {
            let name: Option<String> = if by_id {
                self.by_id.get(&ft.topic_id.as_u128()).cloned()
            } else {
                Some(ft.topic.0.to_string())
            };
            let mut tr = FetchableTopicResponse::default()
                .with_topic(ft.topic.clone())
                .with_topic_id(ft.topic_id);
            if let (false, Some(n)) = (by_id, &name) {
                if let Some(t) = self.topics.get(n) {
                    tr.topic_id = uuid(t.id);
                }
            }
            for fp in &ft.partitions {
                let mut pd = PartitionData::default()
                    .with_partition_index(fp.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_records(Some(Bytes::new()));
                if read_committed {
                    pd.aborted_transactions = Some(Vec::new());
                }
                let part = name
                    .as_deref()
                    .and_then(|n| self.partition(n, fp.partition));
                let mut watermark = None;
                let code = match (&name, part) {
                    (None, _) => error::UNKNOWN_TOPIC_ID,
                    (Some(_), None) => error::UNKNOWN_TOPIC_OR_PARTITION,
                    (Some(_), Some(p)) => match (
                        epoch_error(fp.current_leader_epoch, p.leader_epoch),
                        p.log(),
                    ) {
                        (Some(code), _) => code,
                        (None, Err(code)) => code,
                        (None, Ok(log)) => {
                            let hw = log.durable_end();
                            watermark = Some(hw);
                            pd.high_watermark = hw;
                            pd.last_stable_offset = hw;
                            pd.log_start_offset = log.log_start_offset();
                            let offset = fp.fetch_offset;
                            if offset < log.log_start_offset() || offset > log.end_offset() {
                                error::OFFSET_OUT_OF_RANGE
                            } else if offset >= hw {
                                error::NONE
                            } else {
                                let first = out.bytes == 0;
                                let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                                if limit == 0 && !first {
                                    error::NONE
                                } else {
                                    match log.read_bounded(offset, limit.max(1), hw) {
                                        Ok(r) if first || r.bytes.len() <= limit => {
                                            out.bytes += r.bytes.len();
                                            remaining = remaining.saturating_sub(r.bytes.len());
                                            pd.records = Some(Bytes::from(r.bytes));
                                            error::NONE
                                        }
                                        // A batch larger than what is left
                                        // waits for a later fetch.
                                        Ok(_) => error::NONE,
                                        Err(e) => log_error_code(&e),
                                    }
                                }
                            }
                        }
                    },
                };
                if code != error::NONE {
                    out.errors = true;
                }
                out.watermarks.push(watermark);
                pd.error_code = code;
                tr.partitions.push(pd);
            }
            out.response.responses.push(tr);
        }
        out
    }

    /// Answers the waiting fetches that now have enough data, or whose
    /// wait is over.
    pub(crate) fn release_fetches(&mut self, now: Instant, wall_ms: i64) -> Vec<Completion> {
        let mut done = Vec::new();
        let conns: Vec<_> = self.pending_fetch.keys().copied().collect();
        for conn in conns {
            let p = &self.pending_fetch[&conn];
            let expired = now >= p.deadline;
            let moved = self.current_watermarks(p) != p.seen;
            if !expired && !moved {
                continue;
            }
            let mut ctx = p.ctx;
            ctx.now = now;
            ctx.wall_ms = wall_ms;
            let result = self.read_fetch(&ctx, &p.req);
            let min_bytes = p.req.min_bytes.max(0) as usize;
            if expired || result.errors || result.bytes >= min_bytes {
                let p = self.pending_fetch.remove(&conn).expect("listed above");
                done.push(Completion {
                    conn,
                    outcome: p.ctx.respond(&result.response),
                });
            } else if let Some(p) = self.pending_fetch.get_mut(&conn) {
                p.seen = result.watermarks;
            }
        }
        done
    }

    fn current_watermarks(&self, p: &PendingFetch) -> Vec<Option<i64>> {
        let by_id = p.ctx.version >= 13;
        let mut out = Vec::new();
        for ft in &p.req.topics {
            let name = if by_id {
                self.by_id.get(&ft.topic_id.as_u128()).cloned()
            } else {
                Some(ft.topic.0.to_string())
            };
            for fp in &ft.partitions {
                out.push(
                    name.as_deref()
                        .and_then(|n| self.partition(n, fp.partition))
                        .and_then(|part| part.log().ok().map(|l| l.durable_end())),
                );
            }
        }
        out
    }
}
