"""Shared by the real-client test scripts in this folder.

Each script is run as `python SCRIPT BOOTSTRAP [unittest options]`, by
server/tests/real_clients.rs against a broker it started, or by hand against
any broker (`target/ci-venv/bin/python server/tests/clients/confluent.py
127.0.0.1:9092`). Every test creates topics of its own, with a random suffix,
so a script can be run twice against the same broker.
"""

import os
import sys
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


def main():
    """unittest.main with the bootstrap address taken off the command line."""
    global BOOTSTRAP
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.stderr.write("usage: %s HOST:PORT [unittest options]\n" % sys.argv[0])
        sys.exit(2)
    BOOTSTRAP = sys.argv[1]
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
