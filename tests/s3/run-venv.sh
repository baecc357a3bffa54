#!/usr/bin/env bash
# Builds the virtualenv of the S3 stand-in (moto's server, tests/s3/requirements.txt) at
# target/s3-venv and prints the path of its python. The tests start
# target/s3-venv/bin/moto_server themselves, on a free 127.0.0.1 port.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tests/python-venv.sh target/s3-venv tests/s3/requirements.txt
