"""kafka-python, a pure-Python client with its own protocol code (not
librdkafka): admin, KafkaProducer send + flush, KafkaConsumer with assign
and seek_to_beginning.

    target/ci-venv/bin/python server/tests/clients/kafka_python.py HOST:PORT [-k PATTERN]
"""

import time
import unittest

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

import common
from common import TIMEOUT, unique


def create_topic(name, partitions):
    a = KafkaAdminClient(bootstrap_servers=common.BOOTSTRAP, request_timeout_ms=int(TIMEOUT * 1000))
    try:
        a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        a.close()


def producer(**conf):
    return KafkaProducer(
        bootstrap_servers=common.BOOTSTRAP,
        request_timeout_ms=int(TIMEOUT * 1000 / 2),
        max_block_ms=int(TIMEOUT * 1000 / 2),
        **conf,
    )


def read_all(topic, partitions, count):
    """Everything in the given partitions from the start: {partition: [record]}."""
    c = KafkaConsumer(
        bootstrap_servers=common.BOOTSTRAP,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(TIMEOUT * 1000 / 2),
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        c.seek_to_beginning()
        got = {p: [] for p in partitions}
        deadline = time.monotonic() + TIMEOUT
        while sum(len(v) for v in got.values()) < count:
            assert time.monotonic() < deadline, "read %s of %d records within %ss" % ({p: len(v) for p, v in got.items()}, count, TIMEOUT)
            for tp, records in c.poll(timeout_ms=500).items():
                got[tp.partition].extend(records)
        # Nothing beyond what was produced.
        extra = c.poll(timeout_ms=300)
        assert not extra, "unexpected records after the last: %s" % extra
        ends = c.end_offsets(tps)
        return got, {tp.partition: off for tp, off in ends.items()}
    finally:
        c.close()


class KafkaPython(unittest.TestCase):
    def check_round_trip(self, topic, partitions, sent, metadata, got, ends):
        for p in partitions:
            mine = [s for s, md in zip(sent, metadata) if md.partition == p]
            acked = [md.offset for md in metadata if md.partition == p]
            self.assertEqual(sorted(acked), list(range(len(mine))), "acknowledged offsets of partition %d" % p)
            records = got[p]
            self.assertEqual([r.offset for r in records], list(range(len(mine))), "offsets of partition %d" % p)
            self.assertEqual(ends[p], len(mine))
            for (key, value, headers), r in zip(mine, records):
                self.assertEqual((r.key, r.value, list(r.headers)), (key, value, headers), "partition %d offset %d" % (p, r.offset))

    def test_send_flush_and_read_back(self):
        # acks=all: kafka-python 3 makes this producer idempotent
        # (InitProducerId, sequence numbers) without being asked.
        topic = unique("kafka-python")
        create_topic(topic, 2)
        p = producer(acks="all", compression_type="gzip", linger_ms=5)
        sent, futures = [], []
        for i in range(300):
            key = b"key-%d" % i
            value = b"kafka-python value %d " % i * (1 + i % 5)
            headers = [("seq", str(i).encode()), ("client", b"kafka-python")]
            sent.append((key, value, headers))
            futures.append(p.send(topic, key=key, value=value, headers=headers, partition=i % 2))
        p.flush(timeout=TIMEOUT)
        metadata = [f.get(timeout=TIMEOUT) for f in futures]
        p.close()
        got, ends = read_all(topic, [0, 1], len(sent))
        self.check_round_trip(topic, [0, 1], sent, metadata, got, ends)

    def test_auto_created_topic(self):
        topic = unique("kafka-python-auto")
        p = producer(acks=1)
        sent = [(None, b"auto %d" % i, []) for i in range(50)]
        futures = [p.send(topic, value=v) for _, v, _ in sent]
        p.flush(timeout=TIMEOUT)
        metadata = [f.get(timeout=TIMEOUT) for f in futures]
        p.close()
        self.assertEqual({md.partition for md in metadata}, {0}, "auto-created with one partition")
        got, ends = read_all(topic, [0], len(sent))
        self.check_round_trip(topic, [0], sent, metadata, got, ends)


if __name__ == "__main__":
    common.main()
