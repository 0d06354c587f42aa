"""What survives a restart: acknowledged records, topics, their configs,
their log start offsets, and deletions.

Two phases around a broker stopped with SIGTERM and started again on the
same data directory (server/tests/real_clients.rs does that):

    target/ci-venv/bin/python server/tests/clients/restart.py produce HOST:PORT STATE.json
    (stop the broker with SIGTERM, start it again on the same log.dirs)
    target/ci-venv/bin/python server/tests/clients/restart.py verify HOST:PORT STATE.json
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from common import TIMEOUT

PARTITIONS = 3
RECORDS = 3000


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def create(a, name, partitions, config=None):
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})], request_timeout=TIMEOUT)
    fs[name].result(timeout=TIMEOUT)


def produce(bootstrap, topic, records, codec):
    """Produces (partition, key, value) with acks=all; returns the
    acknowledged ones with their offsets."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 2,
            "message.timeout.ms": int(TIMEOUT * 1000),
        }
    )
    acked, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked.append({"partition": msg.partition(), "offset": msg.offset(), "key": msg.key().decode(), "value": msg.value().decode()})

    for partition, key, value in records:
        while True:
            try:
                p.produce(topic, partition=partition, key=key.encode(), value=value.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
    left = p.flush(TIMEOUT)
    if left or errors:
        sys.exit("produce to %s: %d undelivered, errors: %s" % (topic, left, errors[:5]))
    return acked


def consume_partition(bootstrap, topic, partition):
    """Everything from the low to the high watermark, with the watermarks."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "restart-check",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT, cached=False)
        c.assign([TopicPartition(topic, partition, low)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < high - low:
            assert time.monotonic() < deadline, "%s[%d]: read %d of %d" % (topic, partition, len(got), high - low)
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is not None:
                    raise KafkaException(m.error())
                got.append(m)
        return low, high, got
    finally:
        c.close()


def phase_produce(bootstrap, state_path):
    a = admin(bootstrap)
    suffix = str(int(time.time() * 1000))
    main = "restart-" + suffix
    configured = "restart-config-" + suffix
    deleted = "restart-deleted-" + suffix
    create(a, main, PARTITIONS)
    create(a, configured, 1, {"retention.ms": "123456789"})
    create(a, deleted, 1)

    records = [(i % PARTITIONS, "key-%d" % i, "value-%d-%s" % (i, "y" * (i % 50))) for i in range(RECORDS)]
    half = RECORDS // 2
    acked = produce(bootstrap, main, records[:half], "lz4") + produce(bootstrap, main, records[half:], "none")

    produce(bootstrap, configured, [(0, "c%d" % i, "v%d" % i) for i in range(10)], "none")
    (f,) = a.delete_records([TopicPartition(configured, 0, 5)], request_timeout=TIMEOUT).values()
    f.result(timeout=TIMEOUT)

    produce(bootstrap, deleted, [(0, "d", "gone")], "none")
    (f,) = a.delete_topics([deleted], request_timeout=TIMEOUT).values()
    f.result(timeout=TIMEOUT)

    with open(state_path, "w") as out:
        json.dump({"main": main, "configured": configured, "deleted": deleted, "acked": acked}, out)
    print("produced and acknowledged %d records to %s" % (len(acked), main))


def phase_verify(bootstrap, state_path):
    with open(state_path) as f:
        state = json.load(f)
    a = admin(bootstrap)
    failures = []
    md = a.list_topics(timeout=TIMEOUT)
    topics = md.topics
    if state["main"] not in topics:
        sys.exit("topic %s is gone after the restart; topics: %s" % (state["main"], sorted(topics)))
    if len(topics[state["main"]].partitions) != PARTITIONS:
        failures.append("%s has %d partitions, not %d" % (state["main"], len(topics[state["main"]].partitions), PARTITIONS))
    if state["deleted"] in topics:
        failures.append("deleted topic %s is back after the restart" % state["deleted"])

    acked = {(r["partition"], r["offset"]): r for r in state["acked"]}
    for partition in range(PARTITIONS):
        low, high, got = consume_partition(bootstrap, state["main"], partition)
        mine = sorted(o for p, o in acked if p == partition)
        if low != 0:
            failures.append("partition %d starts at %d, not 0" % (partition, low))
        if high != len(mine):
            failures.append("partition %d: high watermark %d after the restart, %d records were acknowledged" % (partition, high, len(mine)))
        offsets = [m.offset() for m in got]
        if offsets != list(range(low, high)):
            failures.append("partition %d: offsets not dense: %s" % (partition, offsets[:20]))
        read = {m.offset(): m for m in got}
        lost = [o for o in mine if o not in read]
        if lost:
            failures.append("partition %d: %d acknowledged records lost, offsets %s" % (partition, len(lost), lost[:20]))
        for o in mine:
            m = read.get(o)
            r = acked[(partition, o)]
            if m is not None and (m.key().decode(), m.value().decode()) != (r["key"], r["value"]):
                failures.append("partition %d offset %d: read %r=%r, acknowledged %r=%r" % (partition, o, m.key(), m.value()[:30], r["key"], r["value"][:30]))
                break

    low, high, _ = consume_partition(bootstrap, state["configured"], 0)
    if (low, high) != (5, 10):
        failures.append("%s: watermarks (%d, %d) after the restart, were (5, 10) after DeleteRecords" % (state["configured"], low, high))
    (f,) = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, state["configured"])], request_timeout=TIMEOUT).values()
    retention = f.result(timeout=TIMEOUT)["retention.ms"].value
    if retention != "123456789":
        failures.append("%s: retention.ms is %s after the restart, was set to 123456789" % (state["configured"], retention))

    # Appends continue where the log ended.
    more = produce(bootstrap, state["main"], [(0, "after", "restart")], "none")
    want = len([1 for p, _ in acked if p == 0])
    if more[0]["offset"] != want:
        failures.append("first record after the restart got offset %d, expected %d" % (more[0]["offset"], want))

    if failures:
        sys.exit("after the restart:\n  " + "\n  ".join(failures))
    print("all %d acknowledged records read back after the restart" % len(acked))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("produce", "verify"):
        sys.exit("usage: %s produce|verify HOST:PORT STATE.json" % sys.argv[0])
    {"produce": phase_produce, "verify": phase_verify}[sys.argv[1]](sys.argv[2], sys.argv[3])
