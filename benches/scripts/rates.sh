# Sourced by ab.sh, costs.sh and instructions.sh: their usage text and executable check, and
# one run of the throughput harness with its two rates.

# `usage SCRIPT LAST`: prints SCRIPT's header comment, lines 2 to LAST, as its usage, and exits 2.
usage() {
  sed -n "2,${2}p" "$1" | sed 's/^# \{0,1\}//'
  exit 2
}

# Stops the calling script (exit 2) unless `$2` is an executable; `$1` names the script.
need_executable() {
  if [[ ! -x $2 ]]; then
    echo "$1: $2 is not an executable" >&2
    exit 2
  fi
}

# `rates CORE BIN [ARGS...]`: runs `BIN --runs 1 --flood 0 ARGS...` pinned to CORE and prints
# "<first hour events/s> <second hour events/s>"; prints nothing (and fails) when the output
# holds no rates, which stops a caller that reads it under `set -e`.
rates() {
  local core=$1 bin=$2 out first second
  shift 2
  # `|| true`: under the callers' `set -e -o pipefail` a failed run or a missing line would
  # end this subshell before it says why.
  out=$(taskset -c "$core" "$bin" --runs 1 --flood 0 "$@") || true
  first=$(grep -F '| mix: events/s' <<<"$out" | sed -E 's/.*\| ([0-9]+) \(median.*/\1/') || true
  second=$(grep -F '| mix, second hour' <<<"$out" | sed -E 's/.*\| ([0-9]+) \(.*/\1/') || true
  if [[ -z $first || -z $second ]]; then
    echo "no rates in the output of $bin $*" >&2
    return 1
  fi
  echo "$first $second"
}
