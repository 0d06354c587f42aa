#!/usr/bin/env bash
# Shows that the storage simulation has teeth: each patch in ci/mutations/
# breaks recovery or durability on purpose (the way real storage engines
# have broken), is applied to a scratch worktree, and the swarm runs over
# seeds 0.. in chunks of 1000 until some seed catches it. A mutation that no
# seed up to MAX_SEEDS catches is a hole in the simulator. Patches named
# broker-*.patch break the Kafka request path and run the broker workload;
# groups-*.patch break the group coordinator and run the groups workload;
# raft-*.patch and metadata-*.patch break the Raft core or the quorum node
# and run the cluster workload (3 or 5 nodes, as each seed draws); the
# others run the storage workload. Nothing here touches the working tree.
#
#   ci/teeth.sh [MAX_SEEDS] [PREFIX]   default MAX_SEEDS=20000; PREFIX picks
#                                      the patches (e.g. groups-)
#   TEETH_JOBS=1 ci/teeth.sh ...       seeds run at once (default: nproc)
#   TEETH_CARGO="flock /work/cargo.lock nice -n 19 cargo" ci/teeth.sh ...
#                                      the cargo command (a shared machine)
#
# The seconds printed are the swarm's wall time up to the chunk that caught
# the mutation (builds and the baseline runs of the unmutated code excluded).
set -euo pipefail
max_seeds=${1:-20000}
prefix=${2:-}
chunk=1000
root=$(git rev-parse --show-toplevel)
cd "$root"
export CARGO_TARGET_DIR="$root/target/teeth"
jobs=${TEETH_JOBS:-$(nproc)}
read -r -a cargo <<<"${TEETH_CARGO:-cargo}"
# Seeds the unmutated code already fails (a bug found and not yet fixed,
# listed in sim/tests/*_seeds.rs) catch nothing: they are left out.
("${cargo[@]}" build -q --release -p odradek)
cp "$CARGO_TARGET_DIR/release/odradek" "$CARGO_TARGET_DIR/odradek-unmutated"
baseline_failures() { # workload from to
  "$CARGO_TARGET_DIR/odradek-unmutated" sim swarm --workload "$1" --seeds "$2..$3" --jobs "$jobs" 2>&1 |
    sed -n '/^failures, by seed:/,$p' | grep 'FAIL seed=' | sed -E 's/.*FAIL (seed=[0-9]+ ).*/\1/' || true
}
printf '%-30s %-12s %-16s %-8s %s\n' mutation first-seed caught/in secs first-violation
patches=(ci/mutations/"$prefix"*.patch)
if [ ! -e "${patches[0]}" ]; then
  echo "no patch in ci/mutations/ starts with '$prefix'" >&2
  exit 1
fi
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  workload=storage
  case "$name" in
    broker-*) workload=broker ;;
    groups-*) workload=groups ;;
    raft-* | metadata-*) workload=cluster ;;
  esac
  work=$(mktemp -d)
  git worktree add -q --detach "$work" HEAD
  if ! git -C "$work" apply "$root/$patch"; then
    printf '%-30s %s\n' "$name" "PATCH NO LONGER APPLIES (update it to the code it breaks)"
    git worktree remove --force "$work"
    exit 1
  fi
  (cd "$work" && "${cargo[@]}" build -q --release -p odradek)
  git worktree remove --force "$work"
  failed=0
  first=""
  violation=""
  to=0
  ms=0
  for ((from = 0; from < max_seeds; from += chunk)); do
    to=$((from + chunk))
    start=$(date +%s%N)
    out=$("$CARGO_TARGET_DIR/release/odradek" sim swarm --workload "$workload" --seeds "$from..$to" --jobs "$jobs" 2>&1 || true)
    ms=$((ms + ($(date +%s%N) - start) / 1000000))
    # The sorted summary after the live lines: one line per failing seed.
    summary=$(sed -n '/^failures, by seed:/,$p' <<<"$out" | grep 'FAIL seed=' || true)
    known=$(baseline_failures "$workload" "$from" "$to")
    if [ -n "$known" ] && [ -n "$summary" ]; then
      summary=$(grep -vF -f <(sed 's/$/ /' <<<"$known" | sed 's/ $/ /') <<<"$summary" || true)
    fi
    failed=$(grep -c 'FAIL seed=' <<<"$summary" || true)
    if [ "$failed" -gt 0 ]; then
      first=$(head -n 1 <<<"$summary" | sed -E 's/.*FAIL seed=([0-9]+).*/\1/')
      violation=$(head -n 1 <<<"$summary" | sed -E 's/.*violation=([a-z-]+).*/\1/')
      break
    fi
  done
  secs=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
  printf '%-30s %-12s %-16s %-8s %s\n' "$name" "${first:-none}" "$failed/$from..$to" "$secs" "${violation:-NOT CAUGHT}"
  if [ "$failed" -eq 0 ]; then
    echo "mutation $name survived $max_seeds seeds" >&2
    exit 1
  fi
done
