#!/usr/bin/env bash
# Builds release binaries with profile-guided optimization (PGO): an instrumented build, a
# training run, a rebuild that uses the profile.
#
# usage: engine/pgo/build.sh [BIN...]       (default: cordon; e.g. `cordon throughput e2e`)
#
# The binaries land in target/pgo/ (cargo profile `pgo`, which is `release` under another
# name, so a PGO build never mixes with target/release); the project's binaries not asked
# for are removed from there, as their crates are built anew. Needs rustup's `llvm-tools`
# component for `llvm-profdata` (`rustup component add llvm-tools`), or LLVM_PROFDATA naming
# another (e.g. Debian's `llvm-19` package: LLVM_PROFDATA=/usr/lib/llvm-19/bin/llvm-profdata).
# The Docker image
# (engine/Dockerfile) is built this way.
#
# Only the project's crates are instrumented and optimized with the profile (see
# rustc-wrapper.sh); dependencies are built once, as in a release build. The training run is
# the product's own work on the product's own traffic: `cordon simulate` writes two hours
# of benign and campaign traffic (40,000 benign accounts, about 600,000 events, 300 MB, deleted
# afterwards) and the instrumented `cordon backtest` runs the shipped rule pack over it. That
# is the path `cordon run` takes per event (decode, keyed state, evaluation, the alert gate)
# without Kafka, which librdkafka (C, not instrumented) handles. The throughput harness does
# not take part in training, so what it measures of a PGO build was not trained on.
#
# What it gained is in the README (Performance: "Profile-guided optimization").
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

bins=("$@")
[[ ${#bins[@]} -gt 0 ]] || bins=(cordon)
host=$(rustc -vV | sed -n 's/^host: //p')
# rustup's llvm-profdata, or another in LLVM_PROFDATA: one of an older LLVM may do, as long as
# it reads the raw profiles of rustc's LLVM (Debian 12's llvm-19 reads those of Rust 1.95's
# LLVM 22; its llvm-14 does not, and says "unsupported instrumentation profile format").
profdata=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
if [[ ! -x $profdata ]]; then
  echo "pgo: $profdata is missing; install it with: rustup component add llvm-tools" \
    "(or point LLVM_PROFDATA at an llvm-profdata that reads rustc's raw profiles)" >&2
  exit 2
fi

work=$root/target/pgo-data
rm -rf "$work"
mkdir -p "$work/raw"
export RUSTC_WRAPPER=$root/engine/pgo/rustc-wrapper.sh
# The training run needs `cordon` whatever is asked for.
args=(--profile pgo --locked --workspace --bin cordon)
for bin in "${bins[@]}"; do
  [[ $bin == cordon ]] || args+=(--bin "$bin")
done
# The packages instrumented, then optimized with the profile. The wrapper reads this list and
# each stage cleans the same packages, as cargo does not see the wrapper's flags change: a
# package flagged but not cleaned would reach the final binary still instrumented.
packages=(cordon-engine cordon-rules cordon-benches)
export CORDON_PGO_PACKAGES="${packages[*]}"
clean() {
  local args=()
  for package in "${packages[@]}"; do
    args+=(-p "$package")
  done
  cargo clean -q --profile pgo "${args[@]}"
}

echo "pgo: 1/3 instrumented build" >&2
clean
CORDON_PGO_MODE=generate CORDON_PGO_PATH=$work/raw cargo build "${args[@]}"

echo "pgo: 2/3 training: cordon simulate, then cordon backtest over it" >&2
target/pgo/cordon simulate --hours 2 --accounts 40000 --seed 11 --out "$work/train.jsonl" >&2
target/pgo/cordon backtest --rules rules/packs/extraction --events "$work/train.jsonl" \
  --out "$work/alerts.jsonl" >/dev/null
rm -f "$work/train.jsonl"
"$profdata" merge -o "$work/cordon.profdata" "$work"/raw/*.profraw

echo "pgo: 3/3 build with the profile" >&2
clean
CORDON_PGO_MODE=use CORDON_PGO_PATH=$work/cordon.profdata cargo build "${args[@]}"
for bin in cordon "${bins[@]}"; do
  echo "target/pgo/$bin"
done | sort -u
