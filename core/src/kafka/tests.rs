use super::*;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use proptest::prelude::*;

use crate::io::clock::ManualClock;
use crate::io::disk::mem::MemDisk;
use crate::storage::batch::{self, BatchBuilder};

const C: ConnId = ConnId(1);

struct Harness {
    disk: MemDisk,
    clock: ManualClock,
    broker: Broker<MemDisk>,
    next_cid: i32,
    /// Completions a poll returned for connections nobody asked about yet.
    stash: Vec<Completion>,
}

fn config() -> BrokerConfig {
    let mut c = BrokerConfig::new(7, "data");
    c.advertised_host = "broker.test".into();
    c.advertised_port = 9999;
    c.cluster_id = "cluster-x".into();
    c.offsets_topic_num_partitions = 3;
    c
}

impl Harness {
    fn new() -> Harness {
        Self::with_config(config())
    }

    fn with_config(config: BrokerConfig) -> Harness {
        let disk = MemDisk::new();
        let clock = ManualClock {
            now: Instant::from_millis(1),
            wall_ms: 1_700_000_000_000,
        };
        let broker = Broker::open(disk.clone(), config, &clock).unwrap();
        Harness {
            disk,
            clock,
            broker,
            next_cid: 0,
            stash: Vec::new(),
        }
    }

    /// Drops the broker without a clean shutdown and opens it again.
    fn restart(&mut self) {
        // A new process: a new incarnation, as every driver draws one.
        let mut c = config();
        c.incarnation = self
            .broker
            .config()
            .incarnation
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        let fresh = Broker::open(self.disk.clone(), c, &self.clock).unwrap();
        self.broker = fresh;
    }

    fn send<T: Encodable>(
        &mut self,
        conn: ConnId,
        key: ApiKey,
        version: i16,
        body: &T,
    ) -> FrameOutcome {
        self.next_cid += 1;
        let frame = request(key, version, self.next_cid, body);
        self.broker.handle_frame(conn, &frame, &self.clock)
    }

    fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let out = self.send(C, key, version, body);
        let (cid, resp) = response(key, version, out);
        assert_eq!(cid, self.next_cid);
        resp
    }

    fn poll(&mut self) -> Vec<Completion> {
        self.broker.poll(&self.clock)
    }

    fn create(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> CreatableTopicResult {
        let t = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            );
        let resp: CreateTopicsResponse = self.call(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default().with_topics(vec![t]),
        );
        resp.topics.into_iter().next().unwrap()
    }

    fn produce(&mut self, topic: &str, partition: i32, acks: i16, batch: Vec<u8>) -> FrameOutcome {
        let req = produce_request(topic, partition, acks, batch);
        self.send(C, ApiKey::Produce, 9, &req)
    }

    /// Produces and, for acks=-1, polls for the answer.
    fn produce_ok(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: Vec<u8>,
    ) -> PartitionResult {
        let out = self.produce(topic, partition, acks, batch);
        let out = if out == FrameOutcome::Pending {
            let mut done = self.poll();
            assert_eq!(done.len(), 1);
            done.remove(0).outcome
        } else {
            out
        };
        let (_, resp): (i32, ProduceResponse) = response(ApiKey::Produce, 9, out);
        let p = &resp.responses[0].partition_responses[0];
        PartitionResult {
            error: p.error_code,
            base_offset: p.base_offset,
            log_append_time: p.log_append_time_ms,
            message: p.error_message.as_ref().map(|m| m.to_string()),
        }
    }

    /// Everything from `offset` to the high watermark, fetch after fetch.
    fn fetch_all(&mut self, topic: &str, partition: i32, mut offset: i64) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        loop {
            let p = self.fetch(topic, partition, offset);
            assert_eq!(p.error_code, error::NONE);
            let got = fetched_values(&p.records);
            out.extend(got.iter().filter(|(o, _)| *o >= offset).cloned());
            match out.last() {
                Some((o, _)) if *o + 1 < p.high_watermark => offset = *o + 1,
                _ => return out,
            }
        }
    }

    fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> fetch_response::PartitionData {
        let req = fetch_request(topic, partition, offset, 0, 0);
        let resp: FetchResponse = self.call(ApiKey::Fetch, 12, &req);
        resp.responses[0].partitions[0].clone()
    }

    fn list_offset(&mut self, topic: &str, timestamp: i64) -> (i16, i64, i64) {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 7, &req);
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    }
}

#[derive(Debug)]
struct PartitionResult {
    error: i16,
    base_offset: i64,
    log_append_time: i64,
    message: Option<String>,
}

fn produce_request(topic: &str, partition: i32, acks: i16, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])])
}

fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])])
}

fn records(n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(ts);
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!("value-{i}");
        b = b.add(Some(key.as_bytes()), Some(value.as_bytes()), ts + i as i64);
    }
    b.build()
}

fn fetched_values(records: &Option<Bytes>) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let bytes = records.as_deref().unwrap_or(&[]);
    for b in batch::Batches::new(bytes) {
        let b = b.expect("fetched batches are valid");
        for r in batch::decode_records(b.bytes).unwrap() {
            out.push((
                b.header.base_offset + r.offset_delta as i64,
                String::from_utf8(r.value.unwrap()).unwrap(),
            ));
        }
    }
    out
}

/// A request as a client would frame it (without the size prefix).
pub(crate) fn request<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    body.encode(&mut out, version).unwrap();
    out.to_vec()
}

pub(crate) fn response<T: Decodable>(key: ApiKey, version: i16, outcome: FrameOutcome) -> (i32, T) {
    let FrameOutcome::Respond(bytes) = outcome else {
        panic!("expected a response, got {outcome:?}");
    };
    let mut buf = Bytes::from(bytes);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    let body = T::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining(), "response has trailing bytes");
    (header.correlation_id, body)
}

#[test]
fn api_versions_every_supported_version() {
    let mut h = Harness::new();
    for v in 0..=3 {
        let resp: ApiVersionsResponse =
            h.call(ApiKey::ApiVersions, v, &ApiVersionsRequest::default());
        assert_eq!(resp.error_code, error::NONE);
        let got: Vec<(i16, i16, i16)> = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        let want: Vec<(i16, i16, i16)> = SUPPORTED
            .iter()
            .map(|&(k, lo, hi)| (k as i16, lo, hi))
            .collect();
        assert_eq!(got, want, "v{v} advertises exactly what is handled");
    }
}

#[test]
fn newer_api_versions_gets_v0_unsupported_version_with_the_list() {
    let mut h = Harness::new();
    let mut req = request(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    req[2..4].copy_from_slice(&9i16.to_be_bytes());
    let (cid, resp): (i32, ApiVersionsResponse) = response(
        ApiKey::ApiVersions,
        0,
        h.broker.handle_frame(C, &req, &h.clock),
    );
    assert_eq!(cid, 5);
    assert_eq!(resp.error_code, error::UNSUPPORTED_VERSION);
    assert_eq!(resp.api_keys.len(), SUPPORTED.len());
}

#[test]
fn metadata_every_supported_version_with_auto_creation() {
    for v in 0..=12 {
        let mut h = Harness::new();
        let all = if v == 0 { Some(vec![]) } else { None };
        let resp: MetadataResponse = h.call(
            ApiKey::Metadata,
            v,
            &MetadataRequest::default().with_topics(all),
        );
        assert_eq!(resp.brokers.len(), 1, "v{v}");
        assert_eq!(resp.brokers[0].node_id, BrokerId(7));
        assert_eq!(&*resp.brokers[0].host, "broker.test");
        assert_eq!(resp.brokers[0].port, 9999);
        assert!(resp.topics.is_empty());
        if v >= 2 {
            assert_eq!(resp.cluster_id.as_deref(), Some("cluster-x"), "v{v}");
        }
        // Auto-creation: implied before v4, asked for from v4.
        let named = vec![MetadataRequestTopic::default().with_name(Some(topic_name("orders")))];
        let req = MetadataRequest::default()
            .with_topics(Some(named))
            .with_allow_auto_topic_creation(true);
        let resp: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
        assert_eq!(resp.topics.len(), 1, "v{v}");
        assert_eq!(resp.topics[0].error_code, error::NONE, "v{v}");
        assert_eq!(resp.topics[0].partitions.len(), 1);
        assert_eq!(resp.topics[0].partitions[0].leader_id, BrokerId(7));
        assert_eq!(h.broker.topic_names(), vec!["orders".to_string()]);
    }
}

#[test]
fn metadata_without_auto_creation_reports_unknown_topics() {
    let mut c = config();
    c.auto_create_topics = false;
    let mut h = Harness::with_config(c);
    let named = vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("nope"))),
        MetadataRequestTopic::default().with_name(Some(topic_name("bad name"))),
    ];
    let req = MetadataRequest::default()
        .with_topics(Some(named))
        .with_allow_auto_topic_creation(true);
    let resp: MetadataResponse = h.call(ApiKey::Metadata, 12, &req);
    assert_eq!(resp.topics[0].error_code, error::UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(resp.topics[1].error_code, error::INVALID_TOPIC_EXCEPTION);
    assert!(h.broker.topic_names().is_empty());
}

#[test]
fn create_topics_validates_like_kafka() {
    let mut h = Harness::new();
    let ok = h.create("orders", 3, &[("retention.ms", "1000")]);
    assert_eq!(ok.error_code, error::NONE);
    assert_eq!(ok.num_partitions, 3);
    assert_ne!(ok.topic_id, uuid::Uuid::nil());
    let configs = ok.configs.unwrap();
    let retention = configs.iter().find(|c| &*c.name == "retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("1000"));
    assert_eq!(
        retention.config_source,
        configs::source::DYNAMIC_TOPIC_CONFIG
    );
    assert_eq!(
        h.create("orders", 3, &[]).error_code,
        error::TOPIC_ALREADY_EXISTS
    );
    assert_eq!(h.create("orders_", 1, &[]).error_code, error::NONE);
    assert_eq!(
        h.create("orders.", 1, &[]).error_code,
        error::INVALID_TOPIC_EXCEPTION
    );
    assert_eq!(
        h.create("a/b", 1, &[]).error_code,
        error::INVALID_TOPIC_EXCEPTION
    );
    assert_eq!(
        h.create("zero", 0, &[]).error_code,
        error::INVALID_PARTITIONS
    );
    assert_eq!(
        h.create("huge", 1_000_000, &[]).error_code,
        error::INVALID_PARTITIONS
    );
    assert_eq!(
        h.create("cfg", 1, &[("retention.ms", "soon")]).error_code,
        error::INVALID_CONFIG
    );
    assert_eq!(
        h.create("cfg", 1, &[("no.such", "1")]).error_code,
        error::INVALID_CONFIG
    );
    let rf3 = CreatableTopic::default()
        .with_name(topic_name("rf3"))
        .with_num_partitions(1)
        .with_replication_factor(3);
    let resp: CreateTopicsResponse = h.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![rf3]),
    );
    assert_eq!(resp.topics[0].error_code, error::INVALID_REPLICATION_FACTOR);
    // validate_only creates nothing.
    let t = CreatableTopic::default()
        .with_name(topic_name("dry"))
        .with_num_partitions(2)
        .with_replication_factor(1);
    let resp: CreateTopicsResponse = h.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_validate_only(true),
    );
    assert_eq!(resp.topics[0].error_code, error::NONE);
    assert_eq!(resp.topics[0].num_partitions, 2);
    assert!(!h.broker.topic_names().contains(&"dry".to_string()));
    // The same name twice in one request fails both.
    let t = CreatableTopic::default()
        .with_name(topic_name("twice"))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let resp: CreateTopicsResponse = h.call(
        ApiKey::CreateTopics,
        4,
        &CreateTopicsRequest::default().with_topics(vec![t.clone(), t]),
    );
    assert!(resp
        .topics
        .iter()
        .all(|t| t.error_code == error::INVALID_REQUEST));
}

#[test]
fn produce_acks_1_then_fetch_after_the_group_commit() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    let r = h.produce_ok("t", 0, 1, records(3, 1000));
    assert_eq!((r.error, r.base_offset), (error::NONE, 0));
    // Not synced yet: the high watermark has not moved.
    let p = h.fetch("t", 0, 0);
    assert_eq!((p.error_code, p.high_watermark), (error::NONE, 0));
    assert!(fetched_values(&p.records).is_empty());
    assert!(h.poll().is_empty());
    let p = h.fetch("t", 0, 0);
    assert_eq!(p.high_watermark, 3);
    assert_eq!(p.last_stable_offset, 3);
    assert_eq!(p.log_start_offset, 0);
    let got = fetched_values(&p.records);
    assert_eq!(
        got,
        vec![
            (0, "value-0".into()),
            (1, "value-1".into()),
            (2, "value-2".into())
        ]
    );
    let r = h.produce_ok("t", 0, 1, records(2, 2000));
    assert_eq!(r.base_offset, 3);
    h.poll();
    assert_eq!(fetched_values(&h.fetch("t", 0, 3).records).len(), 2);
    // Past the log end is out of range; at the high watermark is empty.
    assert_eq!(h.fetch("t", 0, 6).error_code, error::OFFSET_OUT_OF_RANGE);
    assert_eq!(h.fetch("t", 0, 5).error_code, error::NONE);
}

#[test]
fn acks_all_waits_for_the_sync() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    assert_eq!(h.produce("t", 0, -1, records(2, 1)), FrameOutcome::Pending);
    // Another request on the same connection while one is pending is a
    // protocol violation by the driver.
    assert!(matches!(
        h.produce("t", 0, -1, records(1, 1)),
        FrameOutcome::Close(_)
    ));
    let done = h.poll();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].conn, C);
    let (_, resp): (i32, ProduceResponse) = response(ApiKey::Produce, 9, done[0].outcome.clone());
    assert_eq!(resp.responses[0].partition_responses[0].base_offset, 0);
    // Durable by the time it was answered.
    assert_eq!(h.fetch("t", 0, 0).high_watermark, 2);
}

#[test]
fn acks_0_answers_nothing_and_closes_on_error() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    assert_eq!(
        h.produce("t", 0, 0, records(1, 1)),
        FrameOutcome::NoResponse
    );
    assert!(matches!(
        h.produce("nope", 0, 0, records(1, 1)),
        FrameOutcome::Close(_)
    ));
}

#[test]
fn produce_validation_errors() {
    let mut h = Harness::new();
    h.create("t", 2, &[("max.message.bytes", "200")]);
    h.create("c", 1, &[("cleanup.policy", "compact")]);
    h.create("m", 1, &[("min.insync.replicas", "2")]);
    let mut corrupt = records(1, 1);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert_eq!(
        h.produce_ok("t", 0, 1, corrupt).error,
        error::CORRUPT_MESSAGE
    );
    let big = BatchBuilder::new(1).add(None, Some(&[7u8; 300]), 1).build();
    let r = h.produce_ok("t", 0, 1, big);
    assert_eq!(r.error, error::MESSAGE_TOO_LARGE);
    assert!(r.message.unwrap().contains("max.message.bytes"));
    let mut offset = records(1, 1);
    batch::set_base_offset(&mut offset, 5);
    assert_eq!(h.produce_ok("t", 0, 1, offset).error, error::INVALID_RECORD);
    let mut two = records(1, 1);
    two.extend(records(1, 1));
    assert_eq!(h.produce_ok("t", 1, 1, two).error, error::INVALID_RECORD);
    assert_eq!(
        h.produce_ok("t", 2, 1, records(1, 1)).error,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        h.produce_ok("x", 0, 1, records(1, 1)).error,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        h.produce_ok("t", 0, 2, records(1, 1)).error,
        error::INVALID_REQUIRED_ACKS
    );
    let keyless = BatchBuilder::new(1).add(None, Some(b"v"), 1).build();
    assert_eq!(
        h.produce_ok("c", 0, 1, keyless).error,
        error::INVALID_RECORD
    );
    assert_eq!(h.produce_ok("c", 0, 1, records(1, 1)).error, error::NONE);
    assert_eq!(
        h.produce_ok("m", 0, -1, records(1, 1)).error,
        error::NOT_ENOUGH_REPLICAS
    );
    assert_eq!(h.produce_ok("m", 0, 1, records(1, 1)).error, error::NONE);
    // Nothing refused was appended.
    h.poll();
    assert_eq!(h.fetch("t", 0, 0).high_watermark, 0);
}

fn compressed(codec: batch::Compression, n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(ts).compression(codec);
    for i in 0..n {
        let value = format!("{codec:?}-{i}");
        b = b.add_with_headers(
            Some(b"key"),
            Some(value.as_bytes()),
            ts + i as i64,
            vec![(b"h".to_vec(), Some(b"v".to_vec()))],
        );
    }
    b.build()
}

#[test]
fn compressed_batches_are_validated_and_stored_as_sent() {
    use batch::Compression::{Gzip, Lz4, Snappy, Zstd};
    let mut h = Harness::new();
    h.create("z", 1, &[]);
    let mut sent = Vec::new();
    for codec in [Gzip, Snappy, Lz4, Zstd] {
        let b = compressed(codec, 5, 1000);
        assert_eq!(
            h.produce_ok("z", 0, -1, b.clone()).error,
            error::NONE,
            "{codec:?}"
        );
        sent.push(b);
    }
    let p = h.fetch("z", 0, 0);
    let stored = p.records.unwrap();
    let mut pos = 0;
    for (i, b) in batch::Batches::new(&stored).enumerate() {
        let b = b.unwrap();
        // Byte for byte as sent, but for the offset and the leader epoch
        // the log assigned (both outside the CRC).
        assert_eq!(&b.bytes[16..], &sent[i][16..], "batch {i}");
        let records = batch::decode_records_any(b.bytes, 1 << 20).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(
            records[0].headers,
            vec![(b"h".to_vec(), Some(b"v".to_vec()))]
        );
        pos += b.bytes.len();
    }
    assert_eq!(pos, stored.len());
    // By timestamp inside a compressed batch.
    assert_eq!(h.list_offset("z", 1003), (error::NONE, 3, 1003));
    // A decompression bomb: small on the wire, huge inside.
    let huge = vec![0u8; 300 << 20];
    let bomb = BatchBuilder::new(1)
        .compression(Gzip)
        .add(None, Some(&huge), 1)
        .build();
    let mut c = config();
    c.settings
        .insert("message.max.bytes".into(), "100000000".into());
    let mut h2 = Harness::with_config(c);
    h2.create("z", 1, &[]);
    assert!(bomb.len() < huge.len() / 100);
    assert_eq!(
        h2.produce_ok("z", 0, 1, bomb).error,
        error::MESSAGE_TOO_LARGE
    );
}

#[test]
fn record_level_errors_name_the_record() {
    let mut h = Harness::new();
    h.create("t", 1, &[("message.timestamp.before.max.ms", "1000")]);
    // Record 1 is an hour old.
    let now = h.clock.wall_ms;
    let b = BatchBuilder::new(now)
        .add(None, Some(b"a"), now)
        .add(None, Some(b"b"), now - 3_600_000)
        .build();
    let out = h.produce("t", 0, 1, b);
    let (_, resp): (i32, ProduceResponse) = response(ApiKey::Produce, 9, out);
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, error::INVALID_TIMESTAMP);
    assert_eq!(p.record_errors.len(), 1);
    assert_eq!(p.record_errors[0].batch_index, 1);
    // A producer that lies about the max timestamp is corrected.
    let mut b = records(2, now);
    batch::set_max_timestamp(&mut b, now + 99_999_999);
    assert_eq!(h.produce_ok("t", 0, -1, b).error, error::NONE);
    let stored = h.fetch("t", 0, 0).records.unwrap();
    let got = batch::Batches::new(&stored).next().unwrap().unwrap();
    assert_eq!(got.header.max_timestamp, now + 1);
}

#[test]
fn idempotent_producers_are_deduplicated_across_restarts() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    let init = |h: &mut Harness| -> (i64, i16) {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_timeout_ms(60_000);
        let resp: InitProducerIdResponse = h.call(ApiKey::InitProducerId, 4, &req);
        assert_eq!(resp.error_code, error::NONE);
        (resp.producer_id.0, resp.producer_epoch)
    };
    let (pid, epoch) = init(&mut h);
    let (pid2, _) = init(&mut h);
    assert_ne!(pid, pid2);
    let batch = |seq: i32| {
        BatchBuilder::new(h_now())
            .producer(pid, epoch, seq)
            .add(None, Some(format!("s{seq}").as_bytes()), h_now())
            .add(None, Some(format!("s{seq}b").as_bytes()), h_now())
            .build()
    };
    assert_eq!(h.produce_ok("t", 0, -1, batch(0)).base_offset, 0);
    assert_eq!(h.produce_ok("t", 0, -1, batch(2)).base_offset, 2);
    // A retry is answered with the first offsets and not written again.
    let r = h.produce_ok("t", 0, -1, batch(0));
    assert_eq!((r.error, r.base_offset), (error::NONE, 0));
    let r = h.produce_ok("t", 0, -1, batch(8));
    assert_eq!(r.error, producers::OUT_OF_ORDER_SEQUENCE_NUMBER);
    h.restart();
    // The state is rebuilt from the log: still a duplicate after a crash.
    let r = h.produce_ok("t", 0, -1, batch(2));
    assert_eq!((r.error, r.base_offset), (error::NONE, 2));
    assert_eq!(h.produce_ok("t", 0, -1, batch(4)).base_offset, 4);
    assert_eq!(h.fetch_all("t", 0, 0).len(), 6);
    // Ids are never handed out twice, restarts included.
    let (pid3, _) = init(&mut h);
    assert!(pid3 > pid2);
    // Transactions are not available yet.
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(str_bytes("tx"))))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp: InitProducerIdResponse = h.call(ApiKey::InitProducerId, 4, &req);
    assert_ne!(resp.error_code, error::NONE);
}

fn h_now() -> i64 {
    1_700_000_000_000
}

#[test]
fn log_append_time_stamps_batches() {
    let mut h = Harness::new();
    h.create("lat", 1, &[("message.timestamp.type", "LogAppendTime")]);
    let r = h.produce_ok("lat", 0, 1, records(2, 5));
    assert_eq!(r.log_append_time, h.clock.wall_ms);
    h.poll();
    let p = h.fetch("lat", 0, 0);
    let bytes = p.records.unwrap();
    let b = batch::Batches::new(&bytes).next().unwrap().unwrap();
    assert_eq!(b.header.max_timestamp, h.clock.wall_ms);
    assert_eq!(
        b.header.timestamp_type(),
        batch::TimestampType::LogAppendTime
    );
}

#[test]
fn long_poll_fetch_waits_for_data_or_the_deadline() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    let waiting = ConnId(2);
    let req = fetch_request("t", 0, 0, 500, 1);
    assert_eq!(
        h.send(waiting, ApiKey::Fetch, 12, &req),
        FrameOutcome::Pending
    );
    assert!(h.broker.next_deadline().unwrap() <= h.clock.now.plus_millis(500));
    assert!(h.poll().is_empty());
    h.produce_ok("t", 0, 1, records(1, 1));
    let done = h.poll();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].conn, waiting);
    let (_, resp): (i32, FetchResponse) = response(ApiKey::Fetch, 12, done[0].outcome.clone());
    assert_eq!(
        fetched_values(&resp.responses[0].partitions[0].records).len(),
        1
    );
    // With nothing new, the deadline answers with nothing.
    let req = fetch_request("t", 0, 1, 500, 1);
    assert_eq!(
        h.send(waiting, ApiKey::Fetch, 12, &req),
        FrameOutcome::Pending
    );
    h.clock.advance_millis(499);
    assert!(h.poll().is_empty());
    h.clock.advance_millis(1);
    let done = h.poll();
    assert_eq!(done.len(), 1);
    let (_, resp): (i32, FetchResponse) = response(ApiKey::Fetch, 12, done[0].outcome.clone());
    assert!(fetched_values(&resp.responses[0].partitions[0].records).is_empty());
    // A closed connection's fetch is forgotten.
    assert_eq!(
        h.send(waiting, ApiKey::Fetch, 12, &req),
        FrameOutcome::Pending
    );
    h.broker.connection_closed(waiting);
    h.clock.advance_millis(1000);
    assert!(h.poll().is_empty());
}

#[test]
fn fetch_limits_return_at_least_one_batch() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    for i in 0..5 {
        h.produce_ok("t", 0, 1, records(10, i));
    }
    h.poll();
    let mut req = fetch_request("t", 0, 0, 0, 0);
    req.topics[0].partitions[0].partition_max_bytes = 1;
    let resp: FetchResponse = h.call(ApiKey::Fetch, 12, &req);
    assert_eq!(
        fetched_values(&resp.responses[0].partitions[0].records).len(),
        10
    );
    // Mid-batch offsets return the whole batch holding them.
    let p = h.fetch("t", 0, 15);
    assert_eq!(fetched_values(&p.records)[0].0, 10);
}

#[test]
fn list_offsets_and_delete_records() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    h.produce_ok("t", 0, 1, records(3, 100));
    h.produce_ok("t", 0, 1, records(3, 200));
    // Unsynced data is not listed.
    assert_eq!(h.list_offset("t", offsets::LATEST), (error::NONE, 0, -1));
    h.poll();
    assert_eq!(h.list_offset("t", offsets::EARLIEST), (error::NONE, 0, -1));
    assert_eq!(h.list_offset("t", offsets::LATEST), (error::NONE, 6, -1));
    assert_eq!(h.list_offset("t", 101), (error::NONE, 1, 101));
    assert_eq!(h.list_offset("t", 150), (error::NONE, 3, 200));
    assert_eq!(h.list_offset("t", 1000), (error::NONE, -1, -1));
    assert_eq!(
        h.list_offset("t", offsets::MAX_TIMESTAMP),
        (error::NONE, 5, 202)
    );
    let req = DeleteRecordsRequest::default().with_topics(vec![
        delete_records_request::DeleteRecordsTopic::default()
            .with_name(topic_name("t"))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(4),
            ]),
    ]);
    let resp: DeleteRecordsResponse = h.call(ApiKey::DeleteRecords, 2, &req);
    assert_eq!(resp.topics[0].partitions[0].low_watermark, 4);
    assert_eq!(h.list_offset("t", offsets::EARLIEST), (error::NONE, 4, -1));
    assert_eq!(h.fetch("t", 0, 2).error_code, error::OFFSET_OUT_OF_RANGE);
    let mut too_far = req.clone();
    too_far.topics[0].partitions[0].offset = 7;
    let resp: DeleteRecordsResponse = h.call(ApiKey::DeleteRecords, 2, &too_far);
    assert_eq!(
        resp.topics[0].partitions[0].error_code,
        error::OFFSET_OUT_OF_RANGE
    );
}

#[test]
fn configs_describe_alter_and_incremental() {
    let mut c = config();
    c.settings.insert("log.retention.hours".into(), "24".into());
    let mut h = Harness::with_config(c);
    h.create("t", 1, &[("segment.bytes", "100000")]);
    let describe = |h: &mut Harness| -> BTreeMap<String, (String, i8)> {
        let req = DescribeConfigsRequest::default()
            .with_include_synonyms(true)
            .with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(str_bytes("t")),
            ]);
        let resp: DescribeConfigsResponse = h.call(ApiKey::DescribeConfigs, 4, &req);
        assert_eq!(resp.results[0].error_code, error::NONE);
        resp.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    (c.value.as_ref().unwrap().to_string(), c.config_source),
                )
            })
            .collect()
    };
    let d = describe(&mut h);
    assert_eq!(
        d["segment.bytes"],
        ("100000".into(), configs::source::DYNAMIC_TOPIC_CONFIG)
    );
    assert_eq!(
        d["retention.ms"],
        ("86400000".into(), configs::source::STATIC_BROKER_CONFIG)
    );
    assert_eq!(
        d["cleanup.policy"],
        ("delete".into(), configs::source::DEFAULT_CONFIG)
    );
    // Incremental: set one, append to a list, leave the rest.
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes("t"))
            .with_configs(vec![
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(str_bytes("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(str_bytes("5000"))),
                incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(str_bytes("cleanup.policy"))
                    .with_config_operation(2)
                    .with_value(Some(str_bytes("compact"))),
            ]),
    ]);
    let resp: IncrementalAlterConfigsResponse = h.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    assert_eq!(
        resp.responses[0].error_code,
        error::NONE,
        "{:?}",
        resp.responses[0].error_message
    );
    let d = describe(&mut h);
    assert_eq!(d["retention.ms"].0, "5000");
    assert_eq!(d["cleanup.policy"].0, "delete,compact");
    assert_eq!(d["segment.bytes"].0, "100000");
    // Legacy AlterConfigs replaces the whole set.
    let req = AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes("t"))
            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                .with_name(str_bytes("max.message.bytes"))
                .with_value(Some(str_bytes("2000")))]),
    ]);
    let resp: AlterConfigsResponse = h.call(ApiKey::AlterConfigs, 2, &req);
    assert_eq!(resp.responses[0].error_code, error::NONE);
    let d = describe(&mut h);
    assert_eq!(d["segment.bytes"].1, configs::source::DEFAULT_CONFIG);
    assert_eq!(d["max.message.bytes"].0, "2000");
    // Bad values and unknown topics are refused, and change nothing.
    let mut bad = req.clone();
    bad.resources[0].configs[0].value = Some(str_bytes("-5"));
    let resp: AlterConfigsResponse = h.call(ApiKey::AlterConfigs, 2, &bad);
    assert_eq!(resp.responses[0].error_code, error::INVALID_CONFIG);
    bad.resources[0].resource_name = str_bytes("nope");
    let resp: AlterConfigsResponse = h.call(ApiKey::AlterConfigs, 2, &bad);
    assert_eq!(
        resp.responses[0].error_code,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(describe(&mut h)["max.message.bytes"].0, "2000");
    // Configs survive a restart.
    h.restart();
    assert_eq!(describe(&mut h)["max.message.bytes"].0, "2000");
}

#[test]
fn delete_topics_and_create_partitions() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    h.produce_ok("t", 0, -1, records(2, 1));
    let grow = |h: &mut Harness, count: i32| -> i16 {
        let req = CreatePartitionsRequest::default().with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(topic_name("t"))
                .with_count(count),
        ]);
        let resp: CreatePartitionsResponse = h.call(ApiKey::CreatePartitions, 3, &req);
        resp.results[0].error_code
    };
    assert_eq!(grow(&mut h, 1), error::INVALID_PARTITIONS);
    assert_eq!(grow(&mut h, 3), error::NONE);
    assert_eq!(h.produce_ok("t", 2, 1, records(1, 1)).error, error::NONE);
    h.restart();
    assert_eq!(h.fetch("t", 0, 0).high_watermark, 2);
    assert_eq!(h.fetch("t", 2, 0).error_code, error::NONE);
    let req =
        DeleteTopicsRequest::default().with_topic_names(vec![topic_name("t"), topic_name("nope")]);
    let resp: DeleteTopicsResponse = h.call(ApiKey::DeleteTopics, 5, &req);
    assert_eq!(resp.responses[0].error_code, error::NONE);
    assert_eq!(
        resp.responses[1].error_code,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert!(h.broker.topic_names().is_empty());
    h.restart();
    assert!(h.broker.topic_names().is_empty());
    // A topic created again under the same name starts empty, with a new id.
    h.create("t", 1, &[]);
    assert_eq!(h.fetch("t", 0, 0).high_watermark, 0);
}

#[test]
fn acknowledged_records_survive_a_restart() {
    let mut h = Harness::new();
    h.create("t", 2, &[]);
    for i in 0..20 {
        // Old timestamps: each batch rolls a segment (segment.ms), so the
        // data spans many files.
        assert_eq!(
            h.produce_ok("t", i % 2, -1, records(3, i as i64)).error,
            error::NONE
        );
    }
    h.restart();
    for p in 0..2 {
        assert_eq!(h.fetch("t", p, 0).high_watermark, 30);
        let values = h.fetch_all("t", p, 0);
        assert_eq!(values.len(), 30);
        assert!(
            values.iter().enumerate().all(|(i, (o, _))| *o == i as i64),
            "dense offsets"
        );
    }
}

/// Every version of every API, with a request that exercises its usual
/// fields: answered, never closed (a field our response sets that the
/// version cannot carry would close the connection).
#[test]
fn every_supported_version_of_every_api_is_answered() {
    let mut h = Harness::new();
    h.create("t", 1, &[]);
    h.produce_ok("t", 0, -1, records(3, 1));
    for &(key, lo, hi) in SUPPORTED {
        for v in lo..=hi {
            let frame_outcome = match key {
                ApiKey::Produce => h.send(C, key, v, &produce_request("t", 0, 1, records(1, 1))),
                ApiKey::Fetch => {
                    let mut req = fetch_request("t", 0, 0, 0, 0);
                    if v >= 13 {
                        req.topics[0].topic_id = uuid(h.broker.topics["t"].id);
                    }
                    h.send(C, key, v, &req)
                }
                ApiKey::ListOffsets => {
                    let mut out = None;
                    for ts in [offsets::EARLIEST, offsets::LATEST, 1] {
                        let req = ListOffsetsRequest::default().with_topics(vec![
                            ListOffsetsTopic::default()
                                .with_name(topic_name("t"))
                                .with_partitions(vec![
                                    ListOffsetsPartition::default().with_timestamp(ts)
                                ]),
                        ]);
                        let o = h.send(C, key, v, &req);
                        assert!(
                            matches!(o, FrameOutcome::Respond(_)),
                            "{key:?} v{v} ts {ts}: {o:?}"
                        );
                        out = Some(o);
                    }
                    out.unwrap()
                }
                ApiKey::Metadata => {
                    h.send(C, key, v, &MetadataRequest::default().with_topics(None))
                }
                ApiKey::OffsetForLeaderEpoch => {
                    let req = OffsetForLeaderEpochRequest::default().with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(topic_name("t"))
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                ),
                            ]),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::ApiVersions => h.send(C, key, v, &ApiVersionsRequest::default()),
                ApiKey::CreateTopics => {
                    let t = CreatableTopic::default()
                        .with_name(topic_name(&format!("c{v}")))
                        .with_num_partitions(1)
                        .with_replication_factor(1);
                    h.send(
                        C,
                        key,
                        v,
                        &CreateTopicsRequest::default().with_topics(vec![t]),
                    )
                }
                ApiKey::DeleteTopics => {
                    h.create(&format!("d{v}"), 1, &[]);
                    let mut req = DeleteTopicsRequest::default();
                    if v >= 6 {
                        req.topics = vec![delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(topic_name(&format!("d{v}"))))];
                    } else {
                        req.topic_names = vec![topic_name(&format!("d{v}"))];
                    }
                    h.send(C, key, v, &req)
                }
                ApiKey::DeleteRecords => {
                    let req = DeleteRecordsRequest::default().with_topics(vec![
                        delete_records_request::DeleteRecordsTopic::default()
                            .with_name(topic_name("t"))
                            .with_partitions(vec![
                                delete_records_request::DeleteRecordsPartition::default(),
                            ]),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::DescribeConfigs => {
                    let req = DescribeConfigsRequest::default().with_resources(vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(str_bytes("t")),
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(str_bytes("7")),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::AlterConfigs => {
                    let req = AlterConfigsRequest::default().with_resources(vec![
                        alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(str_bytes("t")),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::IncrementalAlterConfigs => {
                    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(str_bytes("t")),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::CreatePartitions => {
                    let req = CreatePartitionsRequest::default().with_topics(vec![
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic_name("t"))
                            .with_count(2 + v as i32),
                    ]);
                    h.send(C, key, v, &req)
                }
                ApiKey::DescribeCluster => h.send(C, key, v, &DescribeClusterRequest::default()),
                ApiKey::InitProducerId => h.send(
                    C,
                    key,
                    v,
                    &InitProducerIdRequest::default()
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ),
                ApiKey::FindCoordinator => {
                    let mut req = FindCoordinatorRequest::default().with_key(str_bytes("g"));
                    if v >= 4 {
                        req.key = StrBytes::default();
                        req.coordinator_keys = vec![str_bytes("g")];
                    }
                    h.send(C, key, v, &req)
                }
                ApiKey::JoinGroup => {
                    // Before v4 a new member waits out the initial delay.
                    let o = h.send(C, key, v, &groups::join_req(&format!("j{v}"), ""));
                    if o == FrameOutcome::Pending {
                        h.clock.advance_millis(60_000);
                    }
                    o
                }
                ApiKey::SyncGroup => h.send(C, key, v, &groups::sync_req("g", 1, "m", &[])),
                ApiKey::Heartbeat => h.send(C, key, v, &groups::heartbeat_req("g", 1, "m")),
                ApiKey::LeaveGroup => {
                    let mut req =
                        LeaveGroupRequest::default().with_group_id(GroupId(str_bytes("g")));
                    if v >= 3 {
                        req.members = vec![leave_group_request::MemberIdentity::default()];
                    }
                    h.send(C, key, v, &req)
                }
                ApiKey::OffsetCommit => h.send(
                    C,
                    key,
                    v,
                    &groups::commit_req(&format!("s{v}"), -1, "", "t", 1),
                ),
                ApiKey::OffsetFetch => {
                    let mut req = groups::fetch_req("g", "t");
                    if v >= 8 {
                        req.topics = Some(Vec::new());
                        req.group_id = GroupId::default();
                        req.groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(GroupId(str_bytes("g")))];
                    }
                    h.send(C, key, v, &req)
                }
                ApiKey::OffsetDelete => h.send(
                    C,
                    key,
                    v,
                    &OffsetDeleteRequest::default().with_group_id(GroupId(str_bytes("s2"))),
                ),
                ApiKey::DescribeGroups => h.send(
                    C,
                    key,
                    v,
                    &DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("g"))]),
                ),
                ApiKey::ListGroups => h.send(C, key, v, &ListGroupsRequest::default()),
                ApiKey::DeleteGroups => h.send(
                    C,
                    key,
                    v,
                    &DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(str_bytes("x"))]),
                ),
                ApiKey::ConsumerGroupHeartbeat => h.send(
                    C,
                    key,
                    v,
                    &ConsumerGroupHeartbeatRequest::default()
                        .with_group_id(GroupId(str_bytes(&format!("cg{v}"))))
                        .with_member_id(str_bytes("member-1"))
                        .with_rebalance_timeout_ms(1000)
                        .with_subscribed_topic_names(Some(vec![topic_name("t")]))
                        .with_topic_partitions(Some(Vec::new())),
                ),
                ApiKey::ConsumerGroupDescribe => h.send(
                    C,
                    key,
                    v,
                    &ConsumerGroupDescribeRequest::default()
                        .with_group_ids(vec![GroupId(str_bytes("cg1"))]),
                ),
                other => panic!("{other:?} is supported but not covered by this test"),
            };
            // A group request may wait for its records' sync.
            let frame_outcome = match frame_outcome {
                FrameOutcome::Pending if key != ApiKey::Produce => h.wait_for(C),
                o => o,
            };
            assert!(
                matches!(frame_outcome, FrameOutcome::Respond(_)),
                "{key:?} v{v}: {frame_outcome:?}"
            );
        }
    }
}

#[test]
fn describe_cluster_and_offset_for_leader_epoch() {
    let mut h = Harness::new();
    let resp: DescribeClusterResponse = h.call(
        ApiKey::DescribeCluster,
        1,
        &DescribeClusterRequest::default(),
    );
    assert_eq!(&*resp.cluster_id, "cluster-x");
    assert_eq!(resp.brokers[0].broker_id, BrokerId(7));
    h.create("t", 1, &[]);
    h.produce_ok("t", 0, -1, records(4, 1));
    let req = OffsetForLeaderEpochRequest::default().with_topics(vec![
        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(topic_name("t"))
            .with_partitions(vec![
                offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_leader_epoch(0),
            ]),
    ]);
    let resp: OffsetForLeaderEpochResponse = h.call(ApiKey::OffsetForLeaderEpoch, 4, &req);
    let p = &resp.topics[0].partitions[0];
    assert_eq!(
        (p.error_code, p.leader_epoch, p.end_offset),
        (error::NONE, 0, 4)
    );
}

#[test]
fn a_data_directory_from_another_cluster_is_refused() {
    let h = Harness::new();
    let mut other = config();
    other.cluster_id = "someone-else".into();
    let err = Broker::open(h.disk.clone(), other, &h.clock).err().unwrap();
    assert!(err.contains("belongs to cluster"), "{err}");
}

#[test]
fn bad_requests_close_the_connection_with_a_reason() {
    let mut h = Harness::new();
    let ok = request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("shorter than a header", ok[..7].to_vec()),
        ("unknown api key", {
            let mut r = ok.clone();
            r[0..2].copy_from_slice(&9999i16.to_be_bytes());
            r
        }),
        ("a version no Kafka has", {
            let mut r = request(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
            r[2..4].copy_from_slice(&99i16.to_be_bytes());
            r
        }),
        ("unsupported api without a top-level error code", {
            let mut r = ok.clone();
            r[0..2].copy_from_slice(&(ApiKey::OffsetCommit as i16).to_be_bytes());
            r
        }),
        ("truncated body", ok[..ok.len() - 1].to_vec()),
    ];
    for (what, frame) in cases {
        match h.broker.handle_frame(C, &frame, &h.clock) {
            FrameOutcome::Close(reason) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: expected a close, got {other:?}"),
        }
    }
    assert!(matches!(
        h.broker.handle_frame(C, &ok, &h.clock),
        FrameOutcome::Respond(_)
    ));
}

#[test]
fn trailing_bytes_after_a_body_are_ignored_as_kafka_does() {
    let mut h = Harness::new();
    // librdkafka 2.x's all-topics Metadata request, byte for byte.
    let frame = [
        0, 3, 0, 12, 0, 0, 0, 3, 0, 7, b'r', b'd', b'k', b'a', b'f', b'k', b'a', 0, 0, 0, 0, 0, 1,
        0, 0,
    ];
    let (cid, resp): (i32, MetadataResponse) = response(
        ApiKey::Metadata,
        12,
        h.broker.handle_frame(C, &frame, &h.clock),
    );
    assert_eq!(cid, 3);
    assert_eq!(resp.brokers.len(), 1);
}

#[test]
fn unsupported_apis_and_versions_get_unsupported_version() {
    let mut h = Harness::new();
    // An API this broker does not handle yet, at a version clients use.
    let frame = request(
        ApiKey::ListTransactions,
        1,
        11,
        &ListTransactionsRequest::default(),
    );
    let (cid, resp): (i32, ListTransactionsResponse) = response(
        ApiKey::ListTransactions,
        1,
        h.broker.handle_frame(C, &frame, &h.clock),
    );
    assert_eq!((cid, resp.error_code), (11, error::UNSUPPORTED_VERSION));
    // A handled API at a newer version than advertised.
    let frame = request(ApiKey::Metadata, 13, 12, &MetadataRequest::default());
    let (_, resp): (i32, MetadataResponse) = response(
        ApiKey::Metadata,
        13,
        h.broker.handle_frame(C, &frame, &h.clock),
    );
    assert_eq!(resp.error_code, error::UNSUPPORTED_VERSION);
    let frame = request(ApiKey::EndTxn, 3, 13, &EndTxnRequest::default());
    let (_, resp): (i32, EndTxnResponse) = response(
        ApiKey::EndTxn,
        3,
        h.broker.handle_frame(C, &frame, &h.clock),
    );
    assert_eq!(resp.error_code, error::UNSUPPORTED_VERSION);
}

mod groups;

proptest! {
    /// Any bytes at all, for any API: a response, a deferral or a close,
    /// never a panic.
    #[test]
    fn prop_arbitrary_frames_never_panic(mut frame in proptest::collection::vec(any::<u8>(), 0..300), key in 0i16..80, version in -1i16..18) {
        let mut h = Harness::new();
        h.create("t", 1, &[]);
        if frame.len() >= 4 {
            frame[0..2].copy_from_slice(&key.to_be_bytes());
            frame[2..4].copy_from_slice(&version.to_be_bytes());
        }
        let _ = h.broker.handle_frame(ConnId(9), &frame, &h.clock);
        let _ = h.poll();
    }
}
