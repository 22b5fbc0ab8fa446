#!/usr/bin/env bash
# Restarts one process of the running test control plane (as up.sh started it, same
# arguments, same log), for tests of what nasop does when a part of the cluster goes away:
#   tools/testenv/restart.sh kube-apiserver
# Waits for the API server to be ready again; the new PID replaces the old in pids.
set -euo pipefail
name=$1
state=${NASOP_TESTENV:-${NASOP_CACHE:-$HOME/.cache/nasop}/testenv-run}
pid=$(awk -v n="$name" '$2 == n { print $1 }' "$state/pids")
[ -n "$pid" ] || { echo "restart.sh: no $name in $state/pids" >&2; exit 1; }
mapfile -d '' argv < "/proc/$pid/cmdline"
kill "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$pid" 2>/dev/null || true
setsid "${argv[@]}" >> "$state/logs/$name.log" 2>&1 < /dev/null &
new=$!
sed -i "s/^$pid $name\$/$new $name/" "$state/pids"
for _ in $(seq 300); do
  if KUBECONFIG=$state/kubeconfig kubectl get --raw /readyz >/dev/null 2>&1; then
    echo "$name restarted as $new" >&2
    exit 0
  fi
  sleep 0.2
done
echo "restart.sh: the API server is not ready after restarting $name" >&2
exit 1
