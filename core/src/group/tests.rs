//! The coordinator on its own: random KIP-848 histories keep ownership
//! single, and replaying the records it wrote rebuilds the same state.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::consumer::Partitions;
use super::*;

struct Topics(BTreeMap<String, (u128, i32)>);

impl TopicLookup for Topics {
    fn by_name(&self, name: &str) -> Option<(u128, i32)> {
        self.0.get(name).copied()
    }
    fn name_of(&self, id: u128) -> Option<String> {
        self.0
            .iter()
            .find(|(_, v)| v.0 == id)
            .map(|(k, _)| k.clone())
    }
}

fn topics(partitions: i32) -> Topics {
    Topics(
        [("t".to_string(), (77u128, partitions))]
            .into_iter()
            .collect(),
    )
}

fn coordinator() -> Coordinator {
    let mut c = Coordinator::new(GroupConfig::default(), 1, 5);
    c.load(0, Vec::new(), 0, 0).unwrap();
    c
}

/// A client as librdkafka behaves: it owns what it was last told, gives
/// up revoked partitions at its next heartbeat, and stops trusting its
/// assignment once its session may have expired.
#[derive(Clone, Debug, Default)]
struct Client {
    epoch: Option<i32>,
    owned: Partitions,
    last_ok: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Heartbeat(usize),
    Join(usize),
    Leave(usize),
    Advance(u64),
    Grow,
    Commit(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..4).prop_map(Op::Heartbeat),
        2 => (0usize..4).prop_map(Op::Join),
        1 => (0usize..4).prop_map(Op::Leave),
        2 => (1u64..30_000).prop_map(Op::Advance),
        1 => Just(Op::Grow),
        1 => ((0usize..4), (0i64..100)).prop_map(|(m, o)| Op::Commit(m, o)),
    ]
}

fn member(i: usize) -> String {
    format!("member-{i}")
}

fn heartbeat(c: &Client, i: usize, epoch: i32) -> HeartbeatRequest {
    HeartbeatRequest {
        version: 1,
        group: "g".into(),
        member_id: member(i),
        member_epoch: epoch,
        instance_id: None,
        rack: None,
        rebalance_timeout_ms: if epoch == 0 { 20_000 } else { -1 },
        subscribed_topics: (epoch == 0).then(|| vec!["t".to_string()]),
        regex: None,
        server_assignor: None,
        owned: Some(if epoch == 0 {
            Partitions::new()
        } else {
            c.owned.clone()
        }),
        client_id: "c".into(),
        client_host: "/h".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn kip848_ownership_is_single_and_replay_rebuilds_the_state(ops in proptest::collection::vec(op(), 1..120)) {
        let mut co = coordinator();
        let mut parts = 6;
        let mut now = 0u64;
        let mut clients: Vec<Client> = vec![Client::default(); 4];
        let mut log: Vec<Write> = Vec::new();
        // A client may act on its assignment until its session could have
        // expired, or the server could have fenced it for not confirming a
        // revocation (the rebalance timeout, 20 s here): past that it must
        // hear from the coordinator first.
        let trust = u64::try_from(co.config.consumer_session_timeout_ms).unwrap().min(20_000);
        for op in ops {
            let t = topics(parts);
            let mut fx = Effects::default();
            match op {
                Op::Join(i) if clients[i].epoch.is_none() => {
                    let r = co.consumer_heartbeat(&heartbeat(&clients[i], i, 0), &t, now, 0, &mut fx);
                    let r = r.expect("a join is accepted");
                    clients[i] = Client { epoch: Some(r.member_epoch), owned: r.assignment.unwrap_or_default(), last_ok: now };
                }
                Op::Heartbeat(i) | Op::Join(i) => {
                    let Some(e) = clients[i].epoch else { continue };
                    match co.consumer_heartbeat(&heartbeat(&clients[i], i, e), &t, now, 0, &mut fx) {
                        Ok(r) => {
                            clients[i].epoch = Some(r.member_epoch);
                            clients[i].last_ok = now;
                            if let Some(a) = r.assignment {
                                clients[i].owned = a;
                            }
                        }
                        // Fenced or unknown: it lost everything and rejoins later.
                        Err(_) => clients[i] = Client::default(),
                    }
                }
                Op::Leave(i) => {
                    if let Some(e) = clients[i].epoch {
                        let mut req = heartbeat(&clients[i], i, e);
                        req.member_epoch = -1;
                        let _ = co.consumer_heartbeat(&req, &t, now, 0, &mut fx);
                        clients[i] = Client::default();
                    }
                }
                Op::Advance(ms) => {
                    now += ms;
                    if now >= co.next_deadline() {
                        co.tick(now, 0, &t, &mut fx);
                    }
                }
                Op::Grow => parts = (parts + 1).min(12),
                Op::Commit(i, o) => {
                    if let Some(e) = clients[i].epoch {
                        let req = CommitRequest {
                            group: "g".into(),
                            generation_or_epoch: e,
                            member_id: member(i),
                            instance_id: None,
                            retention_ms: -1,
                            epoch_aware: true,
                            entries: vec![CommitEntry { topic: "t".into(), partition: 0, offset: o, leader_epoch: -1, metadata: None }],
                        };
                        let _ = co.commit(&req, &|_, _| true, now, 0, &mut fx);
                    }
                }
            }
            log.extend(fx.records);
            // The server never has a partition with two members.
            if let Some(g) = co.consumer_group("g") {
                let mut held = BTreeSet::new();
                for m in g.members.values() {
                    for (t, ps) in m.assigned().iter().chain(m.revoking().iter()) {
                        for p in ps {
                            prop_assert!(held.insert((*t, *p)), "{t}-{p} held twice: {g:?}");
                        }
                    }
                }
            }
            // Nor do clients that still trust their session.
            let mut believed = BTreeSet::new();
            for c in clients.iter().filter(|c| c.epoch.is_some() && now < c.last_ok + trust) {
                for (t, ps) in &c.owned {
                    for p in ps {
                        prop_assert!(believed.insert((*t, *p)), "two clients own {t}-{p}: {clients:?}");
                    }
                }
            }
        }
        // Replaying what was written gives the same groups.
        let mut replayed = Coordinator::new(GroupConfig::default(), 1, 5);
        replayed
            .load(0, log.into_iter().map(|w| (w.key, w.value)), now, 0)
            .unwrap();
        let a = co.group("g");
        let b = replayed.group("g");
        prop_assert_eq!(a.map(|g| g.offsets.clone()), b.map(|g| g.offsets.clone()));
        match (a.map(|g| &g.kind), b.map(|g| &g.kind)) {
            (Some(Kind::Consumer(x)), Some(Kind::Consumer(y))) => {
                prop_assert_eq!(x.epoch, y.epoch);
                let xv: BTreeMap<_, _> = x.members.iter().map(|(k, m)| (k.clone(), m.value.clone())).collect();
                let yv: BTreeMap<_, _> = y.members.iter().map(|(k, m)| (k.clone(), m.value.clone())).collect();
                prop_assert_eq!(xv, yv);
            }
            (None, None) => {}
            (x, y) => prop_assert!(false, "kinds differ after replay: {x:?} vs {y:?}"),
        }
    }
}

fn join(group: &str, member: &str, instance: Option<&str>) -> JoinRequest {
    JoinRequest {
        group: group.into(),
        member_id: member.into(),
        instance_id: instance.map(String::from),
        client_id: "c".into(),
        client_host: "/h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), b"meta".to_vec())],
        require_known_member: true,
    }
}

fn join_reply(fx: &mut Effects, w: Waiter) -> JoinReply {
    match fx.take_reply(w) {
        Some(Reply::Join(j)) => j,
        other => panic!("expected a join reply for {w}, got {other:?}"),
    }
}

#[test]
fn a_static_member_restarting_keeps_its_assignment_and_fences_the_old_id() {
    let mut co = coordinator();
    let mut fx = Effects::default();
    // Static members skip MEMBER_ID_REQUIRED.
    co.join(&join("g", "", Some("i1")), 1, 0, 0, &mut fx);
    assert!(fx.take_reply(1).is_none(), "waits out the initial delay");
    co.tick(3_000, 0, &topics(1), &mut fx);
    let j = join_reply(&mut fx, 1);
    assert_eq!((j.error, j.generation), (error::NONE, 1));
    let old = j.member_id.clone();
    co.sync(
        &SyncRequest {
            group: "g".into(),
            generation: 1,
            member_id: old.clone(),
            instance_id: Some("i1".into()),
            protocol_type: None,
            protocol: None,
            assignments: vec![(old.clone(), b"a".to_vec())],
        },
        2,
        3_000,
        0,
        &mut fx,
    );
    assert!(matches!(fx.take_reply(2), Some(Reply::Sync(s)) if s.assignment == b"a"));
    // It restarts: unknown member id, same instance id.
    co.join(&join("g", "", Some("i1")), 3, 4_000, 0, &mut fx);
    let j = join_reply(&mut fx, 3);
    assert_eq!((j.error, j.generation), (error::NONE, 1), "no rebalance");
    assert!(j.skip_assignment, "the leader must not reassign");
    assert_ne!(j.member_id, old);
    assert_eq!(
        co.heartbeat("g", &old, Some("i1"), 1, 4_000),
        error::FENCED_INSTANCE_ID
    );
    assert_eq!(
        co.heartbeat("g", &j.member_id, Some("i1"), 1, 4_000),
        error::NONE
    );
}

#[test]
fn partition_for_matches_kafka() {
    // Java's String.hashCode worked out by hand (s[0]*31^(n-1) + … in
    // 32-bit wrapping arithmetic): "test-group" is 627841412 and
    // "my-group" is -1906497762, whose absolute value is taken.
    assert_eq!(partition_for("test-group", 50), 12);
    assert_eq!(partition_for("my-group", 50), 12);
    assert_eq!(partition_for("console-consumer-12345", 50), 6);
    assert_eq!(partition_for("", 50), 0);
}
