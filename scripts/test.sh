#!/usr/bin/env bash
# `make test`: the Go-built test tools (tools/testenv/build.sh, about 20 minutes the first time,
# seconds after) build beside the lint, the data and the test images, which wait on the network
# and on single-threaded steps where the Go build keeps the cores busy; then every test runs
# against a fresh control plane (tools/testenv/with.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
make=${MAKE:-make}

# In a session of its own, so that a failure here stops all of it (go and its compilers too).
setsid tools/testenv/build.sh > /dev/null 2> >(sed -u 's/^/[test tools] /' >&2) &
tools_pid=$!
trap 'kill -- -$tools_pid 2>/dev/null || true' EXIT
"$make" --no-print-directory lint pytest data test-images browser
if ! wait $tools_pid; then
  echo "building the test tools failed (its messages above, marked [test tools])" >&2
  exit 1
fi
trap - EXIT
LIBTORCH="$(scripts/libtorch.sh)" LIBTORCH_CXX11_ABI=1 exec tools/testenv/with.sh "${CARGO:-cargo}" test --release --workspace
