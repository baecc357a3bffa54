#!/usr/bin/env bash
# Tests of the Helm chart (helm/cordon) and of engine/Dockerfile's inputs: renders the chart with
# Helm's own engine (PyPI helm-python-sdk: no helm binary), validates every manifest against the
# Kubernetes schemas (kubernetes-validate), checks values.schema.json and the Grafana dashboard.
#
# Usage: helm/tests/run.sh [pytest arguments]
#
# Needs python3 (3.10+) and PyPI. Installs the pinned packages of helm/tests/requirements.txt
# into a virtualenv at target/helm-venv (inside the repository's ignored target/), reinstalling
# only when requirements.txt changes. With CORDON_BIN set (tests/run.sh sets it), the rendered
# config is also parsed by the engine itself. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n==> %s\n' "$*"; }

VENV="target/helm-venv"
REQUIREMENTS="helm/tests/requirements.txt"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "helm/tests/run.sh: needs Python 3.10 or newer as $PYTHON" >&2
  exit 1
fi

make_venv() {
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "creating the virtualenv $VENV"
  err="$(mktemp)"
  if ! make_venv 2>"$err"; then
    # Debian's python3 has no ensurepip without the python3-venv package.
    if grep -q ensurepip "$err" && command -v apt-get >/dev/null; then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      log "installing python${pyver}-venv (Debian's python3 lacks ensurepip without it)"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "python${pyver}-venv" || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends python3-venv
      make_venv
    else
      cat "$err" >&2
      rm -f "$err"
      exit 1
    fi
  fi
  rm -f "$err"
fi

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing $REQUIREMENTS into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$REQUIREMENTS"
  echo "$want" >"$stamp"
fi

log "running the Helm chart tests"
# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest helm/tests "$@"
