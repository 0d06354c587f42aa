#!/usr/bin/env bash
# The deterministic crates (core, sim, nemesis, model) must not reach the
# world except through the clock, network, disk and randomness interfaces,
# and must not iterate in hasher order. The simulator's double-run check
# catches a slip only on the seeds it runs; this catches it in the source.
# Their tests too: a test that reads the clock or the environment is not
# repeatable either. (Time a model-checker run from outside: `time cargo
# run -p odradek-model --release -- …`.)
set -euo pipefail
cd "$(dirname "$0")/.."

pattern='std::time|SystemTime|Instant::now|std::thread|thread::spawn|tokio|OsRng|thread_rng|getrandom|HashMap|HashSet|std::env::var|std::fs::|std::net::'
hits=$(grep -rnE "$pattern" core sim nemesis model --include='*.rs' \
    | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
if [ -n "$hits" ]; then
    echo "check-determinism: forbidden in a deterministic crate:" >&2
    echo "$hits" >&2
    exit 1
fi
echo "check-determinism: core, sim, nemesis and model are clean"
