#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent: every
# step checks before it installs. Issue by issue this grows (kcat, Python
# Kafka clients, packet-filter tools); today the suite needs only the Rust
# toolchain with rustfmt and clippy, which the machine image provides.
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
echo "ci/setup.sh: $(cargo --version), $(cargo fmt --version), $(cargo clippy --version)"
