#!/usr/bin/env python3
"""Load from librdkafka (through confluent-kafka) against an Odradek broker.

Prints, for records of --record-size bytes (100 by default):
  * produce throughput with acks=1, linger.ms=5, for each --codecs entry
    (none and lz4 by default), in records/s and MB/s;
  * consume throughput of what was produced;
  * end-to-end latency p50/p99/p99.9/max at a paced --latency-rate
    (10,000 records/s by default): the producer puts its wall-clock time in
    each record, a consumer in another process subtracts it on arrival;
  * the broker's CPU time (utime + stime from /proc/PID/stat) per million
    records, for each phase.

    target/ci-venv/bin/python ci/perf-librdkafka.py                   # starts target/release/odradek itself
    target/ci-venv/bin/python ci/perf-librdkafka.py --bootstrap 127.0.0.1:9092 --broker-pid 1234
    target/ci-venv/bin/python ci/perf-librdkafka.py --records 200000 --latency-seconds 5 --json

The client runs on the same machine as the broker and competes with it for
the CPU; on a small machine the Python loop that feeds librdkafka can be the
limit. The broker's CPU per million records is the figure that does not
depend on that.
"""

import argparse
import json
import multiprocessing
import os
import random
import string
import struct
import sys
import time

import odradek_broker

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", help="a running broker; without it, --broker-bin is started on a temporary data dir")
    p.add_argument("--broker-pid", type=int, help="the broker's pid, for its CPU time (known when this script starts it)")
    p.add_argument("--broker-bin", default=os.path.join(REPO, "target/release/odradek"))
    p.add_argument("--records", type=int, default=1_000_000, help="records per throughput run [1000000]")
    p.add_argument("--record-size", type=int, default=100, help="value bytes per record [100]")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--codecs", default="none,lz4", help="compression.type values for the produce runs [none,lz4]")
    p.add_argument("--latency-rate", type=int, default=10_000, help="records/s for the latency run [10000]")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the latency run [10]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args()


# ---- the broker ----


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    if pid is None:
        return None
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    # The command name, in parentheses, may itself hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of the whole line.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


StartedBroker = odradek_broker.StartedBroker


# ---- the phases ----


def create_topic(bootstrap, name, partitions):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=30)


def payloads(size, count=1000):
    # Random letters, as Kafka's own producer-perf-test makes them: neither
    # incompressible nor trivially so, which is what an lz4 run needs.
    rng = random.Random(7)
    return [("".join(rng.choice(string.ascii_letters) for _ in range(size))).encode() for _ in range(count)]


def producer_config(bootstrap, codec):
    return {
        "bootstrap.servers": bootstrap,
        "acks": "1",
        "linger.ms": 5,
        "compression.type": codec,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Only failures call back into Python: a million callbacks would
        # measure the interpreter, not the broker.
        "delivery.report.only.error": True,
    }


def run_produce(bootstrap, topic, records, size, codec, pid):
    errors = []
    conf = producer_config(bootstrap, codec)
    conf["on_delivery"] = lambda err, msg: errors.append(err)
    p = Producer(conf)
    values = payloads(size)
    n_values = len(values)
    produce, poll = p.produce, p.poll
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    for i in range(records):
        try:
            produce(topic, values[i % n_values])
        except BufferError:
            poll(0.001)
            produce(topic, values[i % n_values])
        if i % 10000 == 0:
            poll(0)
    left = p.flush(120)
    elapsed = time.perf_counter() - start
    cpu1 = cpu_seconds(pid)
    if left or errors:
        sys.exit("produce (%s): %d undelivered, %d failed, first errors: %s" % (codec, left, len(errors), errors[:3]))
    return summarize("produce " + codec, records, size, elapsed, cpu0, cpu1)


def run_consume(bootstrap, topic, partitions, records, size, pid):
    # The Python loop that takes records from librdkafka is slower than
    # librdkafka's fetching, so two rates: records handed to the
    # application, and records librdkafka fetched from the broker (from its
    # statistics, with its local queue allowed to hold everything, so that
    # the slow loop does not pause the fetching).
    fetched_all = []

    def on_stats(text):
        if not fetched_all and json.loads(text).get("rxmsgs", 0) >= records:
            fetched_all.append(time.perf_counter())

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "odradek-perf",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "queued.min.messages": 10_000_000,
            "queued.max.messages.kbytes": 2_097_151,
            "statistics.interval.ms": 50,
            "stats_cb": on_stats,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    cpu0 = cpu_seconds(pid)
    start = None
    deadline = time.monotonic() + 300
    while got < records:
        if time.monotonic() > deadline:
            sys.exit("consume: %d of %d records within 300s" % (got, records))
        msgs = c.consume(num_messages=10000, timeout=1.0)
        # Timed from the first record: connecting and the first metadata
        # round trips are not throughput.
        if start is None and msgs:
            start = time.perf_counter()
        for m in msgs:
            if m.error() is not None:
                raise KafkaException(m.error())
            got += 1
    elapsed = time.perf_counter() - start
    cpu1 = cpu_seconds(pid)
    # One more statistics interval, in case the last one is still to come.
    c.consume(num_messages=1, timeout=0.2)
    c.close()
    out = summarize("consume", records, size, elapsed, cpu0, cpu1)
    if fetched_all:
        # Bounded below by the statistics interval.
        fetch_s = max(fetched_all[0] - start, 0.05)
        out["fetch_records_per_s"] = round(records / fetch_s)
        out["fetch_mb_per_s"] = round(records * size / fetch_s / 1e6, 2)
    return out


def summarize(name, records, size, elapsed, cpu0, cpu1):
    out = {
        "phase": name,
        "records": records,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed),
        "mb_per_s": round(records * size / elapsed / 1e6, 2),
    }
    if cpu0 is not None:
        out["broker_cpu_s"] = round(cpu1 - cpu0, 3)
        out["broker_cpu_s_per_million"] = round((cpu1 - cpu0) / records * 1e6, 3)
    return out


STAMP = struct.Struct(">qq")  # wall-clock ns when produced, sequence number


def latency_consumer(bootstrap, topic, partitions, expected, ready, results):
    """Runs in its own process: reports ready once its fetches are live,
    then the latency of every stamped record until `expected` arrived or
    nothing came for a while."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "odradek-perf-latency",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    latencies = []
    told = False
    last_arrival = time.monotonic()
    while len(latencies) < expected and time.monotonic() - last_arrival < 10:
        # poll() returns at the first record; consume() with a timeout
        # would hold records back until it had a full batch, and that wait
        # would be measured as latency.
        first = c.poll(0.1)
        now = time.time_ns()
        msgs = ([first] + c.consume(num_messages=1000, timeout=0)) if first is not None else []
        for m in msgs:
            if m.error() is not None:
                continue
            sent, seq = STAMP.unpack_from(m.value())
            last_arrival = time.monotonic()
            if seq < 0:
                if not told:
                    ready.set()
                    told = True
            else:
                latencies.append((now - sent) / 1e6)
        if not told:
            last_arrival = time.monotonic()
    c.close()
    results.put(latencies)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


def run_latency(bootstrap, topic, partitions, rate, seconds, size, pid):
    expected = int(rate * seconds)
    # A process of its own (spawned, not forked: librdkafka's threads do not
    # survive fork), so the consumer does not share an interpreter lock with
    # the paced producer.
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=latency_consumer, args=(bootstrap, topic, partitions, expected, ready, results))
    proc.start()
    p = Producer(producer_config(bootstrap, "none"))
    pad = b"x" * max(0, size - STAMP.size)
    # Warm-up records until the consumer sees one: its assignment and first
    # fetch are then behind it and not counted.
    deadline = time.monotonic() + 30
    while not ready.is_set():
        if time.monotonic() > deadline:
            proc.terminate()
            sys.exit("latency: the consumer saw nothing within 30s")
        p.produce(topic, STAMP.pack(time.time_ns(), -1) + pad)
        p.poll(0.1)
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    sent = 0
    while sent < expected:
        due = min(expected, int((time.perf_counter() - start) * rate))
        while sent < due:
            try:
                p.produce(topic, STAMP.pack(time.time_ns(), sent) + pad)
            except BufferError:
                p.poll(0.001)
                continue
            sent += 1
        p.poll(0)
        time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    p.flush(60)
    latencies = results.get(timeout=120)
    proc.join(30)
    cpu1 = cpu_seconds(pid)
    latencies.sort()
    out = {
        "phase": "latency",
        "target_rate": rate,
        "achieved_rate": round(sent / elapsed),
        "records": sent,
        "received": len(latencies),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "p999_ms": percentile(latencies, 0.999),
        "max_ms": round(latencies[-1], 2) if latencies else None,
    }
    if cpu0 is not None:
        out["broker_cpu_s"] = round(cpu1 - cpu0, 3)
        out["broker_cpu_s_per_million"] = round((cpu1 - cpu0) / max(sent, 1) * 1e6, 3)
    return out


def main():
    args = parse_args()
    started = None
    bootstrap, pid = args.bootstrap, args.broker_pid
    if bootstrap is None:
        started = StartedBroker(args.broker_bin)
        bootstrap, pid = started.bootstrap, started.proc.pid
    try:
        results = []
        run_id = str(int(time.time()))
        codecs = [c for c in args.codecs.split(",") if c]
        for codec in codecs:
            topic = "perf-%s-%s" % (codec, run_id)
            create_topic(bootstrap, topic, args.partitions)
            results.append(run_produce(bootstrap, topic, args.records, args.record_size, codec, pid))
            if not args.json:
                print_row(results[-1])
        # Reads back the first codec's topic.
        results.append(run_consume(bootstrap, "perf-%s-%s" % (codecs[0], run_id), args.partitions, args.records, args.record_size, pid))
        if not args.json:
            print_row(results[-1])
        topic = "perf-latency-%s" % run_id
        create_topic(bootstrap, topic, args.partitions)
        results.append(run_latency(bootstrap, topic, args.partitions, args.latency_rate, args.latency_seconds, args.record_size, pid))
        if not args.json:
            print_row(results[-1])
    finally:
        if started is not None:
            started.stop()
    if args.json:
        print(json.dumps({"bootstrap": bootstrap, "broker_pid": pid, "record_size": args.record_size, "partitions": args.partitions, "results": results}))


def print_row(r):
    cpu = ""
    if "broker_cpu_s_per_million" in r:
        cpu = "  broker CPU %.2fs per million records" % r["broker_cpu_s_per_million"]
    if r["phase"] == "latency":
        print(
            "latency at %d/s (achieved %d/s, %d of %d received): p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms%s"
            % (r["target_rate"], r["achieved_rate"], r["received"], r["records"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["max_ms"], cpu)
        )
    else:
        print("%-14s %9d records in %6.2fs: %9d records/s %8.2f MB/s%s" % (r["phase"], r["records"], r["seconds"], r["records_per_s"], r["mb_per_s"], cpu))
        if "fetch_records_per_s" in r:
            print("%-14s %9d records/s %8.2f MB/s fetched by librdkafka (ahead of the Python loop)" % ("", r["fetch_records_per_s"], r["fetch_mb_per_s"]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
