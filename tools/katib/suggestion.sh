#!/usr/bin/env bash
# Serves one Katib experiment's suggestion service (and, with medianstop, its early-stopping
# service) as local processes, as Katib's suggestion Deployment would in a cluster:
#   tools/katib/suggestion.sh EXPERIMENT NAMESPACE ALGORITHM [medianstop]
# ALGORITHM is one that Katib serves with its hyperopt service (random, tpe). Each experiment
# gets a loopback address of its own, named <experiment>-<algorithm>.<namespace> in the
# controller's hosts file (Katib's GetAlgorithmEndpoint). Needs tools/katib/up.sh's KATIB_STATE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${KATIB_STATE:?start Katib first: tools/katib/up.sh}"
experiment=$1 namespace=$2 algorithm=$3 early=${4:-}
case $algorithm in random|tpe) ;; *) echo "suggestion.sh: $algorithm is not served by Katib's hyperopt service here (random, tpe)" >&2; exit 2 ;; esac
state=$KATIB_STATE
# An address of its own, and its name in the hosts file, under a lock (several start at once).
name=$experiment-$algorithm.$namespace
ip=$({
  flock 9
  n=$(( $(wc -l < "$state/hosts") + 1 ))
  ip=127.$(( 10 + n / 65536 )).$(( n / 256 % 256 )).$(( n % 256 ))
  # Appended in place: the controller's bind mount keeps the file's inode.
  echo "$ip $name $name.svc" >> "$state/hosts"
  echo "$ip"
} 9>> "$state/suggestions.lock")
"$here/python.sh" "$here/serve.py" hyperopt "$ip" > "$state/logs/suggestion-$experiment.$namespace.log" 2>&1 &
echo "$! suggestion $name" >> "$state/suggestions"
ports=(6789)
if [ "$early" = medianstop ]; then
  KUBECONFIG="$state/kubeconfig" "$here/python.sh" "$here/serve.py" medianstop "$ip" > "$state/logs/earlystopping-$experiment.$namespace.log" 2>&1 &
  echo "$! earlystopping $name" >> "$state/suggestions"
  ports+=(6788)
fi
for port in "${ports[@]}"; do
  for _ in $(seq 150); do
    python3 -c "import socket; socket.create_connection(('$ip', $port), 1)" 2>/dev/null && continue 2
    sleep 0.2
  done
  echo "suggestion.sh: nothing listens on $ip:$port after 30 s: $state/logs/" >&2
  exit 1
done
