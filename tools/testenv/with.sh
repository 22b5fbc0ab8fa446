#!/usr/bin/env bash
# Runs a command against a fresh test control plane and stops it afterwards, also when the
# command fails or the run is interrupted: tools/testenv/with.sh cargo test ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trap '"$here/down.sh"' EXIT
trap 'exit 130' INT TERM
export_line=$("$here/up.sh" | tail -1)
eval "$export_line"
"$@"
