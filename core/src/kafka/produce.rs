//! Produce: validate each partition's batch as Kafka's LogValidator does,
//! append it, and answer at once (acks=1), never (acks=0), or after the
//! group commit has synced it (acks=-1).

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{
    error, log_error_code, str_bytes, Broker, Completion, Ctx, FrameOutcome, LEADER_EPOCH,
};
use crate::io::disk::Disk;
use crate::storage::batch::{self, BatchError, Compression};

/// An acks=-1 produce waiting for its data to be synced.
pub(crate) struct PendingProduce {
    ctx: Ctx,
    response: ProduceResponse,
    waits: Vec<Wait>,
}

struct Wait {
    topic_index: usize,
    partition_index: usize,
    topic: String,
    topic_id: u128,
    partition: i32,
    last_offset: i64,
}

/// Why a partition's batch was refused.
pub(crate) struct Refusal {
    code: i16,
    message: String,
    /// Kafka's `record_errors`: the index of the offending record.
    record: Option<i32>,
}

impl Refusal {
    fn new(code: i16, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            record: None,
        }
    }
}

struct Appended {
    base_offset: i64,
    last_offset: i64,
    log_append_time: i64,
    log_start: i64,
}

/// Kafka's UNSUPPORTED_COMPRESSION_TYPE.
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;

fn batch_refusal(e: &BatchError) -> Refusal {
    let code = match e {
        BatchError::CrcMismatch { .. }
        | BatchError::Truncated { .. }
        | BatchError::BadLength(_) => error::CORRUPT_MESSAGE,
        BatchError::BadCompression(_) => UNSUPPORTED_COMPRESSION_TYPE,
        BatchError::BadMagic(_) | BatchError::BadRecordCount { .. } | BatchError::BadRecord(_) => {
            error::INVALID_RECORD
        }
    };
    Refusal::new(code, e.to_string())
}

impl<D: Disk + Clone> Broker<D> {
    pub(crate) fn produce(&mut self, ctx: &Ctx, req: ProduceRequest) -> FrameOutcome {
        let acks = req.acks;
        let mut response = ProduceResponse::default();
        let mut waits = Vec::new();
        let mut first_error: Option<String> = None;
        for (ti, topic) in req.topic_data.into_iter().enumerate() {
            let name = topic.name.0.to_string();
            let mut tr = TopicProduceResponse::default().with_name(topic.name.clone());
            for (pi, pd) in topic.partition_data.into_iter().enumerate() {
                let outcome = if !matches!(acks, -1..=1) {
                    Err(Refusal::new(
                        error::INVALID_REQUIRED_ACKS,
                        format!("acks must be -1, 0 or 1, not {acks}"),
                    ))
                } else if req.transactional_id.is_some() {
                    Err(Refusal::new(
                        error::INVALID_TXN_STATE,
                        "transactional produce is not supported by this broker yet",
                    ))
                } else {
                    self.produce_partition(ctx, &name, pd.index, pd.records.as_deref(), acks)
                };
                let mut pr = PartitionProduceResponse::default()
                    .with_index(pd.index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                match outcome {
                    Ok(a) => {
                        pr.base_offset = a.base_offset;
                        pr.log_append_time_ms = a.log_append_time;
                        pr.log_start_offset = a.log_start;
                        if acks == -1 {
                            waits.push(Wait {
                                topic_index: ti,
                                partition_index: pi,
                                topic: name.clone(),
                                topic_id: self.topics.get(&name).map_or(0, |t| t.id),
                                partition: pd.index,
                                last_offset: a.last_offset,
                            });
                        }
                    }
                    Err(r) => {
                        first_error.get_or_insert_with(|| {
                            format!("{name}-{}: error {}: {}", pd.index, r.code, r.message)
                        });
                        pr.error_code = r.code;
                        if ctx.version >= 8 {
                            pr.error_message = Some(str_bytes(&r.message));
                            if let Some(i) = r.record {
                                pr.record_errors = vec![BatchIndexAndErrorMessage::default()
                                    .with_batch_index(i)
                                    .with_batch_index_error_message(Some(str_bytes(&r.message)))];
                            }
                        }
                    }
                }
                tr.partition_responses.push(pr);
            }
            response.responses.push(tr);
        }
        if acks == 0 {
            // The client reads no response, so an error can only be told by
            // closing the connection, which makes it refresh its metadata
            // (Kafka's behaviour).
            return match first_error {
                Some(e) => FrameOutcome::Close(format!("acks=0 produce failed: {e}")),
                None => FrameOutcome::NoResponse,
            };
        }
        if waits.is_empty() {
            return ctx.respond(&response);
        }
        self.pending_produce.insert(
            ctx.conn,
            PendingProduce {
                ctx: *ctx,
                response,
                waits,
            },
        );
        FrameOutcome::Pending
    }

    fn produce_partition(
        &mut self,
        ctx: &Ctx,
        topic: &str,
        partition: i32,
        records: Option<&[u8]>,
        acks: i16,
    ) -> Result<Appended, Refusal> {
        let Some(t) = self.topics.get(topic) else {
            return Err(Refusal::new(
                error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {topic} does not exist"),
            ));
        };
        let settings = t.settings.clone();
        let Some(p) = self.partition_mut(topic, partition) else {
            return Err(Refusal::new(
                error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("partition {topic}-{partition} does not exist"),
            ));
        };
        let log = p.log_mut().map_err(|code| {
            Refusal::new(code, format!("partition {topic}-{partition} is offline"))
        })?;
        let Some(bytes) = records else {
            return Err(Refusal::new(error::INVALID_RECORD, "records are null"));
        };
        let total = batch::claimed_size(bytes).map_err(|e| batch_refusal(&e))?;
        if total > settings.log.max_message_bytes {
            return Err(Refusal::new(
                error::MESSAGE_TOO_LARGE,
                format!(
                    "the record batch is {total} bytes, larger than max.message.bytes ({})",
                    settings.log.max_message_bytes
                ),
            ));
        }
        if total as u64 > settings.log.segment_bytes {
            return Err(Refusal::new(
                error::RECORD_LIST_TOO_LARGE,
                format!(
                    "the record batch is {total} bytes, larger than segment.bytes ({})",
                    settings.log.segment_bytes
                ),
            ));
        }
        let header = batch::validate(bytes).map_err(|e| batch_refusal(&e))?;
        if bytes.len() != total {
            return Err(Refusal::new(
                error::INVALID_RECORD,
                "produce requests must carry exactly one record batch per partition",
            ));
        }
        if header.base_offset != 0 {
            return Err(Refusal::new(
                error::INVALID_RECORD,
                format!(
                    "the base offset of a produced batch must be 0, not {}",
                    header.base_offset
                ),
            ));
        }
        if header.is_control() {
            return Err(Refusal::new(
                error::INVALID_RECORD,
                "clients may not produce control batches",
            ));
        }
        if header.is_transactional() {
            return Err(Refusal::new(
                error::INVALID_TXN_STATE,
                "transactional batches are not supported by this broker yet",
            ));
        }
        let summary = check_records(bytes, &header)?;
        if settings.compact && summary.null_key.is_some() {
            return Err(Refusal {
                code: error::INVALID_RECORD,
                message: "compacted topic cannot accept message without key".into(),
                record: summary.null_key,
            });
        }
        if !settings.log_append_time {
            let (lo, hi) = (summary.min_timestamp, summary.max_timestamp);
            let before = settings.timestamp_before_max_ms;
            let after = settings.timestamp_after_max_ms;
            if ctx.wall_ms.saturating_sub(lo) > before || hi.saturating_sub(ctx.wall_ms) > after {
                return Err(Refusal::new(
                    error::INVALID_TIMESTAMP,
                    format!(
                        "timestamps {lo}..={hi} are outside the allowed range around the broker's clock {} (message.timestamp.before.max.ms={before}, message.timestamp.after.max.ms={after})",
                        ctx.wall_ms
                    ),
                ));
            }
        }
        if acks == -1 && settings.min_insync_replicas > 1 {
            return Err(Refusal::new(
                error::NOT_ENOUGH_REPLICAS,
                format!(
                    "the in-sync replica set has 1 member, fewer than min.insync.replicas ({})",
                    settings.min_insync_replicas
                ),
            ));
        }
        let stamped;
        let (to_append, log_append_time) = if settings.log_append_time {
            let mut copy = bytes.to_vec();
            batch::set_log_append_time(&mut copy, ctx.wall_ms);
            stamped = copy;
            (&stamped[..], ctx.wall_ms)
        } else {
            (bytes, -1)
        };
        let info = log
            .append_as_leader(to_append, LEADER_EPOCH, ctx.wall_ms)
            .map_err(|e| Refusal::new(log_error_code(&e), e.to_string()))?;
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time,
            log_start: log.log_start_offset(),
        })
    }

    /// Answers the acks=-1 produces whose data the last sync covered.
    pub(crate) fn release_produces(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        let conns: Vec<_> = self.pending_produce.keys().copied().collect();
        for conn in conns {
            let mut ready = true;
            let pending = &self.pending_produce[&conn];
            let mut failed = Vec::new();
            for (wi, w) in pending.waits.iter().enumerate() {
                let state = match self.topics.get(&w.topic) {
                    Some(t) if t.id == w.topic_id => self
                        .partition(&w.topic, w.partition)
                        .map(|p| (p.log().is_ok(), p.high_watermark())),
                    _ => None,
                };
                match state {
                    Some((true, Some(hw))) if hw > w.last_offset => {}
                    Some((true, _)) => ready = false,
                    _ => failed.push(wi),
                }
            }
            if !ready {
                continue;
            }
            let mut pending = self.pending_produce.remove(&conn).expect("listed above");
            for wi in failed {
                let w = &pending.waits[wi];
                let pr = &mut pending.response.responses[w.topic_index].partition_responses
                    [w.partition_index];
                pr.error_code = error::KAFKA_STORAGE_ERROR;
                pr.base_offset = -1;
                if pending.ctx.version >= 8 {
                    pr.error_message = Some(str_bytes(
                        "the partition's log failed before the batch was made durable",
                    ));
                }
            }
            done.push(Completion {
                conn,
                outcome: pending.ctx.respond(&pending.response),
            });
        }
        done
    }
}

pub(crate) struct RecordSummary {
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    /// The index of the first record without a key.
    pub null_key: Option<i32>,
}

/// Record-level checks on a batch that passed [`batch::validate`]: every
/// record decodes, offset deltas run 0, 1, 2, … and match the header.
fn check_records(bytes: &[u8], header: &batch::BatchHeader) -> Result<RecordSummary, Refusal> {
    if header.record_count < 1 {
        return Err(Refusal::new(
            error::INVALID_RECORD,
            "a produced batch needs at least one record",
        ));
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(Refusal::new(
            error::INVALID_RECORD,
            format!(
                "record count {} does not match last offset delta {}",
                header.record_count, header.last_offset_delta
            ),
        ));
    }
    let records = match header.compression() {
        Some(Compression::None) => batch::decode_records(bytes)
            .map_err(|e| Refusal::new(error::INVALID_RECORD, e.to_string()))?,
        // COMPRESSION-PENDING: replaced by full decoding when the codecs land.
        _ => {
            return Ok(RecordSummary {
                min_timestamp: header.base_timestamp,
                max_timestamp: header.max_timestamp,
                null_key: None,
            })
        }
    };
    if records.len() != header.record_count as usize {
        return Err(Refusal::new(
            error::INVALID_RECORD,
            format!(
                "the batch claims {} records but holds {}",
                header.record_count,
                records.len()
            ),
        ));
    }
    let mut summary = RecordSummary {
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
        null_key: None,
    };
    for (i, r) in records.iter().enumerate() {
        if r.offset_delta != i as i32 {
            return Err(Refusal {
                code: error::INVALID_RECORD,
                message: format!(
                    "inner record offsets must be consecutive: record {i} has offset delta {}",
                    r.offset_delta
                ),
                record: Some(i as i32),
            });
        }
        let ts = header.base_timestamp.saturating_add(r.timestamp_delta);
        summary.min_timestamp = summary.min_timestamp.min(ts);
        summary.max_timestamp = summary.max_timestamp.max(ts);
        if r.key.is_none() && summary.null_key.is_none() {
            summary.null_key = Some(i as i32);
        }
    }
    Ok(summary)
}
