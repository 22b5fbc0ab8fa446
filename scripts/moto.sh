#!/usr/bin/env bash
# An S3-compatible server for the tests: moto's server (Apache-2.0) from PyPI in a virtual
# environment cached outside the repository, made once (about 30 s). Prints the
# environment's python; `python -m moto.server -H 127.0.0.1 -p PORT` serves S3 there.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
MOTO_VERSION=5.2.5
venv "moto-$MOTO_VERSION" "moto[server]==$MOTO_VERSION"
