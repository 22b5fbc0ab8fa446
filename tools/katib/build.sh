#!/usr/bin/env bash
# Builds Kubeflow Katib from its published Go module for the side-by-side operator benchmark
# (tools/katib/up.sh, `make bench-katib`), into ${NASOP_CACHE:-~/.cache/nasop}/katib, and prints
# that directory:
#   bin/katib-controller, bin/katib-db-manager   go install from the module at KATIB_VERSION
#   src -> the module's source in the Go module cache (CRDs, webhooks, the Python services)
#   venv/                                          the Python suggestion (hyperopt: random, tpe)
#                                                  and early-stopping (medianstop) services'
#                                                  requirements from PyPI
# Each part is rebuilt only when its version changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${NASOP_CACHE:-$HOME/.cache/nasop}/katib
mkdir -p "$cache/bin"
built() { [ -f "$cache/.stamp-$1" ]; }
stamp() { touch "$cache/.stamp-$1"; }
command -v go >/dev/null || { echo "go not found: install Go 1.24 or newer" >&2; exit 1; }
module=github.com/kubeflow/katib

src=$(cd "$cache" && GOFLAGS=-mod=mod go mod download -json "$module@$KATIB_VERSION" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
ln -sfn "$src" "$cache/src"

if ! built "go-$KATIB_VERSION"; then
  echo "  katib-controller, katib-db-manager $KATIB_VERSION (a few minutes on 2 cores)" >&2
  # Both commands' packages are named v1beta1, so each goes to a folder of its own.
  for cmd in katib-controller db-manager; do
    tmp=$(mktemp -d "$cache/.build.XXXXXX")
    # CGO off: the pure-Go resolver reads /etc/hosts, which up.sh gives the controller (the
    # suggestion services' cluster names resolve to the local processes that serve them).
    CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "-s -w" "$module/cmd/$cmd/v1beta1@$KATIB_VERSION"
    name=$cmd; [ "$cmd" = db-manager ] && name=katib-db-manager
    mv "$tmp/v1beta1" "$cache/bin/$name" && rmdir "$tmp"
  done
  stamp "go-$KATIB_VERSION"
fi

if ! built "venv-$KATIB_VERSION"; then
  echo "  the Python suggestion and early-stopping services' requirements (PyPI)" >&2
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --upgrade pip
  # The services' own requirement files, as their Dockerfiles install them.
  "$cache/venv/bin/pip" install -q --prefer-binary \
    -r "$src/cmd/suggestion/hyperopt/v1beta1/requirements.txt" \
    -r "$src/cmd/earlystopping/medianstop/v1beta1/requirements.txt"
  stamp "venv-$KATIB_VERSION"
fi
echo "$cache"
