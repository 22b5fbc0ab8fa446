#!/usr/bin/env bash
# Stops what tools/katib/up.sh started (the Kubernetes objects go with the test control plane).
state=${KATIB_STATE:-${NASOP_CACHE:-$HOME/.cache/nasop}/katib-run}
[ -d "$state" ] || exit 0
for f in "$state/pids" "$state/suggestions"; do
  [ -f "$f" ] || continue
  while read -r pid _; do kill "$pid" 2>/dev/null || true; done < "$f"
done
if [ -f "$state/pgdata" ]; then
  pgdata=$(cat "$state/pgdata")
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$pgbin" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$pgdata"
fi
sleep 0.5
for f in "$state/pids" "$state/suggestions"; do
  [ -f "$f" ] || continue
  while read -r pid _; do kill -9 "$pid" 2>/dev/null || true; done < "$f"
done
rm -f "$state/pids" "$state/suggestions"
