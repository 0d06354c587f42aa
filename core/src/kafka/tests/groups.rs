//! The group APIs through `handle_frame`: what a client sees.

use super::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;

const A: ConnId = ConnId(11);
const B: ConnId = ConnId(12);

impl Harness {
    /// Sends and, if the answer is deferred, polls until it comes.
    fn group<Req: Encodable, Resp: Decodable>(
        &mut self,
        conn: ConnId,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let out = self.send(conn, key, version, body);
        let out = match out {
            FrameOutcome::Pending => self.wait_for(conn),
            o => o,
        };
        response(key, version, out).1
    }

    pub(super) fn wait_for(&mut self, conn: ConnId) -> FrameOutcome {
        for _ in 0..3 {
            if let Some(i) = self.stash.iter().position(|c| c.conn == conn) {
                return self.stash.remove(i).outcome;
            }
            let got = self.poll();
            self.stash.extend(got);
        }
        panic!("no answer for {conn:?}");
    }

    fn find_coordinator(&mut self, group: &str) -> FindCoordinatorResponse {
        self.group(
            A,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(str_bytes(group)),
        )
    }
}

pub(super) fn join_req(group: &str, member: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(20_000)
        .with_member_id(str_bytes(member))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(str_bytes("range"))
            .with_metadata(Bytes::from_static(b"sub"))])
}

pub(super) fn sync_req(
    group: &str,
    generation: i32,
    member: &str,
    assign: &[(&str, &[u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member))
        .with_assignments(
            assign
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(str_bytes(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        )
}

pub(super) fn heartbeat_req(group: &str, generation: i32, member: &str) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member))
}

pub(super) fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_metadata(Some(str_bytes("m")))])])
}

pub(super) fn fetch_req(group: &str, topic: &str) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(vec![0, 1])]))
}

/// Two members through MEMBER_ID_REQUIRED, the initial delay, join and
/// sync; returns (leader, follower, generation).
fn form_group(h: &mut Harness, group: &str) -> (String, String, i32) {
    assert_eq!(h.find_coordinator(group).error_code, error::NONE);
    let mut ids = Vec::new();
    for conn in [A, B] {
        let r: JoinGroupResponse = h.group(conn, ApiKey::JoinGroup, 5, &join_req(group, ""));
        assert_eq!(r.error_code, error::MEMBER_ID_REQUIRED);
        assert!(r.member_id.starts_with("test-"), "{:?}", r.member_id);
        ids.push(r.member_id.to_string());
        let out = h.send(
            conn,
            ApiKey::JoinGroup,
            5,
            &join_req(group, &ids[ids.len() - 1]),
        );
        assert_eq!(out, FrameOutcome::Pending, "the join waits for the group");
    }
    // group.initial.rebalance.delay.ms holds the first rebalance.
    assert!(h.poll().is_empty());
    h.clock.advance_millis(3_001);
    // The second member arrived during the delay, which extends it once.
    assert!(h.poll().is_empty());
    h.clock.advance_millis(3_001);
    let done = h.poll();
    assert_eq!(done.len(), 2, "{done:?}");
    let mut leader = None;
    let mut generation = -1;
    for c in done {
        let (_, r): (i32, JoinGroupResponse) = response(ApiKey::JoinGroup, 5, c.outcome);
        assert_eq!(r.error_code, error::NONE);
        generation = r.generation_id;
        if r.leader == r.member_id {
            assert_eq!(r.members.len(), 2, "the leader gets every member");
            leader = Some(r.member_id.to_string());
        } else {
            assert!(r.members.is_empty());
        }
    }
    let leader = leader.expect("one leader");
    let follower = ids.into_iter().find(|i| *i != leader).unwrap();
    (leader, follower, generation)
}

/// A member id handed out after a restart must not be one a live client
/// still holds from before it: the coordinator's counter starts again at
/// each open, so the incarnation must tell the two apart (the simulator
/// found two KIP-848 members given one id).
#[test]
fn member_ids_do_not_repeat_across_restarts() {
    let mut h = Harness::new();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3 {
        assert_eq!(h.find_coordinator("g").error_code, error::NONE);
        for conn in [A, B] {
            let r: JoinGroupResponse = h.group(conn, ApiKey::JoinGroup, 5, &join_req("g", ""));
            assert_eq!(r.error_code, error::MEMBER_ID_REQUIRED);
            assert!(
                seen.insert(r.member_id.to_string()),
                "round {round}: {:?} handed out again",
                r.member_id
            );
        }
        h.restart();
    }
}

#[test]
fn classic_group_forms_syncs_commits_and_survives_a_restart() {
    let mut h = Harness::new();
    h.create("t", 2, &[]);
    let (leader, follower, generation) = form_group(&mut h, "g");
    assert_eq!(generation, 1);
    let leader_conn = if h.broker.groups.group("g").is_some() {
        A
    } else {
        B
    };
    let _ = leader_conn;
    // The follower's sync waits for the leader's assignment.
    let out = h.send(
        B,
        ApiKey::SyncGroup,
        3,
        &sync_req("g", generation, &follower, &[]),
    );
    assert_eq!(out, FrameOutcome::Pending);
    let r: SyncGroupResponse = h.group(
        A,
        ApiKey::SyncGroup,
        3,
        &sync_req(
            "g",
            generation,
            &leader,
            &[(&leader, b"p0"), (&follower, b"p1")],
        ),
    );
    assert_eq!((r.error_code, &r.assignment[..]), (error::NONE, &b"p0"[..]));
    let c = h.wait_for(B);
    let (_, r): (i32, SyncGroupResponse) = response(ApiKey::SyncGroup, 3, c);
    assert_eq!(&r.assignment[..], b"p1");
    let r: HeartbeatResponse = h.group(
        A,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation, &leader),
    );
    assert_eq!(r.error_code, error::NONE);
    let r: HeartbeatResponse = h.group(
        A,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation + 1, &leader),
    );
    assert_eq!(r.error_code, error::ILLEGAL_GENERATION);
    let r: HeartbeatResponse = h.group(
        A,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation, "nobody"),
    );
    assert_eq!(r.error_code, error::UNKNOWN_MEMBER_ID);

    // A commit is answered only once durable.
    let out = h.send(
        A,
        ApiKey::OffsetCommit,
        8,
        &commit_req("g", generation, &leader, "t", 42),
    );
    assert_eq!(
        out,
        FrameOutcome::Pending,
        "answered after the group commit"
    );
    let (_, r): (i32, OffsetCommitResponse) = response(ApiKey::OffsetCommit, 8, h.wait_for(A));
    assert_eq!(r.topics[0].partitions[0].error_code, error::NONE);
    // A fenced generation's commit is refused.
    let r: OffsetCommitResponse = h.group(
        A,
        ApiKey::OffsetCommit,
        8,
        &commit_req("g", generation - 1, &leader, "t", 7),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        error::ILLEGAL_GENERATION
    );
    let r: OffsetCommitResponse = h.group(
        A,
        ApiKey::OffsetCommit,
        8,
        &commit_req("g", generation, "stranger", "t", 7),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        error::UNKNOWN_MEMBER_ID
    );
    let r: OffsetCommitResponse = h.group(
        A,
        ApiKey::OffsetCommit,
        8,
        &commit_req("g", generation, &leader, "nope", 7),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        error::UNKNOWN_TOPIC_OR_PARTITION
    );

    let check = |h: &mut Harness| {
        let r: OffsetFetchResponse = h.group(A, ApiKey::OffsetFetch, 7, &fetch_req("g", "t"));
        let ps = &r.topics[0].partitions;
        assert_eq!(
            (ps[0].committed_offset, ps[0].metadata.as_deref()),
            (42, Some("m"))
        );
        assert_eq!(ps[1].committed_offset, -1, "never committed");
    };
    check(&mut h);
    // Every reply above waited for its records: a restart keeps them.
    h.restart();
    check(&mut h);
    let r: DescribeGroupsResponse = h.group(
        A,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("g"))]),
    );
    let g = &r.groups[0];
    assert_eq!(
        (g.group_state.as_str(), g.protocol_data.as_str()),
        ("Stable", "range")
    );
    assert_eq!(g.members.len(), 2);
    let r: ListGroupsResponse = h.group(A, ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    assert_eq!(r.groups.len(), 1);
    assert_eq!(
        (
            r.groups[0].group_state.as_str(),
            r.groups[0].group_type.as_str()
        ),
        ("Stable", "classic")
    );
    // The members kept their generation across the restart.
    let r: HeartbeatResponse = h.group(
        A,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation, &follower),
    );
    assert_eq!(r.error_code, error::NONE);
}

#[test]
fn a_silent_member_is_removed_and_the_group_rebalances() {
    let mut h = Harness::new();
    h.create("t", 2, &[]);
    let (leader, follower, generation) = form_group(&mut h, "g");
    let _ = h.send(
        B,
        ApiKey::SyncGroup,
        3,
        &sync_req("g", generation, &follower, &[]),
    );
    let _: SyncGroupResponse = h.group(
        A,
        ApiKey::SyncGroup,
        3,
        &sync_req("g", generation, &leader, &[]),
    );
    h.wait_for(B);
    // The leader heartbeats, the follower goes silent past its session.
    for _ in 0..4 {
        h.clock.advance_millis(3_000);
        let r: HeartbeatResponse = h.group(
            A,
            ApiKey::Heartbeat,
            4,
            &heartbeat_req("g", generation, &leader),
        );
        assert_eq!(r.error_code, error::NONE);
    }
    h.clock.advance_millis(1_000);
    h.poll();
    let r: HeartbeatResponse = h.group(
        A,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation, &leader),
    );
    assert_eq!(r.error_code, error::REBALANCE_IN_PROGRESS);
    // The rejoin completes at once: the only member left has rejoined.
    let r: JoinGroupResponse = h.group(A, ApiKey::JoinGroup, 5, &join_req("g", &leader));
    assert_eq!(
        (r.error_code, r.generation_id, r.members.len()),
        (error::NONE, generation + 1, 1)
    );
    // The removed member is fenced.
    let r: HeartbeatResponse = h.group(
        B,
        ApiKey::Heartbeat,
        4,
        &heartbeat_req("g", generation, &follower),
    );
    assert_eq!(r.error_code, error::UNKNOWN_MEMBER_ID);
    let r: OffsetCommitResponse = h.group(
        B,
        ApiKey::OffsetCommit,
        8,
        &commit_req("g", generation, &follower, "t", 1),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        error::UNKNOWN_MEMBER_ID
    );
}

#[test]
fn groups_admin_delete_and_internal_topic_protection() {
    let mut h = Harness::new();
    h.create("t", 2, &[]);
    let (leader, _follower, generation) = form_group(&mut h, "g");
    let del = |h: &mut Harness| -> i16 {
        let r: DeleteGroupsResponse = h.group(
            A,
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes("g"))]),
        );
        r.results[0].error_code
    };
    assert_eq!(del(&mut h), error::NON_EMPTY_GROUP);
    // An admin commit (generation -1) to a group nobody is in.
    let r: OffsetCommitResponse = h.group(
        A,
        ApiKey::OffsetCommit,
        8,
        &commit_req("solo", -1, "", "t", 5),
    );
    assert_eq!(r.topics[0].partitions[0].error_code, error::NONE);
    let r: OffsetDeleteResponse = h.group(
        A,
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(str_bytes("solo")))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(topic_name("t"))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default(),
                    ]),
            ]),
    );
    assert_eq!(
        (r.error_code, r.topics[0].partitions[0].error_code),
        (error::NONE, error::NONE)
    );
    let r: OffsetFetchResponse = h.group(A, ApiKey::OffsetFetch, 7, &fetch_req("solo", "t"));
    assert_eq!(r.topics[0].partitions[0].committed_offset, -1);
    // Both members leave; then the group can go.
    let members = h.broker.groups.group("g").map(|g| match &g.kind {
        crate::group::Kind::Classic(c) => c.members.keys().cloned().collect::<Vec<_>>(),
        _ => Vec::new(),
    });
    let r: LeaveGroupResponse = h.group(
        A,
        ApiKey::LeaveGroup,
        5,
        &LeaveGroupRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_members(
                members
                    .unwrap()
                    .iter()
                    .map(|m| {
                        leave_group_request::MemberIdentity::default().with_member_id(str_bytes(m))
                    })
                    .collect(),
            ),
    );
    assert_eq!(r.error_code, error::NONE);
    assert!(r.members.iter().all(|m| m.error_code == error::NONE));
    let _ = (leader, generation);
    assert_eq!(del(&mut h), error::NONE);
    assert_eq!(del(&mut h), error::GROUP_ID_NOT_FOUND);
    h.restart();
    assert!(
        h.broker.groups.group("g").is_none(),
        "the deletion is durable"
    );
    // Clients cannot write to, delete or grow the internal topic.
    let out = h.produce(OFFSETS_TOPIC, 0, 1, records(1, 1));
    let (_, r): (i32, ProduceResponse) = response(ApiKey::Produce, 9, out);
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        error::INVALID_TOPIC_EXCEPTION
    );
    let r: DeleteTopicsResponse = h.call(
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default().with_topic_names(vec![topic_name(OFFSETS_TOPIC)]),
    );
    assert_eq!(r.responses[0].error_code, error::INVALID_TOPIC_EXCEPTION);
}

#[test]
fn kip848_members_get_disjoint_covering_assignments() {
    let mut h = Harness::new();
    h.create("t", 4, &[]);
    let tid = h.broker.topics["t"].id;
    assert_eq!(h.find_coordinator("cg").error_code, error::NONE);
    let hb = |h: &mut Harness, conn, member: &str, epoch: i32, owned: Option<Vec<i32>>| {
        let mut req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes("cg")))
            .with_member_id(str_bytes(member))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 30_000 } else { -1 })
            .with_subscribed_topic_names(if epoch == 0 {
                Some(vec![topic_name("t")])
            } else {
                None
            })
            .with_server_assignor(None)
            .with_instance_id(None)
            .with_rack_id(None)
            .with_subscribed_topic_regex(None)
            .with_topic_partitions(owned.map(|ps| {
                vec![consumer_group_heartbeat_request::TopicPartitions::default()
                    .with_topic_id(uuid(tid))
                    .with_partitions(ps)]
            }));
        if epoch == 0 {
            req.topic_partitions = Some(Vec::new());
        }
        let r: ConsumerGroupHeartbeatResponse =
            h.group(conn, ApiKey::ConsumerGroupHeartbeat, 1, &req);
        r
    };
    let parts = |r: &ConsumerGroupHeartbeatResponse| -> Option<Vec<i32>> {
        r.assignment.as_ref().map(|a| {
            a.topic_partitions
                .iter()
                .flat_map(|t| t.partitions.clone())
                .collect()
        })
    };
    let r = hb(&mut h, A, "m-a", 0, None);
    assert_eq!(r.error_code, error::NONE, "{:?}", r.error_message);
    let ea = r.member_epoch;
    assert_eq!(parts(&r), Some(vec![0, 1, 2, 3]));
    let r = hb(&mut h, B, "m-b", 0, None);
    let eb = r.member_epoch;
    // B must wait: every partition is still A's.
    assert_eq!(parts(&r).unwrap_or_default(), Vec::<i32>::new());
    // A is asked to give up two of them.
    let r = hb(&mut h, A, "m-a", ea, Some(vec![0, 1, 2, 3]));
    let keep = parts(&r).unwrap();
    assert_eq!(keep.len(), 2);
    assert_eq!(
        r.member_epoch, ea,
        "no new epoch until the revocation is confirmed"
    );
    // Until A confirms, B gets nothing.
    let r = hb(&mut h, B, "m-b", eb, Some(vec![]));
    assert!(parts(&r).unwrap_or_default().is_empty());
    let r = hb(&mut h, A, "m-a", ea, Some(keep.clone()));
    assert!(r.member_epoch > ea);
    let r = hb(&mut h, B, "m-b", eb, Some(vec![]));
    let got = parts(&r).unwrap();
    let mut all: Vec<i32> = keep.iter().chain(got.iter()).copied().collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3], "disjoint and covering");
    // An old epoch is fenced.
    let r = hb(&mut h, B, "m-b", eb + 100, Some(got.clone()));
    assert_eq!(r.error_code, error::FENCED_MEMBER_EPOCH);
    let r: ConsumerGroupDescribeResponse = h.group(
        A,
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(str_bytes("cg"))]),
    );
    assert_eq!(r.groups[0].members.len(), 2);
    assert_eq!(r.groups[0].group_state.as_str(), "Stable");
}
