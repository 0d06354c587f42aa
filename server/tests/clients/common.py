"""Shared by the real-client test scripts in this folder.

Each script is run as `python SCRIPT BOOTSTRAP [unittest options]`, by
server/tests/real_clients.rs against a broker it started, or by hand against
any broker (`target/ci-venv/bin/python server/tests/clients/confluent.py
127.0.0.1:9092`). Every test creates topics of its own, with a random suffix,
so a script can be run twice against the same broker.
"""

import os
import sys
import threading
import time
import unittest
import uuid

BOOTSTRAP = None

# Every blocking client call gets a bound: a broker that stops answering
# must fail the test, not hang it.
TIMEOUT = float(os.environ.get("ODRADEK_CLIENT_TIMEOUT", "30"))


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def wait_until(what, check, timeout=TIMEOUT, interval=0.05):
    """Calls check() until it returns something truthy; fails after timeout
    with the last value it returned, so the failure says what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s: not true within %.0fs (last: %r)" % (what, timeout, value))
        time.sleep(interval)


# ---- consumer groups (groups_*.py) ----

# Long enough for Kafka's group.initial.rebalance.delay.ms (3 s) plus a
# rebalance or two on a loaded machine.
SETTLE = max(TIMEOUT, 30.0)
# How long assignments must stay unchanged to count as settled: more than
# two heartbeat intervals, so that a rebalance the broker has started is
# noticed (and revoked) by the members within it.
HOLD = 2.5


def show(parts):
    return sorted("%s[%d]" % (t[-4:], p) for t, p in parts)


class Ledger:
    """Who owns which partition, from the rebalance callbacks of every
    member of one group: a partition handed to one member while another
    live member still holds it is a violation (a partition is owned by at
    most one member at a time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner = {}
        self.violations = []

    def assign(self, name, parts):
        with self.lock:
            for tp in parts:
                held = self.owner.get(tp)
                if held is not None and held != name:
                    self.violations.append("%s[%d] assigned to %s while %s still owned it" % (tp[0], tp[1], name, held))
                self.owner[tp] = name

    def revoke(self, name, parts):
        with self.lock:
            for tp in parts:
                if self.owner.get(tp) == name:
                    del self.owner[tp]

    def forget(self, name):
        """A member that died: whatever it held is free."""
        with self.lock:
            for tp in [tp for tp, n in self.owner.items() if n == name]:
                del self.owner[tp]

    def owned_by(self, name):
        with self.lock:
            return {tp for tp, n in self.owner.items() if n == name}


def coverage_problem(snapshot, partitions, balanced):
    """Why the assignments {member: parts} are not a settled assignment of
    `partitions`, or None."""
    seen = {}
    for name, parts in snapshot.items():
        for tp in parts:
            if tp in seen:
                return "%s[%d] assigned to both %s and %s" % (tp[0], tp[1], seen[tp], name)
            seen[tp] = name
    missing = set(partitions) - set(seen)
    if missing:
        return "unassigned: %s" % show(missing)
    extra = set(seen) - set(partitions)
    if extra:
        return "assigned partitions that are not the topic's: %s" % show(extra)
    if len(snapshot) <= len(partitions):
        empty = [n for n, parts in snapshot.items() if not parts]
        if empty:
            return "members without partitions: %s" % empty
    sizes = [len(p) for p in snapshot.values()]
    if balanced and sizes and max(sizes) - min(sizes) > 1:
        return "unbalanced: %s" % {n: len(p) for n, p in snapshot.items()}
    return None


def wait_settled(members, partitions, what, timeout=SETTLE, hold=HOLD, balanced=True):
    """Waits until the members' assignments cover `partitions` disjointly
    and stay unchanged for `hold` seconds. Returns ({name: parts}, seconds
    from the call until that assignment was first seen)."""
    start = time.monotonic()
    deadline = start + timeout
    last, since = None, None
    while True:
        now = time.monotonic()
        snap = {m.name: m.current() for m in members}
        problem = coverage_problem(snap, partitions, balanced)
        if problem is None:
            if snap != last:
                since = now
            elif now - since >= hold:
                return snap, since - start
        last = snap
        if now > deadline:
            raise AssertionError(
                "%s: no settled assignment within %.0fs: %s; assignments: %s"
                % (what, timeout, problem or "still changing", {n: show(p) for n, p in snap.items()})
            )
        time.sleep(0.05)


def main():
    """unittest.main with the bootstrap address taken off the command line."""
    global BOOTSTRAP
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.stderr.write("usage: %s HOST:PORT [unittest options]\n" % sys.argv[0])
        sys.exit(2)
    BOOTSTRAP = sys.argv[1]
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
