#!/usr/bin/env bash
# Builds the virtualenv of the OCSF validator (tests/ocsf/validate.py) at target/ocsf-venv and
# prints the path of its python.
#
# Usage: PY="$(tests/ocsf/run-venv.sh)" && "$PY" tests/ocsf/validate.py findings.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tests/python-venv.sh target/ocsf-venv tests/ocsf/requirements.txt
