#!/usr/bin/env bash
# Counts the instructions the engine executes per event, which do not drift with the machine.
#
# usage: benches/scripts/instructions.sh BIN [ARGS...]
#
# BIN is a build of the throughput harness (`cargo build --release -p cordon-benches --bin
# throughput`). It runs under valgrind's callgrind (Debian package `valgrind`), counting only
# inside `Processor::process`, on `--runs 1 --flood 0` and ARGS; without ARGS, on a
# 40,000-account mix (`--accounts 20000 --ranges 2000 --extra 20000`, about 20 seconds). It
# prints the instructions per event and the ten functions with the most instructions of their
# own; the profile stays in callgrind.out.cordon for `callgrind_annotate --auto=yes` (per
# line) or `--inclusive=yes`. With SCOPE=steady in the environment it counts the second hour
# alone (keys exist, windows slide and expire), the harness's batch loop around it included.
#
# Why: on this virtual machine the same binary's rate drifts by 20-30% between stretches of an
# hour, and `perf` has no hardware counters. An instruction count is exact and the same on
# every run, so it judges a change that removes work in seconds; paired runs (ab.sh) then say
# whether the time followed.
set -euo pipefail
# shellcheck source=rates.sh
source "$(dirname "$0")/rates.sh"
[[ $# -ge 1 ]] || usage "$0" 18
bin=$1
shift
need_executable instructions.sh "$bin"
command -v valgrind >/dev/null || {
  echo "instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2
  exit 2
}
if [[ $# -eq 0 ]]; then
  set -- --accounts 20000 --ranges 2000 --extra 20000
fi
out=callgrind.out.cordon
# With `--runs 1 --flood 0` the harness passes an hour's events through `Processor::process`
# three times: the first hour, then the first and the second hour through a fresh processor.
# Its table's `mix: events` row says how many an hour holds. SCOPE=steady counts only the
# second hour, which the harness runs in a function of its own (`steady_hour`).
case ${SCOPE:-all} in
  all) collect='*Processor::process' hours=3 what='in Processor::process' ;;
  steady) collect='*steady_hour*' hours=1 what='in the second hour' ;;
  *)
    echo "instructions.sh: SCOPE is all or steady, not $SCOPE" >&2
    exit 2
    ;;
esac
table=$(valgrind --tool=callgrind --toggle-collect="$collect" \
  --callgrind-out-file="$out" "$bin" --runs 1 --flood 0 "$@" 2>/dev/null)
hour=$(grep -F '| mix: events |' <<<"$table" | sed -E 's/^\| mix: events \| ([0-9]+) .*/\1/') || true
if [[ -z $hour ]]; then
  echo "instructions.sh: no event count in the output of $bin $*" >&2
  exit 1
fi
events=$((hours * hour))
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "events: $events; instructions $what: $total, $((total / events)) an event"
callgrind_annotate "$out" 2>/dev/null | awk 'f && NF { print; if (++n == 10) exit } /file:function/ { f = 1; getline }'
