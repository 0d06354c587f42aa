#!/usr/bin/env bash
# Shows that the Raft model has teeth: each ci/mutations/raft-*.patch breaks
# core/src/raft on purpose, the way Raft implementations have broken. It is
# applied to a scratch worktree, the model checker is built there, and the
# search named on the patch's `model:` header line runs (breadth first,
# stopping at the first violation of an `always` property). A caught
# mutation's counterexample is then confirmed a shortest one by searching
# every state one step short of it. Nothing here touches the working tree.
#
#   ci/teeth-model.sh [PREFIX]    PREFIX picks the patches (e.g. vote-)
#
# Prints one line per mutation: caught or not, the property that failed,
# the counterexample's steps (and whether none is shorter), the states the
# search generated and the unique ones, and the seconds it took (timed here:
# the model crate never reads the clock). TEETH_CARGO overrides the cargo
# command (e.g. "flock /work/cargo.lock nice -n 19 cargo" on a shared
# machine). Exits non-zero if a mutation survives or a patch no longer
# applies.
set -euo pipefail
prefix=${1:-}
root=$(git rev-parse --show-toplevel)
cd "$root"
export CARGO_TARGET_DIR="$root/target/teeth-model"
read -r -a cargo <<<"${TEETH_CARGO:-cargo}"
bin="$CARGO_TARGET_DIR/release/odradek-model"
survived=0
printf '%-28s %-7s %-30s %-16s %-22s %s\n' mutation caught property steps states secs
for patch in ci/mutations/raft-"$prefix"*.patch; do
  name=$(basename "$patch" .patch)
  args=$(sed -n 's/^model: //p' "$patch" | head -n 1)
  # A patch that breaks code the model does not run (DiskStore) says so.
  if [[ "$args" == none* ]]; then
    printf '%-28s %-7s %s\n' "$name" n/a "${args#none }"
    continue
  fi
  if [ -z "$args" ]; then
    echo "$name: no 'model:' line naming the search" >&2
    exit 1
  fi
  work=$(mktemp -d)
  git worktree add -q --detach "$work" HEAD
  if ! git -C "$work" apply "$root/$patch"; then
    printf '%-28s %s\n' "$name" "PATCH NO LONGER APPLIES (update it to the code it breaks)"
    git worktree remove --force "$work"
    exit 1
  fi
  (cd "$work" && "${cargo[@]}" build -q --release -p odradek-model)
  git worktree remove --force "$work"
  # shellcheck disable=SC2086 # the header's arguments are words
  start=$(date +%s%N)
  out=$("$bin" raft $args --first-violation 2>&1 || true)
  ms=$((($(date +%s%N) - start) / 1000000))
  secs=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
  summary=$(grep -m1 'steps checked:' <<<"$out" || true)
  states=$(sed -E 's/.*: ([0-9]+) states generated, ([0-9]+) unique.*/\1\/\2/' <<<"$summary")
  # The counterexample's header: "<property>: N steps", after the verdicts.
  failed=$(grep -E '^[^ ].*: [0-9]+ steps$' <<<"$out" | head -n 1 || true)
  if [ -z "$failed" ]; then
    printf '%-28s %-7s %-30s %-16s %-22s %s\n' "$name" no - - "$states" "$secs"
    echo "$out" >&2
    survived=1
    continue
  fi
  property=$(sed -E 's/^(.*): [0-9]+ steps$/\1/' <<<"$failed" | cut -c1-30)
  steps=$(sed -E 's/.*: ([0-9]+) steps$/\1/' <<<"$failed")
  # Is it a shortest one? Every state within steps-1 must be violation-free.
  # shellcheck disable=SC2086
  if "$bin" raft $(sed -E 's/--depth [0-9]+//' <<<"$args") --depth $((steps - 1)) >/dev/null 2>&1; then
    shortest="$steps (shortest)"
  else
    shortest="$steps (not shortest)"
  fi
  printf '%-28s %-7s %-30s %-16s %-22s %s\n' "$name" yes "$property" "$shortest" "$states" "$secs"
  echo "$out" | sed -n "/^$(sed 's/[][().*]/\\&/g' <<<"$failed")\$/,\$p" | sed 's/^/    /'
done
exit "$survived"
