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
    /// Restarts so far: a restarted client has a new member id (KIP-848
    /// clients make their own).
    life: u32,
}

impl Client {
    /// Gone: it owns nothing and comes back, if at all, as a new process.
    fn restart(&mut self) {
        *self = Client {
            life: self.life + 1,
            ..Client::default()
        };
    }
}

#[derive(Clone, Debug)]
enum Op {
    Heartbeat(usize),
    Join(usize),
    Leave(usize),
    /// A static member's close(): a leave with epoch -2.
    LeaveStatic(usize),
    Advance(u64),
    Grow,
    Commit(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..4).prop_map(Op::Heartbeat),
        2 => (0usize..4).prop_map(Op::Join),
        1 => (0usize..4).prop_map(Op::Leave),
        1 => (0usize..4).prop_map(Op::LeaveStatic),
        2 => (1u64..30_000).prop_map(Op::Advance),
        1 => Just(Op::Grow),
        1 => ((0usize..4), (0i64..100)).prop_map(|(m, o)| Op::Commit(m, o)),
    ]
}

fn member(c: &Client, i: usize) -> String {
    format!("member-{i}-{}", c.life)
}

/// Even-numbered clients are static members (`group.instance.id`).
fn instance(i: usize) -> Option<String> {
    i.is_multiple_of(2).then(|| format!("instance-{i}"))
}

fn heartbeat(c: &Client, i: usize, epoch: i32) -> HeartbeatRequest {
    HeartbeatRequest {
        version: 1,
        group: "g".into(),
        member_id: member(c, i),
        member_epoch: epoch,
        instance_id: instance(i),
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
                    match co.consumer_heartbeat(&heartbeat(&clients[i], i, 0), &t, now, 0, &mut fx) {
                        Ok(r) => {
                            clients[i].epoch = Some(r.member_epoch);
                            clients[i].owned = r.assignment.unwrap_or_default();
                            clients[i].last_ok = now;
                        }
                        // Only a static member whose predecessor has not
                        // left is refused.
                        Err(e) => prop_assert_eq!(e.0, error::UNRELEASED_INSTANCE_ID),
                    }
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
                        Err(_) => clients[i].restart(),
                    }
                }
                Op::Leave(i) => {
                    if let Some(e) = clients[i].epoch {
                        let mut req = heartbeat(&clients[i], i, e);
                        req.member_epoch = -1;
                        let _ = co.consumer_heartbeat(&req, &t, now, 0, &mut fx);
                        clients[i].restart();
                    }
                }
                Op::LeaveStatic(i) => {
                    if let (Some(e), Some(_)) = (clients[i].epoch, instance(i)) {
                        let mut req = heartbeat(&clients[i], i, e);
                        req.member_epoch = consumer::LEAVING_STATIC;
                        let r = co.consumer_heartbeat(&req, &t, now, 0, &mut fx);
                        if let Ok(r) = r {
                            prop_assert_eq!(r.member_epoch, consumer::LEAVING_STATIC);
                        }
                        clients[i].restart();
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
                            member_id: member(&clients[i], i),
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

/// Heartbeats every client in turn until nothing changes; returns the group
/// epoch reached.
fn settle(co: &mut Coordinator, clients: &mut [(usize, Client)], t: &Topics, now: u64) -> i32 {
    for _ in 0..10 {
        for (i, c) in clients.iter_mut() {
            let e = c.epoch.expect("joined");
            let r = co
                .consumer_heartbeat(&heartbeat(c, *i, e), t, now, 0, &mut Effects::default())
                .expect("heartbeat accepted");
            c.epoch = Some(r.member_epoch);
            if let Some(a) = r.assignment {
                c.owned = a;
            }
        }
    }
    co.consumer_group("g").expect("group").epoch
}

fn join_as(co: &mut Coordinator, c: &mut Client, i: usize, t: &Topics, now: u64) {
    let r = co
        .consumer_heartbeat(&heartbeat(c, i, 0), t, now, 0, &mut Effects::default())
        .expect("join accepted");
    c.epoch = Some(r.member_epoch);
    c.owned = r.assignment.unwrap_or_default();
}

fn owned_count(c: &Client) -> usize {
    c.owned.values().map(BTreeSet::len).sum()
}

/// KIP-848: a static member's close() (epoch -2) keeps its partitions
/// until its session runs out, so its restart under the same instance id
/// moves nothing; if it does not come back, its partitions move then.
#[test]
fn a_static_member_leaving_for_now_keeps_its_partitions() {
    let t = topics(4);
    let mut co = coordinator();
    // Clients 0 and 2 are static.
    let mut clients = vec![(0, Client::default()), (2, Client::default())];
    for (i, c) in clients.iter_mut() {
        join_as(&mut co, c, *i, &t, 0);
    }
    let epoch = settle(&mut co, &mut clients, &t, 0);
    let before = clients[1].1.owned.clone();
    assert_eq!(owned_count(&clients[0].1), 2);
    assert_eq!(owned_count(&clients[1].1), 2);

    // Client 2 closes.
    let mut leave = heartbeat(&clients[1].1, 2, epoch);
    leave.member_epoch = consumer::LEAVING_STATIC;
    let r = co
        .consumer_heartbeat(&leave, &t, 1_000, 0, &mut Effects::default())
        .unwrap();
    assert_eq!(r.member_epoch, consumer::LEAVING_STATIC);
    let mut gone = clients.pop().unwrap().1;
    gone.restart();
    // The other member is not given its partitions, and no rebalance starts.
    assert_eq!(settle(&mut co, &mut clients, &t, 2_000), epoch);
    assert_eq!(owned_count(&clients[0].1), 2);

    // It restarts with a new member id and the same instance id: it gets
    // back what it had, in the same group epoch.
    join_as(&mut co, &mut gone, 2, &t, 3_000);
    clients.push((2, gone));
    assert_eq!(settle(&mut co, &mut clients, &t, 3_000), epoch);
    assert_eq!(clients[1].1.owned, before);
    assert_eq!(owned_count(&clients[0].1), 2);
    assert_eq!(co.consumer_group("g").unwrap().members.len(), 2);

    // It leaves for now again and stays away past its session.
    let mut leave = heartbeat(&clients[1].1, 2, clients[1].1.epoch.unwrap());
    leave.member_epoch = consumer::LEAVING_STATIC;
    co.consumer_heartbeat(&leave, &t, 4_000, 0, &mut Effects::default())
        .unwrap();
    clients.pop();
    let session = u64::try_from(co.config.consumer_session_timeout_ms).unwrap();
    let mut now = 4_000;
    while now < 4_000 + 2 * session {
        now += 1_000;
        // The survivor keeps heartbeating, so only the leaver expires.
        settle(&mut co, &mut clients, &t, now);
        if now >= co.next_deadline() {
            co.tick(now, 0, &t, &mut Effects::default());
        }
    }
    settle(&mut co, &mut clients, &t, now);
    assert_eq!(owned_count(&clients[0].1), 4, "{:?}", clients[0].1);
    assert_eq!(co.consumer_group("g").unwrap().members.len(), 1);
}

/// A temporary leave names the instance it is for.
#[test]
fn a_temporary_leave_with_another_instance_id_is_fenced() {
    let t = topics(2);
    let mut co = coordinator();
    let mut c = Client::default();
    join_as(&mut co, &mut c, 0, &t, 0);
    let mut leave = heartbeat(&c, 0, c.epoch.unwrap());
    leave.member_epoch = consumer::LEAVING_STATIC;
    leave.instance_id = Some("someone-else".into());
    let e = co
        .consumer_heartbeat(&leave, &t, 10, 0, &mut Effects::default())
        .unwrap_err();
    assert_eq!(e.0, error::FENCED_INSTANCE_ID);
}
