#!/usr/bin/env bash
# Builds the test tools from published Go modules into ${NASOP_CACHE:-~/.cache/nasop}/testenv/bin
# and prints that directory. Each part is rebuilt only when its version changes (a stamp per
# part): kube-apiserver, kube-controller-manager, kube-scheduler, etcd, and the real node's
# kubelet and kube-proxy from the wrapper module here (see update-go-mod.sh); CoreDNS, the
# image registry and Prometheus from slim/ (only what the tests use); kwok and helm with
# `go install`; the ServiceMonitor CRD from the Prometheus Operator's module; the JobSet
# controller and its CRD.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${NASOP_CACHE:-$HOME/.cache/nasop}
bin=$cache/testenv/bin
mkdir -p "$bin"
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
built() { [ -f "$bin/.stamp-$1" ]; }
stamp() { touch "$bin/.stamp-$1"; }
need_go() { command -v go >/dev/null || { echo "go not found: install Go 1.24 or newer" >&2; exit 1; }; }
# Kubernetes binaries say their version (kubectl version, the node's kubeletVersion).
k8s_ldflags() {
  local p flags="-s -w" date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  echo "$flags"
}
# A tool with `go install`, stamped by name and version: go_install NAME VERSION PKG@VERSION [NOTE]
go_install() {
  local part=$1-$2
  built "$part" && return 0
  need_go
  echo "  $1 $2 ${4:-}" >&2
  GOBIN=$bin go install -trimpath -ldflags "-s -w" "$3"
  stamp "$part"
}
started=$(date +%s)
cd "$here"

# The control plane and the real node's Kubernetes parts, from the wrapper module here, in one
# `go build` (its packages compile once, and one binary links while others compile).
control_plane() {
  local cmds=() pkgs=() cmd tmp
  built "kubernetes-$KUBERNETES_VERSION-etcd$ETCD_VERSION" || cmds+=(kube-apiserver kube-controller-manager kube-scheduler etcd)
  built "node-$KUBERNETES_VERSION" || cmds+=(kubelet kube-proxy)
  [ ${#cmds[@]} -gt 0 ] || return 0
  need_go
  echo "  ${cmds[*]} ($KUBERNETES_VERSION, etcd $ETCD_VERSION; about 10 minutes on 2 cores)" >&2
  for cmd in "${cmds[@]}"; do
    case $cmd in
      etcd) pkgs+=(go.etcd.io/etcd/server/v3) ;;
      *) pkgs+=("k8s.io/kubernetes/cmd/$cmd") ;;
    esac
  done
  tmp=$(mktemp -d "$bin/.build.XXXXXX")
  go build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/" "${pkgs[@]}"
  # go names the etcd server package's binary after its path: .../server/v3 -> server.
  [ ! -f "$tmp/server" ] || mv "$tmp/server" "$tmp/etcd"
  mv "$tmp"/* "$bin/" && rmdir "$tmp"
  built "kubernetes-$KUBERNETES_VERSION-etcd$ETCD_VERSION" || stamp "kubernetes-$KUBERNETES_VERSION-etcd$ETCD_VERSION"
  built "node-$KUBERNETES_VERSION" || stamp "node-$KUBERNETES_VERSION"
}

# The rest with `go install`, beside the control plane's build: their module downloads and
# links fill the cores the other leaves idle.
tools() {
  # The real node's cluster DNS and image registry, and Prometheus, with only what the tests
  # use (slim/: the six CoreDNS plugins of the node's Corefile, the registry's filesystem
  # storage, Prometheus's Kubernetes discovery), where the release builds link every cloud
  # SDK; one module and one build, so that the client-go, gRPC and OpenTelemetry packages
  # they share compile once.
  part=slim-coredns$COREDNS_VERSION-registry$REGISTRY_VERSION-prometheus$PROMETHEUS_VERSION
  if ! built "$part"; then
    need_go
    for want in "github.com/coredns/coredns $COREDNS_VERSION" \
      "github.com/distribution/distribution/v3 $REGISTRY_VERSION" \
      "github.com/prometheus/prometheus $PROMETHEUS_VERSION"; do
      grep -q "	$want\b" slim/go.mod ||
        { echo "slim/go.mod does not have $want of versions.env: run tools/testenv/update-go-mod.sh" >&2; exit 1; }
    done
    echo "  coredns $COREDNS_VERSION, registry $REGISTRY_VERSION, prometheus $PROMETHEUS_VERSION" >&2
    (cd slim && go build -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w" \
      -o "$bin/" ./coredns ./registry github.com/prometheus/prometheus/cmd/prometheus)
    stamp "$part"
  fi

  go_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

  # Helm's default Kubernetes version (for `helm template` and lint) is set at link time, as
  # its release builds do; without it a plain `go install` says v1.20.
  part=helm-$HELM_VERSION-k1.$minor
  if ! built "$part"; then
    need_go
    echo "  helm $HELM_VERSION" >&2
    hl="-s -w"
    for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
      hl="$hl -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
    done
    GOBIN=$bin go install -trimpath -ldflags "$hl" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    stamp "$part"
  fi

  # The JobSet controller (its module root is its main package; built in the wrapper module
  # jobset/, which pins its version) and its CRD, as the module ships it
  # (config/components/crd/bases: without the conversion webhook the kustomize overlay
  # adds; there is one version).
  part=jobset-$JOBSET_VERSION
  if ! built "$part"; then
    need_go
    grep -q "sigs.k8s.io/jobset $JOBSET_VERSION" jobset/go.mod ||
      { echo "tools/testenv/jobset/go.mod does not require jobset $JOBSET_VERSION of versions.env" >&2; exit 1; }
    echo "  jobset $JOBSET_VERSION" >&2
    (cd jobset && go build -trimpath -ldflags "-s -w" -o "$bin/jobset" sigs.k8s.io/jobset)
    dir=$(cd jobset && go list -m -json "sigs.k8s.io/jobset" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    cp "$dir/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml" "$bin/jobsets.crd.yaml"
    chmod 644 "$bin/jobsets.crd.yaml"
    stamp "$part"
  fi

  # Kueue (built in the wrapper module kueue/, which pins its version), its CRDs and its
  # webhook configurations, as the module ships them (config/components: the CRDs without
  # the conversion webhooks the kustomize overlay adds; v1beta2 is their storage version).
  part=kueue-$KUEUE_VERSION
  if ! built "$part"; then
    need_go
    grep -q "sigs.k8s.io/kueue $KUEUE_VERSION" kueue/go.mod ||
      { echo "tools/testenv/kueue/go.mod does not require kueue $KUEUE_VERSION of versions.env" >&2; exit 1; }
    echo "  kueue $KUEUE_VERSION" >&2
    (cd kueue && go build -trimpath -ldflags "-s -w" -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue)
    dir=$(cd kueue && go list -m -json "sigs.k8s.io/kueue" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    for f in "$dir"/config/components/crd/bases/*.yaml; do
      cat "$f"; echo "---"
    done > "$bin/kueue.crds.yaml"
    cp "$dir/config/components/webhook/manifests.yaml" "$bin/kueue.webhooks.yaml"
    chmod 644 "$bin/kueue.crds.yaml" "$bin/kueue.webhooks.yaml"
    stamp "$part"
  fi

  # Kubeflow Trainer's controller manager (a tool of the wrapper module trainer/, which pins
  # its version) and its CRDs, as the module ships them (manifests/base/crds).
  part=trainer-$TRAINER_VERSION
  if ! built "$part"; then
    need_go
    grep -q "github.com/kubeflow/trainer/v2 $TRAINER_VERSION" trainer/go.mod ||
      { echo "tools/testenv/trainer/go.mod does not require trainer $TRAINER_VERSION of versions.env" >&2; exit 1; }
    echo "  kubeflow trainer $TRAINER_VERSION" >&2
    (cd trainer && go build -trimpath -ldflags "-s -w" -o "$bin/trainer-controller-manager" \
      github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager)
    dir=$(cd trainer && go list -m -json "github.com/kubeflow/trainer/v2" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    for f in "$dir"/manifests/base/crds/trainer.kubeflow.org_*.yaml; do
      cat "$f"; echo "---"
    done > "$bin/trainer.crds.yaml"
    chmod 644 "$bin/trainer.crds.yaml"
    stamp "$part"
  fi

  part=servicemonitor-crd-$PROMETHEUS_OPERATOR_VERSION
  if ! built "$part"; then
    need_go
    echo "  the ServiceMonitor CRD of prometheus-operator $PROMETHEUS_OPERATOR_VERSION" >&2
    dir=$(cd "$bin" && GOFLAGS=-mod=mod go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$bin/servicemonitors.crd.yaml"
    chmod 644 "$bin/servicemonitors.crd.yaml"
    stamp "$part"
  fi
}

control_plane &
cp_pid=$!
trap 'pkill -P $cp_pid 2>/dev/null; kill $cp_pid 2>/dev/null || true' EXIT
tools
wait $cp_pid
trap - EXIT

elapsed=$(( $(date +%s) - started ))
[ "$elapsed" -gt 2 ] && echo "built in $elapsed s; $(du -sh "$bin" | cut -f1) of tools" >&2
echo "$bin"
