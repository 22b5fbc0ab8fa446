#!/usr/bin/env bash
# Builds the test control plane from published Go modules, once per version set, into
# ${NASOP_CACHE:-~/.cache/nasop}/testenv-<versions>/bin, and prints that directory.
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd come from the wrapper
# module here (see update-go-mod.sh); kwok and helm install with `go install`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${NASOP_CACHE:-$HOME/.cache/nasop}
bin=$cache/testenv-$KUBERNETES_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-helm$HELM_VERSION/bin
if [ -f "$bin/.complete" ]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "go not found: install Go 1.24 or newer" >&2; exit 1; }
mkdir -p "$bin"
started=$(date +%s)
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
cg=k8s.io/client-go/pkg/version
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for p in $pkg $cg; do
  ldflags="$ldflags -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
done
echo "building the test control plane into $bin (once per version; about 7 minutes on 2 cores)" >&2
cd "$here"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  echo "  $cmd $KUBERNETES_VERSION" >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo "  etcd $ETCD_VERSION" >&2
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "  kwok $KWOK_VERSION, helm $HELM_VERSION" >&2
GOBIN=$bin go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
GOBIN=$bin go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
touch "$bin/.complete"
echo "built in $(( $(date +%s) - started )) s; $(du -sh "$bin" | cut -f1) of binaries" >&2
echo "$bin"
