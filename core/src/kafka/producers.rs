//! Idempotent producers (KIP-98): InitProducerId hands out producer ids,
//! and each partition remembers, per producer, its epoch and its last five
//! batches' sequence ranges, so that a retried batch is answered with the
//! offsets it got the first time instead of being written twice, and a gap
//! in the sequence is refused (OUT_OF_ORDER_SEQUENCE_NUMBER).
//!
//! Producer ids are handed out from blocks reserved in the topic metadata
//! file before use, so an id is never given twice, across restarts too.
//! After a restart a partition's producer state is rebuilt from the batch
//! headers of its newest segment (Kafka keeps snapshots instead); a
//! producer last seen before that is unknown, and — as in Kafka — an
//! unknown producer's next batch is accepted whatever its sequence.
//! Transactions (a transactional id) are not supported yet.

use std::collections::{BTreeMap, VecDeque};

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{error, Broker};
use crate::io::disk::Disk;
use crate::storage::batch::BatchHeader;
use crate::storage::log::Log;

/// Kafka's producer-state cache depth: how many of a producer's most recent
/// batches a retry can be recognised against (the client's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const CACHED_BATCHES: usize = 5;

/// How many producer ids one metadata write reserves.
pub const ID_BLOCK: i64 = 1000;

pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CachedBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Clone, Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
}

/// One partition's producers.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
}

/// What to do with an idempotent batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    Append,
    /// Already written: answer with these offsets.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
    Refuse(i16, String),
}

/// Kafka's sequence arithmetic: sequences wrap from i32::MAX to 0.
pub fn last_sequence(base: i32, last_offset_delta: i32) -> i32 {
    if base > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - base) - 1
    } else {
        base + last_offset_delta
    }
}

fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if h.base_sequence < 0 {
            return SequenceCheck::Refuse(
                error::INVALID_RECORD,
                format!(
                    "producer {} sent a batch without a sequence number",
                    h.producer_id
                ),
            );
        }
        let first = h.base_sequence;
        let last = last_sequence(first, h.last_offset_delta);
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // Unknown (new, or its state predates what was rebuilt):
            // accepted, as Kafka accepts it.
            return SequenceCheck::Append;
        };
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::Refuse(
                INVALID_PRODUCER_EPOCH,
                format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    h.producer_id, h.producer_epoch, entry.epoch
                ),
            );
        }
        if h.producer_epoch > entry.epoch {
            return if first == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::Refuse(
                    OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!(
                        "a new epoch {} of producer {} must start at sequence 0, not {first}",
                        h.producer_epoch, h.producer_id
                    ),
                )
            };
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            };
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |b| next_sequence(b.last_seq));
        if first != expected {
            return SequenceCheck::Refuse(
                OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!(
                    "producer {} epoch {}: expected sequence {expected}, got {first}",
                    h.producer_id, h.producer_epoch
                ),
            );
        }
        SequenceCheck::Append
    }

    /// Records a batch that was appended at `base_offset` (the header is
    /// the producer's; offsets are the log's).
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(CachedBatch {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence, h.last_offset_delta),
            base_offset,
            last_offset: base_offset + h.last_offset_delta as i64,
        });
        while entry.batches.len() > CACHED_BATCHES {
            entry.batches.pop_front();
        }
    }

    /// Rebuilds from the batches of the log's newest segment. A read error
    /// stops the scan: what was read is kept, and the rest of the state is
    /// unknown, which only weakens deduplication.
    pub fn rebuild<D: Disk>(log: &Log<D>) -> ProducerStates {
        let mut states = ProducerStates::default();
        let start = log
            .segment_bases()
            .last()
            .copied()
            .unwrap_or(0)
            .max(log.log_start_offset());
        let mut offset = start;
        while offset < log.end_offset() {
            let Ok(r) = log.read(offset, 1 << 20) else {
                break;
            };
            let Some(last) = r.batches.last() else { break };
            for h in &r.batches {
                if h.producer_id >= 0 && !h.is_control() && h.base_offset >= offset {
                    states.record(h, h.base_offset);
                }
            }
            offset = last.next_offset();
        }
        states
    }
}

impl<D: Disk + Clone> Broker<D> {
    pub(crate) fn init_producer_id(
        &mut self,
        ctx: &super::Ctx,
        req: &InitProducerIdRequest,
    ) -> super::FrameOutcome {
        let mut resp = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        if req.transactional_id.is_some() {
            // Transactions need a coordinator this broker does not have yet.
            resp.error_code = COORDINATOR_NOT_AVAILABLE;
            return ctx.respond(&resp);
        }
        // KIP-360: a producer that knows its id asks for the next epoch.
        if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
            resp.producer_id = req.producer_id;
            resp.producer_epoch = req.producer_epoch + 1;
            return ctx.respond(&resp);
        }
        if self.in_cluster() {
            return self.cluster_producer_id(ctx, resp);
        }
        match self.allocate_producer_id() {
            Ok(id) => {
                resp.producer_id = ProducerId(id);
                resp.producer_epoch = 0;
            }
            Err(_) => resp.error_code = error::KAFKA_STORAGE_ERROR,
        }
        ctx.respond(&resp)
    }

    fn allocate_producer_id(&mut self) -> Result<i64, String> {
        if self.meta.next_producer_id >= self.meta.producer_ids_reserved {
            let mut next = self.meta.clone();
            next.producer_ids_reserved = next.next_producer_id + ID_BLOCK;
            next.store(&self.disk, &self.config.data_dir)
                .map_err(|e| e.to_string())?;
            self.meta = next;
        }
        let id = self.meta.next_producer_id;
        self.meta.next_producer_id += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{self, BatchBuilder};

    fn header(pid: i64, epoch: i16, seq: i32, n: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(1).producer(pid, epoch, seq);
        for _ in 0..n {
            b = b.add(None, Some(b"v"), 1);
        }
        batch::validate(&b.build()).unwrap()
    }

    #[test]
    fn sequences_dedup_and_order() {
        let mut s = ProducerStates::default();
        let h0 = header(7, 0, 0, 3);
        assert_eq!(s.check(&h0), SequenceCheck::Append);
        s.record(&h0, 100);
        assert_eq!(
            s.check(&h0),
            SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            }
        );
        assert!(matches!(
            s.check(&header(7, 0, 5, 1)),
            SequenceCheck::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        let h1 = header(7, 0, 3, 1);
        assert_eq!(s.check(&h1), SequenceCheck::Append);
        s.record(&h1, 103);
        assert!(matches!(
            s.check(&header(7, 0, 4, 1)),
            SequenceCheck::Append
        ));
        // A newer epoch restarts at 0; an older one is fenced.
        assert!(matches!(
            s.check(&header(7, 1, 4, 1)),
            SequenceCheck::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        let e1 = header(7, 1, 0, 1);
        assert_eq!(s.check(&e1), SequenceCheck::Append);
        s.record(&e1, 104);
        assert!(matches!(
            s.check(&header(7, 0, 4, 1)),
            SequenceCheck::Refuse(INVALID_PRODUCER_EPOCH, _)
        ));
        // Only the last five batches are remembered.
        for i in 1..=6 {
            let h = header(7, 1, i, 1);
            assert_eq!(s.check(&h), SequenceCheck::Append, "{i}");
            s.record(&h, 104 + i as i64);
        }
        assert!(matches!(
            s.check(&header(7, 1, 1, 1)),
            SequenceCheck::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            s.check(&header(7, 1, 6, 1)),
            SequenceCheck::Duplicate { .. }
        ));
    }

    #[test]
    fn sequence_wraps() {
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(next_sequence(i32::MAX), 0);
    }
}
