#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for tests: etcd, kube-apiserver (static
# token, RBAC), kube-controller-manager (garbage collection, Jobs; node lifecycle with a
# 24 h grace period, since simulated nodes send no heartbeats), kube-scheduler, KWOK playing three GPU nodes
# (nvidia.com/gpu: 4 each), the JobSet controller, and one real node, worker-0 (node.sh: containerd, CNI, kube-proxy,
# CoreDNS, a kubelet, and the image registry it pulls from). Writes a kubeconfig, waits for
# /readyz and Ready nodes, and prints `export KUBECONFIG=<path> NASOP_TESTENV_BIN=<the tools>
# NASOP_TESTENV_REGISTRY=127.0.0.1:PORT` as its last line (audit log of service-account
# requests in logs/audit.log beside the kubeconfig). down.sh stops it. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$("$here/build.sh")
source "$here/node.sh"
state=${NASOP_TESTENV:-${NASOP_CACHE:-$HOME/.cache/nasop}/testenv-run}
kubeconfig=$state/kubeconfig
if [ -f "$state/pids" ] && [ -f "$kubeconfig" ]; then
  alive=1
  while read -r pid name; do kill -0 "$pid" 2>/dev/null || alive=0; done < "$state/pids"
  if [ "$alive" = 1 ] && KUBECONFIG=$kubeconfig kubectl get --raw /readyz >/dev/null 2>&1; then
    echo "the test control plane is already running" >&2
    echo "export KUBECONFIG=$kubeconfig NASOP_TESTENV_BIN=$bin NASOP_TESTENV_REGISTRY=$(cat "$state/registry")"
    exit 0
  fi
fi
"$here/down.sh" >/dev/null 2>&1 || true
rm -rf "$state"
node_install
node_network
mkdir -p "$state/etcd" "$state/certs" "$state/logs"
: > "$state/pids"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start() {
  local name=$1; shift
  "$@" > "$state/logs/$name.log" 2>&1 &
  echo "$! $name" >> "$state/pids"
}
fail() {
  echo "testenv: $1; the last lines of $state/logs/$2.log:" >&2
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
etcd_port=$(port); peer_port=$(port); api_port=$(port); cm_port=$(port); sched_port=$(port); kwok_port=$(port)
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token,admin,admin,system:masters" > "$state/tokens.csv"
openssl genrsa -out "$state/certs/sa.key" 2048 2>/dev/null
openssl rsa -in "$state/certs/sa.key" -pubout -out "$state/certs/sa.pub" 2>/dev/null

start etcd "$bin/etcd" --name default --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
wait_for etcd etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

# Requests made as service accounts (the chart test runs the operator as the chart's) are
# audited, so a test can compare what the operator did with what its RBAC grants.
cat > "$state/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [system:serviceaccounts]
  - level: None
POLICY
start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
  --audit-policy-file "$state/audit-policy.yaml" --audit-log-path "$state/logs/audit.log" \
  --audit-log-mode blocking \
  --bind-address 0.0.0.0 --advertise-address "$node_ip" --secure-port "$api_port" --cert-dir "$state/certs" \
  --kubelet-preferred-address-types InternalIP \
  --token-auth-file "$state/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$state/certs/sa.pub" --service-account-signing-key-file "$state/certs/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --enable-admission-plugins OwnerReferencesPermissionEnforcement
cat > "$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: testenv
    cluster:
      server: https://127.0.0.1:$api_port
      insecure-skip-tls-verify: true
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: testenv
    context: {cluster: testenv, user: admin, namespace: default}
current-context: testenv
KC
export KUBECONFIG=$kubeconfig
wait_for kube-apiserver kube-apiserver 90 kubectl get --raw /readyz

# NASOP_TESTENV_CM_FLAGS adds flags (the Katib benchmark's client limit: --kube-api-qps,
# --kube-api-burst, and --use-service-account-credentials so that its controllers' requests
# are audited as their service accounts).
start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --leader-elect=false --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
  --node-monitor-grace-period 24h --node-startup-grace-period 24h \
  --service-account-private-key-file "$state/certs/sa.key" --root-ca-file "$state/certs/apiserver.crt" \
  --bind-address 127.0.0.1 --secure-port "$cm_port" ${NASOP_TESTENV_CM_FLAGS:-}
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$sched_port"

kubectl apply -f "$here/gpu-nodes.yaml" >/dev/null
start kwok "$bin/kwok" --kubeconfig "$kubeconfig" --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --config "$here/stages.yaml" --server-address "127.0.0.1:$kwok_port"
wait_for "KWOK's GPU nodes" kwok 60 kubectl wait --for=condition=Ready node --all --timeout=1s
# The JobSet controller, for trials of several pods. Its webhooks are not registered (nasop
# sets every field they would default); its webhook server still listens, on a self-signed
# certificate of its own.
jobset_port=$(port); jobset_health=$(port)
mkdir -p "$state/jobset"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=jobset-webhook \
  -keyout "$state/jobset/tls.key" -out "$state/jobset/tls.crt" 2>/dev/null
cat > "$state/jobset/config.yaml" <<EOF
apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
webhook: {host: 127.0.0.1, port: $jobset_port, certDir: $state/jobset}
EOF
kubectl apply --server-side -f "$bin/jobsets.crd.yaml" >/dev/null
start jobset "$bin/jobset" --config "$state/jobset/config.yaml" --kubeconfig "$kubeconfig" \
  --leader-elect=false --metrics-bind-address 0 --health-probe-bind-address "127.0.0.1:$jobset_health"
wait_for "the JobSet controller" jobset 60 curl -sf "http://127.0.0.1:$jobset_health/healthz"
# Kubeflow Trainer's controller manager, for TrainJob trials, on the JobSet controller. Its
# webhooks are not registered: they only check a TrainJob (its runtime exists, patches name
# the runtime's jobs, no env patched into `node`, no PET_* in trainer.env, which nasop's own
# check refuses too) and stamp patch times; the CRDs default runtimeRef and managedBy. Its
# webhook server still listens, on a self-signed certificate in the directory it reads
# ($TMPDIR/k8s-webhook-server/serving-certs).
trainer_port=$(port); trainer_health=$(port)
certs=$state/trainer/k8s-webhook-server/serving-certs
mkdir -p "$certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=trainer-webhook \
  -keyout "$certs/tls.key" -out "$certs/tls.crt" 2>/dev/null
cat > "$state/trainer/config.yaml" <<YML
apiVersion: config.trainer.kubeflow.org/v1alpha1
kind: Configuration
webhook: {host: 127.0.0.1, port: $trainer_port}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:$trainer_health"}
certManagement: {enable: false}
YML
kubectl apply --server-side -f "$bin/trainer.crds.yaml" >/dev/null
kubectl wait --for condition=established --timeout=60s -f "$bin/trainer.crds.yaml" >/dev/null
start trainer env TMPDIR="$state/trainer" "$bin/trainer-controller-manager" \
  --config "$state/trainer/config.yaml" --kubeconfig "$kubeconfig"
wait_for "Kubeflow Trainer" trainer 60 curl -sf "http://127.0.0.1:$trainer_health/healthz"
# Kueue, for trials that wait in a queue. Its webhooks are registered as in a cluster, at its
# address on the host (a certificate for 127.0.0.1), for objects that name a queue only: the
# rest of the test plane never waits on it. It reads a metrics certificate from a fixed path.
kueue_port=$(port); kueue_health=$(port)
mkdir -p "$state/kueue" /etc/kueue/metrics/certs
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$state/kueue/tls.key" -out "$state/kueue/tls.crt" 2>/dev/null
cp "$state/kueue/tls.crt" "$state/kueue/tls.key" /etc/kueue/metrics/certs/
cat > "$state/kueue/config.yaml" <<YML
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kube-system
internalCertManagement: {enable: false}
webhook: {host: 127.0.0.1, port: $kueue_port, certDir: $state/kueue}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:$kueue_health"}
leaderElection: {leaderElect: false}
featureGates: {VisibilityOnDemand: false}
integrations:
  frameworks: [pod, jobset.x-k8s.io/jobset, trainer.kubeflow.org/trainjob]
YML
kubectl apply --server-side -f "$bin/kueue.crds.yaml" >/dev/null
kubectl wait --for condition=established --timeout=60s -f "$bin/kueue.crds.yaml" >/dev/null
start kueue "$bin/kueue" --config "$state/kueue/config.yaml" --kubeconfig "$kubeconfig"
wait_for "Kueue" kueue 60 curl -sf "http://127.0.0.1:$kueue_health/readyz"
python3 "$here/kueue/webhooks.py" "$bin/kueue.webhooks.yaml" "$kueue_port" "$state/kueue/tls.crt" \
  > "$state/kueue/webhooks.json"
kubectl apply -f "$state/kueue/webhooks.json" >/dev/null
wait_for "the default service account" kube-controller-manager 60 kubectl get serviceaccount default
node_up "$bin" "$state" "$kubeconfig"
echo "test control plane up: $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), logs in $state/logs" >&2
echo "export KUBECONFIG=$kubeconfig NASOP_TESTENV_BIN=$bin NASOP_TESTENV_REGISTRY=$(cat "$state/registry")"
