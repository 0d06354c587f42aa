"""kcat (librdkafka's command-line client, the one in Debian): metadata,
producing keyed messages with headers from a file, consuming them back,
start offsets, and offsets by time.

    python3 server/tests/clients/kcat.py HOST:PORT [-k PATTERN]

Needs only the standard library and kcat on the PATH. Topics are
auto-created by kcat's first produce (the broker's default of one
partition).
"""

import json
import os
import subprocess
import tempfile
import time
import unittest

import common
from common import TIMEOUT, unique


def kcat(*args, stdin=None):
    """Runs kcat against the broker; fails with what it printed if it exits
    non-zero."""
    cmd = ["kcat", "-b", common.BOOTSTRAP] + list(args)
    try:
        out = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s: no exit within %ss; stderr so far: %s" % (" ".join(cmd), TIMEOUT, e.stderr))
    if out.returncode != 0:
        raise AssertionError(
            "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (" ".join(cmd), out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace"))
        )
    return out


def produce_file(topic, lines, *extra):
    """Writes `key<TAB>value` lines to a file and has kcat produce it, with
    acks=all so that kcat's exit means the broker has them."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for key, value in lines:
            f.write("%s\t%s\n" % (key, value))
        path = f.name
    try:
        out = kcat("-P", "-t", topic, "-K", "\t", "-l", path, "-X", "acks=all", *extra)
    finally:
        os.unlink(path)
    # kcat reports failed deliveries on stderr but may still exit 0.
    err = out.stderr.decode(errors="replace")
    assert "ERROR" not in err and "failed" not in err.lower(), err


def consume_json(topic, *offset_args):
    """Every message kcat reads until the end of the partitions, as dicts."""
    out = kcat("-C", "-t", topic, "-e", "-J", "-q", *offset_args)
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


def headers_of(msg):
    h = msg.get("headers") or []
    return list(zip(h[0::2], h[1::2]))


def metadata(*extra):
    return json.loads(kcat("-L", "-J", *extra).stdout)


class Kcat(unittest.TestCase):
    def test_list_metadata(self):
        md = metadata()
        host, port = common.BOOTSTRAP.rsplit(":", 1)
        self.assertEqual([b["name"] for b in md["brokers"]], ["%s:%s" % (host, port)], md)
        self.assertEqual(md["controllerid"], md["brokers"][0]["id"], md)

    def test_produce_from_a_file_and_consume_everything_back(self):
        topic = unique("kcat")
        run = unique("run")
        first = [("key-%d" % i, "value %d %s" % (i, "x" * (i % 30))) for i in range(500)]
        second = [("again-%d" % i, "second file %d" % i) for i in range(300)]
        produce_file(topic, first, "-H", "source=kcat", "-H", "run=" + run, "-z", "gzip")
        produce_file(topic, second, "-H", "source=kcat-zstd", "-z", "zstd")

        md = metadata("-t", topic)
        (t,) = md["topics"]
        self.assertEqual(t["topic"], topic)
        self.assertEqual([p["partition"] for p in t["partitions"]], [0], "auto-created with one partition")

        got = consume_json(topic, "-o", "beginning")
        self.assertEqual([m["offset"] for m in got], list(range(800)))
        self.assertEqual([(m["key"], m["payload"]) for m in got], first + second)
        for m in got[:500]:
            self.assertEqual(headers_of(m), [("source", "kcat"), ("run", run)], m)
        for m in got[500:]:
            self.assertEqual(headers_of(m), [("source", "kcat-zstd")], m)
        for m in got:
            self.assertEqual((m["partition"], m["tstype"]), (0, "create"), m)

    def test_start_offsets(self):
        topic = unique("kcat-offsets")
        lines = [("k%d" % i, "v%d" % i) for i in range(20)]
        produce_file(topic, lines)
        got = consume_json(topic, "-o", "5", "-c", "3")
        self.assertEqual([(m["offset"], m["payload"]) for m in got], [(5, "v5"), (6, "v6"), (7, "v7")])
        # Relative to the end.
        got = consume_json(topic, "-o", "-3")
        self.assertEqual([m["offset"] for m in got], [17, 18, 19])
        got = consume_json(topic, "-o", "end")
        self.assertEqual(got, [])
        got = consume_json(topic, "-o", "19")
        self.assertEqual([m["payload"] for m in got], ["v19"])

    def test_offsets_by_time(self):
        topic = unique("kcat-time")
        produce_file(topic, [("early-%d" % i, "e%d" % i) for i in range(30)])
        # Gaps on both sides, so no record shares the boundary millisecond.
        time.sleep(0.2)
        boundary = int(time.time() * 1000)
        time.sleep(0.2)
        produce_file(topic, [("late-%d" % i, "l%d" % i) for i in range(20)])

        def query(ts):
            out = kcat("-Q", "-t", "%s:0:%d" % (topic, ts)).stdout.decode()
            # "<topic> [0] offset <n>"
            lines = [line for line in out.splitlines() if " offset " in line]
            self.assertEqual(len(lines), 1, out)
            return int(lines[0].rsplit(" ", 1)[1])

        self.assertEqual(query(boundary), 30)
        self.assertEqual(query(0), 0)
        self.assertEqual(query(boundary + 3600 * 1000), -1, "no record that late")
        # Kafka's special timestamps: -1 the end, -2 the start.
        self.assertEqual(query(-1), 50)
        self.assertEqual(query(-2), 0)

        got = consume_json(topic, "-o", "s@%d" % boundary)
        self.assertEqual([m["key"] for m in got], ["late-%d" % i for i in range(20)])
        self.assertEqual(got[0]["offset"], 30)
        self.assertGreaterEqual(got[0]["ts"], boundary)


if __name__ == "__main__":
    common.main()
