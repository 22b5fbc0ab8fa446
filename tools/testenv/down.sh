#!/usr/bin/env bash
# Stops every process tools/testenv/up.sh started, by the PIDs it recorded, then what the
# real node leaves behind: containers, mounts, network namespaces, the bridge, iptables chains.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/node.sh"
state=${NASOP_TESTENV:-${NASOP_CACHE:-$HOME/.cache/nasop}/testenv-run}
[ -f "$state/pids" ] || { node_down "$state"; echo "no test control plane recorded in $state" >&2; exit 0; }
pids=$(awk '{print $1}' "$state/pids")
for pid in $pids; do kill "$pid" 2>/dev/null; done
for _ in $(seq 50); do
  alive=0
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
for pid in $pids; do kill -9 "$pid" 2>/dev/null; done
rm -f "$state/pids"
rm -rf /etc/kueue  # the metrics certificate up.sh wrote for Kueue
NASOP_TESTENV_BIN=${NASOP_TESTENV_BIN:-${NASOP_CACHE:-$HOME/.cache/nasop}/testenv/bin} node_down "$state"
echo "test control plane stopped" >&2
