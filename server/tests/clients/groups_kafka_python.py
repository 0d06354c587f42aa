"""Consumer groups through kafka-python, whose group protocol code is its
own (not librdkafka's): KafkaConsumer members joining and leaving with
their assignments settling disjoint and complete, committing and resuming,
and KafkaAdminClient's group calls (list, describe, list/alter/delete
offsets, delete groups).

    target/ci-venv/bin/python server/tests/clients/groups_kafka_python.py HOST:PORT [-k PATTERN]
"""

import threading
import time
import unittest
import warnings

# kafka-python 3 loads its protocol schemas with importlib.resources calls
# that Python 3.11 deprecates, once per schema.
warnings.filterwarnings("ignore", category=DeprecationWarning)

import kafka.errors as Errors
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import GroupState, KafkaAdminClient, NewTopic
from kafka.protocol.consumer import HeartbeatRequest, OffsetCommitRequest

import common
from common import SETTLE, TIMEOUT, Ledger, show, unique, wait_settled, wait_until

SESSION_MS = 6000
HEARTBEAT_MS = 1000


def admin():
    return KafkaAdminClient(bootstrap_servers=common.BOOTSTRAP, request_timeout_ms=int(TIMEOUT * 1000))


def create_topic(name, partitions):
    a = admin()
    try:
        a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        a.close()
    return name


def produce(topic, partitions, per_partition):
    p = KafkaProducer(bootstrap_servers=common.BOOTSTRAP, acks="all", linger_ms=5, request_timeout_ms=int(TIMEOUT * 500), max_block_ms=int(TIMEOUT * 500))
    futures = [p.send(topic, partition=part, key=b"%d" % i, value=b"kp-%d-%d" % (part, i)) for part in range(partitions) for i in range(per_partition)]
    p.flush(timeout=TIMEOUT)
    for f in futures:
        f.get(timeout=TIMEOUT)
    p.close()


def consumer(group, **conf):
    base = dict(
        bootstrap_servers=common.BOOTSTRAP,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        max_poll_interval_ms=20000,
        request_timeout_ms=int(TIMEOUT * 1000),
    )
    base.update(conf)
    return KafkaConsumer(**base)


def raw_commit(ka, group, generation, member_id, topic, partition, offset):
    """One OffsetCommit (v9 at most: topics by name) with the generation (or
    KIP-848 member epoch) and member id given, sent to the group's
    coordinator; returns the partition's error class."""
    _Topic = OffsetCommitRequest.OffsetCommitRequestTopic
    _Partition = _Topic.OffsetCommitRequestPartition
    request = OffsetCommitRequest(
        group_id=group,
        generation_id_or_member_epoch=generation,
        member_id=member_id,
        group_instance_id=None,
        retention_time_ms=-1,
        topics=[_Topic(name=topic, partitions=[_Partition(partition_index=partition, committed_offset=offset, committed_leader_epoch=-1, committed_metadata="raw")])],
        max_version=9,
    )

    response = to_coordinator(ka, group, request)
    return Errors.for_code(response.topics[0].partitions[0].error_code)


def raw_heartbeat(ka, group, generation, member_id):
    """One Heartbeat for a classic member; returns its error class."""
    request = HeartbeatRequest(group_id=group, generation_id=generation, member_id=member_id, group_instance_id=None)
    return Errors.for_code(to_coordinator(ka, group, request).error_code)


def to_coordinator(ka, group, request):
    """Sends a request to the group's coordinator through the admin
    client's connections; returns the response."""

    async def send():
        coordinator = await ka._find_coordinator_id(group)
        return await ka._manager.send(request, node_id=coordinator)

    return ka._manager.run(send)


def committed_offset(ka, group, topic, partition):
    tp = TopicPartition(topic, partition)
    got = ka.list_group_offsets({group: [tp]})[group].get(tp)
    return got.offset if got is not None and got.offset >= 0 else None


def keys(parts):
    return frozenset((tp.topic, tp.partition) for tp in parts)


class Member(ConsumerRebalanceListener):
    """A KafkaConsumer in a group, used only by a thread of its own."""

    def __init__(self, name, group, topic, ledger, **conf):
        self.name = name
        self.ledger = ledger
        self.lock = threading.Lock()
        self.assignment = frozenset()
        self.events = []
        self.errors = []
        self.stop = threading.Event()
        self.done = threading.Event()
        self.consumer = consumer(group, client_id=name, **conf)
        self.consumer.subscribe([topic], listener=self)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def on_partitions_assigned(self, assigned):
        self.events.append(("assign", keys(assigned)))
        self.ledger.assign(self.name, keys(assigned))

    def on_partitions_revoked(self, revoked):
        self.events.append(("revoke", keys(revoked)))
        self.ledger.revoke(self.name, keys(revoked))

    def on_partitions_lost(self, lost):
        self.events.append(("lost", keys(lost)))
        self.ledger.revoke(self.name, keys(lost))

    def _run(self):
        try:
            while not self.stop.is_set():
                try:
                    self.consumer.poll(timeout_ms=100)
                except Exception as e:  # noqa: BLE001 (recorded, then fails the test)
                    with self.lock:
                        self.errors.append(repr(e))
                    time.sleep(0.1)
                with self.lock:
                    self.assignment = keys(self.consumer.assignment())
            self.consumer.close()
        finally:
            self.ledger.forget(self.name)
            with self.lock:
                self.assignment = frozenset()
            self.done.set()

    def current(self):
        with self.lock:
            return self.assignment

    def close(self):
        self.stop.set()
        assert self.done.wait(TIMEOUT + 5), "%s: close() did not return" % self.name


def assigned_partitions(member_assignment):
    """The (topic, partition) pairs in a described member's assignment, as
    kafka-python decodes it."""
    if hasattr(member_assignment, "partitions"):
        return keys(member_assignment.partitions())
    parts = member_assignment["assigned_partitions"]
    out = set()
    for entry in parts:
        if isinstance(entry, dict):
            out.update((entry["topic"], p) for p in entry["partitions"])
        else:
            topic, ps = entry
            out.update((topic, p) for p in ps)
    return frozenset(out)


class GroupsKafkaPython(unittest.TestCase):
    def setUp(self):
        self.ledger = Ledger()
        self.members = []

    def tearDown(self):
        for m in self.members:
            m.stop.set()
        for m in self.members:
            m.done.wait(TIMEOUT)

    def member(self, name, group, topic, **conf):
        m = Member(name, group, topic, self.ledger, **conf)
        self.members.append(m)
        return m

    def settle(self, members, parts, what):
        snap, took = wait_settled(members, parts, what)
        self.assertEqual(self.ledger.violations, [])
        print("  %s: settled after %.1fs: %s" % (what, took, {n: show(p) for n, p in snap.items()}))
        return snap, took

    def test_join_and_leave(self):
        topic = create_topic(unique("kp-grp"), 4)
        group = unique("kp-grp")
        parts = [(topic, p) for p in range(4)]
        a = self.member("kp-a", group, topic)
        self.settle([a], parts, "one member")
        b = self.member("kp-b", group, topic)
        c = self.member("kp-c", group, topic)
        self.settle([a, b, c], parts, "three members")
        b.close()
        _, took = self.settle([a, c], parts, "b left")
        self.assertLess(took, SESSION_MS / 1000, "a clean leave waited for the session timeout")
        a.close()
        self.settle([c], parts, "a left")
        c.close()
        self.assertEqual({m.name: m.errors for m in (a, b, c) if m.errors}, {})
        self.assertEqual(self.ledger.violations, [])

    def test_commit_then_resume(self):
        topic = create_topic(unique("kp-commit"), 2)
        group = unique("kp-commit")
        produce(topic, 2, 30)
        tps = [TopicPartition(topic, p) for p in range(2)]

        def take(c, n):
            got = []
            deadline = time.monotonic() + SETTLE
            while len(got) < n:
                self.assertLess(time.monotonic(), deadline, "%d of %d records" % (len(got), n))
                for tp, records in c.poll(timeout_ms=200, max_records=n - len(got)).items():
                    for r in records:
                        self.assertEqual(r.value, b"kp-%d-%d" % (tp.partition, r.offset))
                        got.append((tp.partition, r.offset))
            return got

        c1 = consumer(group)
        c1.subscribe([topic])
        got1 = take(c1, 25)
        nxt = {}
        for p, o in got1:
            self.assertEqual(o, nxt.get(p, 0))
            nxt[p] = o + 1
        c1.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "kp-%d" % p, -1) for p, o in nxt.items()})
        for p, o in nxt.items():
            got = c1.committed(TopicPartition(topic, p), metadata=True)
            self.assertEqual((got.offset, got.metadata), (o, "kp-%d" % p))
        c1.close(autocommit=False)

        c2 = consumer(group)
        for tp in tps:
            got = c2.committed(tp)
            self.assertEqual(got, nxt.get(tp.partition), "committed(%s) seen by a new consumer" % (tp,))
        c2.subscribe([topic])
        got2 = take(c2, 60 - 25)
        for p, o in got2:
            self.assertEqual(o, nxt.get(p, 0), "partition %d: offset %d after %d" % (p, o, nxt.get(p, 0) - 1))
            nxt[p] = o + 1
        self.assertEqual(sorted(got1 + got2), [(p, o) for p in range(2) for o in range(30)])
        self.assertEqual(c2.poll(timeout_ms=500), {})
        # commit() with no arguments: the consumed position.
        c2.commit()
        self.assertEqual({tp.partition: c2.committed(tp) for tp in tps}, {0: 30, 1: 30})
        c2.close(autocommit=False)

    def test_commits_from_an_old_generation_are_rejected(self):
        # A partition is owned by at most one member per generation, so a
        # commit is accepted only from a current member with the current
        # generation (Kafka: UNKNOWN_MEMBER_ID, then ILLEGAL_GENERATION).
        topic = create_topic(unique("kp-gen"), 2)
        group = unique("kp-gen")
        parts = [(topic, p) for p in range(2)]
        a = self.member("kp-gen-a", group, topic)
        self.settle([a], parts, "a alone")
        first = a.consumer._coordinator._generation
        self.assertGreater(first.generation_id, 0)
        ka = admin()
        try:
            self.assertIs(raw_commit(ka, group, first.generation_id, first.member_id, topic, 0, 5), Errors.NoError)
            self.assertEqual(committed_offset(ka, group, topic, 0), 5)

            b = self.member("kp-gen-b", group, topic)
            self.settle([a, b], parts, "b joined")
            second = a.consumer._coordinator._generation
            self.assertEqual(second.member_id, first.member_id)
            self.assertGreater(second.generation_id, first.generation_id, "a rebalance starts a new generation")

            self.assertIs(raw_heartbeat(ka, group, first.generation_id, first.member_id), Errors.IllegalGenerationError, "heartbeat of a's old generation")
            self.assertIs(raw_heartbeat(ka, group, second.generation_id, "kp-gen-nobody"), Errors.UnknownMemberIdError, "heartbeat of nobody")
            self.assertIs(raw_heartbeat(ka, group, second.generation_id, first.member_id), Errors.NoError, "heartbeat of a's current generation")
            self.assertIs(raw_commit(ka, group, first.generation_id, first.member_id, topic, 0, 7), Errors.IllegalGenerationError, "a's old generation")
            self.assertIs(raw_commit(ka, group, second.generation_id + 1, first.member_id, topic, 0, 7), Errors.IllegalGenerationError, "a generation yet to come")
            self.assertIs(raw_commit(ka, group, second.generation_id, "kp-gen-nobody", topic, 0, 7), Errors.UnknownMemberIdError)
            self.assertEqual(committed_offset(ka, group, topic, 0), 5, "rejected commits changed nothing")
            self.assertIs(raw_commit(ka, group, second.generation_id, first.member_id, topic, 0, 8), Errors.NoError, "a's current generation")
            self.assertEqual(committed_offset(ka, group, topic, 0), 8)

            a.close()
            self.settle([b], parts, "a left")
            self.assertIs(raw_commit(ka, group, second.generation_id, first.member_id, topic, 0, 9), Errors.UnknownMemberIdError, "a member that left")
            self.assertEqual(committed_offset(ka, group, topic, 0), 8)
            b.close()
        finally:
            ka.close()

    def test_offset_metadata_limit(self):
        # offset.metadata.max.bytes (4096): metadata of that length is kept,
        # one byte more is refused with OFFSET_METADATA_TOO_LARGE.
        topic = create_topic(unique("kp-meta"), 1)
        group = unique("kp-meta")
        ka = admin()
        try:
            tp = TopicPartition(topic, 0)
            self.assertEqual(ka.alter_group_offsets(group, {tp: OffsetAndMetadata(3, "m" * 4096, -1)}), {tp: Errors.NoError})
            self.assertEqual(ka.alter_group_offsets(group, {tp: OffsetAndMetadata(4, "m" * 4097, -1)}), {tp: Errors.OffsetMetadataTooLargeError})
            got = ka.list_group_offsets({group: [tp]})[group][tp]
            self.assertEqual((got.offset, got.metadata), (3, "m" * 4096))
        finally:
            ka.close()

    def test_admin(self):
        topic = create_topic(unique("kp-admin"), 2)
        active = unique("kp-active")
        empty = unique("kp-empty")
        parts = [(topic, p) for p in range(2)]
        produce(topic, 2, 5)

        c = consumer(empty)
        c.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "three", -1), TopicPartition(topic, 1): OffsetAndMetadata(5, "", -1)})
        c.close(autocommit=False)

        a = self.member("kp-admin-a", active, topic)
        b = self.member("kp-admin-b", active, topic)
        snap, _ = self.settle([a, b], parts, "two members")

        ka = admin()
        try:
            groups = {g["group_id"]: g for g in ka.list_groups()}
            self.assertIn(active, groups)
            self.assertIn(empty, groups)
            self.assertEqual(groups[active]["protocol_type"], "consumer")
            if "group_state" in groups[active]:
                self.assertEqual((groups[active]["group_state"], groups[empty]["group_state"]), ("Stable", "Empty"))
            stable = {g["group_id"] for g in ka.list_groups(states_filter=[GroupState.STABLE])}
            self.assertIn(active, stable)
            self.assertNotIn(empty, stable)
            empties = {g["group_id"] for g in ka.list_groups(states_filter=["Empty"])}
            self.assertIn(empty, empties)
            self.assertNotIn(active, empties)

            d = ka.describe_groups([active, empty])
            self.assertIsNone(d[active]["error"])
            self.assertEqual(d[active]["group_state"], "Stable")
            self.assertEqual(d[active]["protocol_type"], "consumer")
            self.assertIn(d[active]["protocol_data"], ("range", "roundrobin"))
            members = {m["client_id"]: m for m in d[active]["members"]}
            self.assertEqual(sorted(members), ["kp-admin-a", "kp-admin-b"])
            self.assertEqual({n: assigned_partitions(m["member_assignment"]) for n, m in members.items()}, snap)
            self.assertEqual((d[empty]["group_state"], d[empty]["members"]), ("Empty", []))

            offsets = ka.list_group_offsets({empty: None})[empty]
            self.assertEqual(
                {(tp.partition, om.offset, om.metadata) for tp, om in offsets.items()},
                {(0, 3, "three"), (1, 5, "")},
            )

            res = ka.delete_groups([active, empty])
            self.assertEqual(res, {active: "NonEmptyGroupError", empty: "OK"})
            self.assertNotIn(empty, {g["group_id"] for g in ka.list_groups()})
            res = ka.delete_groups([empty])
            self.assertEqual(res, {empty: "GroupIdNotFoundError"})

            a.close()
            b.close()
            wait_until("the group empty", lambda: ka.describe_groups([active])[active]["group_state"] == "Empty", timeout=10)

            # Offsets of the emptied group: altered, one deleted.
            tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
            res = ka.alter_group_offsets(active, {tp0: OffsetAndMetadata(1, "one", -1), tp1: OffsetAndMetadata(2, "two", -1)})
            self.assertEqual(res, {tp0: Errors.NoError, tp1: Errors.NoError})
            offsets = ka.list_group_offsets({active: [tp0, tp1]})[active]
            self.assertEqual({tp: (om.offset, om.metadata) for tp, om in offsets.items()}, {tp0: (1, "one"), tp1: (2, "two")})
            self.assertEqual(ka.delete_group_offsets(active, [tp0]), {tp0: Errors.NoError})
            offsets = ka.list_group_offsets({active: None})[active]
            self.assertEqual({tp: om.offset for tp, om in offsets.items()}, {tp1: 2})

            self.assertEqual(ka.delete_groups([active]), {active: "OK"})
            self.assertNotIn(active, {g["group_id"] for g in ka.list_groups()})
        finally:
            ka.close()


if __name__ == "__main__":
    common.main()
