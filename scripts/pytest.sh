#!/usr/bin/env bash
# The Python helper's tests (python/): pytest from PyPI in a virtual environment cached
# outside the repository, made once (a few seconds); the helper itself needs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
PYTEST_VERSION=9.0.2
python=$(venv "pytest-$PYTEST_VERSION" "pytest==$PYTEST_VERSION")
# The client's tests (python/tests/test_client_*.py) need its dependencies: scripts/pyclient.sh.
if [ $# -eq 0 ]; then set -- python/tests/test_nasop_trial.py; fi
exec "$python" -m pytest -q -p no:cacheprovider "$@"
