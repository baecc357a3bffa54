#!/bin/sh
# RUSTC_WRAPPER for engine/pgo/build.sh. Cargo runs it as `rustc-wrapper.sh RUSTC ARGS...`,
# with the package being compiled in $CARGO_PKG_NAME.
#
# It adds `-Cprofile-$CORDON_PGO_MODE=$CORDON_PGO_PATH` (generate or use) to the crates of the
# packages build.sh names in $CORDON_PGO_PACKAGES (the project's own), not to their build
# scripts, and leaves every dependency as cargo builds it. Instrumenting datafusion, arrow and
# librdkafka's wrappers too made the instrumented build alone run past 15 minutes on a 2-core
# machine; the hot code the profile is for (decode, state, evaluation, the harness loop) is
# in these crates, and their generic instantiations of dependency code are compiled here too.
case " $* " in
*" --crate-name build_script_"*) exec "$@" ;;
esac
if [ -n "${CORDON_PGO_MODE:-}" ] && [ -n "${CARGO_PKG_NAME:-}" ]; then
  case " ${CORDON_PGO_PACKAGES:-} " in
  *" $CARGO_PKG_NAME "*) exec "$@" "-Cprofile-$CORDON_PGO_MODE=$CORDON_PGO_PATH" ;;
  esac
fi
exec "$@"
