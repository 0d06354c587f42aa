"""What of the consumer groups survives a broker restart: committed offsets
(with their metadata) of every group, the groups themselves, and deletions
(a deleted group, an OffsetDelete'd partition).

Two phases around a broker stopped (SIGTERM, or SIGKILL right after the
last synchronous commit was acknowledged) and started again on the same
data directory (server/tests/real_clients.rs does that):

    target/ci-venv/bin/python server/tests/clients/groups_restart.py commit HOST:PORT STATE.json
    (stop or kill the broker, start it again on the same log.dirs)
    target/ci-venv/bin/python server/tests/clients/groups_restart.py verify HOST:PORT STATE.json
"""

import json
import sys
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import TIMEOUT

PARTITIONS = 3
PER_PARTITION = 30
SETTLE = max(TIMEOUT, 30.0)


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def consumer(bootstrap, group, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }
    conf.update(extra)
    return Consumer(conf)


def take(c, n):
    got = []
    deadline = time.monotonic() + SETTLE
    while len(got) < n:
        if time.monotonic() > deadline:
            sys.exit("read %d of %d records within %.0fs" % (len(got), n, SETTLE))
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error() is not None:
            raise KafkaException(m.error())
        got.append((m.partition(), m.offset()))
    return got


def listed_offsets(a, group):
    (f,) = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT).values()
    return {"%s:%d" % (t.topic, t.partition): [t.offset, t.metadata or ""] for t in f.result(timeout=TIMEOUT).topic_partitions}


def phase_commit(bootstrap, state_path):
    a = admin(bootstrap)
    suffix = str(int(time.time() * 1000))
    topic = "grp-restart-" + suffix
    a.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for part in range(PARTITIONS):
        for i in range(PER_PARTITION):
            p.produce(topic, partition=part, value=b"v-%d-%d" % (part, i))
    if p.flush(TIMEOUT):
        sys.exit("records not delivered")

    groups = {name: "grp-restart-%s-%s" % (name, suffix) for name in ("sync", "auto", "altered", "offdel", "deleted")}

    # A subscribed member reads 40 records and commits their next offsets
    # with metadata, synchronously.
    c = consumer(bootstrap, groups["sync"])
    c.subscribe([topic])
    got = take(c, 40)
    nxt = {}
    for part, o in got:
        nxt[part] = o + 1
    c.commit(offsets=[TopicPartition(topic, part, o, metadata="sync-%d" % part) for part, o in nxt.items()], asynchronous=False)
    c.close()

    # Auto commit: everything read, committed at close.
    c = consumer(bootstrap, groups["auto"], **{"enable.auto.commit": True, "auto.commit.interval.ms": 200})
    c.subscribe([topic])
    take(c, PARTITIONS * PER_PARTITION)
    c.close()

    # Set by the admin API.
    (f,) = a.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(groups["altered"], [TopicPartition(topic, 0, 11, metadata="alt"), TopicPartition(topic, 2, 22)])], request_timeout=TIMEOUT
    ).values()
    f.result(timeout=TIMEOUT)

    # Two offsets, one of them deleted with OffsetDelete (kafka-python).
    c = consumer(bootstrap, groups["offdel"])
    c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)], asynchronous=False)
    c.close()
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient

    ka = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(TIMEOUT * 1000))
    try:
        res = ka.delete_group_offsets(groups["offdel"], [KTP(topic, 1)])
        if any(err.errno != 0 for err in res.values()):
            sys.exit("OffsetDelete failed: %s" % res)
    finally:
        ka.close()

    # A whole group deleted.
    c = consumer(bootstrap, groups["deleted"])
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    (f,) = a.delete_consumer_groups([groups["deleted"]], request_timeout=TIMEOUT).values()
    f.result(timeout=TIMEOUT)

    expected = {name: listed_offsets(a, g) for name, g in groups.items()}
    want = {
        "sync": {"%s:%d" % (topic, part): [o, "sync-%d" % part] for part, o in nxt.items()},
        "auto": {"%s:%d" % (topic, part): [PER_PARTITION, ""] for part in range(PARTITIONS)},
        "altered": {"%s:0" % topic: [11, "alt"], "%s:2" % topic: [22, ""]},
        "offdel": {"%s:0" % topic: [3, ""]},
        "deleted": {},
    }
    if expected != want:
        sys.exit("before the restart, the broker reports %s\nexpected %s" % (expected, want))

    # The last thing before the broker is stopped (or killed): one more
    # synchronous commit, acknowledged.
    c = consumer(bootstrap, groups["sync"])
    c.commit(offsets=[TopicPartition(topic, 0, nxt.get(0, 0), metadata="last-0")], asynchronous=False)
    c.close()
    want["sync"]["%s:0" % topic] = [nxt.get(0, 0), "last-0"]

    with open(state_path, "w") as out:
        json.dump({"topic": topic, "groups": groups, "offsets": want}, out)
    print("committed offsets of %d groups: %s" % (len(groups), want))


def phase_verify(bootstrap, state_path):
    with open(state_path) as f:
        state = json.load(f)
    a = admin(bootstrap)
    topic, groups, want = state["topic"], state["groups"], state["offsets"]
    failures = []
    # The coordinator may still be loading the groups right after a
    # start (COORDINATOR_LOAD_IN_PROGRESS, which the clients retry).
    for name, group in groups.items():
        got = listed_offsets(a, group)
        if got != want[name]:
            failures.append("group %s (%s): offsets %s after the restart, %s before" % (name, group, got, want[name]))

    listing = a.list_consumer_groups(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
    listed = {g.group_id for g in listing.valid}
    for name in ("sync", "auto", "altered", "offdel"):
        if groups[name] not in listed:
            failures.append("group %s (%s) not listed after the restart; listed: %s" % (name, groups[name], sorted(listed)))
    if groups["deleted"] in listed:
        failures.append("deleted group %s is back after the restart" % groups["deleted"])

    # A member of the group resumes at the committed offsets.
    c = consumer(bootstrap, groups["sync"])
    c.subscribe([topic])
    got = take(c, PARTITIONS * PER_PARTITION - sum(o for o, _ in want["sync"].values()))
    first = {}
    for part, o in got:
        first.setdefault(part, o)
    resume = {part: want["sync"].get("%s:%d" % (topic, part), [0])[0] for part in range(PARTITIONS)}
    expected_first = {part: o for part, o in resume.items() if o < PER_PARTITION}
    if first != expected_first:
        failures.append("a member of %s started at %s, the committed offsets were %s" % (groups["sync"], first, resume))
    # And can commit again.
    c.commit(asynchronous=False)
    c.close()
    got = listed_offsets(a, groups["sync"])
    # Partitions it read from are committed again (at their end, without
    # metadata); a partition that was already read to its end keeps its
    # commit.
    after = {"%s:%d" % (topic, part): [PER_PARTITION, ""] for part in expected_first}
    after.update({k: v for k, v in want["sync"].items() if v[0] >= PER_PARTITION})
    if got != after:
        failures.append("commit after the restart: %s, expected %s" % (got, after))

    if failures:
        sys.exit("after the restart:\n  " + "\n  ".join(failures))
    print("committed offsets of %d groups back after the restart" % len(groups))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("commit", "verify"):
        sys.exit("usage: %s commit|verify HOST:PORT STATE.json" % sys.argv[0])
    {"commit": phase_commit, "verify": phase_verify}[sys.argv[1]](sys.argv[2], sys.argv[3])
