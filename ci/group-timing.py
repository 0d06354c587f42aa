#!/usr/bin/env python3
"""Consumer group timings against an Odradek broker, with real librdkafka
consumers (confluent-kafka):

  * failover: the time from a member's crash (SIGKILL of a consumer in its
    own process: no LeaveGroup, nothing closed) until its partitions are
    all assigned to the surviving members, with librdkafka's default
    session.timeout.ms (45 s) and with session.timeout.ms=6000
    (heartbeat.interval.ms=1000); --sessions chooses;
  * join: the time for --members consumers (10) subscribing at once to a
    topic of --partitions partitions (12) to settle, from the first
    subscribe() until every member holds a non-empty share of a disjoint,
    complete assignment; repeated --rounds times, each with a new group.

    target/ci-venv/bin/python ci/group-timing.py                     # starts target/release/odradek itself
    target/ci-venv/bin/python ci/group-timing.py --bootstrap 127.0.0.1:9092
    target/ci-venv/bin/python ci/group-timing.py --sessions 6000 --rounds 5 --json

A crash cannot be noticed before the session times out: the failover time
is the session timeout plus what the broker and the clients add (the
heartbeat that finds the rebalance, the rejoin, the assignment). The join
time of an empty group includes the broker's group.initial.rebalance.delay.ms
(3 s in Kafka), which batches members that arrive together into one
rebalance.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import odradek_broker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", help="a running broker; without it, --broker-bin is started on a temporary data dir")
    p.add_argument("--broker-bin", default=os.path.join(REPO, "target/release/odradek"))
    p.add_argument("--sessions", default="45000,6000", help="session.timeout.ms values for the failover runs; 45000 is librdkafka's default [45000,6000]")
    p.add_argument("--strategy", default="range", help="partition.assignment.strategy [range]")
    p.add_argument("--failover-members", type=int, default=3, help="members before the crash, one of which is killed [3]")
    p.add_argument("--failover-partitions", type=int, default=6)
    p.add_argument("--members", type=int, default=10, help="members joining at once [10]")
    p.add_argument("--partitions", type=int, default=12, help="partitions of the join run's topic [12]")
    p.add_argument("--rounds", type=int, default=3, help="join runs [3]")
    p.add_argument("--hold", type=float, default=3.0, help="seconds an assignment must stay unchanged to count as settled [3]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return p.parse_args()


# ---- the broker (as ci/perf-librdkafka.py starts it) ----


StartedBroker = odradek_broker.StartedBroker


# ---- members ----


def consumer_conf(bootstrap, group, strategy, session_ms):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "partition.assignment.strategy": strategy,
        "enable.auto.commit": False,
        "auto.offset.reset": "latest",
    }
    if session_ms is not None:
        conf["session.timeout.ms"] = session_ms
        # librdkafka's default (3000) must stay below a short session.
        conf["heartbeat.interval.ms"] = min(3000, max(100, session_ms // 6))
    return conf


class ThreadMember:
    """A consumer polled by its own thread; `assignment` is what
    librdkafka says it holds after each poll."""

    def __init__(self, name, conf, topic, start_barrier=None):
        from confluent_kafka import Consumer

        self.name = name
        self.lock = threading.Lock()
        self.assignment = frozenset()
        self.subscribed_at = None
        self.stop = threading.Event()
        self.errors = []
        conf = dict(conf, **{"client.id": name, "error_cb": lambda e: self.errors.append(str(e))})
        self.consumer = Consumer(conf)
        self.topic = topic
        self.barrier = start_barrier
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        if self.barrier is not None:
            self.barrier.wait()
        self.subscribed_at = time.monotonic()
        self.consumer.subscribe([self.topic])
        while not self.stop.is_set():
            self.consumer.poll(0.05)
            parts = frozenset(tp.partition for tp in self.consumer.assignment())
            with self.lock:
                self.assignment = parts
        self.consumer.close()

    def current(self):
        with self.lock:
            return self.assignment

    def close(self):
        self.stop.set()
        self.thread.join(60)


class ProcessMember:
    """A consumer in a process of its own (this file, `member` mode), so
    that it can be killed with SIGKILL; reads its assignment from the JSON
    lines it prints."""

    def __init__(self, name, conf, topic):
        self.name = name
        self.lock = threading.Lock()
        self.assignment = frozenset()
        conf = dict(conf, **{"client.id": name})
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "member", json.dumps(conf), topic], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                parts = frozenset(json.loads(line)["assignment"])
            except (ValueError, KeyError):
                continue
            with self.lock:
                self.assignment = parts

    def current(self):
        with self.lock:
            return self.assignment

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def member_main(conf_json, topic):
    from confluent_kafka import Consumer

    c = Consumer(json.loads(conf_json))
    c.subscribe([topic])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    last = None
    try:
        while True:
            c.poll(0.05)
            now = sorted(tp.partition for tp in c.assignment())
            if now != last:
                sys.stdout.write(json.dumps({"assignment": now}) + "\n")
                sys.stdout.flush()
                last = now
    finally:
        c.close()


def settled(members, partitions):
    """True when the members' assignments are disjoint, complete and none
    is empty (with at least as many partitions as members)."""
    seen = []
    for m in members:
        parts = m.current()
        if not parts and len(members) <= partitions:
            return False
        seen.extend(parts)
    return len(seen) == len(set(seen)) and set(seen) == set(range(partitions))


def wait_settled(members, partitions, hold, timeout, what, origin=None):
    """Seconds from `origin` (the call, by default) until the assignment
    that then stays unchanged for `hold` seconds was first seen."""
    start = time.monotonic() if origin is None else origin
    since, last = None, None
    while True:
        now = time.monotonic()
        snap = [m.current() for m in members]
        if settled(members, partitions):
            if snap != last:
                since = now
            elif now - since >= hold:
                return since - start
        last = snap
        if now - start > timeout:
            sys.exit("%s: no settled assignment within %.0fs: %s" % (what, timeout, {m.name: sorted(m.current()) for m in members}))
        time.sleep(0.02)


# ---- the runs ----


_ADMIN = {}


def create_topic(bootstrap, name, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    # One admin client for the run, quiet about the broker going away at
    # the end (librdkafka logs that at level 6).
    if bootstrap not in _ADMIN:
        _ADMIN[bootstrap] = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    a = _ADMIN[bootstrap]
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=30)


def run_failover(args, bootstrap, session_ms, run_id):
    topic = "timing-failover-%s-%s" % (session_ms, run_id)
    group = topic
    create_topic(bootstrap, topic, args.failover_partitions)
    conf = consumer_conf(bootstrap, group, args.strategy, session_ms)
    survivors = [ThreadMember("survivor-%d" % i, conf, topic) for i in range(args.failover_members - 1)]
    victim = ProcessMember("victim", conf, topic)
    everyone = survivors + [victim]
    session_s = (session_ms or 45000) / 1000
    try:
        wait_settled(everyone, args.failover_partitions, args.hold, 60, "before the crash")
        lost = sorted(victim.current())
        victim.kill()
        took = wait_settled(survivors, args.failover_partitions, args.hold, session_s + 60, "after the crash")
    finally:
        victim.close()
        for m in survivors:
            m.close()
    return {
        "phase": "failover",
        "session_timeout_ms": session_ms or 45000,
        "heartbeat_interval_ms": conf.get("heartbeat.interval.ms", 3000),
        "strategy": args.strategy,
        "members": args.failover_members,
        "partitions": args.failover_partitions,
        "victim_partitions": lost,
        "seconds": round(took, 2),
        "beyond_session_timeout_s": round(took - session_s, 2),
    }


def run_join(args, bootstrap, round_no, run_id):
    topic = "timing-join-%d-%s" % (round_no, run_id)
    create_topic(bootstrap, topic, args.partitions)
    conf = consumer_conf(bootstrap, topic, args.strategy, None)
    barrier = threading.Barrier(args.members)
    # Consumers are built before the barrier, so the timing starts at the
    # subscribe() calls, not at librdkafka's start-up.
    members = [ThreadMember("joiner-%d" % i, conf, topic, barrier) for i in range(args.members)]
    try:
        deadline = time.monotonic() + 30
        while any(m.subscribed_at is None for m in members):
            if time.monotonic() > deadline:
                sys.exit("join: members did not subscribe")
            time.sleep(0.001)
        first = min(m.subscribed_at for m in members)
        took = wait_settled(members, args.partitions, args.hold, 120, "join round %d" % round_no, origin=first)
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.thread.join(60)
    return {"phase": "join", "round": round_no, "members": args.members, "partitions": args.partitions, "strategy": args.strategy, "seconds": round(took, 2)}


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "member":
        member_main(sys.argv[2], sys.argv[3])
        return
    args = parse_args()
    started = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        started = StartedBroker(args.broker_bin)
        bootstrap = started.bootstrap
    results = []
    try:
        run_id = str(int(time.time()))
        for session in [s for s in args.sessions.split(",") if s]:
            results.append(run_failover(args, bootstrap, int(session), run_id))
            if not args.json:
                print_row(results[-1])
        for r in range(args.rounds):
            results.append(run_join(args, bootstrap, r, run_id))
            if not args.json:
                print_row(results[-1])
        joins = [r["seconds"] for r in results if r["phase"] == "join"]
        if joins and not args.json:
            print("join of %d members: median %.2fs, min %.2fs, max %.2fs over %d rounds" % (args.members, statistics.median(joins), min(joins), max(joins), len(joins)))
    finally:
        if started is not None:
            started.stop()
    if args.json:
        print(json.dumps({"bootstrap": bootstrap, "results": results}))


def print_row(r):
    if r["phase"] == "failover":
        print(
            "failover, session.timeout.ms=%d (heartbeat %d ms, %s, %d members, %d partitions): partitions %s of the killed member reassigned after %.2fs (%.2fs beyond the session timeout)"
            % (
                r["session_timeout_ms"],
                r["heartbeat_interval_ms"],
                r["strategy"],
                r["members"],
                r["partitions"],
                r["victim_partitions"],
                r["seconds"],
                r["beyond_session_timeout_s"],
            )
        )
    else:
        print("join round %d: %d members, %d partitions, %s: settled %.2fs after the first subscribe" % (r["round"], r["members"], r["partitions"], r["strategy"], r["seconds"]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
