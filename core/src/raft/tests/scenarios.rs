//! Scenario tests: elections, fencing, replication, the commit rule,
//! snapshots, failures of the store.

use super::harness::{config, Net};
use crate::io::Instant;
use crate::raft::{
    Body, EntryKind, MemStore, Message, ProposeError, Raft, RaftError, Role, Stepped,
};

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    assert_eq!(net.leaders().len(), 1);
    let epoch = net.raft(leader).epoch();
    for i in 0..5u8 {
        net.propose(leader, &[i]).expect("propose");
    }
    net.deliver_all();
    net.advance(100, None);
    for id in 1..=3 {
        let r = net.raft(id);
        assert_eq!(r.epoch(), epoch);
        assert_eq!(r.leader(), Some(leader));
        assert_eq!(r.high_watermark(), 6, "node {id}: noop and five entries");
        assert_eq!(
            net.applied(id),
            (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
        );
    }
    // The first entry of the epoch is the leader's no-op.
    assert_eq!(
        net.raft(leader).entry(0).map(|e| e.kind),
        Some(EntryKind::LeaderChange)
    );
    let other = (1..=3).find(|&i| i != leader).unwrap();
    assert_eq!(
        net.propose(other, b"x"),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
}

#[test]
fn a_single_voter_leads_alone() {
    let mut net = Net::mem(1);
    net.advance(400, None);
    assert_eq!(net.raft(1).role(), Role::Leader);
    net.propose(1, b"a").unwrap();
    assert_eq!(net.raft(1).high_watermark(), 2);
    net.collect(1);
    assert_eq!(net.applied(1), vec![b"a".to_vec()]);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_disrupting_the_leader() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    let epoch = net.raft(leader).epoch();
    let loner = (1..=3).find(|&i| i != leader).unwrap();
    net.isolate(loner);
    // Many election timeouts pass; the loner keeps asking, never bumps.
    net.advance(5_000, None);
    assert_eq!(net.raft(loner).epoch(), epoch, "pre-vote never succeeded");
    assert_ne!(net.raft(loner).role(), Role::Leader);
    assert_eq!(net.raft(leader).role(), Role::Leader);
    net.heal();
    net.advance(2_000, None);
    assert_eq!(net.raft(leader).role(), Role::Leader, "leader undisturbed");
    assert_eq!(net.raft(leader).epoch(), epoch);
    assert_eq!(net.raft(loner).leader(), Some(leader));
}

#[test]
fn a_rejoining_node_in_lease_is_refused_votes_even_with_a_higher_epoch() {
    // A candidate that (somehow) reached a higher epoch asks for votes
    // directly: followers that hear their leader ignore it.
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    let epoch = net.raft(leader).epoch();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let now = net.now;
    let r = net
        .raft_mut(follower)
        .step(
            now,
            other,
            Message {
                epoch: epoch + 5,
                body: Body::Vote {
                    last_epoch: epoch + 4,
                    log_end: 100,
                },
            },
            &mut rand_chacha::ChaCha8Rng::from_seed_u64(1),
        )
        .unwrap();
    assert_eq!(r, Stepped::Ignored(crate::raft::Ignored::InLease));
    assert_eq!(net.raft(follower).epoch(), epoch);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    let epoch = net.raft(leader).epoch();
    net.isolate(leader);
    let min = net.configs[&leader].election_timeout_min_ms;
    net.advance(2 * min + 10, Some(&[leader]));
    assert_eq!(net.raft(leader).role(), Role::Follower);
    assert_eq!(net.raft(leader).leader(), None);
    assert_eq!(
        net.raft(leader).epoch(),
        epoch,
        "stepping down keeps the epoch"
    );
    // The others elect a new leader meanwhile.
    net.advance(2_000, None);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0].0, leader);
    assert!(leaders[0].1 > epoch);
}

#[test]
fn a_deposed_leader_is_fenced_and_its_uncommitted_entries_are_replaced() {
    let mut net = Net::mem(3);
    let old = net.elect_any();
    net.propose(old, b"committed").unwrap();
    net.deliver_all();
    net.advance(100, None);
    let old_epoch = net.raft(old).epoch();
    net.isolate(old);
    // Proposed on the old leader alone: never committed.
    for i in 0..3u8 {
        net.propose(old, &[b'x', i]).unwrap();
    }
    // The other two elect a leader; the old one is not ticked, so it still
    // believes it leads.
    let others: Vec<_> = (1..=3).filter(|&i| i != old).collect();
    net.advance(1_000, Some(&others));
    let new = net
        .leaders()
        .into_iter()
        .find(|&(id, _)| id != old)
        .unwrap()
        .0;
    net.propose(new, b"new-1").unwrap();
    net.propose(new, b"new-2").unwrap();
    net.deliver_all();
    assert!(net.raft(old).is_leader(), "still believes it leads");
    // A stale append from the old leader is refused with the new epoch ...
    net.heal();
    let now = net.now;
    let new_epoch = net.raft(new).epoch();
    let stale = Message {
        epoch: old_epoch,
        body: Body::Append {
            start_offset: 0,
            prev_epoch: 0,
            entries: vec![],
            high_watermark: 0,
        },
    };
    net.raft_mut(new)
        .step(
            now,
            old,
            stale,
            &mut rand_chacha::ChaCha8Rng::from_seed_u64(2),
        )
        .unwrap();
    let ready = net.raft_mut(new).take_ready();
    let reply = ready.messages.iter().find(|m| m.to == old).expect("reply");
    assert_eq!(reply.msg.epoch, new_epoch);
    assert!(matches!(
        reply.msg.body,
        Body::AppendResponse { success: false, .. }
    ));
    // ... which makes the old leader step down.
    net.queue.push_back((new, old, reply.msg.clone()));
    net.deliver_all();
    assert!(!net.raft(old).is_leader());
    assert_eq!(net.raft(old).epoch(), new_epoch);
    net.advance(500, None);
    for id in 1..=3 {
        assert_eq!(net.raft(id).entries(), net.raft(new).entries(), "node {id}");
        assert_eq!(
            net.applied(id),
            vec![b"committed".to_vec(), b"new-1".to_vec(), b"new-2".to_vec()]
        );
    }
}

/// Raft's Figure 8: an entry of an earlier epoch that reached a majority is
/// not committed by counting replicas, and is rightly overwritten.
#[test]
fn figure_8_entries_of_earlier_epochs_commit_only_under_the_current_one() {
    let mut net = Net::with(
        5,
        |id, n| {
            let mut c = config(id, n);
            c.max_batch_entries = 1;
            c
        },
        |_| MemStore::new(),
    );
    let past_leases = |net: &mut Net<MemStore>| net.advance(400, Some(&[]));
    net.campaign(1);
    assert!(net.raft(1).is_leader());
    net.advance(60, Some(&[1]));
    assert!((1..=5).all(|i| net.raft(i).high_watermark() == 1));

    // (a) S1 writes X at offset 1; only S2 gets it.
    net.filter = Some(Box::new(|from, to, _| !(from == 1 && to > 2)));
    let x = net.propose(1, b"X").unwrap();
    assert_eq!(x, 1);
    net.deliver_all();
    assert_eq!(net.raft(2).log_end_offset(), 2);
    assert_eq!(net.raft(1).high_watermark(), 1);
    net.crash(1, usize::MAX);

    // (b) S5 is elected by S3, S4; its no-op at offset 1 reaches no one.
    net.filter = Some(Box::new(|from, to, m| {
        !(from == 5 && (to == 2 || matches!(m.body, Body::Append { .. })))
            && !(to == 5 && from == 2)
    }));
    past_leases(&mut net);
    net.campaign(5);
    assert!(net.raft(5).is_leader());
    let e5 = net.raft(5).epoch();
    assert_eq!(net.raft(5).entry(1).map(|e| e.epoch), Some(e5));
    net.crash(5, usize::MAX);

    // (c) S1 comes back and is elected by S2, S3 (S4 cut off); it sends X
    // to S3, and its own no-op reaches S2 but not S3.
    // S1's first append to S3 (its no-op at offset 2) is let through: S3
    // refuses it for the gap, so S1 backs up and sends X alone.
    net.restart(1);
    let probes_to_3 = std::cell::Cell::new(0);
    net.filter = Some(Box::new(move |from, to, m| {
        if from == 4 || to == 4 {
            return false;
        }
        let noop_from_1 = from == 1
            && matches!(&m.body, Body::Append { entries, .. }
                if entries.iter().any(|e| e.kind == EntryKind::LeaderChange && e.offset == 2));
        if noop_from_1 && to == 3 {
            probes_to_3.set(probes_to_3.get() + 1);
            return probes_to_3.get() == 1;
        }
        true
    }));
    past_leases(&mut net);
    net.campaign(1);
    if !net.raft(1).is_leader() {
        // The first pre-vote taught S1 the newer epoch; ask again.
        net.campaign(1);
    }
    assert!(net.raft(1).is_leader());
    assert_eq!(
        net.raft(3).entry(1).map(|e| e.data.clone()),
        Some(b"X".to_vec())
    );
    assert_eq!(
        net.raft(2).entry(1).map(|e| e.data.clone()),
        Some(b"X".to_vec())
    );
    assert_eq!(net.raft(2).log_end_offset(), 3);
    assert_eq!(net.raft(3).log_end_offset(), 2);
    // X is on S1, S2, S3 — a majority — but of an earlier epoch, and the
    // no-op that would carry it is on two nodes only.
    for id in 1..=3 {
        assert!(
            net.raft(id).high_watermark() <= x,
            "node {id}: X must not commit by counting replicas"
        );
    }

    // (d) S1 crashes; S5 returns and wins with S3, S4 (its last epoch is
    // newer than X's), and overwrites X everywhere.
    net.crash(1, usize::MAX);
    net.restart(5);
    net.filter = Some(Box::new(|from, to, _| from != 2 && to != 2));
    past_leases(&mut net);
    net.campaign(5);
    if !net.raft(5).is_leader() {
        net.campaign(5);
    }
    assert!(net.raft(5).is_leader());
    net.heal();
    net.restart(1);
    net.propose(5, b"after").unwrap();
    net.advance(1_000, None);
    for id in 1..=5 {
        assert_ne!(
            net.raft(id).entry(1).map(|e| e.data.clone()),
            Some(b"X".to_vec())
        );
        assert_eq!(net.raft(id).entries(), net.raft(5).entries(), "node {id}");
        assert_eq!(net.applied(id), vec![b"after".to_vec()], "node {id}");
    }
}

#[test]
fn a_follower_behind_the_snapshot_gets_it_and_catches_up() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    net.isolate(lagger);
    for i in 0..20u8 {
        net.propose(leader, &[i]).unwrap();
    }
    net.deliver_all();
    net.advance(100, None);
    for id in (1..=3).filter(|&i| i != lagger) {
        net.compact(id);
        assert!(net.raft(id).snapshot().is_some());
        assert_eq!(net.raft(id).entries().len(), 0);
    }
    net.propose(leader, b"tail").unwrap();
    net.heal();
    net.advance(1_000, None);
    let r = net.raft(lagger);
    assert_eq!(r.snapshot().map(|s| s.last_offset), Some(20));
    assert_eq!(r.log_end_offset(), net.raft(leader).log_end_offset());
    let mut want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
    want.push(b"tail".to_vec());
    for id in 1..=3 {
        assert_eq!(net.applied(id), want, "node {id}");
    }
}

#[test]
fn state_survives_restarts_and_is_reapplied_from_snapshot_and_log() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    for i in 0..5u8 {
        net.propose(leader, &[i]).unwrap();
    }
    net.advance(100, None);
    for id in 1..=3 {
        net.compact(id);
    }
    for i in 5..8u8 {
        net.propose(leader, &[i]).unwrap();
    }
    net.advance(100, None);
    let before: Vec<_> = (1..=3)
        .map(|id| (net.raft(id).epoch(), net.raft(id).entries().to_vec()))
        .collect();
    // Everything was synced: a crash that loses all unsynced writes loses
    // nothing.
    for id in 1..=3 {
        net.crash(id, 0);
    }
    for id in 1..=3 {
        net.restart(id);
        let r = net.raft(id);
        assert_eq!((r.epoch(), r.entries().to_vec()), before[id as usize - 1]);
        assert!(r.voted_for().is_some());
    }
    // The restored snapshot is applied at once; the rest once committed.
    for id in 1..=3 {
        assert_eq!(net.applied(id).len(), 5);
    }
    let leader = net.elect_any();
    net.advance(100, None);
    let want: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i]).collect();
    for id in 1..=3 {
        assert_eq!(net.applied(id), want, "node {id}");
    }
    assert!(net.raft(leader).is_leader());
}

#[test]
fn a_failed_sync_sends_no_acknowledgement_and_poisons_the_node() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    let f = (1..=3).find(|&i| i != leader).unwrap();
    net.raft_mut(f).store_mut().fail_next_sync();
    net.propose(leader, b"a").unwrap();
    // Deliver by hand to see the step's result.
    let (from, to, msg) = net
        .queue
        .iter()
        .find(|(_, to, _)| *to == f)
        .cloned()
        .expect("append to f");
    net.queue.retain(|(_, t, _)| *t != f);
    let now = net.now;
    let r = net.raft_mut(to).step(
        now,
        from,
        msg,
        &mut rand_chacha::ChaCha8Rng::from_seed_u64(3),
    );
    assert!(matches!(r, Err(RaftError::Store(_))));
    assert!(net.raft(f).is_poisoned());
    assert!(net.raft_mut(f).take_ready().messages.is_empty());
    assert_eq!(
        net.raft_mut(f)
            .tick(now, &mut rand_chacha::ChaCha8Rng::from_seed_u64(3)),
        Err(RaftError::Poisoned)
    );
    // The driver restarts it (a process restart: the page cache survives,
    // and loading makes it durable); it catches up.
    net.crash(f, usize::MAX);
    net.restart(f);
    net.advance(500, None);
    assert_eq!(net.applied(f), vec![b"a".to_vec()]);
}

#[test]
fn a_failed_vote_write_grants_nothing() {
    let mut store = MemStore::new();
    store.fail_next_sync();
    let mut rng = rand_chacha::ChaCha8Rng::from_seed_u64(4);
    let mut r = Raft::new(store, config(1, 3), Instant::from_millis(1), &mut rng).unwrap();
    let vote = Message {
        epoch: 3,
        body: Body::Vote {
            last_epoch: 0,
            log_end: 0,
        },
    };
    assert!(r.step(Instant::from_millis(2), 2, vote, &mut rng).is_err());
    assert!(r.take_ready().messages.is_empty());
    let mut store = r.into_store();
    store.crash(0);
    assert_eq!(store.durable().quorum.voted_for, None);
}

#[test]
fn a_vote_survives_power_loss() {
    let mut rng = rand_chacha::ChaCha8Rng::from_seed_u64(8);
    let vote = |epoch| Message {
        epoch,
        body: Body::Vote {
            last_epoch: 0,
            log_end: 0,
        },
    };
    let granted = |r: &mut Raft<MemStore>| {
        r.take_ready()
            .messages
            .iter()
            .any(|m| matches!(m.msg.body, Body::VoteResponse { granted: true }))
    };
    let t = Instant::from_millis(1);
    let mut r = Raft::new(MemStore::new(), config(1, 3), t, &mut rng).unwrap();
    // Learn epoch 4 first, so the vote is a change within the epoch.
    let news = Message {
        epoch: 4,
        body: Body::VoteResponse { granted: false },
    };
    r.step(t, 3, news, &mut rng).unwrap();
    assert_eq!((r.epoch(), r.voted_for()), (4, None));
    r.step(t, 2, vote(4), &mut rng).unwrap();
    assert!(granted(&mut r));
    // Power loss losing everything unsynced; the vote must still be there.
    let mut store = r.into_store();
    store.crash(0);
    let mut r = Raft::new(store, config(1, 3), t, &mut rng).unwrap();
    assert_eq!((r.epoch(), r.voted_for()), (4, Some(2)));
    r.step(t, 3, vote(4), &mut rng).unwrap();
    assert!(!granted(&mut r), "voted twice in epoch 4");
    // The same candidate asking again (its request duplicated) is fine.
    r.step(t, 2, vote(4), &mut rng).unwrap();
    assert!(granted(&mut r));
}

#[test]
fn messages_from_strangers_and_self_are_ignored() {
    let mut rng = rand_chacha::ChaCha8Rng::from_seed_u64(5);
    let mut r = Raft::new(MemStore::new(), config(1, 3), Instant::ZERO, &mut rng).unwrap();
    let m = Message {
        epoch: 9,
        body: Body::Vote {
            last_epoch: 9,
            log_end: 9,
        },
    };
    for from in [1, 4, -1] {
        assert_eq!(
            r.step(Instant::ZERO, from, m.clone(), &mut rng),
            Ok(Stepped::Ignored(crate::raft::Ignored::NotVoter))
        );
    }
    assert_eq!(r.epoch(), 0);
    assert!(r.take_ready().is_empty());
    assert_eq!(
        r.step_bytes(Instant::ZERO, 2, &[1, 2, 3], &mut rng),
        Ok(Stepped::Ignored(crate::raft::Ignored::Invalid(
            "undecodable message"
        )))
    );
}

#[test]
fn nonsense_appends_are_refused_without_damage() {
    let mut net = Net::mem(3);
    let leader = net.elect_any();
    net.propose(leader, b"a").unwrap();
    net.advance(100, None);
    let f = (1..=3).find(|&i| i != leader).unwrap();
    let before = net.raft(f).entries().to_vec();
    let epoch = net.raft(f).epoch();
    let now = net.now;
    let mut rng = rand_chacha::ChaCha8Rng::from_seed_u64(6);
    let junk = [
        // Gapped offsets.
        Body::Append {
            start_offset: 1,
            prev_epoch: epoch,
            entries: vec![crate::raft::Entry {
                offset: 7,
                epoch,
                kind: EntryKind::Data,
                data: vec![],
            }],
            high_watermark: u64::MAX,
        },
        // Far beyond the log, huge high watermark.
        Body::Append {
            start_offset: u64::MAX,
            prev_epoch: epoch,
            entries: vec![],
            high_watermark: u64::MAX,
        },
        // A start of zero with a previous epoch.
        Body::Append {
            start_offset: 0,
            prev_epoch: epoch,
            entries: vec![],
            high_watermark: 0,
        },
        Body::AppendResponse {
            success: true,
            end: u64::MAX,
        },
        Body::InstallSnapshotResponse { end: u64::MAX },
        Body::InstallSnapshot {
            snapshot: crate::raft::Snapshot {
                last_offset: u64::MAX,
                last_epoch: 0,
                data: vec![],
            },
        },
    ];
    for body in junk {
        let _ = net
            .raft_mut(f)
            .step(
                now,
                leader,
                Message {
                    epoch,
                    body: body.clone(),
                },
                &mut rng,
            )
            .unwrap();
        let _ = net
            .raft_mut(leader)
            .step(now, f, Message { epoch, body }, &mut rng)
            .unwrap();
    }
    net.raft_mut(f).take_ready();
    net.raft_mut(leader).take_ready();
    assert_eq!(net.raft(f).entries(), &before[..]);
    assert!(net.raft(f).high_watermark() <= net.raft(f).log_end_offset());
    net.advance(200, None);
    assert_eq!(net.raft(f).entries(), net.raft(leader).entries());
}

trait SeedU64 {
    fn from_seed_u64(seed: u64) -> Self;
}

impl SeedU64 for rand_chacha::ChaCha8Rng {
    fn from_seed_u64(seed: u64) -> Self {
        <Self as rand_core::SeedableRng>::seed_from_u64(seed)
    }
}

/// A model checker keeps whole nodes in its states.
#[test]
fn a_node_on_a_mem_store_is_a_value() {
    fn value<T: Clone + std::fmt::Debug + Eq + std::hash::Hash>() {}
    value::<Raft<MemStore>>();
    value::<crate::raft::Message>();
    value::<crate::raft::Ready>();
}
