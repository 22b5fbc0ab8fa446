#!/usr/bin/env bash
# Starts Kubeflow Katib (KATIB_VERSION of versions.env, built by build.sh) against the running
# test control plane (tools/testenv/up.sh; KUBECONFIG as it prints), as local processes:
#   - PostgreSQL from Debian's packages (Katib's katib-standalone-postgres install),
#   - katib-db-manager, with Katib's DB_NAME=postgres settings,
#   - katib-controller with Katib's own RBAC (it runs as the katib-controller service account,
#     so the API server's audit log counts its requests as it counts nasop's), its default
#     katib-config (the standalone-postgres one), and its cert generator, which makes the
#     webhook certificates and writes them into the webhook configurations itself.
# What a cluster would provide and this script plays instead:
#   - the katib-controller Service is an ExternalName service for localhost, so the API server
#     calls the webhooks on the local process, at port 8443 (Katib's Service maps 443 to 8443);
#   - the kubelet's secret volume: the script copies the katib-webhook-cert Secret that the
#     cert generator wrote into the controller's /tmp/cert;
#   - cluster DNS: the controller runs in a mount namespace of its own whose /etc/hosts
#     (state/hosts) names katib-db-manager.kubeflow and each experiment's suggestion service
#     (tools/katib/suggestion.sh adds them, with a local process serving each);
#   - a CPU node for the suggestion Deployments Katib creates (a KWOK node, like the GPU ones).
# Prints `export KATIB_STATE=<dir>` as its last line; tools/katib/down.sh stops it. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${KUBECONFIG:?start the test control plane first: eval \"\$(tools/testenv/up.sh | tail -1)\"}"
katib=$("$here/build.sh")
src=$katib/src
state=${KATIB_STATE:-${NASOP_CACHE:-$HOME/.cache/nasop}/katib-run}
"$here/down.sh" >/dev/null 2>&1 || true
rm -rf "$state"
mkdir -p "$state/logs" "$state/cert"
: > "$state/pids"
start() {
  local name=$1; shift
  "$@" > "$state/logs/$name.log" 2>&1 &
  echo "$! $name" >> "$state/pids"
}
fail() {
  echo "katib: $1; the last lines of $state/logs/$2.log:" >&2
  tail -20 "$state/logs/$2.log" >&2 || true
  "$here/down.sh" >&2 || true
  exit 1
}
wait_for() { # description, log name, seconds, command...
  local what=$1 log=$2 seconds=$3; shift 3
  for _ in $(seq $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "$what did not come up in ${seconds}s" "$log"
}
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PostgreSQL, as Katib's postgres component (user, password and database katib).
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pgbin" ]; then
  echo "installing Debian's postgresql for Katib's database" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
# PostgreSQL does not run as root, and /root is closed to its user: its files live in /tmp.
pgdata=$(mktemp -d /tmp/nasop-katib-pg.XXXXXX)
echo "$pgdata" > "$state/pgdata"
chown postgres "$pgdata"
pg_port=$(port)
echo katib > "$pgdata/password" && chown postgres "$pgdata/password"
runuser -u postgres -- "$pgbin/initdb" -D "$pgdata/data" -U katib --auth=md5 --pwfile="$pgdata/password" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata/data" -l "$pgdata/postgres.log" -w \
  -o "-p $pg_port -k $pgdata -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
echo "$pg_port" > "$state/pg_port"
PGPASSWORD=katib "$pgbin/createdb" -h 127.0.0.1 -p "$pg_port" -U katib katib

# The DB manager, at the address its cluster name resolves to in the controller's hosts file.
db_ip=127.0.0.2
start katib-db-manager env DB_NAME=postgres DB_PASSWORD=katib \
  KATIB_POSTGRESQL_DB_HOST=127.0.0.1 KATIB_POSTGRESQL_DB_PORT="$pg_port" \
  "$katib/bin/katib-db-manager" --listen-address "$db_ip:6789"
wait_for katib-db-manager katib-db-manager 60 python3 -c "import socket; socket.create_connection(('$db_ip', 6789), 1)"
printf '127.0.0.1 localhost\n%s katib-db-manager.kubeflow katib-db-manager.kubeflow.svc\n' "$db_ip" > "$state/hosts"

# Katib's objects: namespace, CRDs, RBAC, its config, the webhook configurations.
manifests=$src/manifests/v1beta1
kubectl apply -f "$manifests/components/namespace/namespace.yaml" >/dev/null
for crd in experiment suggestion trial; do
  kubectl apply --server-side -f "$manifests/components/crd/$crd.yaml" >/dev/null
done
kubectl wait --for condition=Established --timeout 60s crd/experiments.kubeflow.org crd/suggestions.kubeflow.org crd/trials.kubeflow.org >/dev/null
kubectl apply -n kubeflow -f "$manifests/components/controller/rbac.yaml" >/dev/null
kubectl apply -n kubeflow -f "$manifests/components/controller/trial-templates.yaml" >/dev/null
config=$manifests/installs/katib-standalone-postgres/katib-config.yaml
kubectl create configmap -n kubeflow katib-config --from-file=katib-config.yaml="$config" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create secret generic -n kubeflow katib-webhook-cert --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: katib-controller, namespace: kubeflow}
spec: {type: ExternalName, externalName: localhost}
---
apiVersion: v1
kind: Node
metadata:
  name: katib-cpu-node
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: katib-cpu-node}
status:
  allocatable: {cpu: "1000", memory: 4Ti, ephemeral-storage: 100Ti, pods: "1000"}
  capacity: {cpu: "1000", memory: 4Ti, ephemeral-storage: 100Ti, pods: "1000"}
YAML
# Katib's webhook configurations, with the port of the controller's webhook server.
"$here/python.sh" - "$manifests/components/webhook/webhooks.yaml" <<'PY' | kubectl apply -f - >/dev/null
import json, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    for hook in doc["webhooks"]:
        hook["clientConfig"]["service"]["port"] = 8443
    print("---\n" + json.dumps(doc))
PY

# The controller as its service account, in a mount namespace with its hosts file and cert dir.
token=$(kubectl create token -n kubeflow katib-controller --duration 48h)
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
cat > "$state/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: testenv, cluster: {server: "$server", insecure-skip-tls-verify: true}}]
users: [{name: katib-controller, user: {token: "$token"}}]
contexts: [{name: katib, context: {cluster: testenv, user: katib-controller, namespace: kubeflow}}]
current-context: katib
KC
cp "$config" "$state/katib-config.yaml"
# Written out, so that the side-by-side benchmark can restart it the same way (its fault rows).
cat > "$state/controller.sh" <<SH
exec unshare --mount --propagation private sh -c 'mount --bind "$state/hosts" /etc/hosts &&
  mkdir -p /tmp/cert && mount --bind "$state/cert" /tmp/cert &&
  exec env KUBECONFIG="$state/kubeconfig" KATIB_CORE_NAMESPACE=kubeflow "$katib/bin/katib-controller" --katib-config "$state/katib-config.yaml"'
SH
start katib-controller sh "$state/controller.sh"
# The kubelet's part: the Secret the cert generator fills, as files in the controller's cert dir.
for _ in $(seq 300); do
  crt=$(kubectl get secret -n kubeflow katib-webhook-cert -o jsonpath='{.data.tls\.crt}' 2>/dev/null || true)
  [ -n "$crt" ] && break
  sleep 0.2
done
[ -n "$crt" ] || fail "the cert generator wrote no certificate in 60s" katib-controller
for key in ca.crt ca.key tls.crt tls.key; do
  kubectl get secret -n kubeflow katib-webhook-cert -o jsonpath="{.data.${key//./\\.}}" | base64 -d > "$state/cert/$key"
done
wait_for katib-controller katib-controller 60 curl -sf http://127.0.0.1:18080/readyz
# The webhooks answer through the API server: a server-side dry run of an invalid experiment
# must be refused by Katib's validator.
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: katib-check
  labels: {katib.kubeflow.org/metrics-collector-injection: enabled}
YAML
if kubectl create --dry-run=server -n katib-check -f - > "$state/logs/webhook-check.log" 2>&1 <<'YAML'
apiVersion: kubeflow.org/v1beta1
kind: Experiment
metadata: {name: invalid}
spec:
  objective: {type: maximize, objectiveMetricName: accuracy}
  algorithm: {algorithmName: random}
  maxTrialCount: 1
YAML
then fail "Katib's validating webhook accepted an experiment without parameters" webhook-check
fi
grep -q "denied the request" "$state/logs/webhook-check.log" || fail "the webhooks did not answer" webhook-check
echo "katib $(basename "$(readlink "$src")") up: logs in $state/logs" >&2
echo "export KATIB_STATE=$state KATIB_HOME=$katib"
