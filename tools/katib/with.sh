#!/usr/bin/env bash
# Runs a command with Katib up against the running test control plane, and stops Katib
# afterwards, also when the command fails: tools/testenv/with.sh tools/katib/with.sh CMD...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trap '"$here/down.sh"' EXIT
trap 'exit 130' INT TERM
export_line=$("$here/up.sh" | tail -1)
eval "$export_line"
"$@"
