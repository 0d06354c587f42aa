"""kcat -G, the balanced consumer of kcat (librdkafka's high-level
consumer, the version Debian builds kcat with): two kcat members split a
topic's partitions between them, print every record once, commit what they
printed when stopped, and a later kcat -G of the same group resumes at the
committed offsets.

    target/ci-venv/bin/python server/tests/clients/groups_kcat.py HOST:PORT [-k PATTERN]

Needs kcat on the PATH; confluent-kafka's admin client reads the group's
committed offsets and creates the topic (kcat cannot choose a partition
count).
"""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import common
from common import SETTLE, TIMEOUT, unique, wait_until

PARTITIONS = 4
# Quick rebalances and a prompt exit; session.timeout.ms=6000 is Kafka's
# group.min.session.timeout.ms.
GROUP_CONF = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000", "-X", "auto.offset.reset=earliest"]


_ADMIN = []


def admin():
    # One for the whole run: an AdminClient collected while a request is in
    # flight fails it with _DESTROY.
    if not _ADMIN:
        _ADMIN.append(AdminClient({"bootstrap.servers": common.BOOTSTRAP}))
    return _ADMIN[0]


class KcatMember:
    """`kcat -G GROUP TOPIC` running, its output collected by threads:
    records from stdout, rebalances from stderr ("% Group ... rebalanced
    ...: assigned: TOPIC [0], TOPIC [2]")."""

    def __init__(self, group, topic, *extra):
        self.lock = threading.Lock()
        self.records = []
        self.stderr = []
        self.assignment = None
        self.proc = subprocess.Popen(
            ["kcat", "-b", common.BOOTSTRAP, "-G", group, "-u", "-f", "%p %o %s\\n"] + GROUP_CONF + list(extra) + [topic],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.threads = [threading.Thread(target=self._out, daemon=True), threading.Thread(target=self._err, daemon=True)]
        for t in self.threads:
            t.start()

    def _out(self):
        for line in self.proc.stdout:
            p, o, value = line.rstrip("\n").split(" ", 2)
            with self.lock:
                self.records.append((int(p), int(o), value))

    def _err(self):
        for line in self.proc.stderr:
            with self.lock:
                self.stderr.append(line.rstrip("\n"))
                if "rebalanced" in line:
                    if "assigned:" in line:
                        self.assignment = {int(p) for p in re.findall(r"\[(\d+)\]", line.split("assigned:", 1)[1])}
                    else:
                        self.assignment = set()

    def current(self):
        with self.lock:
            return self.assignment

    def got(self):
        with self.lock:
            return list(self.records)

    def log(self):
        with self.lock:
            return "\n".join(self.stderr[-20:])

    def stop(self):
        """SIGTERM: kcat closes its consumer (which commits) and exits."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("kcat -G still running %ss after SIGTERM:\n%s" % (TIMEOUT, self.log()))
        for t in self.threads:
            t.join(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def produce(topic, values):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for v in values:
            f.write(v + "\n")
        path = f.name
    try:
        out = subprocess.run(["kcat", "-b", common.BOOTSTRAP, "-P", "-t", topic, "-l", path, "-X", "acks=all"], capture_output=True, timeout=TIMEOUT)
    finally:
        os.unlink(path)
    assert out.returncode == 0 and b"ERROR" not in out.stderr, out.stderr.decode(errors="replace")


def committed(group, topic):
    (f,) = admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])], request_timeout=TIMEOUT).values()
    return {t.partition: t.offset for t in f.result(timeout=TIMEOUT).topic_partitions}


def end_offsets(topic):
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": common.BOOTSTRAP, "group.id": unique("kcat-ends")})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT, cached=False)[1] for p in range(PARTITIONS)}
    finally:
        c.close()


class KcatGroups(unittest.TestCase):
    def test_balanced_consumers_split_commit_and_resume(self):
        topic = unique("kcat-group")
        group = unique("kcat-group")
        admin().create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)

        members = [KcatMember(group, topic), KcatMember(group, topic)]
        try:

            def split():
                a, b = members[0].current(), members[1].current()
                return a and b and not (a & b) and a | b == set(range(PARTITIONS)) and (a, b)

            a, b = wait_until("two kcat -G members splitting %d partitions (logs:\n%s\n%s)" % (PARTITIONS, members[0].log(), members[1].log()), split, timeout=SETTLE)
            print("  kcat members assigned %s and %s" % (sorted(a), sorted(b)))

            values = ["kcat-g-%d" % i for i in range(200)]
            produce(topic, values)

            def printed():
                got = members[0].got() + members[1].got()
                return len(got) >= len(values) and got

            got = wait_until("kcat -G printing all 200 records", printed, timeout=SETTLE)
            self.assertEqual(sorted(v for _, _, v in got), sorted(values), "every record printed exactly once")
            for i, m in enumerate(members):
                mine = {p for p, _, _ in m.got()}
                self.assertTrue(mine <= m.current(), "member %d printed records of partitions %s, assigned %s" % (i, mine, m.current()))
            per_partition = {}
            for p, o, _ in got:
                per_partition.setdefault(p, []).append(o)
            for p, offsets in per_partition.items():
                self.assertEqual(offsets, list(range(len(offsets))), "partition %d offsets in order, dense" % p)
        finally:
            codes = [m.stop() for m in members]
        self.assertEqual(codes, [0, 0], "kcat exit codes; stderr:\n%s\n%s" % (members[0].log(), members[1].log()))

        ends = end_offsets(topic)
        self.assertEqual(sum(ends.values()), 200)
        self.assertEqual(committed(group, topic), ends, "kcat's commits at close: the end of every partition")

        groups = admin().list_consumer_groups(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        self.assertIn(group, {g.group_id for g in groups.valid})

        # A later kcat -G of the group starts at the committed offsets: only
        # the new records, and -e exits once every partition is read.
        more = ["kcat-g-more-%d" % i for i in range(40)]
        produce(topic, more)
        out = subprocess.run(
            ["kcat", "-b", common.BOOTSTRAP, "-G", group, "-e", "-f", "%p %o %s\\n"] + GROUP_CONF + [topic],
            capture_output=True,
            text=True,
            timeout=SETTLE + TIMEOUT,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = [line.split(" ", 2) for line in out.stdout.splitlines() if line]
        self.assertEqual(sorted(v for _, _, v in lines), sorted(more), "resumed exactly after what was committed")
        for p, o, _ in lines:
            self.assertGreaterEqual(int(o), ends[int(p)])
        ends = end_offsets(topic)
        self.assertEqual(committed(group, topic), ends)


if __name__ == "__main__":
    common.main()
