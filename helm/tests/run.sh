#!/usr/bin/env bash
# Tests of the Helm chart (helm/cordon) and of engine/Dockerfile's inputs: renders the chart with
# Helm's own engine (PyPI helm-python-sdk: no helm binary), validates every manifest against the
# Kubernetes schemas (kubernetes-validate), checks values.schema.json and the Grafana dashboard.
#
# Usage: helm/tests/run.sh [pytest arguments]
#
# Needs python3 (3.10+) and PyPI: tests/python-venv.sh installs the pinned packages of
# helm/tests/requirements.txt into target/helm-venv. The rendered config is also parsed by the
# engine itself (CORDON_BIN, else target/debug/cordon). Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n==> %s\n' "$*"; }

VENV="target/helm-venv"
REQUIREMENTS="helm/tests/requirements.txt"

PY="$(tests/python-venv.sh "$VENV" "$REQUIREMENTS")"

log "running the Helm chart tests"
# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m pytest helm/tests "$@"
