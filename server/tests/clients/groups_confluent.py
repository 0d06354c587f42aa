"""Consumer groups through librdkafka (confluent-kafka), checked against
what Kafka does:

* Range, RoundRobin, Cooperative: members joining, leaving (close()) and
  crashing (a consumer in a subprocess killed with SIGKILL, so that only its
  session timeout removes it); after each change the assignments settle
  disjoint, covering every partition and balanced, a partition is never
  owned by two live members at once (from the rebalance callbacks), a clean
  leave does not wait for the session timeout and a crash is noticed within
  it; cooperative-sticky members keep their partitions across rebalances.
* Commit: synchronous commits with metadata, commits of the consumed
  position, auto commit; a new consumer in the group resumes exactly at the
  committed offsets; committed() returns what was committed.
* Paused: a member stopped (SIGSTOP) past its session timeout loses its
  partitions to the others, and joins again when it resumes.
* Kip848: the same join/leave/coverage and commit/resume checks with
  group.protocol=consumer (KIP-848), the group described as a consumer
  group, commits with a wrong member epoch refused, static members
  (UNRELEASED_INSTANCE_ID for a taken instance id; a temporary leave that
  moves nothing); Kip848Crash: a killed member's partitions move after the
  broker's session timeout; Kip848Migration: groups with members of both
  protocols. Tests marked expectedFailure are differences from Kafka
  written up in BROKER-BUGS.md.
* Static: group.instance.id members restart without moving anybody's
  partitions; a second consumer with the same instance id fences the first
  (fatal FENCED_INSTANCE_ID).
* Admin: list (with state and type filters), describe, delete (refused
  while members are active), list/alter committed offsets, and OffsetDelete
  (through kafka-python: confluent-kafka 2.16 has no binding for it);
  commits to missing topics, oversized metadata, out-of-bounds session
  timeouts; offsets of a deleted topic.

    target/ci-venv/bin/python server/tests/clients/groups_confluent.py HOST:PORT [-k PATTERN]

Crashing members run this file as `groups_confluent.py member BOOTSTRAP
GROUP TOPIC CONFIG_JSON`: a consumer that prints its rebalance events and
assignment as JSON lines until it is killed.
"""

import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

import common
from common import HOLD, SETTLE, TIMEOUT, Ledger, show, unique, wait_settled, wait_until

# Short sessions keep the crash tests quick: 6 s is Kafka's
# group.min.session.timeout.ms, the smallest a broker accepts by default.
SESSION_MS = 6000
HEARTBEAT_MS = 1000
# JoinGroup's rebalance timeout is max.poll.interval.ms: a member that
# fails to rejoin holds a rebalance up for this long, not for 5 minutes.
MAX_POLL_MS = 20000
CLASSIC = {
    "session.timeout.ms": SESSION_MS,
    "heartbeat.interval.ms": HEARTBEAT_MS,
    "max.poll.interval.ms": MAX_POLL_MS,
}
# KIP-848: the session timeout, heartbeat interval and assignor are the
# broker's; librdkafka refuses the classic settings in this mode.
KIP848 = {"group.protocol": "consumer", "max.poll.interval.ms": MAX_POLL_MS}
# The broker's group.consumer.session.timeout.ms: Kafka's default, unless
# the broker was given another (real_clients.rs gives 6 s, and says so
# here).
KIP848_SESSION_MS = int(os.environ.get("ODRADEK_GROUP_CONSUMER_SESSION_TIMEOUT_MS", "45000"))


def tp_key(tp):
    return (tp.topic, tp.partition)


# ---- clients ----

_ADMIN = []


def admin():
    if not _ADMIN:
        _ADMIN.append(AdminClient({"bootstrap.servers": common.BOOTSTRAP}))
    return _ADMIN[0]


def create_topic(name, partitions):
    a = admin()
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)], request_timeout=TIMEOUT)[name].result(timeout=TIMEOUT)
    wait_until("metadata for %s" % name, lambda: len(getattr(a.list_topics(timeout=TIMEOUT).topics.get(name), "partitions", {})) == partitions)
    return name


def produce(topic, partitions, per_partition, tag="r"):
    """per_partition records to each partition, acks=all; the value says
    where it was meant to land: b"TAG-PARTITION-SEQ"."""
    p = Producer({"bootstrap.servers": common.BOOTSTRAP, "acks": "all", "linger.ms": 5, "message.timeout.ms": int(TIMEOUT * 1000)})
    errors = []
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(
                topic,
                partition=part,
                key=b"%d" % i,
                value=("%s-%d-%d" % (tag, part, i)).encode(),
                on_delivery=lambda err, msg: err is not None and errors.append(err),
            )
    left = p.flush(TIMEOUT)
    assert left == 0 and not errors, "produce to %s: %d undelivered, errors %s" % (topic, left, errors[:3])


def group_conf(group, protocol_conf, **extra):
    conf = {
        "bootstrap.servers": common.BOOTSTRAP,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(protocol_conf)
    conf.update(extra)
    return conf


def error_code(exc):
    assert isinstance(exc, KafkaException), "expected a KafkaException, got %r" % (exc,)
    return exc.args[0].code()


# ---- members and what they own ----


class Member:
    """A consumer subscribed to a group, polled by a thread of its own
    (rebalance callbacks run inside poll). Records its callbacks, the
    assignment librdkafka reports, the records it was handed, and errors."""

    def __init__(self, name, group, topics, ledger, protocol_conf, **extra):
        self.name = name
        self.ledger = ledger
        self.lock = threading.Lock()
        self.events = []  # (monotonic time, "assign"|"revoke"|"lost", partitions)
        self.errors = []
        self.records = []  # (topic, partition, offset, value)
        self.assignment = frozenset()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.close_error = None
        self.calls = queue.Queue()
        conf = group_conf(group, protocol_conf, **extra)
        conf.setdefault("client.id", name)
        conf["error_cb"] = self._on_error
        self.consumer = Consumer(conf)
        self.consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _event(self, kind, parts):
        keys = [tp_key(tp) for tp in parts]
        with self.lock:
            self.events.append((time.monotonic(), kind, keys))
        if kind == "assign":
            self.ledger.assign(self.name, keys)
        else:
            self.ledger.revoke(self.name, keys)

    def _on_assign(self, consumer, parts):
        self._event("assign", parts)

    def _on_revoke(self, consumer, parts):
        self._event("revoke", parts)

    def _on_lost(self, consumer, parts):
        self._event("lost", parts)

    def _on_error(self, err):
        with self.lock:
            self.errors.append(err)

    def call(self, fn):
        """fn(consumer) run by the member's own thread, between two polls
        (a confluent-kafka consumer called from two threads at once can
        deadlock); returns what it returned, or raises what it raised."""
        done = concurrent.futures.Future()
        self.calls.put((fn, done))
        return done.result(timeout=TIMEOUT + 5)

    def _run(self):
        try:
            while not self.stop.is_set():
                while not self.calls.empty():
                    fn, done = self.calls.get()
                    try:
                        done.set_result(fn(self.consumer))
                    except Exception as e:  # noqa: BLE001 (handed to the caller)
                        done.set_exception(e)
                m = self.consumer.poll(0.1)
                if m is not None:
                    if m.error() is not None:
                        with self.lock:
                            self.errors.append(m.error())
                    else:
                        with self.lock:
                            self.records.append((m.topic(), m.partition(), m.offset(), m.value()))
                try:
                    parts = frozenset(tp_key(tp) for tp in self.consumer.assignment())
                except KafkaException as e:
                    with self.lock:
                        self.errors.append(e.args[0])
                    parts = frozenset()
                with self.lock:
                    self.assignment = parts
            try:
                self.consumer.close()
            except KafkaException as e:
                self.close_error = e.args[0]
        finally:
            self.ledger.forget(self.name)
            with self.lock:
                self.assignment = frozenset()
            self.done.set()

    def current(self):
        with self.lock:
            return self.assignment

    def event_count(self):
        with self.lock:
            return len(self.events)

    def error_list(self):
        with self.lock:
            return list(self.errors)

    def close(self):
        """close() in the member's own thread: revokes, commits if auto
        commit is on, and leaves the group."""
        self.stop.set()
        assert self.done.wait(TIMEOUT + 5), "%s: close() did not return within %ss" % (self.name, TIMEOUT + 5)


class CrashableMember:
    """A consumer in a subprocess (this file in `member` mode), so that it
    can be killed with SIGKILL: no LeaveGroup, no close, the broker only
    learns from its session timing out."""

    def __init__(self, name, group, topic, ledger, protocol_conf, **extra):
        self.name = name
        self.ledger = ledger
        self.lock = threading.Lock()
        self.assignment = frozenset()
        self.lines = []
        conf = group_conf(group, protocol_conf, **extra)
        conf.setdefault("client.id", name)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "member", common.BOOTSTRAP, group, topic, json.dumps(conf)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            parts = [tuple(tp) for tp in ev.get("partitions", [])]
            with self.lock:
                self.lines.append(ev)
            if ev["event"] == "assign":
                self.ledger.assign(self.name, parts)
            elif ev["event"] in ("revoke", "lost"):
                self.ledger.revoke(self.name, parts)
            elif ev["event"] == "assignment":
                with self.lock:
                    self.assignment = frozenset(parts)

    def current(self):
        with self.lock:
            return self.assignment

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        self.proc.stdout.close()
        with self.lock:
            self.assignment = frozenset()
        self.ledger.forget(self.name)

    def error_list(self):
        with self.lock:
            return [ev for ev in self.lines if ev["event"] == "error"]


def member_main(bootstrap, group, topic, conf_json):
    """The subprocess side of CrashableMember."""
    conf = json.loads(conf_json)

    def emit(event, parts=None, **more):
        out = {"event": event}
        if parts is not None:
            out["partitions"] = sorted([tp.topic, tp.partition] for tp in parts)
        out.update(more)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

    conf["error_cb"] = lambda err: emit("error", error=str(err))
    c = Consumer(conf)
    c.subscribe(
        [topic],
        on_assign=lambda _, parts: emit("assign", parts),
        on_revoke=lambda _, parts: emit("revoke", parts),
        on_lost=lambda _, parts: emit("lost", parts),
    )
    last = None
    while True:
        m = c.poll(0.1)
        if m is not None and m.error() is not None:
            emit("error", error=str(m.error()))
        now = sorted((tp.topic, tp.partition) for tp in c.assignment())
        if now != last:
            emit("assignment", [TopicPartition(t, p) for t, p in now])
            last = now


class GroupTest(unittest.TestCase):
    """Members started by a test are closed at its end, whatever happens."""

    def setUp(self):
        self.members = []
        self.crashable = []
        self.ledger = Ledger()

    def tearDown(self):
        for c in self.crashable:
            if c.proc.poll() is None:
                c.kill()
        for m in self.members:
            if not m.done.is_set():
                m.stop.set()
        for m in self.members:
            m.done.wait(TIMEOUT)

    def member(self, name, group, topics, protocol_conf, **extra):
        m = Member(name, group, topics, self.ledger, protocol_conf, **extra)
        self.members.append(m)
        return m

    def crashable_member(self, name, group, topic, protocol_conf, **extra):
        c = CrashableMember(name, group, topic, self.ledger, protocol_conf, **extra)
        self.crashable.append(c)
        return c

    def assert_no_violations(self):
        self.assertEqual(self.ledger.violations, [], "a partition owned by two members at once")

    def assert_no_errors(self, members):
        errors = {m.name: [str(e) for e in m.error_list()] for m in members}
        self.assertEqual({n: e for n, e in errors.items() if e}, {}, "client errors")

    def settle(self, members, partitions, what, **kw):
        snap, took = wait_settled(members, partitions, what, **kw)
        self.assert_no_violations()
        print("  %s: settled after %.1fs: %s" % (what, took, {n: show(p) for n, p in snap.items()}))
        return snap, took

    # -- the join / leave / crash scenario, for each protocol --

    def join_leave_crash(self, protocol_conf, sticky, crash=True, session_s=SESSION_MS / 1000):
        topic = create_topic(unique("grp-rebalance"), 6)
        group = unique("grp-rebalance")
        parts = [(topic, p) for p in range(6)]

        a = self.member("a", group, [topic], protocol_conf)
        snap, _ = self.settle([a], parts, "one member")

        b = self.member("b", group, [topic], protocol_conf)
        c = self.member("c", group, [topic], protocol_conf)
        before = snap
        snap, _ = self.settle([a, b, c], parts, "b and c joined")
        if sticky:
            self.assertTrue(snap["a"] <= before["a"], "a kept only partitions it had: %s then %s" % (show(before["a"]), show(snap["a"])))

        if crash:
            x = self.crashable_member("x", group, topic, protocol_conf)
            before = snap
            snap, _ = self.settle([a, b, c, x], parts, "x joined")
            if sticky:
                for n in "abc":
                    self.assertTrue(snap[n] <= before[n], "%s kept only partitions it had: %s then %s" % (n, show(before[n]), show(snap[n])))
            self.assertTrue(snap["x"], "x has partitions to lose")

            before = snap
            x.kill()
            snap, took = self.settle([a, b, c], parts, "x killed", timeout=session_s + SETTLE)
            # Nothing told the broker: only the session timeout can have
            # freed x's partitions (a little early is allowed: the broker's
            # clock for the session started at x's last heartbeat).
            self.assertLess(took, session_s + 15, "x's partitions moved %.1fs after the kill; session timeout %.0fs" % (took, session_s))
            self.assertGreater(took, session_s - 2.5, "x's partitions moved %.1fs after a kill that nothing reported; session timeout %.0fs" % (took, session_s))
            if sticky:
                for n in "abc":
                    self.assertTrue(snap[n] >= before[n], "%s kept its partitions when x died: %s then %s" % (n, show(before[n]), show(snap[n])))

        before = snap
        b.close()
        self.assertIsNone(b.close_error, "b's close()")
        snap, took = self.settle([a, c], parts, "b left")
        # A clean leave (LeaveGroup, or a KIP-848 heartbeat with epoch -1)
        # rebalances at once: it does not wait for b's session to expire.
        self.assertLess(took, session_s, "b's partitions moved %.1fs after it left, as if only its session timeout had freed them" % took)
        if sticky:
            for n in "ac":
                self.assertTrue(snap[n] >= before[n], "%s kept its partitions when b left: %s then %s" % (n, show(before[n]), show(snap[n])))

        a.close()
        snap, _ = self.settle([c], parts, "a left")
        c.close()
        self.assert_no_violations()
        self.assert_no_errors([a, b, c])
        return group

    # -- commit, then resume in a new consumer --

    def commit_and_resume(self, protocol_conf):
        topic = create_topic(unique("grp-commit"), 3)
        group = unique("grp-commit")
        per = 60
        produce(topic, 3, per)
        everything = {(p, i) for p in range(3) for i in range(per)}

        def take(c, n, what):
            """n records from consumer c, in order, as (partition, offset)."""
            got = []
            deadline = time.monotonic() + SETTLE
            while len(got) < n:
                self.assertLess(time.monotonic(), deadline, "%s: %d of %d records within %.0fs" % (what, len(got), n, SETTLE))
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error() is not None:
                    raise KafkaException(m.error())
                self.assertEqual(m.value(), ("r-%d-%d" % (m.partition(), m.offset())).encode())
                got.append((m.partition(), m.offset()))
            return got

        def committed_view(c):
            """{partition: (offset, metadata)} from committed(); partitions
            without a committed offset left out (librdkafka gives None for
            empty metadata)."""
            seen = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=TIMEOUT)
            self.assertEqual([t.error for t in seen if t.error is not None], [])
            return {t.partition: (t.offset, t.metadata or "") for t in seen if t.offset >= 0}

        def resume_points(got, start):
            nxt = dict(start)
            for p, o in got:
                self.assertEqual(o, nxt.get(p, 0), "partition %d: offset %d read after %d (skipped or re-read)" % (p, o, nxt.get(p, 0) - 1))
                nxt[p] = o + 1
            return nxt

        # 1. Explicit offsets with metadata, committed synchronously.
        c1 = Consumer(group_conf(group, protocol_conf))
        c1.subscribe([topic])
        got1 = take(c1, 70, "first consumer")
        nxt = resume_points(got1, {})
        offsets = [TopicPartition(topic, p, o, metadata="first-%d" % p) for p, o in sorted(nxt.items())]
        done = c1.commit(offsets=offsets, asynchronous=False)
        self.assertEqual(sorted((t.partition, t.offset, t.error) for t in done), sorted((p, o, None) for p, o in nxt.items()))
        meta = {p: "first-%d" % p for p in nxt}
        self.assertEqual(committed_view(c1), {p: (nxt[p], meta[p]) for p in nxt}, "committed() right after the commit")
        c1.close()

        # 2. A new consumer in the group starts at the committed offsets and
        # commits its position (the offsets librdkafka stored for the
        # records it handed out), without metadata.
        c2 = Consumer(group_conf(group, protocol_conf))
        self.assertEqual(committed_view(c2), {p: (nxt[p], meta[p]) for p in nxt}, "committed() seen by a new consumer of the group")
        c2.subscribe([topic])
        got2 = take(c2, 60, "second consumer")
        nxt = resume_points(got2, nxt)
        done = c2.commit(asynchronous=False)
        self.assertEqual([t.error for t in done if t.error is not None], [])
        committed = {t.partition: t.offset for t in done if t.offset >= 0}
        # librdkafka commits the position of each partition it handed
        # records out of.
        self.assertEqual(committed, {p: nxt[p] for p in {p for p, _ in got2}}, "commit() of the consumed position")
        for p in committed:
            meta[p] = ""
        self.assertEqual(committed_view(c2), {p: (nxt[p], meta[p]) for p in meta}, "committed() after the second commit")
        c2.close()

        # 3. The rest, exactly: nothing read twice across the three, nothing
        # skipped.
        c3 = Consumer(group_conf(group, protocol_conf))
        c3.subscribe([topic])
        got3 = take(c3, 3 * per - 130, "third consumer")
        nxt = resume_points(got3, nxt)
        every = got1 + got2 + got3
        self.assertEqual(len(every), len(set(every)), "a record read twice")
        self.assertEqual(set(every), everything)
        m = c3.poll(1.0)
        self.assertTrue(m is None or m.error() is not None, "nothing more to read, got %s[%s]" % (m and m.partition(), m and m.offset()))
        c3.close()

    def auto_commit_and_resume(self, protocol_conf):
        topic = create_topic(unique("grp-autocommit"), 2)
        group = unique("grp-autocommit")
        produce(topic, 2, 40)
        c = Consumer(group_conf(group, protocol_conf, **{"enable.auto.commit": True, "auto.commit.interval.ms": 300}))
        c.subscribe([topic])
        got = []
        deadline = time.monotonic() + SETTLE
        while len(got) < 80:
            self.assertLess(time.monotonic(), deadline, "read %d of 80" % len(got))
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append((m.partition(), m.offset()))
        self.assertEqual(sorted(got), [(p, o) for p in range(2) for o in range(40)])

        # The periodic auto commit, seen from outside while the consumer is
        # still running (polling, with nothing new to read).
        def committed_outside():
            c.poll(0.1)
            (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0), TopicPartition(topic, 1)])], request_timeout=TIMEOUT).values()
            res = f.result(timeout=TIMEOUT)
            return sorted((t.partition, t.offset) for t in res.topic_partitions) == [(0, 40), (1, 40)] or res

        wait_until("auto commit of offsets 40, 40", committed_outside, timeout=10)
        c.close()

        produce(topic, 2, 5, tag="late")
        c = Consumer(group_conf(group, protocol_conf, **{"enable.auto.commit": True, "auto.commit.interval.ms": 300}))
        c.subscribe([topic])
        later = []
        deadline = time.monotonic() + SETTLE
        while len(later) < 10:
            self.assertLess(time.monotonic(), deadline, "read %d of the 10 later records" % len(later))
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                later.append((m.partition(), m.offset(), m.value()))
        self.assertEqual(sorted(later), [(p, 40 + i, ("late-%d-%d" % (p, i)).encode()) for p in range(2) for i in range(5)])
        m = c.poll(0.5)
        self.assertTrue(m is None or m.error() is not None, "nothing after the 10 later records")
        # close() commits what was consumed since the last auto commit.
        c.close()
        (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
        res = f.result(timeout=TIMEOUT)
        self.assertEqual(sorted((t.topic, t.partition, t.offset) for t in res.topic_partitions), [(topic, 0, 45), (topic, 1, 45)])


class Range(GroupTest):
    def test_range_join_leave_crash(self):
        self.join_leave_crash(dict(CLASSIC, **{"partition.assignment.strategy": "range"}), sticky=False)


class RoundRobin(GroupTest):
    def test_roundrobin_join_leave_crash(self):
        self.join_leave_crash(dict(CLASSIC, **{"partition.assignment.strategy": "roundrobin"}), sticky=False)


class Cooperative(GroupTest):
    def test_cooperative_sticky_join_leave_crash(self):
        self.join_leave_crash(dict(CLASSIC, **{"partition.assignment.strategy": "cooperative-sticky"}), sticky=True)


class Paused(GroupTest):
    def test_paused_member_comes_back_after_its_session_expired(self):
        # SIGSTOP a member past its session timeout: the others take its
        # partitions; on SIGCONT it learns it was removed (UNKNOWN_MEMBER_ID
        # on its next heartbeat), gives its partitions up and joins again,
        # and the three settle once more.
        topic = create_topic(unique("grp-paused"), 6)
        group = unique("grp-paused")
        parts = [(topic, p) for p in range(6)]
        conf = dict(CLASSIC, **{"partition.assignment.strategy": "range"})
        a = self.member("a", group, [topic], conf)
        b = self.member("b", group, [topic], conf)
        # The paused member keeps believing it owns its partitions while it
        # is stopped (a zombie of an old generation): its ownership is kept
        # out of the shared ledger.
        x = CrashableMember("x", group, topic, Ledger(), conf)
        self.crashable.append(x)
        snap, _ = self.settle([a, b, x], parts, "three members")
        held = snap["x"]
        self.assertTrue(held)
        x.proc.send_signal(signal.SIGSTOP)
        try:
            self.settle([a, b], parts, "x paused", timeout=SESSION_MS / 1000 + SETTLE)
        finally:
            x.proc.send_signal(signal.SIGCONT)
        self.settle([a, b, x], parts, "x back")
        with x.lock:
            gave_up = [ev for ev in x.lines if ev["event"] in ("revoke", "lost") and {tuple(tp) for tp in ev["partitions"]} >= held]
        self.assertTrue(gave_up, "x gave up the partitions it held before the pause: %s" % x.lines[-6:])
        self.assert_no_errors([a, b])
        a.close()
        b.close()


class Commit(GroupTest):
    def test_sync_commit_with_metadata_then_resume(self):
        self.commit_and_resume(CLASSIC)

    def test_auto_commit_then_resume(self):
        self.auto_commit_and_resume(CLASSIC)


class Kip848(GroupTest):
    def test_consumer_protocol_join_leave(self):
        self.join_leave_crash(KIP848, sticky=False, crash=False, session_s=KIP848_SESSION_MS / 1000)

    def test_consumer_protocol_commit_then_resume(self):
        self.commit_and_resume(KIP848)

    def test_consumer_protocol_auto_commit_then_resume(self):
        self.auto_commit_and_resume(KIP848)

    def test_consumer_protocol_group_described_and_listed(self):
        topic = create_topic(unique("grp-848-describe"), 4)
        group = unique("grp-848-describe")
        parts = [(topic, p) for p in range(4)]
        a = self.member("a848", group, [topic], KIP848)
        b = self.member("b848", group, [topic], KIP848)
        snap, _ = self.settle([a, b], parts, "two consumer-protocol members")
        (f,) = admin().describe_consumer_groups([group], request_timeout=TIMEOUT).values()
        d = f.result(timeout=TIMEOUT)
        self.assertEqual(d.group_id, group)
        self.assertEqual(d.type, ConsumerGroupType.CONSUMER)
        self.assertEqual(d.state, ConsumerGroupState.STABLE)
        self.assertFalse(d.is_simple_consumer_group)
        self.assertEqual(sorted(m.client_id for m in d.members), ["a848", "b848"])
        described = {m.client_id: frozenset(tp_key(tp) for tp in m.assignment.topic_partitions) for m in d.members}
        self.assertEqual(described, {"a848": snap["a848"], "b848": snap["b848"]})
        for m in d.members:
            self.assertIsNotNone(m.target_assignment, "KIP-848 members have a target assignment")
            self.assertEqual(frozenset(tp_key(tp) for tp in m.target_assignment.topic_partitions), described[m.client_id])

        res = admin().list_consumer_groups(types={ConsumerGroupType.CONSUMER}, request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        self.assertEqual(res.errors, [])
        self.assertIn(group, {g.group_id for g in res.valid})
        res = admin().list_consumer_groups(types={ConsumerGroupType.CLASSIC}, request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        self.assertNotIn(group, {g.group_id for g in res.valid})

        # Non-empty: refused.
        (f,) = admin().delete_consumer_groups([group], request_timeout=TIMEOUT).values()
        with self.assertRaises(KafkaException) as e:
            f.result(timeout=TIMEOUT)
        self.assertEqual(error_code(e.exception), KafkaError.NON_EMPTY_GROUP)
        a.close()
        b.close()
        self.assert_no_errors([a, b])
        (f,) = admin().delete_consumer_groups([group], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)

    def test_consumer_protocol_commits_need_the_member_and_its_epoch(self):
        # OffsetCommit v9 carries the KIP-848 member epoch: an unknown
        # member is refused with UNKNOWN_MEMBER_ID, an epoch below the
        # member's with STALE_MEMBER_EPOCH, one above it with
        # FENCED_MEMBER_EPOCH; nothing refused is stored.
        import kafka.errors as Errors
        from groups_kafka_python import admin as kp_admin
        from groups_kafka_python import committed_offset, raw_commit

        topic = create_topic(unique("grp-848-epoch"), 1)
        group = unique("grp-848-epoch")
        a = self.member("epoch", group, [topic], KIP848)
        self.settle([a], [(topic, 0)], "one consumer-protocol member")
        member_id = a.call(lambda c: c.memberid())
        self.assertTrue(member_id)
        ka = kp_admin()
        try:
            self.assertIs(raw_commit(ka, group, 1_000_000, member_id, topic, 0, 3), Errors.FencedMemberEpochError)
            self.assertIs(raw_commit(ka, group, 0, member_id, topic, 0, 3), Errors.StaleMemberEpochError)
            self.assertIs(raw_commit(ka, group, 1, "not-a-member", topic, 0, 3), Errors.UnknownMemberIdError)
            self.assertIsNone(committed_offset(ka, group, topic, 0), "refused commits stored nothing")
        finally:
            ka.close()
        # The member's own commit, with its epoch, is accepted.
        a.call(lambda c: c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False))
        (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
        self.assertEqual([(t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions], [(0, 2)])
        a.close()
        self.assert_no_errors([a])

    def test_consumer_protocol_static_member_restarts_without_moving_others(self):
        # A static member's close() is a temporary leave (member epoch -2):
        # the coordinator keeps the member and its partitions for the
        # session timeout (45 s) without a new group epoch, and a consumer
        # with the same instance id takes them back, while the others keep
        # theirs throughout.
        topic = create_topic(unique("grp-848-static-restart"), 4)
        group = unique("grp-848-static-restart")
        parts = [(topic, p) for p in range(4)]
        a = self.member("sa", group, [topic], KIP848, **{"group.instance.id": "static-a"})
        b = self.member("sb", group, [topic], KIP848, **{"group.instance.id": "static-b"})
        snap, _ = self.settle([a, b], parts, "two static consumer-protocol members")
        events = a.event_count()
        b.close()
        # Longer than the heartbeat interval (5 s), so that a would have
        # heard of any new assignment; well inside the session timeout.
        time.sleep(6.5)
        self.assertEqual(a.current(), snap["sa"], "a's partitions while b is away")
        self.assertEqual(a.event_count(), events, "a saw rebalance callbacks while b was away: %s" % a.events[-3:])
        b2 = self.member("sb2", group, [topic], KIP848, **{"group.instance.id": "static-b"})
        got = wait_until("b's replacement assigned", lambda: b2.current(), timeout=SETTLE)
        self.assertEqual(got, snap["sb"], "the restarted static member gets its partitions back")
        time.sleep(HOLD)
        self.assertEqual(a.current(), snap["sa"])
        self.assertEqual(a.event_count(), events, "a saw rebalance callbacks: %s" % a.events[-3:])
        self.assert_no_violations()
        a.close()
        b2.close()
        self.assert_no_errors([a, b2])

    def test_consumer_protocol_static_member_with_a_taken_instance_id_is_refused(self):
        # KIP-848: the member that joins with an instance id in use is the
        # one refused (UNRELEASED_INSTANCE_ID); the one holding it stays.
        topic = create_topic(unique("grp-848-static"), 2)
        group = unique("grp-848-static")
        parts = [(topic, p) for p in range(2)]
        first = self.member("first", group, [topic], KIP848, **{"group.instance.id": "same"})
        self.settle([first], parts, "static consumer-protocol member")
        second = self.member("second", group, [topic], KIP848, **{"group.instance.id": "same"})

        def refused():
            return [e for e in second.error_list() if e.code() == KafkaError.UNRELEASED_INSTANCE_ID or (e.code() == KafkaError._FATAL and "instance" in e.str().lower())]

        wait_until("the second member refused with UNRELEASED_INSTANCE_ID (its errors: %s)" % second.error_list(), refused, timeout=SETTLE)
        snap, _ = self.settle([first], parts, "the first member unaffected")
        self.assertEqual(first.error_list(), [])
        self.assertEqual(second.current(), frozenset())
        first.close()
        second.close()


class Kip848Migration(GroupTest):
    """Groups with members of both protocols. Kafka 4's default
    group.consumer.migration.policy is `bidirectional`: a classic member
    may join a consumer-protocol group, and a consumer-protocol member
    joining a classic group upgrades it online. Odradek refuses both
    (BROKER-BUGS.md), hence expectedFailure: once it admits them, these
    report an unexpected success and the marks should go."""

    def mixed(self, first_conf, second_conf, group_type):
        topic = create_topic(unique("grp-mixed"), 4)
        group = unique("grp-mixed")
        parts = [(topic, p) for p in range(4)]
        a = self.member("first", group, [topic], first_conf)
        self.settle([a], parts, "the first member")
        b = self.member("second", group, [topic], second_conf)
        deadline = time.monotonic() + SETTLE
        while not b.current():
            errors = b.error_list()
            self.assertEqual([str(e) for e in errors], [], "the second member, of the other protocol, refused")
            self.assertLess(time.monotonic(), deadline, "the second member, of the other protocol, never assigned")
            time.sleep(0.1)
        self.settle([a, b], parts, "members of both protocols")
        (f,) = admin().describe_consumer_groups([group], request_timeout=TIMEOUT).values()
        self.assertEqual(f.result(timeout=TIMEOUT).type, group_type)
        a.close()
        b.close()
        self.assert_no_errors([a, b])

    @unittest.expectedFailure
    def test_classic_member_joins_a_consumer_protocol_group(self):
        self.mixed(KIP848, dict(CLASSIC, **{"partition.assignment.strategy": "range"}), ConsumerGroupType.CONSUMER)

    @unittest.expectedFailure
    def test_consumer_protocol_member_upgrades_a_classic_group(self):
        self.mixed(dict(CLASSIC, **{"partition.assignment.strategy": "cooperative-sticky"}), KIP848, ConsumerGroupType.CONSUMER)


class Kip848Crash(GroupTest):
    def test_consumer_protocol_crash(self):
        # The session timeout is the broker's (group.consumer.session.timeout.ms).
        topic = create_topic(unique("grp-848-crash"), 4)
        group = unique("grp-848-crash")
        parts = [(topic, p) for p in range(4)]
        a = self.member("a", group, [topic], KIP848)
        x = self.crashable_member("x", group, topic, KIP848)
        snap, _ = self.settle([a, x], parts, "a and x")
        x.kill()
        session_s = KIP848_SESSION_MS / 1000
        snap, took = self.settle([a], parts, "x killed", timeout=session_s + SETTLE)
        self.assertLess(took, session_s + 15)
        self.assertGreater(took, min(session_s, 6) - 2.5, "x's partitions moved %.1fs after a kill that nothing reported" % took)
        a.close()
        self.assert_no_errors([a])


class Static(GroupTest):
    def test_static_member_restarts_without_a_rebalance(self):
        topic = create_topic(unique("grp-static"), 6)
        group = unique("grp-static")
        parts = [(topic, p) for p in range(6)]
        conf = dict(CLASSIC, **{"partition.assignment.strategy": "range"})
        s = {n: self.member(n, group, [topic], conf, **{"group.instance.id": "static-" + n}) for n in "abc"}
        snap, _ = self.settle(list(s.values()), parts, "three static members")
        counts = {n: s[n].event_count() for n in "ac"}

        # close() of a static member sends no LeaveGroup (KIP-345): the
        # group waits for it until its session times out.
        s["b"].close()
        time.sleep(1.0)
        self.assertEqual({n: s[n].current() for n in "ac"}, {n: snap[n] for n in "ac"}, "a and c after b stopped")
        restarted = self.member("b2", group, [topic], conf, **{"group.instance.id": "static-b"})
        got = wait_until("b's replacement assigned", lambda: restarted.current(), timeout=SETTLE)
        self.assertEqual(got, snap["b"], "the restarted static member gets its partitions back")
        # Past the old session's expiry: still nobody else moved.
        time.sleep(SESSION_MS / 1000 + 1)
        self.assertEqual({n: s[n].event_count() for n in "ac"}, counts, "a and c saw rebalance callbacks: %s" % {n: s[n].events[-3:] for n in "ac"})
        self.assertEqual({n: s[n].current() for n in "ac"}, {n: snap[n] for n in "ac"})
        self.assertEqual(restarted.current(), snap["b"])
        self.assert_no_violations()
        self.assert_no_errors([s["a"], s["c"], restarted])

    def test_same_instance_id_fences_the_first(self):
        topic = create_topic(unique("grp-fence"), 4)
        group = unique("grp-fence")
        parts = [(topic, p) for p in range(4)]
        conf = dict(CLASSIC, **{"partition.assignment.strategy": "range"})
        other = self.member("other", group, [topic], conf, **{"group.instance.id": "fence-other"})
        # The fenced member believes it owns its partitions until it hears
        # it was fenced (a zombie of an older generation, which can commit
        # nothing): its ownership is kept out of the shared ledger.
        first = Member("first", group, [topic], Ledger(), conf, **{"group.instance.id": "fence-same"})
        self.members.append(first)
        snap, _ = self.settle([other, first], parts, "two static members")
        second = self.member("second", group, [topic], conf, **{"group.instance.id": "fence-same"})

        def fenced():
            return [
                e for e in first.error_list() if e.code() == KafkaError.FENCED_INSTANCE_ID or (e.code() == KafkaError._FATAL and "fenced" in e.str().lower())
            ]

        errs = wait_until("the first consumer with fence-same fenced (its errors: %s)" % first.error_list(), fenced, timeout=SETTLE)
        self.assertTrue(any(e.fatal() or e.code() == KafkaError._FATAL for e in errs), "FENCED_INSTANCE_ID is fatal to the fenced consumer: %s" % errs)
        got = wait_until("the second consumer with fence-same assigned", lambda: second.current(), timeout=SETTLE)
        self.assertEqual(got, snap["first"], "the new instance takes over the fenced one's partitions")
        first.close()
        self.settle([other, second], parts, "after the fencing")
        self.assert_no_errors([other, second])


class Admin(GroupTest):
    def test_list_and_describe_groups(self):
        topic = create_topic(unique("grp-admin"), 4)
        active = unique("grp-active")
        empty = unique("grp-empty")
        parts = [(topic, p) for p in range(4)]
        produce(topic, 4, 5)

        # An empty group: offsets committed, no members.
        c = Consumer(group_conf(empty, CLASSIC))
        c.commit(offsets=[TopicPartition(topic, 0, 3, metadata="m0"), TopicPartition(topic, 2, 5)], asynchronous=False)
        c.close()

        conf = dict(CLASSIC, **{"partition.assignment.strategy": "roundrobin"})
        a = self.member("admin-a", active, [topic], conf)
        b = self.member("admin-b", active, [topic], conf)
        snap, _ = self.settle([a, b], parts, "two members")

        def listed(**filters):
            res = admin().list_consumer_groups(request_timeout=TIMEOUT, **filters).result(timeout=TIMEOUT)
            self.assertEqual(res.errors, [])
            return {g.group_id: g for g in res.valid}

        every = listed()
        self.assertIn(active, every)
        self.assertIn(empty, every)
        self.assertEqual(every[active].state, ConsumerGroupState.STABLE)
        self.assertEqual(every[empty].state, ConsumerGroupState.EMPTY)
        self.assertFalse(every[active].is_simple_consumer_group)
        stable = listed(states={ConsumerGroupState.STABLE})
        self.assertIn(active, stable)
        self.assertNotIn(empty, stable)
        empties = listed(states={ConsumerGroupState.EMPTY})
        self.assertIn(empty, empties)
        self.assertNotIn(active, empties)
        self.assertNotIn(active, listed(states={ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING}))
        classic = listed(types={ConsumerGroupType.CLASSIC})
        self.assertIn(active, classic)
        self.assertEqual(classic[active].type, ConsumerGroupType.CLASSIC)
        self.assertNotIn(active, listed(types={ConsumerGroupType.CONSUMER}))

        futures = admin().describe_consumer_groups([active, empty], request_timeout=TIMEOUT)
        d = futures[active].result(timeout=TIMEOUT)
        self.assertEqual(d.group_id, active)
        self.assertEqual(d.state, ConsumerGroupState.STABLE)
        self.assertEqual(d.type, ConsumerGroupType.CLASSIC)
        self.assertEqual(d.partition_assignor, "roundrobin")
        self.assertFalse(d.is_simple_consumer_group)
        self.assertIsNotNone(d.coordinator)
        self.assertEqual(sorted(m.client_id for m in d.members), ["admin-a", "admin-b"])
        self.assertEqual(len({m.member_id for m in d.members}), 2)
        for m in d.members:
            self.assertTrue(m.member_id, "a member id")
            self.assertIsNone(m.group_instance_id)
            self.assertTrue(m.host, "the member's host")
        described = {m.client_id: frozenset(tp_key(tp) for tp in m.assignment.topic_partitions) for m in d.members}
        self.assertEqual(described, {"admin-a": snap["admin-a"], "admin-b": snap["admin-b"]})
        d = futures[empty].result(timeout=TIMEOUT)
        self.assertEqual((d.state, d.members), (ConsumerGroupState.EMPTY, []))

        # A group nobody has used: Dead (DescribeGroups before v6) or
        # GROUP_ID_NOT_FOUND (v6, KIP-1043).
        (f,) = admin().describe_consumer_groups([unique("grp-never")], request_timeout=TIMEOUT).values()
        try:
            d = f.result(timeout=TIMEOUT)
            self.assertEqual((d.state, d.members), (ConsumerGroupState.DEAD, []))
        except KafkaException as e:
            self.assertEqual(error_code(e), KafkaError.GROUP_ID_NOT_FOUND)

        a.close()
        b.close()
        self.assert_no_errors([a, b])
        self.assertEqual(listed(states={ConsumerGroupState.EMPTY}).get(active).state, ConsumerGroupState.EMPTY)

    def test_delete_groups(self):
        topic = create_topic(unique("grp-delete"), 2)
        group = unique("grp-delete")
        parts = [(topic, p) for p in range(2)]
        m = self.member("deleted", group, [topic], CLASSIC)
        self.settle([m], parts, "one member")

        (f,) = admin().delete_consumer_groups([group], request_timeout=TIMEOUT).values()
        with self.assertRaises(KafkaException) as e:
            f.result(timeout=TIMEOUT)
        self.assertEqual(error_code(e.exception), KafkaError.NON_EMPTY_GROUP)

        c = Consumer(group_conf(group, CLASSIC))
        # An admin-style commit (no generation) to a group with members is
        # refused, as in Kafka.
        with self.assertRaises(KafkaException):
            c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        c.close()

        m.close()
        c = Consumer(group_conf(group, CLASSIC))
        c.commit(offsets=[TopicPartition(topic, 0, 1), TopicPartition(topic, 1, 2)], asynchronous=False)
        c.close()
        (f,) = admin().delete_consumer_groups([group], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        res = admin().list_consumer_groups(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        self.assertNotIn(group, {g.group_id for g in res.valid})
        (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0), TopicPartition(topic, 1)])], request_timeout=TIMEOUT).values()
        res = f.result(timeout=TIMEOUT)
        self.assertEqual(sorted((t.partition, t.offset) for t in res.topic_partitions), [(0, -1001), (1, -1001)], "offsets gone with the group")

        # Deleting it again, or one that never existed.
        for g in (group, unique("grp-never")):
            (f,) = admin().delete_consumer_groups([g], request_timeout=TIMEOUT).values()
            with self.assertRaises(KafkaException) as e:
                f.result(timeout=TIMEOUT)
            self.assertEqual(error_code(e.exception), KafkaError.GROUP_ID_NOT_FOUND)

    def test_list_and_alter_group_offsets(self):
        topic = create_topic(unique("grp-offsets"), 3)
        group = unique("grp-offsets")
        produce(topic, 3, 10)
        c = Consumer(group_conf(group, CLASSIC))
        c.commit(offsets=[TopicPartition(topic, 0, 4, metadata="zero"), TopicPartition(topic, 1, 7)], asynchronous=False)
        c.close()

        def listed(parts=None):
            (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, parts)], request_timeout=TIMEOUT).values()
            res = f.result(timeout=TIMEOUT)
            self.assertEqual(res.group_id, group)
            return sorted((t.topic, t.partition, t.offset, t.metadata or "") for t in res.topic_partitions)

        self.assertEqual(listed(), [(topic, 0, 4, "zero"), (topic, 1, 7, "")])
        self.assertEqual(
            listed([TopicPartition(topic, p) for p in range(3)]),
            [(topic, 0, 4, "zero"), (topic, 1, 7, ""), (topic, 2, -1001, "")],
        )

        (f,) = admin().alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 2), TopicPartition(topic, 2, 9, metadata="two")])], request_timeout=TIMEOUT
        ).values()
        res = f.result(timeout=TIMEOUT)
        self.assertEqual(sorted((t.partition, t.offset, t.error) for t in res.topic_partitions), [(0, 2, None), (2, 9, None)])
        self.assertEqual(listed(), [(topic, 0, 2, ""), (topic, 1, 7, ""), (topic, 2, 9, "two")])

        # A consumer of the group starts where the offsets were altered to.
        c = Consumer(group_conf(group, CLASSIC))
        c.subscribe([topic])
        first = {}
        deadline = time.monotonic() + SETTLE
        while len(first) < 3:
            self.assertLess(time.monotonic(), deadline, "first records: %s" % first)
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                first.setdefault(m.partition(), m.offset())
        self.assertEqual(first, {0: 2, 1: 7, 2: 9})

        # Altering offsets of a group with members is refused.
        (f,) = admin().alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 0)])], request_timeout=TIMEOUT).values()
        try:
            res = f.result(timeout=TIMEOUT)
            errors = [t.error for t in res.topic_partitions if t.error is not None]
            self.assertTrue(errors, "altering offsets of an active group succeeded")
        except KafkaException as e:
            self.assertIn(error_code(e), (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS))
        c.close()

    def test_commit_to_a_topic_that_does_not_exist(self):
        # Kafka checks the partitions of an OffsetCommit against its
        # metadata: UNKNOWN_TOPIC_OR_PARTITION, nothing stored.
        topic = create_topic(unique("grp-notopic"), 1)
        group = unique("grp-notopic")
        missing = unique("grp-no-such-topic")
        (f,) = admin().alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(missing, 0, 5), TopicPartition(topic, 3, 5), TopicPartition(topic, 0, 1)])], request_timeout=TIMEOUT
        ).values()
        try:
            res = f.result(timeout=TIMEOUT)
            errors = {(t.topic, t.partition): t.error.code() if t.error else None for t in res.topic_partitions}
        except KafkaException as e:
            errors = {"request": error_code(e)}
        self.assertEqual(
            errors.get((missing, 0), errors.get("request")), KafkaError.UNKNOWN_TOPIC_OR_PART, "commit to a topic that does not exist: %s" % errors
        )
        self.assertEqual(
            errors.get((topic, 3), errors.get("request")), KafkaError.UNKNOWN_TOPIC_OR_PART, "commit to a partition that does not exist: %s" % errors
        )
        (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
        stored = sorted((t.topic, t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions)
        self.assertNotIn(missing, {t for t, _, _ in stored}, "offsets stored for a topic that does not exist")
        self.assertNotIn((topic, 3), {(t, p) for t, p, _ in stored}, "offsets stored for a partition that does not exist")

    def test_offset_metadata_and_leader_epoch(self):
        # Metadata within offset.metadata.max.bytes (4096) is kept, longer
        # is refused (OFFSET_METADATA_TOO_LARGE); the committed leader epoch
        # comes back with the offset. (confluent-kafka sends the metadata
        # with its terminating NUL, one byte more than the string: the exact
        # boundary is checked through kafka-python.)
        topic = create_topic(unique("grp-meta"), 2)
        group = unique("grp-meta")
        c = Consumer(group_conf(group, CLASSIC))
        try:
            done = c.commit(offsets=[TopicPartition(topic, 0, 4, metadata="m" * 4000, leader_epoch=0)], asynchronous=False)
            self.assertEqual([t.error for t in done], [None])
            with self.assertRaises(KafkaException) as e:
                c.commit(offsets=[TopicPartition(topic, 1, 4, metadata="m" * 5000)], asynchronous=False)
            self.assertEqual(error_code(e.exception), KafkaError.OFFSET_METADATA_TOO_LARGE)
            seen = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=TIMEOUT)
            self.assertEqual([(t.partition, t.offset, (t.metadata or "").rstrip("\0"), t.leader_epoch) for t in seen], [(0, 4, "m" * 4000, 0), (1, -1001, "", None)])
        finally:
            c.close()

    def test_offsets_of_a_deleted_topic_go_with_it(self):
        # Kafka drops a group's committed offsets for partitions whose topic
        # is deleted; a topic created again with the same name starts with
        # no committed offsets.
        topic = create_topic(unique("grp-deltopic"), 2)
        kept = create_topic(unique("grp-kept"), 1)
        group = unique("grp-deltopic")
        c = Consumer(group_conf(group, CLASSIC))
        c.commit(offsets=[TopicPartition(topic, 0, 1), TopicPartition(topic, 1, 2), TopicPartition(kept, 0, 3)], asynchronous=False)
        c.close()
        admin().delete_topics([topic], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)

        def listed():
            (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
            return sorted((t.topic, t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions)

        wait_until("the deleted topic's offsets gone (listed: %s)" % listed(), lambda: listed() == [(kept, 0, 3)], timeout=10)
        wait_until("%s gone from the metadata" % topic, lambda: topic not in admin().list_topics(timeout=TIMEOUT).topics, timeout=10)
        create_topic(topic, 2)
        (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0), TopicPartition(topic, 1)])], request_timeout=TIMEOUT).values()
        self.assertEqual(sorted((t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions), [(0, -1001), (1, -1001)])

    def test_session_timeout_outside_the_brokers_bounds_is_refused(self):
        # group.min.session.timeout.ms (6 s) and group.max.session.timeout.ms
        # (30 min): JoinGroup outside them fails with INVALID_SESSION_TIMEOUT.
        topic = create_topic(unique("grp-badsession"), 1)
        for session_ms in (1000, 1800001):
            group = unique("grp-badsession")
            conf = {"session.timeout.ms": session_ms, "heartbeat.interval.ms": 500, "max.poll.interval.ms": max(MAX_POLL_MS, session_ms)}
            m = self.member("badsession-%d" % session_ms, group, [topic], conf)
            wait_until(
                "JoinGroup with session.timeout.ms=%d refused with INVALID_SESSION_TIMEOUT (errors: %s)" % (session_ms, m.error_list()),
                lambda: [e for e in m.error_list() if e.code() == KafkaError.INVALID_SESSION_TIMEOUT],
                timeout=SETTLE,
            )
            self.assertEqual(m.current(), frozenset())
            m.close()

    def test_delete_group_offsets(self):
        # OffsetDelete. confluent-kafka 2.16 does not bind librdkafka's
        # DeleteConsumerGroupOffsets, so kafka-python sends it.
        from kafka import TopicPartition as KTP
        from kafka.admin import KafkaAdminClient
        from kafka.errors import GroupSubscribedToTopicError, NoError

        topic = create_topic(unique("grp-offdel"), 2)
        other = create_topic(unique("grp-offdel-other"), 1)
        group = unique("grp-offdel")
        c = Consumer(group_conf(group, CLASSIC))
        c.commit(offsets=[TopicPartition(topic, 0, 1), TopicPartition(topic, 1, 2), TopicPartition(other, 0, 3)], asynchronous=False)
        c.close()

        ka = KafkaAdminClient(bootstrap_servers=common.BOOTSTRAP, request_timeout_ms=int(TIMEOUT * 1000))
        try:
            res = ka.delete_group_offsets(group, [KTP(topic, 0)])
            self.assertEqual(res, {KTP(topic, 0): NoError})
            (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
            left = sorted((t.topic, t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions)
            self.assertEqual(left, sorted([(topic, 1, 2), (other, 0, 3)]))

            # A member subscribed to `other`: its offsets cannot be deleted
            # (GROUP_SUBSCRIBED_TO_TOPIC); `topic`'s can.
            m = self.member("offdel", group, [other], CLASSIC)
            self.settle([m], [(other, 0)], "a member subscribed to the other topic")
            res = ka.delete_group_offsets(group, [KTP(other, 0), KTP(topic, 1)])
            self.assertEqual(res, {KTP(other, 0): GroupSubscribedToTopicError, KTP(topic, 1): NoError})
            (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
            left = sorted((t.topic, t.partition, t.offset) for t in f.result(timeout=TIMEOUT).topic_partitions)
            self.assertEqual(left, [(other, 0, 3)])
            m.close()
        finally:
            ka.close()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "member":
        member_main(*sys.argv[2:])
    else:
        common.main()
