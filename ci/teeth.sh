#!/usr/bin/env bash
# Shows that the storage simulation has teeth: each patch in ci/mutations/
# breaks recovery or durability on purpose (the way real storage engines
# have broken), is applied to a scratch worktree, and the swarm is run over
# the same seeds as the test suite. A mutation that no seed catches is a
# hole in the simulator. Nothing here touches the working tree.
#
#   ci/teeth.sh [SEEDS]        default SEEDS=1000
set -euo pipefail
seeds=${1:-1000}
root=$(git rev-parse --show-toplevel)
cd "$root"
export CARGO_TARGET_DIR="$root/target/teeth"
jobs=$(nproc)
printf '%-30s %-12s %-14s %s\n' mutation first-seed caught first-violation
for patch in ci/mutations/*.patch; do
  name=$(basename "$patch" .patch)
  work=$(mktemp -d)
  git worktree add -q --detach "$work" HEAD
  if ! git -C "$work" apply "$root/$patch"; then
    printf '%-30s %s\n' "$name" "PATCH NO LONGER APPLIES (update it to the code it breaks)"
    git worktree remove --force "$work"
    exit 1
  fi
  (cd "$work" && cargo build -q --release -p odradek)
  out=$("$CARGO_TARGET_DIR/release/odradek" sim swarm --seeds "0..$seeds" --jobs "$jobs" 2>&1 || true)
  git worktree remove --force "$work"
  # The sorted summary after the live lines: one line per failing seed.
  summary=$(sed -n '/^failures, by seed:/,$p' <<<"$out" | grep 'FAIL seed=' || true)
  failed=$(grep -c 'FAIL seed=' <<<"$summary" || true)
  first=$(head -n 1 <<<"$summary" | sed -E 's/.*FAIL seed=([0-9]+).*/\1/')
  violation=$(head -n 1 <<<"$summary" | sed -E 's/.*violation=([a-z-]+).*/\1/')
  printf '%-30s %-12s %-14s %s\n' "$name" "${first:-none}" "$failed/$seeds" "${violation:-NOT CAUGHT}"
  if [ "$failed" -eq 0 ]; then
    echo "mutation $name survived $seeds seeds" >&2
    exit 1
  fi
done
