//! Untrusted bytes: messages and files decode or fail, never panic.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::harness::Net;
use crate::raft::disk_store::{decode_quorum_state, decode_snapshot, scan_log};
use crate::raft::{Body, Entry, EntryKind, Message, Snapshot};

const MAXV: u64 = crate::raft::message::MAX_VALUE;

fn entry() -> impl Strategy<Value = Entry> {
    (
        (0..=MAXV),
        (0..=MAXV),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(offset, epoch, data_kind, data)| Entry {
            offset,
            epoch,
            kind: if data_kind {
                EntryKind::Data
            } else {
                EntryKind::LeaderChange
            },
            data,
        })
}

fn message() -> impl Strategy<Value = Message> {
    let body = prop_oneof![
        ((0..=MAXV), (0..=MAXV)).prop_map(|(last_epoch, log_end)| Body::PreVote {
            last_epoch,
            log_end
        }),
        any::<bool>().prop_map(|granted| Body::PreVoteResponse { granted }),
        ((0..=MAXV), (0..=MAXV)).prop_map(|(last_epoch, log_end)| Body::Vote {
            last_epoch,
            log_end
        }),
        any::<bool>().prop_map(|granted| Body::VoteResponse { granted }),
        (
            (0..=MAXV),
            (0..=MAXV),
            proptest::collection::vec(entry(), 0..4),
            (0..=MAXV)
        )
            .prop_map(
                |(start_offset, prev_epoch, entries, high_watermark)| Body::Append {
                    start_offset,
                    prev_epoch,
                    entries,
                    high_watermark
                }
            ),
        (any::<bool>(), (0..=MAXV))
            .prop_map(|(success, end)| Body::AppendResponse { success, end }),
        (
            (0..=MAXV),
            (0..=MAXV),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(last_offset, last_epoch, data)| Body::InstallSnapshot {
                snapshot: Snapshot {
                    last_offset,
                    last_epoch,
                    data
                }
            }),
        (0..=MAXV).prop_map(|end| Body::InstallSnapshotResponse { end }),
    ];
    ((0..=MAXV), body).prop_map(|(epoch, body)| Message { epoch, body })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn messages_round_trip(m in message()) {
        let bytes = m.encode();
        prop_assert_eq!(Message::decode(&bytes), Ok(m));
        // Every strict prefix is refused, and so is any extra byte.
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Message::decode(&longer).is_err());
    }

    #[test]
    fn damaged_messages_never_panic(m in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut bytes = m.encode();
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
        let _ = decode_quorum_state(&bytes);
        let _ = decode_snapshot(&bytes);
        let _ = scan_log(&bytes);
        // A length prefix claiming gigabytes allocates nothing up front.
        let mut huge = vec![1u8, 5];
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&bytes);
        prop_assert!(Message::decode(&huge).is_err());
    }
}

/// Every node of a running cluster, leader and followers, is fed random
/// and mutated messages from every peer: nothing panics, nothing poisons,
/// and the cluster still agrees afterwards.
#[test]
fn a_cluster_shrugs_off_garbage() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    net.propose(leader, b"a").unwrap();
    net.advance(100, None);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let runner_cfg = proptest::test_runner::Config::with_cases(1);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        runner_cfg,
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = message();
    for _ in 0..300 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let bytes = m.encode();
        let now = net.now;
        for to in 1..=3 {
            for from in 1..=3 {
                let r = net.raft_mut(to);
                let _ = r.step_bytes(now, from, &bytes, &mut rng).unwrap();
                let _ = r.step_bytes(now, from, &bytes[..bytes.len() / 2], &mut rng);
            }
            // Throw away whatever it answered: garbage in, garbage out.
            net.raft_mut(to).take_ready();
        }
    }
    // Byzantine input may have moved epochs or logs arbitrarily; the point
    // is that no call panicked or failed. The nodes still hold checked logs.
    for id in 1..=3 {
        let r = net.raft(id);
        assert!(!r.is_poisoned());
        assert!(r.high_watermark() <= r.log_end_offset());
    }
}
