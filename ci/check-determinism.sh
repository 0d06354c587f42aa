#!/usr/bin/env bash
# The deterministic crates (core, sim, nemesis, model) must not reach the
# world except through the clock, network, disk and randomness interfaces,
# and must not iterate in hasher order. The simulator's double-run check
# catches a slip only on the seeds it runs; this catches it in the source.
#
# model/src/main.rs is the checker's command line: it times the search for
# its report, after the search, and nothing in a model state depends on it.
set -euo pipefail
cd "$(dirname "$0")/.."

pattern='std::time|SystemTime|Instant::now|std::thread|thread::spawn|tokio|OsRng|thread_rng|getrandom|HashMap|HashSet|std::env::var|std::fs::|std::net::'
hits=$(grep -rnE "$pattern" core/src sim/src nemesis/src model/src \
    | grep -v '^model/src/main.rs:' \
    | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
if [ -n "$hits" ]; then
    echo "check-determinism: forbidden in a deterministic crate:" >&2
    echo "$hits" >&2
    exit 1
fi
echo "check-determinism: core, sim, nemesis and model are clean"
