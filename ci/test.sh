#!/usr/bin/env bash
# The whole test suite: what CI runs (through .ci/run) and what a developer
# runs before pushing. Fails on the first failing step.
#
#   ci/test.sh            format, lint, unit/property/simulation tests, CLI smoke
#   SWARM_SEEDS=5000 ci/test.sh   a longer swarm smoke at the end
set -euo pipefail
cd "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.."

step() { printf '\n== %s\n' "$*"; }

step "setup"
bash ci/setup.sh

step "format"
cargo fmt --all -- --check

step "determinism (source check)"
bash ci/check-determinism.sh

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, property, simulation: 1000 storage, 300 broker, 400 groups and 1000 cluster (500 of 3 nodes, 500 of 5) seeds, each run twice for determinism; the Raft model to 8, 12 and 11 steps (about 4 million states); turmoil; real clients against the odradek binary)"
# The real-client tests skip when the clients are missing, except here:
# setup.sh has just installed them, so missing means broken.
ODRADEK_REQUIRE_CLIENTS=1 cargo test --workspace --locked

step "simulator smoke through the odradek command"
cargo build --release --locked -p odradek
bin=target/release/odradek
"$bin" sim run --seed 42 --check-determinism --json
"$bin" sim swarm --seeds "1000..${SWARM_SEEDS:-1500}" --check-determinism
"$bin" sim run --seed 42 --workload broker --check-determinism --json
"$bin" sim swarm --workload broker --seeds "1000..${BROKER_SWARM_SEEDS:-1100}" --check-determinism
"$bin" sim run --seed 42 --workload groups --check-determinism --json
"$bin" sim swarm --workload groups --seeds "1000..${GROUPS_SWARM_SEEDS:-1100}" --check-determinism
"$bin" sim run --seed 42 --workload cluster --nodes 5 --check-determinism --json
"$bin" sim swarm --workload cluster --seeds "1000..${CLUSTER_SWARM_SEEDS:-1500}" --check-determinism

echo
echo "ci/test.sh: all steps passed"
