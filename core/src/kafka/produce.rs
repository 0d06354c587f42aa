//! Produce: validate each partition's batch as Kafka's LogValidator does,
//! append it, and answer at once (acks=1), never (acks=0), or after the
//! group commit has synced it (acks=-1).

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::producers::SequenceCheck;
use super::{error, log_error_code, str_bytes, Broker, Completion, Ctx, FrameOutcome};
use crate::io::disk::Disk;
use crate::storage::batch::{self, BatchError};

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

/// The largest a batch may grow when decompressed for validation. Kafka
/// has no such bound; without one, a small batch of zeros could make the
/// broker allocate gigabytes.
pub(crate) const MAX_DECOMPRESSED: usize = 256 << 20;

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
        if super::is_internal(topic) {
            return Err(Refusal::new(
                error::INVALID_TOPIC_EXCEPTION,
                format!("Cannot append to internal topic {topic}"),
            ));
        }
        let settings = t.settings.clone();
        let Some(p) = self.partition_mut(topic, partition) else {
            return Err(Refusal::new(
                error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("partition {topic}-{partition} does not exist"),
            ));
        };
        p.log_mut().map_err(|code| {
            Refusal::new(code, format!("partition {topic}-{partition} is offline"))
        })?;
        let epoch = p.leader_epoch;
        let super::Partition { log, producers, .. } = p;
        let log = log.as_mut().expect("checked online above");
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
        if header.timestamp_type() == batch::TimestampType::LogAppendTime {
            return Err(Refusal::new(
                error::INVALID_TIMESTAMP,
                "producers may not send LogAppendTime batches; the broker assigns log append time",
            ));
        }
        let summary = batch::validate_records(bytes, MAX_DECOMPRESSED).map_err(|e| Refusal {
            code: e.kind.kafka_error_code(),
            message: e.message.clone(),
            record: e.batch_index,
        })?;
        if settings.compact && summary.has_null_key() {
            return Err(Refusal {
                code: error::INVALID_RECORD,
                message: "compacted topic cannot accept message without key".into(),
                record: summary.first_null_key,
            });
        }
        if !settings.log_append_time {
            check_timestamps(bytes, &header, &settings, ctx.wall_ms)?;
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
        if header.producer_id >= 0 {
            match producers.check(&header) {
                SequenceCheck::Append => {}
                // A retry of a batch already written: the first answer
                // again, and nothing appended.
                SequenceCheck::Duplicate {
                    base_offset,
                    last_offset,
                } => {
                    return Ok(Appended {
                        base_offset,
                        last_offset,
                        log_append_time: -1,
                        log_start: log.log_start_offset(),
                    })
                }
                SequenceCheck::Refuse(code, message) => return Err(Refusal::new(code, message)),
            }
        }
        let stamped;
        let (to_append, log_append_time) = if settings.log_append_time {
            let mut copy = bytes.to_vec();
            batch::set_log_append_time(&mut copy, ctx.wall_ms);
            stamped = copy;
            (&stamped[..], ctx.wall_ms)
        } else if summary.max_timestamp != header.max_timestamp {
            let mut copy = bytes.to_vec();
            batch::set_max_timestamp(&mut copy, summary.max_timestamp);
            stamped = copy;
            (&stamped[..], -1)
        } else {
            (bytes, -1)
        };
        let info = log
            .append_as_leader(to_append, epoch, ctx.wall_ms)
            .map_err(|e| Refusal::new(log_error_code(&e), e.to_string()))?;
        producers.record(&header, info.base_offset);
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

/// `message.timestamp.before.max.ms` / `after.max.ms` for CreateTime
/// topics, record by record as Kafka checks them. Skipped (no decoding) in
/// the common case where both are unbounded.
fn check_timestamps(
    bytes: &[u8],
    header: &batch::BatchHeader,
    settings: &super::configs::TopicSettings,
    now: i64,
) -> Result<(), Refusal> {
    let before = settings.timestamp_before_max_ms;
    let after = settings.timestamp_after_max_ms;
    if before == i64::MAX && after == i64::MAX {
        return Ok(());
    }
    let records = batch::decode_records_any(bytes, MAX_DECOMPRESSED).map_err(|e| Refusal {
        code: e.kind.kafka_error_code(),
        message: e.message.clone(),
        record: e.batch_index,
    })?;
    for (i, r) in records.iter().enumerate() {
        let ts = header.base_timestamp.saturating_add(r.timestamp_delta);
        if now.saturating_sub(ts) > before || ts.saturating_sub(now) > after {
            return Err(Refusal {
                code: error::INVALID_TIMESTAMP,
                message: format!(
                    "timestamp {ts} of record {i} is out of range: the broker's clock is {now}, message.timestamp.before.max.ms={before}, message.timestamp.after.max.ms={after}"
                ),
                record: Some(i as i32),
            });
        }
    }
    Ok(())
}
