#!/usr/bin/env bash
# The Python helper's tests (python/): pytest from PyPI in a virtual environment cached
# outside the repository, made once (a few seconds); the helper itself needs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST_VERSION=9.0.2
venv=${NASOP_CACHE:-$HOME/.cache/nasop}/pytest-$PYTEST_VERSION
if [ ! -f "$venv/.complete" ]; then
  echo "installing pytest $PYTEST_VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pytest==$PYTEST_VERSION"
  touch "$venv/.complete"
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider python "$@"
