#!/usr/bin/env bash
# Compares two builds of the throughput harness in paired runs.
#
# usage: benches/scripts/ab.sh BASE_BIN NEW_BIN [PAIRS] [CORE]
#
# Build each side with `cargo build --release -p cordon-benches --bin throughput` and copy
# `target/release/throughput` away (for example to /tmp/tp-base and /tmp/tp-new) before
# building the other. The script runs `BIN --runs 1 --flood 0`, pinned to CORE (default 1),
# base then new, PAIRS times (default 10), and prints every pair, then for each hour the
# median of the per-pair ratios new/base and how many pairs the new build won.
#
# Why pairs: on a shared virtual machine the same binary's rate drifts by 20% or more within
# an hour, so two separate sets of runs compare two stretches of the machine, not two builds.
# Runs back to back see nearly the same machine, and the ratio within a pair cancels most of
# the drift. Never build while it runs.
set -euo pipefail
# shellcheck source=rates.sh
source "$(dirname "$0")/rates.sh"
[[ $# -ge 2 ]] || usage "$0" 15
base=$1
new=$2
pairs=${3:-10}
core=${4:-1}
need_executable ab.sh "$base"
need_executable ab.sh "$new"

results=$(mktemp)
trap 'rm -f "$results"' EXIT
printf '%-6s %12s %12s %12s %12s\n' pair base-1h new-1h base-2h new-2h
for i in $(seq "$pairs"); do
  read -r b1 b2 < <(rates "$core" "$base")
  read -r n1 n2 < <(rates "$core" "$new")
  printf '%-6s %12s %12s %12s %12s\n' "$i" "$b1" "$n1" "$b2" "$n2"
  echo "$b1 $n1 $b2 $n2" >>"$results"
done

# Median of the ratios and the wins, per hour.
for hour in 1 2; do
  awk -v h="$hour" '{ b = $(2 * h - 1); n = $(2 * h); print n / b }' "$results" | sort -g |
    awk -v h="$hour" '
      { r[NR] = $1; if ($1 > 1) wins++ }
      END {
        m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
        printf "hour %d: new/base median %.3f (%.3f..%.3f), new faster in %d of %d pairs\n",
          h, m, r[1], r[NR], wins, NR
      }'
done
