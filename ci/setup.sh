#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent: every
# step checks before it installs. Issue by issue this grows (kcat, Python
# Kafka clients, packet-filter tools). The Rust toolchain with rustfmt and
# clippy comes with the machine image; kcat (librdkafka's command-line
# client) comes from Debian, for the tests that check a real client can use
# the broker.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "ci/setup.sh: cargo is not installed; Odradek needs a Rust toolchain (1.88 or newer)" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if need rustup; then
      rustup component add "$component"
    else
      echo "ci/setup.sh: cargo $component is missing and rustup is not available" >&2
      exit 1
    fi
  fi
done
if ! need kcat; then
  if ! need apt-get; then
    echo "ci/setup.sh: kcat is not installed and apt-get is not available to install it (on Debian or Ubuntu this script installs the kcat package)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq kcat
fi
# kcat -V prints its version and librdkafka's, and exits 0.
echo "ci/setup.sh: kcat $(kcat -V 2>&1 | sed -n 's/^Version //p')"

echo "ci/setup.sh: $(cargo --version), $(cargo fmt --version), $(cargo clippy --version)"
