#!/bin/sh
# RUSTC_WRAPPER for engine/pgo/build.sh. Cargo runs it as `rustc-wrapper.sh RUSTC ARGS...`.
#
# It adds `-Cprofile-$CORDON_PGO_MODE=$CORDON_PGO_PATH` (generate or use) to the project's own
# crates and leaves every dependency as cargo builds it. Instrumenting datafusion, arrow and
# librdkafka's wrappers too made the instrumented build alone run past 15 minutes on a 2-core
# machine; the hot code the profile is for (decode, state, evaluation, the harness loop) is
# in these crates, and their generic instantiations of dependency code are compiled here too.
case " $* " in
*" --crate-name cordon "* | *" --crate-name cordon_engine "* | *" --crate-name cordon_rules "* | \
  *" --crate-name cordon_benches "* | *" --crate-name throughput "*)
  if [ -n "${CORDON_PGO_MODE:-}" ]; then
    exec "$@" "-Cprofile-$CORDON_PGO_MODE=$CORDON_PGO_PATH"
  fi
  ;;
esac
exec "$@"
