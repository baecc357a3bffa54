#!/usr/bin/env bash
# Builds a Python virtualenv for a test suite and prints the path of its python on standard
# output; everything else goes to standard error. Used by tests/ocsf and helm/tests.
#
# Usage: PY="$(tests/python-venv.sh target/NAME-venv path/to/requirements.txt)"
#
# Needs python3 (3.10+) and PyPI; on Debian, installs python3 and python3-venv when missing.
# Installs the pinned requirements into the virtualenv (keep it inside the repository's ignored
# target/), reinstalling only when the requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  echo "usage: tests/python-venv.sh VENV_DIR REQUIREMENTS_FILE" >&2
  exit 2
fi

log() { printf '\n==> %s\n' "$*" >&2; }

VENV="$1"
REQUIREMENTS="$2"
PYTHON="${PYTHON:-python3}"

apt_install() {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

if ! command -v "$PYTHON" >/dev/null && [ "$PYTHON" = python3 ] && command -v apt-get >/dev/null; then
  log "installing python3"
  apt_install python3 python3-venv
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "tests/python-venv.sh: needs Python 3.10 or newer as $PYTHON" >&2
  exit 1
fi

make_venv() {
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
}

# A virtualenv left without pip (a venv that failed half-way) is made anew.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  log "creating the virtualenv $VENV"
  err="$(mktemp)"
  if ! make_venv 2>"$err" >&2; then
    # Debian's python3 has no ensurepip without the python3-venv package.
    if grep -q ensurepip "$err" && command -v apt-get >/dev/null; then
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      log "installing python${pyver}-venv (Debian's python3 lacks ensurepip without it)"
      apt_install "python${pyver}-venv" || apt_install python3-venv
      make_venv >&2
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
    -r "$REQUIREMENTS" >&2
  echo "$want" >"$stamp"
fi

echo "$PWD/$VENV/bin/python"
