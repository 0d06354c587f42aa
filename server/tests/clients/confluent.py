"""librdkafka, through confluent-kafka: the admin API, producing with every
codec and acks setting, reading everything back, offsets by time, watermarks,
DeleteRecords and the message size limit.

    target/ci-venv/bin/python server/tests/clients/confluent.py HOST:PORT [-k PATTERN]
"""

import os
import time
import unittest
import warnings

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

import common
from common import TIMEOUT, unique, wait_until

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


_ADMIN = []


def admin():
    # One for the whole run: a future outlives nothing that holds it, and
    # an AdminClient collected while a request is in flight fails it with
    # _DESTROY.
    if not _ADMIN:
        _ADMIN.append(AdminClient({"bootstrap.servers": common.BOOTSTRAP}))
    return _ADMIN[0]


def producer(**conf):
    base = {
        "bootstrap.servers": common.BOOTSTRAP,
        # A broker that never acknowledges fails the delivery report well
        # before the test's own timeout, with the reason in it.
        "message.timeout.ms": int(TIMEOUT * 1000 * 2 / 3),
        "linger.ms": 5,
    }
    base.update(conf)
    return Producer(base)


def consumer(**conf):
    base = {
        "bootstrap.servers": common.BOOTSTRAP,
        # librdkafka insists on a group id even for assign(); nothing is
        # committed to it (consumer groups are not served yet).
        "group.id": unique("odradek-test"),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # An offset the broker does not have must be an error, not a silent
        # jump to the end.
        "auto.offset.reset": "error",
    }
    base.update(conf)
    return Consumer(base)


def error_code(exc):
    """The KafkaError code inside whatever a future raised."""
    assert isinstance(exc, KafkaException), "expected a KafkaException, got %r" % (exc,)
    return exc.args[0].code()


def topic_names(a):
    return set(a.list_topics(timeout=TIMEOUT).topics)


def create_topic(name, partitions=1, config=None):
    a = admin()
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=TIMEOUT,
    )
    futures[name].result(timeout=TIMEOUT)
    md = wait_until(
        "metadata for %s" % name,
        lambda: a.list_topics(timeout=TIMEOUT).topics.get(name),
    )
    assert md.error is None, md.error
    assert len(md.partitions) == partitions, md.partitions
    return name


def describe_topic_configs(a, name):
    futures = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)], request_timeout=TIMEOUT)
    (f,) = futures.values()
    return f.result(timeout=TIMEOUT)


def value_for(i, codec="none"):
    # Compressible text and incompressible bytes, so every codec has real
    # work both ways.
    text = ("record %d compressed with %s " % (i, codec)).encode() * (1 + i % 7)
    return text + os.urandom(i % 40)


def produce_and_check(p, topic, records):
    """Produces (partition, key, value, headers, timestamp) tuples; returns
    the delivered messages, failing on any delivery error."""
    delivered = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for partition, key, value, headers, ts in records:
        kwargs = {"partition": partition, "key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if ts is not None:
            kwargs["timestamp"] = ts
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(TIMEOUT)
    assert left == 0, "%d messages still undelivered after %ss" % (left, TIMEOUT)
    assert not errors, "delivery failed: %s" % errors[:5]
    assert len(delivered) == len(records), (len(delivered), len(records))
    return delivered


def consume(topic, partition, start, count, **conf):
    """Reads `count` messages of one partition from offset `start`."""
    c = consumer(**conf)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count:
            assert time.monotonic() < deadline, "read %d of %d messages from %s[%d] within %ss" % (
                len(got),
                count,
                topic,
                partition,
                TIMEOUT,
            )
            for m in c.consume(num_messages=count - len(got), timeout=0.5):
                if m.error() is not None:
                    raise KafkaException(m.error())
                got.append(m)
        # Nothing beyond what was produced.
        extra = [m for m in c.consume(num_messages=10, timeout=0.3) if m.error() is None]
        assert not extra, "unexpected messages after the last one: %s" % [(m.offset(), m.value()) for m in extra]
        return got
    finally:
        c.close()


def assert_same(sent, got, what):
    """Compares produced records (in order) with consumed messages."""
    assert len(sent) == len(got), "%s: sent %d, read %d" % (what, len(sent), len(got))
    for s, g in zip(sent, got):
        _, key, value, headers, ts = s
        where = "%s, offset %d" % (what, g.offset())
        assert g.key() == key, "%s: key %r, expected %r" % (where, g.key(), key)
        assert g.value() == value, "%s: value %r..., expected %r..." % (where, (g.value() or b"")[:40], (value or b"")[:40])
        assert (g.headers() or []) == (headers or []), "%s: headers %r, expected %r" % (where, g.headers(), headers)
        if ts is not None:
            assert g.timestamp() == (TIMESTAMP_CREATE_TIME, ts), "%s: timestamp %r, expected %r" % (where, g.timestamp(), ts)


def assert_dense(got, start, what):
    offsets = [m.offset() for m in got]
    assert offsets == list(range(start, start + len(got))), "%s: offsets not dense from %d: %s" % (what, start, offsets[:20])


class Admin(unittest.TestCase):
    def test_list_topics_names_this_broker(self):
        md = admin().list_topics(timeout=TIMEOUT)
        host, port = common.BOOTSTRAP.rsplit(":", 1)
        brokers = [(b.host, b.port) for b in md.brokers.values()]
        self.assertEqual(brokers, [(host, int(port))])
        self.assertIn(md.controller_id, md.brokers)

    def test_describe_cluster(self):
        desc = admin().describe_cluster(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        self.assertTrue(desc.cluster_id, desc)
        host, port = common.BOOTSTRAP.rsplit(":", 1)
        self.assertEqual([(n.host, n.port) for n in desc.nodes], [(host, int(port))])
        self.assertIsNotNone(desc.controller)
        self.assertEqual(desc.controller.id, desc.nodes[0].id)

    def test_create_topic_with_partitions_and_config(self):
        name = create_topic(unique("create"), partitions=3, config={"retention.ms": "3600000"})
        cluster = admin().list_topics(timeout=TIMEOUT)
        md = cluster.topics[name]
        self.assertEqual(sorted(md.partitions), [0, 1, 2])
        for p in md.partitions.values():
            self.assertIsNone(p.error)
            self.assertIn(p.leader, cluster.brokers)
            self.assertEqual(p.replicas, [p.leader])
            self.assertEqual(p.isrs, [p.leader])
        configs = describe_topic_configs(admin(), name)
        self.assertEqual(configs["retention.ms"].value, "3600000")
        self.assertEqual(configs["retention.ms"].source, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    def test_validate_only_creates_nothing(self):
        a = admin()
        name = unique("validate")
        fs = a.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)], validate_only=True, request_timeout=TIMEOUT)
        fs[name].result(timeout=TIMEOUT)
        # Asking for all topics, so that nothing auto-creates this one.
        self.assertNotIn(name, topic_names(a))
        # And it can then be created for real.
        create_topic(name, partitions=2)

    def test_validate_only_still_rejects_a_bad_request(self):
        a = admin()
        fs = a.create_topics([NewTopic("bad name!", num_partitions=1, replication_factor=1)], validate_only=True, request_timeout=TIMEOUT)
        exc = fs["bad name!"].exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.TOPIC_EXCEPTION, exc)

    def test_invalid_names_are_rejected(self):
        a = admin()
        names = ["bad name!", "slash/topic", ".", "..", "x" * 250, "tab\tname"]
        fs = a.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names], request_timeout=TIMEOUT)
        for n in names:
            exc = fs[n].exception(timeout=TIMEOUT)
            self.assertIsNotNone(exc, "topic %r was created" % n)
            self.assertEqual(error_code(exc), KafkaError.TOPIC_EXCEPTION, "%r: %s" % (n, exc))
        existing = topic_names(a)
        for n in names:
            self.assertNotIn(n, existing)

    def test_longest_legal_name_is_accepted(self):
        name = unique("long")
        name += "x" * (249 - len(name))
        create_topic(name)

    def test_duplicate_is_topic_already_exists(self):
        name = create_topic(unique("dup"), partitions=2)
        fs = admin().create_topics([NewTopic(name, num_partitions=5, replication_factor=1)], request_timeout=TIMEOUT)
        exc = fs[name].exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.TOPIC_ALREADY_EXISTS, exc)
        # The first creation stands.
        self.assertEqual(len(admin().list_topics(timeout=TIMEOUT).topics[name].partitions), 2)

    def test_unsupported_replication_factor_is_rejected(self):
        name = unique("rf")
        fs = admin().create_topics([NewTopic(name, num_partitions=1, replication_factor=3)], request_timeout=TIMEOUT)
        exc = fs[name].exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.INVALID_REPLICATION_FACTOR, exc)

    def test_consumer_metadata_does_not_create_topics(self):
        # Consumers ask with allow_auto_topic_creation=false.
        name = unique("nocreate")
        c = consumer()
        try:
            md = c.list_topics(topic=name, timeout=TIMEOUT).topics[name]
        finally:
            c.close()
        self.assertIsNotNone(md.error)
        self.assertEqual(md.error.code(), KafkaError.UNKNOWN_TOPIC_OR_PART, md.error)
        self.assertNotIn(name, topic_names(admin()))

    def test_describe_configs_has_the_kafka_topic_defaults(self):
        name = create_topic(unique("describe"))
        configs = describe_topic_configs(admin(), name)
        for key in ["retention.ms", "retention.bytes", "segment.bytes", "cleanup.policy", "max.message.bytes"]:
            self.assertIn(key, configs)
        # Kafka's documented defaults, which clients and tools assume.
        self.assertEqual(configs["retention.ms"].value, "604800000")
        self.assertEqual(configs["cleanup.policy"].value, "delete")
        self.assertNotEqual(configs["retention.ms"].source, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    def test_describe_configs_of_the_broker(self):
        broker_id = next(iter(admin().list_topics(timeout=TIMEOUT).brokers))
        fs = admin().describe_configs([ConfigResource(ConfigResource.Type.BROKER, str(broker_id))], request_timeout=TIMEOUT)
        (f,) = fs.values()
        configs = f.result(timeout=TIMEOUT)
        self.assertTrue(configs, "no broker configs described")

    def test_describe_configs_of_an_unknown_topic(self):
        fs = admin().describe_configs([ConfigResource(ConfigResource.Type.TOPIC, unique("nosuch"))], request_timeout=TIMEOUT)
        (f,) = fs.values()
        exc = f.exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.UNKNOWN_TOPIC_OR_PART, exc)

    def test_alter_configs_sets_retention(self):
        a = admin()
        name = create_topic(unique("alter"))
        res = ConfigResource(ConfigResource.Type.TOPIC, name, set_config={"retention.ms": "1234567"})
        # Deprecated in the client, but older tools still send AlterConfigs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            (f,) = a.alter_configs([res], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        configs = describe_topic_configs(a, name)
        self.assertEqual(configs["retention.ms"].value, "1234567")
        self.assertEqual(configs["retention.ms"].source, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    def test_incremental_alter_configs_set_then_delete(self):
        a = admin()
        name = create_topic(unique("incr"), config={"retention.bytes": "1000000"})
        entry = ConfigEntry("retention.ms", "7654321", incremental_operation=AlterConfigOpType.SET)
        res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[entry])
        (f,) = a.incremental_alter_configs([res], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        configs = describe_topic_configs(a, name)
        self.assertEqual(configs["retention.ms"].value, "7654321")
        # Incremental: what was set at creation stays.
        self.assertEqual(configs["retention.bytes"].value, "1000000")

        entry = ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)
        res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[entry])
        (f,) = a.incremental_alter_configs([res], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        configs = describe_topic_configs(a, name)
        self.assertEqual(configs["retention.ms"].value, "604800000")
        self.assertNotEqual(configs["retention.ms"].source, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    def test_bad_config_values_are_invalid_config(self):
        a = admin()
        name = create_topic(unique("badconf"))
        for key, value in [("retention.ms", "soon"), ("no.such.config", "1")]:
            entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[entry])
            (f,) = a.incremental_alter_configs([res], request_timeout=TIMEOUT).values()
            exc = f.exception(timeout=TIMEOUT)
            self.assertIsNotNone(exc, "%s=%s accepted" % (key, value))
            self.assertEqual(error_code(exc), KafkaError.INVALID_CONFIG, "%s=%s: %s" % (key, value, exc))
        self.assertEqual(describe_topic_configs(a, name)["retention.ms"].value, "604800000")
        # At creation too.
        bad = unique("badconf")
        fs = a.create_topics([NewTopic(bad, 1, 1, config={"retention.ms": "soon"})], request_timeout=TIMEOUT)
        exc = fs[bad].exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.INVALID_CONFIG, exc)
        self.assertNotIn(bad, topic_names(a))

    def test_create_partitions_grows_and_never_shrinks(self):
        a = admin()
        name = create_topic(unique("grow"), partitions=2)
        (f,) = a.create_partitions([NewPartitions(name, 5)], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        wait_until("5 partitions", lambda: len(a.list_topics(timeout=TIMEOUT).topics[name].partitions) == 5)
        (f,) = a.create_partitions([NewPartitions(name, 3)], request_timeout=TIMEOUT).values()
        exc = f.exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.INVALID_PARTITIONS, exc)
        self.assertEqual(len(a.list_topics(timeout=TIMEOUT).topics[name].partitions), 5)
        # The new partitions take writes.
        p = producer(acks="all")
        delivered = produce_and_check(p, name, [(4, b"k", b"in a new partition", None, None)])
        self.assertEqual((delivered[0].partition(), delivered[0].offset()), (4, 0))

    def test_delete_topics(self):
        a = admin()
        name = create_topic(unique("delete"), partitions=2)
        produce_and_check(producer(acks="all"), name, [(0, b"k", b"v", None, None)])
        (f,) = a.delete_topics([name], request_timeout=TIMEOUT).values()
        f.result(timeout=TIMEOUT)
        wait_until("%s gone from the metadata" % name, lambda: name not in topic_names(a))
        (f,) = a.delete_topics([name], request_timeout=TIMEOUT).values()
        exc = f.exception(timeout=TIMEOUT)
        self.assertEqual(error_code(exc), KafkaError.UNKNOWN_TOPIC_OR_PART, exc)
        # The name can be used again, and the new topic starts empty.
        create_topic(name, partitions=1)
        c = consumer()
        try:
            low, high = c.get_watermark_offsets(TopicPartition(name, 0), timeout=TIMEOUT, cached=False)
        finally:
            c.close()
        self.assertEqual((low, high), (0, 0))


class Produce(unittest.TestCase):
    def test_every_codec_round_trips_keys_headers_and_values(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                self.round_trip(codec)

    def round_trip(self, codec):
        name = create_topic(unique("codec-" + codec), partitions=2)
        now = int(time.time() * 1000)
        records = []
        for i in range(300):
            key = None if i % 50 == 7 else b"key-%d" % i
            value = None if i % 70 == 3 else value_for(i, codec)
            headers = [("seq", str(i).encode()), ("codec", codec.encode()), ("empty", b"")]
            if i % 11 == 0:
                headers.append(("null", None))
            if i % 13 == 0:
                headers = None
            records.append((i % 2, key, value, headers, now - 1000 + i))
        delivered = produce_and_check(producer(**{"compression.type": codec, "acks": "all"}), name, records)
        for partition in (0, 1):
            sent = [r for r in records if r[0] == partition]
            offsets = sorted(m.offset() for m in delivered if m.partition() == partition)
            self.assertEqual(offsets, list(range(len(sent))), "%s: acknowledged offsets of partition %d" % (codec, partition))
            got = consume(name, partition, OFFSET_BEGINNING, len(sent))
            assert_dense(got, 0, "%s partition %d" % (codec, partition))
            assert_same(sent, got, "%s partition %d" % (codec, partition))

    def test_every_acks_setting(self):
        for acks in ["0", "1", "all"]:
            with self.subTest(acks=acks):
                name = create_topic(unique("acks" + acks))
                records = [(0, b"k%d" % i, value_for(i), [("acks", acks.encode())], None) for i in range(200)]
                delivered = produce_and_check(producer(acks=acks), name, records)
                if acks != "0":
                    self.assertEqual([m.offset() for m in delivered], list(range(200)))
                else:
                    # acks=0: the broker never says, so wait for it to have
                    # appended before reading.
                    c = consumer()
                    try:
                        wait_until(
                            "high watermark 200",
                            lambda: c.get_watermark_offsets(TopicPartition(name, 0), timeout=TIMEOUT, cached=False)[1] >= 200,
                        )
                    finally:
                        c.close()
                got = consume(name, 0, 0, 200)
                assert_dense(got, 0, "acks=" + acks)
                assert_same(records, got, "acks=" + acks)

    def test_idempotent_producer(self):
        name = create_topic(unique("idempotent"), partitions=2)
        records = [(i % 2, b"k%d" % i, value_for(i, "lz4"), [("seq", b"%d" % i)], None) for i in range(2000)]
        p = producer(**{"enable.idempotence": True, "compression.type": "lz4", "batch.num.messages": 100})
        delivered = produce_and_check(p, name, records)
        for partition in (0, 1):
            sent = [r for r in records if r[0] == partition]
            self.assertEqual(sorted(m.offset() for m in delivered if m.partition() == partition), list(range(len(sent))))
            got = consume(name, partition, 0, len(sent))
            assert_dense(got, 0, "idempotent, partition %d" % partition)
            assert_same(sent, got, "idempotent, partition %d" % partition)

    def test_many_batches_keep_order(self):
        # Small batches, many in flight: order must hold across requests.
        name = create_topic(unique("order"))
        records = [(0, None, b"%08d" % i, None, None) for i in range(5000)]
        p = producer(acks="1", **{"batch.num.messages": 50, "max.in.flight": 1})
        produce_and_check(p, name, records)
        got = consume(name, 0, 0, 5000)
        assert_dense(got, 0, "5000 small records")
        self.assertEqual([m.value() for m in got], [r[2] for r in records])

    def test_keyed_records_keep_their_order_per_key(self):
        # librdkafka's partitioner spreads the keys; the broker must keep
        # each partition in send order under concurrent requests.
        name = create_topic(unique("keyed"), partitions=4)
        keys = [b"key-%d" % k for k in range(40)]
        p = producer(acks="1", **{"linger.ms": 1, "batch.num.messages": 100})
        delivered = []
        for i in range(4000):
            while True:
                try:
                    p.produce(name, key=keys[i % 40], value=b"%d" % i, on_delivery=lambda err, msg: delivered.append((err, msg)))
                    break
                except BufferError:
                    p.poll(0.05)
        self.assertEqual(p.flush(TIMEOUT), 0)
        self.assertEqual([e for e, _ in delivered if e is not None], [])
        per_partition = {}
        for _, m in delivered:
            per_partition[m.partition()] = per_partition.get(m.partition(), 0) + 1
        self.assertGreater(len(per_partition), 1, "all keys in one partition: %s" % per_partition)
        seen = {}
        for partition, count in per_partition.items():
            got = consume(name, partition, 0, count)
            assert_dense(got, 0, "partition %d" % partition)
            for m in got:
                seen.setdefault(m.key(), []).append((partition, int(m.value())))
        self.assertEqual(sorted(seen), sorted(keys))
        for key, entries in seen.items():
            self.assertEqual(len({p for p, _ in entries}), 1, "%r in several partitions" % key)
            values = [v for _, v in entries]
            self.assertEqual(values, sorted(values), "%r out of order" % key)
            self.assertEqual(len(values), 100)

    def test_message_over_max_message_bytes_is_rejected(self):
        name = create_topic(unique("toolarge"), config={"max.message.bytes": "20000"})
        # Large enough that librdkafka itself does not refuse it first.
        p = producer(acks="all", **{"message.max.bytes": 5000000})
        errors = []
        p.produce(name, partition=0, value=os.urandom(50000), on_delivery=lambda err, msg: errors.append(err))
        self.assertEqual(p.flush(TIMEOUT), 0)
        self.assertEqual(len(errors), 1)
        self.assertIsNotNone(errors[0], "a 50000-byte record accepted under max.message.bytes=20000")
        self.assertEqual(errors[0].code(), KafkaError.MSG_SIZE_TOO_LARGE, errors[0])
        # Nothing of it was written, and the topic still takes small ones.
        delivered = produce_and_check(p, name, [(0, b"k", b"small", None, None)])
        self.assertEqual(delivered[0].offset(), 0)

    def test_message_over_the_broker_default_is_rejected(self):
        name = create_topic(unique("toolarge-default"))
        p = producer(acks="1", **{"message.max.bytes": 5000000})
        errors = []
        # Kafka's default max.message.bytes is 1048588.
        p.produce(name, partition=0, value=os.urandom(1200000), on_delivery=lambda err, msg: errors.append(err))
        self.assertEqual(p.flush(TIMEOUT), 0)
        self.assertEqual([e and e.code() for e in errors], [KafkaError.MSG_SIZE_TOO_LARGE], errors)

    def test_log_append_time_replaces_the_producer_timestamp(self):
        name = create_topic(unique("logappend"), config={"message.timestamp.type": "LogAppendTime"})
        before = int(time.time() * 1000)
        old = before - 3 * 24 * 3600 * 1000
        records = [(0, b"k%d" % i, b"v%d" % i, None, old + i) for i in range(20)]
        produce_and_check(producer(acks="all", **{"compression.type": "lz4"}), name, records)
        after = int(time.time() * 1000)
        got = consume(name, 0, 0, 20)
        assert_same([r[:4] + (None,) for r in records], got, "LogAppendTime")
        for m in got:
            kind, ts = m.timestamp()
            self.assertEqual(kind, TIMESTAMP_LOG_APPEND_TIME, "offset %d" % m.offset())
            self.assertTrue(before - 1000 <= ts <= after + 1000, "offset %d: timestamp %d is not the append time (%d..%d)" % (m.offset(), ts, before, after))

    def test_timestamp_too_far_in_the_past_is_invalid(self):
        name = create_topic(unique("oldts"), config={"message.timestamp.before.max.ms": "3600000"})
        p = producer(acks="1")
        errors = []
        two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
        p.produce(name, partition=0, value=b"stale", timestamp=two_hours_ago, on_delivery=lambda err, msg: errors.append(err))
        self.assertEqual(p.flush(TIMEOUT), 0)
        self.assertEqual(len(errors), 1)
        self.assertIsNotNone(errors[0], "a record two hours old accepted under message.timestamp.before.max.ms=1h")
        self.assertEqual(errors[0].code(), KafkaError.INVALID_TIMESTAMP, errors[0])
        delivered = produce_and_check(p, name, [(0, None, b"fresh", None, None)])
        self.assertEqual(delivered[0].offset(), 0)

    def test_unknown_partition_is_refused(self):
        name = create_topic(unique("nopart"), partitions=1)
        p = producer(acks="1")
        errors = []
        p.produce(name, partition=5, value=b"v", on_delivery=lambda err, msg: errors.append(err))
        self.assertEqual(p.flush(TIMEOUT), 0)
        self.assertEqual(len(errors), 1)
        self.assertIsNotNone(errors[0])
        self.assertEqual(errors[0].code(), KafkaError._UNKNOWN_PARTITION, errors[0])


class Consume(unittest.TestCase):
    def test_explicit_offsets(self):
        name = create_topic(unique("offsets"))
        records = [(0, b"k%d" % i, b"v%d" % i, None, None) for i in range(50)]
        produce_and_check(producer(acks="all"), name, records)
        for start in [0, 1, 17, 49]:
            got = consume(name, 0, start, 50 - start)
            assert_dense(got, start, "from %d" % start)
            assert_same(records[start:], got, "from %d" % start)

    def test_offset_beyond_the_end_is_out_of_range(self):
        name = create_topic(unique("range"))
        produce_and_check(producer(acks="all"), name, [(0, None, b"v", None, None)] * 3)
        c = consumer()
        try:
            c.assign([TopicPartition(name, 0, 10)])
            seen = wait_until("an error for offset 10", lambda: [m for m in c.consume(10, timeout=0.5)])
        finally:
            c.close()
        self.assertIsNotNone(seen[0].error(), "read offset %s past the end" % seen[0].offset())
        self.assertEqual(seen[0].error().code(), KafkaError._AUTO_OFFSET_RESET, seen[0].error())

    def test_a_batch_over_the_fetch_limits_still_arrives(self):
        # KIP-74: the first batch comes whole whatever fetch.max.bytes and
        # the partition limit say, or a consumer could never get past it.
        name = create_topic(unique("bigbatch"))
        big = os.urandom(900000)
        produce_and_check(producer(acks="1", **{"message.max.bytes": 2000000}), name, [(0, b"big", big, None, None), (0, b"small", b"after", None, None)])
        got = consume(
            name,
            0,
            0,
            2,
            **{"fetch.max.bytes": 1000, "fetch.message.max.bytes": 1000, "message.max.bytes": 1000},
        )
        self.assertEqual([(m.key(), len(m.value())) for m in got], [(b"big", len(big)), (b"small", 5)])
        self.assertEqual(got[0].value(), big)

    def test_long_poll_returns_when_a_record_arrives(self):
        name = create_topic(unique("longpoll"))
        c = consumer(**{"fetch.wait.max.ms": 4000})
        p = producer(acks="1", **{"linger.ms": 0})
        try:
            c.assign([TopicPartition(name, 0, 0)])
            # Let the first fetch reach the broker and wait there.
            self.assertEqual(c.consume(1, timeout=1.5), [])
            sent = time.monotonic()
            p.produce(name, partition=0, value=b"wake up")
            p.flush(TIMEOUT)
            got = []
            while not got and time.monotonic() - sent < TIMEOUT:
                got = c.consume(1, timeout=0.1)
            waited = time.monotonic() - sent
        finally:
            c.close()
        self.assertEqual([m.value() for m in got], [b"wake up"])
        # Far less than fetch.wait.max.ms: the append released the fetch.
        self.assertLess(waited, 2.0, "the waiting fetch answered %.2fs after the append" % waited)

    def test_watermarks_and_offsets_for_times(self):
        name = create_topic(unique("times"), partitions=2)
        base = int(time.time() * 1000) - 100000
        # Partition 0: timestamps rising by a second; partition 1: out of
        # order, the largest in the middle.
        p0 = [(0, None, b"p0-%d" % i, None, base + 1000 * i) for i in range(10)]
        shuffled = [3, 1, 9, 4, 0, 2]
        p1 = [(1, None, b"p1-%d" % i, None, base + 1000 * t) for i, t in enumerate(shuffled)]
        produce_and_check(producer(acks="all"), name, p0 + p1)

        c = consumer()
        try:
            self.assertEqual(c.get_watermark_offsets(TopicPartition(name, 0), timeout=TIMEOUT, cached=False), (0, 10))
            self.assertEqual(c.get_watermark_offsets(TopicPartition(name, 1), timeout=TIMEOUT, cached=False), (0, 6))
            # The first offset whose timestamp is at or after the one asked.
            for ts, want in [(base - 5000, 0), (base, 0), (base + 2500, 3), (base + 9000, 9), (base + 9001, OFFSET_END)]:
                (r,) = c.offsets_for_times([TopicPartition(name, 0, ts)], timeout=TIMEOUT)
                self.assertIsNone(r.error)
                self.assertEqual(r.offset, want, "partition 0, timestamp base%+d" % (ts - base))
            for ts, want in [(base + 8500, 2), (base + 3500, 2), (base + 3000, 0), (base + 9500, OFFSET_END)]:
                (r,) = c.offsets_for_times([TopicPartition(name, 1, ts)], timeout=TIMEOUT)
                self.assertEqual(r.offset, want, "partition 1, timestamp base%+d" % (ts - base))
        finally:
            c.close()

        a = admin()
        specs = {
            TopicPartition(name, 0): OffsetSpec.earliest(),
            TopicPartition(name, 1): OffsetSpec.max_timestamp(),
        }
        results = {tp.partition: f.result(timeout=TIMEOUT) for tp, f in a.list_offsets(specs, request_timeout=TIMEOUT).items()}
        self.assertEqual(results[0].offset, 0)
        self.assertEqual((results[1].offset, results[1].timestamp), (2, base + 9000))
        specs = {TopicPartition(name, 0): OffsetSpec.latest(), TopicPartition(name, 1): OffsetSpec.for_timestamp(base + 3500)}
        results = {tp.partition: f.result(timeout=TIMEOUT) for tp, f in a.list_offsets(specs, request_timeout=TIMEOUT).items()}
        self.assertEqual(results[0].offset, 10)
        self.assertEqual(results[1].offset, 2)

    def test_delete_records_moves_the_low_watermark(self):
        name = create_topic(unique("delrec"))
        records = [(0, b"k%d" % i, b"v%d" % i, None, None) for i in range(10)]
        produce_and_check(producer(acks="all"), name, records)
        a = admin()
        (f,) = a.delete_records([TopicPartition(name, 0, 4)], request_timeout=TIMEOUT).values()
        self.assertEqual(f.result(timeout=TIMEOUT).low_watermark, 4)
        c = consumer()
        try:
            self.assertEqual(c.get_watermark_offsets(TopicPartition(name, 0), timeout=TIMEOUT, cached=False), (4, 10))
        finally:
            c.close()
        got = consume(name, 0, OFFSET_BEGINNING, 6)
        assert_dense(got, 4, "after DeleteRecords")
        assert_same(records[4:], got, "after DeleteRecords")
        (f,) = a.list_offsets({TopicPartition(name, 0): OffsetSpec.earliest()}, request_timeout=TIMEOUT).values()
        self.assertEqual(f.result(timeout=TIMEOUT).offset, 4)

        # A deleted offset is out of range now.
        c = consumer()
        try:
            c.assign([TopicPartition(name, 0, 2)])
            seen = wait_until("an error for deleted offset 2", lambda: c.consume(10, timeout=0.5))
        finally:
            c.close()
        self.assertIsNotNone(seen[0].error(), "read deleted offset %s" % seen[0].offset())

        # Past the high watermark is refused; OFFSET_END means all of it.
        (f,) = a.delete_records([TopicPartition(name, 0, 11)], request_timeout=TIMEOUT).values()
        self.assertEqual(error_code(f.exception(timeout=TIMEOUT)), KafkaError.OFFSET_OUT_OF_RANGE)
        (f,) = a.delete_records([TopicPartition(name, 0, OFFSET_END)], request_timeout=TIMEOUT).values()
        self.assertEqual(f.result(timeout=TIMEOUT).low_watermark, 10)
        # Writes go on at the old end.
        delivered = produce_and_check(producer(acks="all"), name, [(0, None, b"after", None, None)])
        self.assertEqual(delivered[0].offset(), 10)


if __name__ == "__main__":
    common.main()
