"""Bad input over raw sockets against the real `odradek server`, with storage
behind it: what server/tests/kafka.rs does not already send (its cases are
framing, random bytes, an unknown key and idle connections against the
in-process listener).

Here: unknown versions of known APIs, absurd lengths and counts inside
otherwise well-framed requests, corrupt record batches in Produce (none may
reach the log), absurd Fetch arguments, random bodies behind valid headers
for every API the broker advertises, and hundreds of idle connections while
a client produces and fetches. After each case a fresh connection must still
get ApiVersions and Metadata answered.

    python3 server/tests/clients/bad_input.py HOST:PORT [-k PATTERN]

Needs only the standard library: requests are encoded by hand here, so a
bug shared with the broker's codec cannot hide.
"""

import os
import random
import socket
import struct
import sys
import time
import unittest

import common
from common import unique

# How long the broker may take to answer or close.
WAIT = 5.0

API_PRODUCE, API_FETCH, API_LIST_OFFSETS, API_METADATA, API_VERSIONS = 0, 1, 2, 3, 18

ERR_NONE = 0
ERR_OFFSET_OUT_OF_RANGE = 1
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_UNSUPPORTED_VERSION = 35

# ---- encoding ----


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(items)


def varint(v):
    """Zigzag varint, as in record batch v2 records."""
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def header(key, version, correlation_id, client_id="odradek-bad-input"):
    return i16(key) + i16(version) + i32(correlation_id) + string(client_id)


def frame(payload):
    return i32(len(payload)) + payload


def record(offset_delta, key, value, headers=()):
    body = i8(0) + varint(0) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(len(headers))
    for hk, hv in headers:
        body += varint(len(hk)) + hk + varint(len(hv)) + hv
    return varint(len(body)) + body


def batch(values, attributes=0, magic=2, count=None, last_offset_delta=None, records_bytes=None, crc=None, length_adjust=0):
    """A record batch v2; the keyword arguments break it in chosen ways."""
    now = int(time.time() * 1000)
    recs = records_bytes if records_bytes is not None else b"".join(record(i, b"k%d" % i, v) for i, v in enumerate(values))
    after_crc = (
        i16(attributes)
        + i32(len(values) - 1 if last_offset_delta is None else last_offset_delta)
        + i64(now)
        + i64(now)
        + i64(-1)
        + i16(-1)
        + i32(-1)
        + i32(len(values) if count is None else count)
        + recs
    )
    checksum = crc32c(after_crc) if crc is None else crc
    after_length = i32(0) + i8(magic) + struct.pack(">I", checksum) + after_crc
    return i64(0) + i32(len(after_length) + length_adjust) + after_length


def produce_v3(correlation_id, topic, partition, records, acks=1):
    body = string(None) + i16(acks) + i32(int(WAIT * 1000)) + array([string(topic) + array([i32(partition) + nbytes(records)])])
    return frame(header(API_PRODUCE, 3, correlation_id) + body)


def fetch_v4(correlation_id, topic, partition, offset, max_wait=100, min_bytes=1, max_bytes=1 << 20, partition_max_bytes=1 << 20):
    body = i32(-1) + i32(max_wait) + i32(min_bytes) + i32(max_bytes) + i8(0)
    body += array([string(topic) + array([i32(partition) + i64(offset) + i32(partition_max_bytes)])])
    return frame(header(API_FETCH, 4, correlation_id) + body)


def metadata_v4(correlation_id, topics, auto_create=False):
    topics_field = array(None) if topics is None else array([string(t) for t in topics])
    return frame(header(API_METADATA, 4, correlation_id) + topics_field + i8(1 if auto_create else 0))


def api_versions_v0(correlation_id):
    return frame(header(API_VERSIONS, 0, correlation_id))


# ---- decoding ----


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        assert self.pos + n <= len(self.data), "response too short: wanted %d bytes at %d of %d" % (n, self.pos, len(self.data))
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def array(self, item):
        n = self.i32()
        return None if n < 0 else [item(self) for _ in range(n)]


def parse_api_versions_v0(body):
    r = Reader(body)
    error = r.i16()
    keys = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return error, {k: (lo, hi) for k, lo, hi in keys or []}


def parse_produce_v3(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
    (_, partitions) = topics[0]
    _, error, base_offset, _ = partitions[0]
    return error, base_offset


def parse_fetch_v4(body):
    r = Reader(body)
    r.i32()  # throttle time
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64(), r.array(lambda r: (r.i64(), r.i64())), r.nbytes()))))
    (_, partitions) = topics[0]
    _, error, high_watermark, _, _, records = partitions[0]
    return error, high_watermark, records or b""


def batches_in(records):
    """(base offset, batch bytes) of each whole batch in a fetch response."""
    out, pos = [], 0
    while pos + 12 <= len(records):
        base, length = struct.unpack(">qi", records[pos : pos + 12])
        if pos + 12 + length > len(records):
            break  # a partial batch at the end is allowed
        out.append((base, records[pos : pos + 12 + length]))
        pos += 12 + length
    return out


# ---- the connection ----


class Conn:
    def __init__(self):
        host, port = common.BOOTSTRAP.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT)

    def send(self, data):
        self.sock.sendall(data)

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def response(self, correlation_id):
        """The next response's body (after the correlation id)."""
        (size,) = struct.unpack(">i", self.read_exact(4))
        assert size >= 4, "response size %d" % size
        data = self.read_exact(size)
        (cid,) = struct.unpack(">i", data[:4])
        assert cid == correlation_id, "response to correlation id %d, expected %d" % (cid, correlation_id)
        return data[4:]

    def request(self, data, correlation_id):
        self.send(data)
        return self.response(correlation_id)

    def outcome(self):
        """'closed' if the broker closes the connection, ('answer', bytes)
        if it answers; fails if it does neither within WAIT."""
        try:
            head = self.sock.recv(4)
        except socket.timeout:
            raise AssertionError("neither answered nor closed within %ss" % WAIT)
        except ConnectionResetError:
            return "closed"
        if not head:
            return "closed"
        try:
            head += self.read_exact(4 - len(head))
            (size,) = struct.unpack(">i", head)
            return ("answer", self.read_exact(size))
        except (EOFError, ConnectionResetError):
            return "closed"

    def close(self):
        self.sock.close()


def served(after="the previous request"):
    """A fresh connection gets ApiVersions and Metadata answered. A broker
    that no longer serves at all ends the whole run here: every later case
    would fail for the same reason and bury the one that killed it."""
    try:
        return _served_once()
    except (OSError, EOFError) as e:
        first = e
    time.sleep(0.5)
    try:
        _served_once()
    except (OSError, EOFError) as e:
        sys.stderr.write("\nthe broker stopped serving (%r, then %r) after: %s\n" % (first, e, after))
        sys.stderr.flush()
        os._exit(3)
    raise AssertionError("ApiVersions and Metadata failed (%r) right after %s, then worked" % (first, after))


def _served_once():
    c = Conn()
    try:
        error, keys = parse_api_versions_v0(c.request(api_versions_v0(101), 101))
        assert error == ERR_NONE, "ApiVersions v0: error %d" % error
        assert API_METADATA in keys, keys
        body = c.request(metadata_v4(102, None), 102)
        r = Reader(body)
        r.i32()
        brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
        assert brokers, "Metadata lists no broker"
        return keys
    finally:
        c.close()


def create_topic():
    """A topic made by Metadata's auto-creation, with its one partition led."""
    name = unique("bad-input")
    c = Conn()
    try:
        deadline = time.monotonic() + WAIT
        while True:
            r = Reader(c.request(metadata_v4(7, [name], auto_create=True), 7))
            r.i32()
            r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
            r.string()
            r.i32()
            topics = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.array(lambda r: (r.i16(), r.i32(), r.i32(), r.array(lambda r: r.i32()), r.array(lambda r: r.i32())))))
            error, _, _, partitions = topics[0]
            if error == ERR_NONE and partitions and partitions[0][2] >= 0:
                return name
            assert time.monotonic() < deadline, "topic %s not auto-created: error %d, partitions %s" % (name, error, partitions)
            time.sleep(0.05)
    finally:
        c.close()


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.versions = served()
        for key, (lo, hi) in [(API_PRODUCE, (3, 3)), (API_FETCH, (4, 4)), (API_METADATA, (4, 4))]:
            have = cls.versions.get(key)
            assert have and have[0] <= lo and hi <= have[1], "API %d v%d is needed by these tests; the broker advertises %s" % (key, lo, have)

    def expect_refused(self, what, data, or_answered=False):
        """Sends one bad request on a fresh connection: the broker must close
        it (Kafka's answer to a request it cannot parse) and go on serving.
        `or_answered`: Kafka's own decoders read some of these as valid (any
        negative length of a nullable field is null), so an answer to the
        right correlation id is fine too."""
        c = Conn()
        try:
            c.send(data)
            outcome = c.outcome()
        finally:
            c.close()
        served(what)
        if or_answered and outcome != "closed":
            self.assertEqual(struct.unpack(">i", outcome[1][:4])[0], 11, "%s: answer to the wrong correlation id" % what)
        else:
            self.assertEqual(outcome, "closed", "%s: answered instead of closing: %r" % (what, outcome))

    def test_unknown_versions_of_known_apis(self):
        for key in (API_PRODUCE, API_FETCH, API_LIST_OFFSETS, API_METADATA):
            hi = self.versions.get(key, (0, -1))[1]
            for version in (hi + 1, 99, -1, 32767):
                with self.subTest(key=key, version=version):
                    c = Conn()
                    try:
                        c.send(frame(header(key, version, 5) + b"\x00" * 64))
                        outcome = c.outcome()
                    finally:
                        c.close()
                    # Kafka closes; Odradek answers the versions its codec
                    # can write with a top-level UNSUPPORTED_VERSION.
                    served("API %d v%d with a 64-byte zero body" % (key, version))
                    if outcome != "closed":
                        body = outcome[1]
                        self.assertEqual(struct.unpack(">i", body[:4])[0], 5, "API %d v%d: answer to the wrong correlation id" % (key, version))
                        self.assertIn(i16(ERR_UNSUPPORTED_VERSION), body[4:], "API %d v%d answered without UNSUPPORTED_VERSION: %r" % (key, version, body))

    def test_api_versions_of_an_unknown_version_falls_back_to_v0(self):
        # KIP-511: a newer client learns the versions from a v0 answer.
        c = Conn()
        try:
            body = c.request(frame(header(API_VERSIONS, 99, 8) + b"\x00" * 8), 8)
        finally:
            c.close()
        error, keys = parse_api_versions_v0(body)
        self.assertEqual(error, ERR_UNSUPPORTED_VERSION)
        self.assertEqual(keys, self.versions)

    def test_negative_and_unassigned_api_keys(self):
        for key in (-1, -32768, 32767, 1000):
            with self.subTest(key=key):
                self.expect_refused("API key %d" % key, frame(header(key, 0, 9)))

    def test_absurd_lengths_inside_requests(self):
        meta = lambda rest: frame(header(API_METADATA, 4, 11) + rest)
        topic = create_topic()
        # (what, request, whether an answer is acceptable)
        cases = [
            ("client id longer than the frame", frame(i16(API_METADATA) + i16(4) + i32(11) + i16(32767) + b"abc")),
            ("client id length -5", frame(i16(API_METADATA) + i16(4) + i32(11) + i16(-5) + i32(-1) + i8(0)), True),
            ("header cut inside the correlation id", frame(i16(API_METADATA) + i16(4) + b"\x00\x01")),
            ("topic count 2^31-1", meta(i32(0x7FFFFFFF) + string("t") + i8(0))),
            ("topic count -7", meta(i32(-7) + i8(0)), True),
            ("topic name length -2", meta(i32(1) + i16(-2) + i8(0))),
            ("topic name longer than the frame", meta(i32(1) + i16(30000) + b"ab")),
            ("bool field missing", meta(array(None))),
            # Kafka ignores bytes after the body, and librdkafka 2.x sends
            # some (3 stray bytes after an all-topics Metadata v12).
            ("trailing garbage", meta(array(None) + i8(0) + b"\xde\xad\xbe\xef"), True),
            (
                "produce records length 2^31-1",
                frame(header(API_PRODUCE, 3, 11) + string(None) + i16(1) + i32(1000) + array([string(topic) + array([i32(0) + i32(0x7FFFFFFF) + b"\x00" * 16])])),
            ),
            ("produce topic count -2", frame(header(API_PRODUCE, 3, 11) + string(None) + i16(1) + i32(1000) + i32(-2))),
            (
                "fetch partition count 2^30",
                frame(header(API_FETCH, 4, 11) + i32(-1) + i32(100) + i32(1) + i32(1 << 20) + i8(0) + i32(1) + string(topic) + i32(1 << 30)),
            ),
        ]
        for what, data, *answer_ok in cases:
            with self.subTest(what):
                self.expect_refused(what, data, or_answered=bool(answer_ok))

    def test_corrupt_batches_never_reach_the_log(self):
        topic = create_topic()
        good = batch([b"good record"])
        bad_crc = bytearray(good)
        bad_crc[-1] ^= 0x40  # a flipped bit in the value, so the CRC no longer matches
        recs = record(0, b"k", b"v")
        gzip_garbage = batch([b"x"], attributes=1, records_bytes=b"\x1f\x8b\x08\x00 definitely not gzip at all")
        cases = [
            ("CRC mismatch", bytes(bad_crc)),
            ("wrong CRC field", batch([b"v"], crc=0x12345678)),
            ("batch length beyond the data", batch([b"v"], length_adjust=+40)),
            ("batch length short of the data", batch([b"v"], length_adjust=-3)),
            ("batch length negative", good[:8] + i32(-20) + good[12:]),
            ("magic 1 with a v2 layout", batch([b"v"], magic=1)),
            ("magic 7", batch([b"v"], magic=7)),
            ("record count 5 for 1 record", batch([b"v"], count=5)),
            ("record count -1", batch([b"v"], count=-1)),
            ("last offset delta beyond the records", batch([b"v"], last_offset_delta=9)),
            ("record length past the batch", batch([b"v"], records_bytes=varint(200) + recs[1:])),
            ("negative record length", batch([b"v"], records_bytes=varint(-9) + recs[1:])),
            ("gzip attribute over garbage", gzip_garbage),
            ("codec 7 (none such)", batch([b"v"], attributes=7)),
            ("half a batch", good[: len(good) // 2]),
            ("no batch at all", b""),
            ("two batches in one v3 request", good + good),
        ]
        for what, records in cases:
            with self.subTest(what):
                c = Conn()
                try:
                    c.send(produce_v3(21, topic, 0, records))
                    outcome = c.outcome()
                finally:
                    c.close()
                served("Produce v3 with %s" % what)
                if outcome != "closed":
                    self.assertEqual(outcome[0], "answer")
                    body = outcome[1]
                    self.assertEqual(struct.unpack(">i", body[:4])[0], 21)
                    error, _ = parse_produce_v3(body[4:])
                    self.assertNotEqual(error, ERR_NONE, "%s: the broker accepted it" % what)

        # Nothing above was appended: a good batch now lands at offset 0,
        # and reading the log back gives exactly it.
        c = Conn()
        try:
            error, base = parse_produce_v3(c.request(produce_v3(22, topic, 0, good), 22))
            self.assertEqual((error, base), (ERR_NONE, 0))
            error, high, records = parse_fetch_v4(c.request(fetch_v4(23, topic, 0, 0), 23))
        finally:
            c.close()
        self.assertEqual((error, high), (ERR_NONE, 1))
        found = batches_in(records)
        self.assertEqual(len(found), 1, "the log holds %d batches: %r" % (len(found), records[:200]))
        # The stored batch is the one sent, apart from the offset (and the
        # leader epoch, which the broker stamps outside the CRC).
        self.assertEqual(found[0][1][17:], good[17:])

    def test_absurd_fetch_arguments(self):
        topic = create_topic()
        c = Conn()
        try:
            for i in range(3):
                error, base = parse_produce_v3(c.request(produce_v3(30, topic, 0, batch([b"r%d" % i] * 5)), 30))
                self.assertEqual((error, base), (ERR_NONE, 5 * i))

            def fetch(**kw):
                return parse_fetch_v4(c.request(fetch_v4(31, topic, 0, **kw), 31))

            self.assertEqual(fetch(offset=-5)[0], ERR_OFFSET_OUT_OF_RANGE)
            self.assertEqual(fetch(offset=16)[0], ERR_OFFSET_OUT_OF_RANGE)
            self.assertEqual(fetch(offset=1 << 62)[0], ERR_OFFSET_OUT_OF_RANGE)
            # KIP-74: however small the limits, the first batch comes whole,
            # so a consumer can always make progress.
            for max_bytes, part_max in [(1, 1), (0, 0), (1 << 20, 1)]:
                error, high, records = fetch(offset=0, max_bytes=max_bytes, partition_max_bytes=part_max)
                self.assertEqual((error, high), (ERR_NONE, 15), (max_bytes, part_max))
                found = batches_in(records)
                self.assertGreaterEqual(len(found), 1, "max_bytes=%d partition_max_bytes=%d gave no whole batch" % (max_bytes, part_max))
                self.assertEqual(found[0][0], 0)
            # From the middle of a batch: the batch holding the offset.
            error, _, records = fetch(offset=7)
            self.assertEqual(error, ERR_NONE)
            self.assertEqual(batches_in(records)[0][0], 5)
            # min_bytes beyond all there is: answered when max_wait passes.
            start = time.monotonic()
            error, _, records = fetch(offset=0, min_bytes=0x7FFFFFFF, max_wait=300)
            self.assertEqual(error, ERR_NONE)
            self.assertLess(time.monotonic() - start, WAIT - 1)
            self.assertTrue(batches_in(records))
            # Unknown topic and partition.
            error, _, _ = parse_fetch_v4(c.request(fetch_v4(32, unique("nosuch"), 0, 0), 32))
            self.assertEqual(error, ERR_UNKNOWN_TOPIC_OR_PARTITION)
            error, _, _ = parse_fetch_v4(c.request(fetch_v4(33, topic, 99, 0), 33))
            self.assertEqual(error, ERR_UNKNOWN_TOPIC_OR_PARTITION)
            error, _ = parse_produce_v3(c.request(produce_v3(34, topic, -1, batch([b"v"])), 34))
            self.assertEqual(error, ERR_UNKNOWN_TOPIC_OR_PARTITION)
        finally:
            c.close()
        served()

    def test_random_bodies_behind_valid_headers(self):
        # Every advertised API and version, with seeded random bodies: the
        # broker's decoders for each, not just its framing. Left out: the
        # APIs whose valid requests may be told to wait (Fetch up to 2^31
        # ms, JoinGroup and SyncGroup for a rebalance).
        rng = random.Random(20240611)
        waits = {API_FETCH, 11, 14}
        targets = [(k, v) for k, (lo, hi) in sorted(self.versions.items()) if k not in waits for v in range(lo, hi + 1)]
        for n in range(3000):
            key, version = rng.choice(targets)
            body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 2, 5, 17, 64, 300, 2000])))
            c = Conn()
            try:
                c.send(frame(header(key, version, 40 + n) + body))
                outcome = c.outcome()
            except ConnectionResetError:
                outcome = "closed"
            finally:
                c.close()
            served("API %d v%d with the random body %s (case %d)" % (key, version, body.hex(), n))
            if outcome != "closed":
                (cid,) = struct.unpack(">i", outcome[1][:4])
                self.assertEqual(cid, 40 + n, "API %d v%d: answer to the wrong correlation id" % (key, version))

    def test_pipelined_produces_are_answered_in_order(self):
        topic = create_topic()
        c = Conn()
        try:
            c.send(b"".join(produce_v3(1000 + i, topic, 0, batch([b"p%d" % i, b"q%d" % i])) for i in range(500)))
            for i in range(500):
                error, base = parse_produce_v3(c.response(1000 + i))
                self.assertEqual((error, base), (ERR_NONE, 2 * i), "request %d" % i)
        finally:
            c.close()

    def test_hundreds_of_idle_connections_while_a_client_works(self):
        topic = create_topic()
        idle = []
        try:
            for n in range(400):
                c = Conn()
                # Some half-way through a frame, some half-way through a
                # produce whose records never come.
                if n % 4 == 1:
                    c.send(b"\x00\x00")
                elif n % 4 == 2:
                    c.send(produce_v3(1, topic, 0, batch([b"never"] * 100))[:60])
                idle.append(c)
            c = Conn()
            try:
                for i in range(20):
                    # acks=-1: answered once synced, so the high watermark
                    # the fetch below reports must cover it (with acks=1 it
                    # may lag, as Kafka's does).
                    error, base = parse_produce_v3(c.request(produce_v3(50 + i, topic, 0, batch([b"busy %d" % i]), acks=-1), 50 + i))
                    self.assertEqual((error, base), (ERR_NONE, i))
                error, high, records = parse_fetch_v4(c.request(fetch_v4(90, topic, 0, 0), 90))
                self.assertEqual((error, high), (ERR_NONE, 20))
                self.assertEqual([b for b, _ in batches_in(records)], list(range(20)))
            finally:
                c.close()
            # The idle ones are served too, once they speak.
            last = idle[-4]
            self.assertEqual(parse_api_versions_v0(last.request(api_versions_v0(91), 91))[0], ERR_NONE)
        finally:
            for c in idle:
                c.close()
        served()

    def test_clients_gone_before_their_answers(self):
        topic = create_topic()
        for i in range(50):
            c = Conn()
            c.send(produce_v3(60, topic, 0, batch([b"abandoned %d" % i])) + fetch_v4(61, topic, 0, 1000, max_wait=1000))
            c.close()
        served()
        # Whatever of those was appended (some may still be on their way),
        # the log stays dense around a new record.
        c = Conn()
        try:
            # acks=-1, so the next fetch's high watermark covers it.
            error, base = parse_produce_v3(c.request(produce_v3(63, topic, 0, batch([b"after"]), acks=-1), 63))
            self.assertEqual(error, ERR_NONE)
            self.assertLessEqual(base, 50)
            error, high, records = parse_fetch_v4(c.request(fetch_v4(64, topic, 0, 0, max_bytes=1 << 24, partition_max_bytes=1 << 24), 64))
        finally:
            c.close()
        self.assertEqual(error, ERR_NONE)
        self.assertTrue(base < high <= 51, "record at %d, high watermark %d" % (base, high))
        self.assertEqual([b for b, _ in batches_in(records)], list(range(high)))


if __name__ == "__main__":
    common.main()
