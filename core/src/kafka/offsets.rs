//! ListOffsets, DeleteRecords and OffsetForLeaderEpoch.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::fetch::epoch_error;
use super::{error, log_error_code, Broker, Ctx};
use crate::io::disk::Disk;

/// ListOffsets' special timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL: i64 = -4;

impl<D: Disk + Clone> Broker<D> {
    pub(crate) fn list_offsets(&self, ctx: &Ctx, req: &ListOffsetsRequest) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let mut tr = ListOffsetsTopicResponse::default().with_name(t.name.clone());
            for p in &t.partitions {
                let mut pr = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1);
                match self.list_offset(
                    ctx,
                    &name,
                    p.partition_index,
                    p.current_leader_epoch,
                    p.timestamp,
                ) {
                    Ok(Some((offset, ts, epoch))) => {
                        pr.offset = offset;
                        pr.timestamp = ts;
                        // The field exists from v4; earlier versions
                        // refuse a value other than "unknown".
                        if ctx.version >= 4 {
                            pr.leader_epoch = epoch;
                        }
                    }
                    Ok(None) => {}
                    Err(code) => pr.error_code = code,
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn list_offset(
        &self,
        ctx: &Ctx,
        topic: &str,
        partition: i32,
        current_leader_epoch: i32,
        timestamp: i64,
    ) -> Result<Option<(i64, i64, i32)>, i16> {
        let p = self
            .partition(topic, partition)
            .ok_or(error::UNKNOWN_TOPIC_OR_PARTITION)?;
        if let Some(code) = epoch_error(current_leader_epoch, p.leader_epoch) {
            return Err(code);
        }
        let log = p.log()?;
        let hw = log.durable_end();
        let found = match timestamp {
            EARLIEST => Some((log.log_start_offset(), -1)),
            EARLIEST_LOCAL if ctx.version >= 8 => Some((log.log_start_offset(), -1)),
            LATEST => Some((hw, -1)),
            MAX_TIMESTAMP if ctx.version >= 7 => log
                .max_timestamp_below(hw)
                .map_err(|e| log_error_code(&e))?,
            ts if ts >= 0 => log
                .offset_for_timestamp(ts)
                .map_err(|e| log_error_code(&e))?
                .filter(|&(o, _)| o < hw),
            _ => return Err(error::INVALID_REQUEST),
        };
        Ok(found.map(|(o, t)| (o, t, p.leader_epoch)))
    }

    pub(crate) fn delete_records(&mut self, req: &DeleteRecordsRequest) -> DeleteRecordsResponse {
        let mut resp = DeleteRecordsResponse::default();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let mut tr = DeleteRecordsTopicResult::default().with_name(t.name.clone());
            for p in &t.partitions {
                let mut pr = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                match self.delete_records_in(&name, p.partition_index, p.offset) {
                    Ok(low) => pr.low_watermark = low,
                    Err(code) => pr.error_code = code,
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn delete_records_in(&mut self, topic: &str, partition: i32, offset: i64) -> Result<i64, i16> {
        let p = self
            .partition_mut(topic, partition)
            .ok_or(error::UNKNOWN_TOPIC_OR_PARTITION)?;
        let log = p.log_mut()?;
        let hw = log.durable_end();
        // -1 means "up to the high watermark" (Kafka's DeleteRecords).
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            return Err(error::OFFSET_OUT_OF_RANGE);
        }
        log.advance_log_start(target)
            .map_err(|e| log_error_code(&e))
    }

    pub(crate) fn offset_for_leader_epoch(
        &self,
        req: &OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut resp = OffsetForLeaderEpochResponse::default();
        for t in &req.topics {
            let name = t.topic.0.to_string();
            let mut tr = OffsetForLeaderTopicResult::default().with_topic(t.topic.clone());
            for p in &t.partitions {
                let mut pr = EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                let answer = self
                    .partition(&name, p.partition)
                    .ok_or(error::UNKNOWN_TOPIC_OR_PARTITION)
                    .and_then(|part| {
                        if let Some(code) = epoch_error(p.current_leader_epoch, part.leader_epoch) {
                            return Err(code);
                        }
                        Ok((part.log()?, part.leader_epoch))
                    });
                match answer {
                    Ok((log, current)) => {
                        let found = log
                            .leader_epochs()
                            .end_offset_for(p.leader_epoch, log.end_offset())
                            // A log with no batches yet is wholly in the
                            // current epoch.
                            .or((p.leader_epoch >= current).then(|| (current, log.end_offset())));
                        if let Some((e, end)) = found {
                            pr.leader_epoch = e;
                            pr.end_offset = end;
                        }
                    }
                    Err(code) => pr.error_code = code,
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}
