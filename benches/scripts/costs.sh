#!/usr/bin/env bash
# What parts of a rule pack cost per event: the throughput harness with groups of rule files
# left out, alternating with the whole pack.
#
# usage: benches/scripts/costs.sh BIN ROUNDS GROUP... [-- THROUGHPUT_ARGS...]
#
# BIN is a build of `throughput` (`cargo build --release -p cordon-benches --bin throughput`).
# Each GROUP is a comma-separated list of rule file names (without `.yaml`) of the shipped pack
# (`rules/packs/extraction`, or PACK=DIR) to leave out together: leaving out every rule of a
# state table leaves that table empty. Each round runs the whole pack, then the pack without
# each group in turn, pinned to CORE (default 1), `--runs 1 --flood 0` plus THROUGHPUT_ARGS.
# It prints every run, then for each group and hour the median over the rounds of the
# difference in µs an event between the whole pack and the pack without the group, taken
# within a round: what the group costs. Never build while it runs.
#
# The README's "Where the time goes, table by table" comes from this (the last group leaves
# the four rules that never count in the mix, whose rate is decode, filters and keys alone):
#   benches/scripts/costs.sh /tmp/tp 5 campaign-template new-model-pivot hydra-range \
#     cot-harvest,machine-timing,narrow-focus,prompt-sweep \
#     cot-harvest,machine-timing,narrow-focus,prompt-sweep,new-model-pivot,hydra-range,campaign-template
set -euo pipefail
# shellcheck source=rates.sh
source "$(dirname "$0")/rates.sh"
[[ $# -ge 3 ]] || usage "$0" 20
bin=$1
rounds=$2
shift 2
groups=()
while [[ $# -gt 0 && $1 != -- ]]; do
  groups+=("$1")
  shift
done
[[ ${1:-} == -- ]] && shift
extra=("$@")
core=${CORE:-1}
pack=${PACK:-$(cd "$(dirname "$0")/../../rules/packs/extraction" && pwd)}
need_executable costs.sh "$bin"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in "${!groups[@]}"; do
  dir=$work/g$i
  cp -r "$pack" "$dir"
  IFS=, read -ra files <<<"${groups[$i]}"
  for f in "${files[@]}"; do
    if [[ ! -f $dir/$f.yaml ]]; then
      echo "costs.sh: no rule file $f.yaml in $pack" >&2
      exit 2
    fi
    rm "$dir/$f.yaml"
  done
done

results=$work/results
for ((r = 1; r <= rounds; r++)); do
  read -r f s < <(rates "$core" "$bin" "${extra[@]}")
  echo "round $r whole pack: $f / $s events/s"
  for i in "${!groups[@]}"; do
    read -r gf gs < <(rates "$core" "$bin" "${extra[@]}" --rules "$work/g$i")
    echo "round $r without ${groups[$i]}: $gf / $gs events/s"
    echo "$i $f $s $gf $gs" >>"$results"
  done
done

echo
echo "| left out | first hour, µs an event (rounds) | second hour, µs an event (rounds) |"
echo "| --- | --- | --- |"
for i in "${!groups[@]}"; do
  awk -v g="$i" -v name="${groups[$i]}" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $1 == g {
      n++
      d1[n] = 1e6 / $2 - 1e6 / $4; l1 = l1 sprintf("%s%.3f", n > 1 ? ", " : "", d1[n])
      d2[n] = 1e6 / $3 - 1e6 / $5; l2 = l2 sprintf("%s%.3f", n > 1 ? ", " : "", d2[n])
    }
    END { printf "| %s | %.3f (%s) | %.3f (%s) |\n", name, median(d1, n), l1, median(d2, n), l2 }
  ' "$results"
done
