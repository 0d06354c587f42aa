#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent: every
# step checks before it installs. Issue by issue this grows (kcat, Python
# Kafka clients, packet-filter tools). The Rust toolchain with rustfmt and
# clippy comes with the machine image; kcat (librdkafka's command-line
# client) comes from Debian, and the Python clients (confluent-kafka, which
# is librdkafka, and kafka-python) from PyPI, for the tests that check real
# clients can use the broker.
set -euo pipefail
cd "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.."

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

# The Python clients live in a virtualenv inside target/ (git-ignored, and
# where `cargo clean` removes it too), so that nothing outside the clone is
# changed and the tests find them at a fixed path. Debian's python3 refuses
# `pip install` outside a virtualenv anyway (PEP 668).
venv=target/ci-venv
if ! need python3; then
  if ! need apt-get; then
    echo "ci/setup.sh: python3 is not installed and apt-get is not available to install it" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3 python3-venv
fi
# A venv left by an interpreter that has since gone (or been upgraded) is
# broken in ways pip does not repair: start again.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
fi
if [ ! -e "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv (and the ensurepip it needs) out of python3.
    rm -rf "$venv"
    if ! need apt-get; then
      echo "ci/setup.sh: python3 cannot create a virtualenv and apt-get is not available to install python3-venv" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
fi
# Already-satisfied pinned requirements make this a quick no-op.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r ci/python-clients.txt
# Imported, not just listed by pip: the tests need them to load.
echo "ci/setup.sh: $("$venv/bin/python" -c 'import sys, confluent_kafka, kafka
from importlib.metadata import version
print("python %s (%s), confluent-kafka %s with librdkafka %s, kafka-python %s" % (
    sys.version.split()[0], sys.executable, version("confluent-kafka"),
    confluent_kafka.libversion()[0], version("kafka-python")))')"

echo "ci/setup.sh: $(cargo --version), $(cargo fmt --version), $(cargo clippy --version)"
