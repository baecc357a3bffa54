#!/usr/bin/env bash
# Runs Cordon's whole test suite on a fresh machine: installs what is missing (Debian packages
# for librdkafka's build, the tansu Kafka broker the end-to-end tests start, Python
# virtualenvs for the OCSF validator, the S3 stand-in and the chart tests), builds the
# `cordon` binary that the end-to-end tests run as a separate process, and runs every test.
#
# Usage: tests/run.sh [extra nextest arguments]
# Runs the Rust tests (cargo-nextest) and the Helm chart tests (helm/tests/run.sh, pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Debian packages: C toolchain and headers for rdkafka (librdkafka, OpenSSL for TLS/SASL, zlib);
# promtool (package prometheus) checks the /metrics exposition; python3-venv for the chart tests.
missing=()
for pkg in gcc g++ make perl pkg-config libssl-dev zlib1g-dev prometheus python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Kafka-protocol broker the end-to-end tests start on a free 127.0.0.1 port.
TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "installing tansu $TANSU_VERSION (a real Kafka-protocol broker; about 10-15 minutes cold)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked
fi
TANSU_BIN="$(command -v tansu)"
export TANSU_BIN

# The test runner.
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

log "preparing the OCSF validator (PyPI ocsf-json-schema, in target/ocsf-venv)"
tests/ocsf/run-venv.sh >/dev/null
log "preparing the S3 stand-in for checkpoints in object storage (PyPI moto, in target/s3-venv)"
tests/s3/run-venv.sh >/dev/null

log "checking every target (benchmarks included: nothing else builds them)"
cargo check --workspace --all-targets
log "checking the API docs (broken intra-doc links are errors: workspace lints)"
cargo doc --workspace --no-deps

log "building the cordon binary (the end-to-end tests run it as a separate process)"
cargo build --workspace --bins
export CORDON_BIN="$PWD/target/debug/cordon"
# The simulated-day backtest pushes a million events through the engine: release build.
log "building the release cordon binary (for the simulated-day backtest)"
cargo build --release --bin cordon
export CORDON_RELEASE_BIN="$PWD/target/release/cordon"

failed=0
log "running the Rust test suite"
cargo nextest run --workspace --config-file tests/nextest.toml --no-fail-fast "$@" || failed=1

log "running the Helm chart tests"
helm/tests/run.sh || failed=1

exit "$failed"
