//! The metadata image and the controller on their own: records round-trip
//! and refuse corruption, the controller's decisions keep the image
//! consistent, and a snapshot rebuilds the same image.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::controller::{code, Heartbeat, NewTopic, Registration};
use super::*;
use crate::kafka::error;

const SESSION: u64 = 9_000;

fn config() -> ControllerConfig {
    ControllerConfig {
        cluster_id: "c1".into(),
        broker_session_timeout_ms: SESSION,
        // The ISR logic as it will run once followers replicate: new
        // partitions start with every live replica in sync.
        new_isr_leader_only: false,
        ..ControllerConfig::default()
    }
}

fn registration(id: i32, incarnation: u128, rack: Option<&str>) -> Registration {
    Registration {
        id,
        cluster_id: "c1".into(),
        incarnation,
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
        }],
        rack: rack.map(String::from),
    }
}

/// A controller and the committed image the brokers see, with a log that
/// commits at once.
struct Cluster {
    controller: Controller,
    image: MetadataImage,
    log: Vec<(i64, Vec<MetadataRecord>)>,
    rng: ChaCha8Rng,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            controller: Controller::new(config(), MetadataImage::new(), 0),
            image: MetadataImage::new(),
            log: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(7),
        }
    }

    fn commit(&mut self, batch: Vec<MetadataRecord>) -> i64 {
        if batch.is_empty() {
            return self.image.offset;
        }
        let offset = self.log.len() as i64;
        let bytes = encode_batch(&batch);
        let decoded = decode_batch(&bytes).expect("decodes");
        assert_eq!(decoded, batch);
        self.controller.proposed(offset, &batch);
        self.image.apply(offset, &decoded).expect("applies");
        self.log.push((offset, batch));
        assert_eq!(self.controller.image(), &self.image);
        offset
    }

    fn register(&mut self, id: i32, rack: Option<&str>, now: u64) -> i64 {
        let batch = self
            .controller
            .register(&registration(id, id as u128 + 1000, rack), now)
            .unwrap();
        self.commit(batch);
        let epoch = self.image.brokers[&id].epoch;
        self.heartbeat(id, epoch, now);
        epoch
    }

    fn heartbeat(&mut self, id: i32, epoch: i64, now: u64) -> bool {
        let req = Heartbeat {
            id,
            epoch,
            metadata_offset: self.image.offset,
            want_fence: false,
        };
        let (batch, reply) = self.controller.heartbeat(&req, now).unwrap();
        self.commit(batch);
        reply.fenced
    }

    fn create(&mut self, name: &str, partitions: i32, rf: i16) -> Result<u128, i16> {
        let t = NewTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            assignments: BTreeMap::new(),
            configs: BTreeMap::new(),
        };
        let batch = self
            .controller
            .create_topic(&t, &mut self.rng)
            .map_err(|e| e.0)?;
        self.commit(batch);
        Ok(self.image.topic(name).unwrap().id)
    }
}

#[test]
fn brokers_register_fenced_and_are_unfenced_once_caught_up() {
    let mut c = Cluster::new();
    let batch = c
        .controller
        .register(&registration(1, 11, None), 0)
        .unwrap();
    let offset = c.commit(batch);
    let b = &c.image.brokers[&1];
    assert!(b.fenced);
    assert_eq!(
        b.epoch, offset,
        "the broker epoch is its registration's offset"
    );
    // Behind its registration: stays fenced.
    let behind = Heartbeat {
        id: 1,
        epoch: offset,
        metadata_offset: offset - 1,
        want_fence: false,
    };
    let (batch, reply) = c.controller.heartbeat(&behind, 100).unwrap();
    assert!(batch.is_empty() && reply.fenced);
    assert!(!c.heartbeat(1, offset, 200));
    assert!(!c.image.brokers[&1].fenced);
    // A stale epoch and an unknown broker are refused with Kafka's codes.
    let stale = Heartbeat {
        id: 1,
        epoch: offset - 1,
        metadata_offset: 0,
        want_fence: false,
    };
    assert_eq!(
        c.controller.heartbeat(&stale, 300).unwrap_err().0,
        code::STALE_BROKER_EPOCH
    );
    let unknown = Heartbeat { id: 9, ..stale };
    assert_eq!(
        c.controller.heartbeat(&unknown, 300).unwrap_err().0,
        code::BROKER_ID_NOT_REGISTERED
    );
}

#[test]
fn a_second_live_process_with_the_same_id_is_refused_and_a_restart_is_not() {
    let mut c = Cluster::new();
    c.register(1, None, 0);
    // The same incarnation again: a retry, nothing to write.
    assert_eq!(
        c.controller.register(&registration(1, 1001, None), 10),
        Ok(vec![])
    );
    // Another process while the first heartbeats: refused.
    let other = registration(1, 4242, None);
    assert_eq!(
        c.controller.register(&other, 1_000).unwrap_err().0,
        code::DUPLICATE_BROKER_REGISTRATION
    );
    // After the first has been silent for a session, it may take over.
    let batch = c.controller.register(&other, SESSION + 11).unwrap();
    c.commit(batch);
    assert_eq!(c.image.brokers[&1].incarnation, 4242);
    assert!(c.image.brokers[&1].fenced);
    let mut wrong = registration(2, 1, None);
    wrong.cluster_id = "other".into();
    assert_eq!(
        c.controller.register(&wrong, 0).unwrap_err().0,
        code::INCONSISTENT_CLUSTER_ID
    );
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_move_to_in_sync_replicas() {
    let mut c = Cluster::new();
    let e: Vec<i64> = (1..=3).map(|id| c.register(id, None, 0)).collect();
    let t = c.create("t", 6, 3).unwrap();
    let led_by_1: Vec<i32> = c.image.topics[&t]
        .partitions
        .values()
        .filter(|p| p.leader == 1)
        .map(|p| p.partition)
        .collect();
    assert!(!led_by_1.is_empty());
    // Brokers 2 and 3 keep heartbeating; 1 goes silent.
    for now in (1_000..=SESSION + 1_000).step_by(1_000) {
        c.heartbeat(2, e[1], now);
        c.heartbeat(3, e[2], now);
        let batch = c.controller.tick(now);
        c.commit(batch);
    }
    assert!(c.image.brokers[&1].fenced);
    for p in c.image.topics[&t].partitions.values() {
        assert_ne!(p.leader, 1);
        assert!(p.isr.contains(&p.leader));
        assert!(!p.isr.contains(&1));
        if led_by_1.contains(&p.partition) {
            assert_eq!(p.leader_epoch, 1, "a new leader, a new leader epoch");
        }
    }
    assert_eq!(c.controller.tick(SESSION + 2_000), vec![]);
}

#[test]
fn the_last_in_sync_replica_keeps_its_place_and_leads_again_when_back() {
    let mut c = Cluster::new();
    let e1 = c.register(1, None, 0);
    let t = c.create("solo", 2, 1).unwrap();
    let batch = c.controller.tick(SESSION + 1);
    c.commit(batch);
    for p in c.image.topics[&t].partitions.values() {
        assert_eq!(p.leader, -1, "no other replica may lead");
        assert_eq!(p.isr, vec![1], "the last in-sync replica stays in the ISR");
    }
    assert!(!c.heartbeat(1, e1, SESSION + 2));
    for p in c.image.topics[&t].partitions.values() {
        assert_eq!(p.leader, 1);
        assert_eq!(p.leader_epoch, 2);
    }
}

#[test]
fn placement_spreads_leaders_and_uses_distinct_racks() {
    let mut c = Cluster::new();
    for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
        c.register(id, Some(rack), 0);
    }
    let t = c.create("racked", 12, 3).unwrap();
    let rack_of = |id: i32| c.image.brokers[&id].rack.clone();
    let mut leaders = BTreeMap::new();
    for p in c.image.topics[&t].partitions.values() {
        let racks: BTreeSet<_> = p.replicas.iter().map(|r| rack_of(*r)).collect();
        assert_eq!(
            racks.len(),
            3,
            "partition {}: {:?}",
            p.partition,
            p.replicas
        );
        let distinct: BTreeSet<_> = p.replicas.iter().collect();
        assert_eq!(distinct.len(), 3);
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(
        leaders.len(),
        6,
        "every broker leads some partition: {leaders:?}"
    );
    assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");
    assert_eq!(
        c.create("too-many", 1, 7).unwrap_err(),
        error::INVALID_REPLICATION_FACTOR
    );
    assert_eq!(
        c.create("racked", 1, 1).unwrap_err(),
        error::TOPIC_ALREADY_EXISTS
    );
    assert_eq!(
        c.create("zero", 0, 1).unwrap_err(),
        error::INVALID_PARTITIONS
    );
}

#[test]
fn topics_grow_are_configured_and_deleted() {
    let mut c = Cluster::new();
    c.register(1, None, 0);
    c.register(2, None, 0);
    let t = c.create("t", 2, 2).unwrap();
    let batch = c
        .controller
        .create_partitions("t", 5, None, &mut c.rng)
        .unwrap();
    c.commit(batch);
    let parts = &c.image.topics[&t].partitions;
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(parts.values().all(|p| p.replicas.len() == 2));
    assert_eq!(
        c.controller
            .create_partitions("t", 3, None, &mut c.rng)
            .unwrap_err()
            .0,
        error::INVALID_PARTITIONS
    );
    let res = ConfigResource::Topic("t".into());
    let batch = c
        .controller
        .alter_configs(&res, &[("retention.ms".into(), Some("1000".into()))])
        .unwrap();
    c.commit(batch);
    assert_eq!(c.image.configs[&res]["retention.ms"], "1000");
    let batch = c.controller.delete_topic("t").unwrap();
    c.commit(batch);
    assert!(c.image.topic("t").is_none());
    assert!(!c.image.configs.contains_key(&res));
    assert_eq!(
        c.controller.delete_topic("t").unwrap_err().0,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );
    // The same name again is a new topic with a new id.
    assert_ne!(c.create("t", 1, 1).unwrap(), t);
}

#[test]
fn a_batch_that_does_not_fit_changes_nothing() {
    let mut image = MetadataImage::new();
    let batch = vec![
        MetadataRecord::Topic {
            name: "a".into(),
            id: 5,
        },
        MetadataRecord::Partition(PartitionRecord {
            topic_id: 6,
            partition: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
        }),
    ];
    assert!(image.apply(0, &batch).is_err());
    assert_eq!(image, MetadataImage::new());
    assert!(image.apply(0, &batch[..1]).is_ok());
    assert!(
        image.apply(0, &batch[..1]).is_err(),
        "offsets only go forward"
    );
}

#[test]
fn corrupt_batches_are_errors() {
    let mut c = Cluster::new();
    c.register(1, Some("r"), 0);
    c.create("t", 3, 1).unwrap();
    for (_, batch) in c.log.clone() {
        let bytes = encode_batch(&batch);
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err());
    }
    // An absurd count is refused before anything is allocated.
    assert!(decode_batch(&[1, 0x7f, 0xff, 0xff, 0xff]).is_err());
    assert!(decode_batch(&[9, 0, 0, 0, 0]).is_err(), "unknown version");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random controller histories: brokers registering, heartbeating or
    /// going silent, topics created, grown and deleted. Every committed
    /// batch applies on a follower, the partition state stays consistent
    /// (leaders are live in-sync replicas, ISRs within the replicas), and a
    /// snapshot at any point rebuilds the same image.
    #[test]
    fn controller_histories_keep_the_image_consistent(
        ops in proptest::collection::vec((0u8..6, 1i32..5, 1i32..4), 1..60)
    ) {
        let mut c = Cluster::new();
        let mut now = 0u64;
        let mut epochs: BTreeMap<i32, i64> = BTreeMap::new();
        let mut next_topic = 0;
        for (op, a, b) in ops {
            match op {
                0 => {
                    let inc = u128::from(now as u32) << 8 | a as u128;
                    if let Ok(batch) = c.controller.register(&registration(a, inc, Some(["x", "y"][a as usize % 2])), now) {
                        c.commit(batch);
                        epochs.insert(a, c.image.brokers[&a].epoch);
                    }
                }
                1 => {
                    if let Some(e) = epochs.get(&a).copied() {
                        let req = Heartbeat { id: a, epoch: e, metadata_offset: c.image.offset, want_fence: false };
                        if let Ok((batch, _)) = c.controller.heartbeat(&req, now) {
                            c.commit(batch);
                        }
                    }
                }
                2 => now += u64::from(b as u32) * 2_000,
                3 => {
                    next_topic += 1;
                    let _ = c.create(&format!("t{next_topic}"), a, b as i16);
                }
                4 => {
                    let name = format!("t{}", a.min(next_topic.max(1)));
                    if let Ok(batch) = c.controller.create_partitions(&name, 6, None, &mut c.rng) {
                        c.commit(batch);
                    }
                }
                _ => {
                    let name = format!("t{a}");
                    if let Ok(batch) = c.controller.delete_topic(&name) {
                        c.commit(batch);
                    }
                }
            }
            let batch = c.controller.tick(now);
            c.commit(batch);
            for t in c.image.topics.values() {
                for p in t.partitions.values() {
                    prop_assert!(!p.isr.is_empty());
                    prop_assert!(p.isr.iter().all(|r| p.replicas.contains(r)));
                    if p.leader != -1 {
                        prop_assert!(p.isr.contains(&p.leader));
                        prop_assert!(!c.image.brokers[&p.leader].fenced, "{p:?} led by a fenced broker");
                    }
                }
            }
            let snap = c.image.encode_snapshot();
            let back = MetadataImage::decode_snapshot(&snap).expect("snapshot decodes");
            prop_assert_eq!(&back, &c.image);
        }
        // A follower replaying the whole log reaches the same image.
        let mut follower = MetadataImage::new();
        for (o, batch) in &c.log {
            follower.apply(*o, &decode_batch(&encode_batch(batch)).unwrap()).unwrap();
        }
        prop_assert_eq!(follower, c.image);
    }
}
