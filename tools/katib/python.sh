#!/usr/bin/env bash
# Katib's Python environment: the venv build.sh made, and the module's source on the path as
# its service images set it (the module root and its generated gRPC code).
katib=${KATIB_HOME:-${NASOP_CACHE:-$HOME/.cache/nasop}/katib}
src=$katib/src
export PYTHONPATH=$src:$src/pkg/apis/manager/v1beta1/python:$src/pkg/apis/manager/health/python
exec "$katib/venv/bin/python" "$@"
