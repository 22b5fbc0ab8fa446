# nasop: `make demo` shows a search, `make test` runs every test. See README.md.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
NASOP := target/release/nasop
# Images: the chart installs $(REGISTRY)/nasop:$(VERSION); examples/k8s use
# $(REGISTRY)/nasop-trainer:$(VERSION).
REGISTRY ?= ghcr.io/nasop
VERSION ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/nasop/Chart.yaml)
# tch finds libtorch through these; scripts/libtorch.sh installs it once into ~/.cache/nasop.
TORCH = LIBTORCH="$$(scripts/libtorch.sh)" LIBTORCH_CXX11_ABI=1

.PHONY: all build build-demo build-bench test lint crds bench bench-trainer bench-data-parallel bench-operator bench-katib bench-ui demo toolchain data testenv-build testenv-up testenv-down static images push test-images pytest pyclient examples browser ui-screenshots

all: build

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs), then rerun make" >&2; exit 1; }
	@command -v python3 >/dev/null || { echo "python3 (with pip) is needed to fetch libtorch from PyPI" >&2; exit 1; }

data:
	scripts/data.sh

# The nasop binary (operator, local runner, plots) and the trainer (with S3 storage). The
# cluster benchmarks build apart (build-bench).
build: toolchain
	$(TORCH) $(CARGO) build --release -p nasop -p nasop-trainer --bins

# What `make demo` runs and nothing more, so that a newcomer's first build is short: nasop's
# local runner (no operator, no plots) and the trainer without S3. `make build` adds the rest.
build-demo: toolchain
	$(TORCH) $(CARGO) build --release --no-default-features -p nasop -p nasop-trainer --bins

# nasop-bench (bench/): the cluster benchmarks, and the nasop binary they run as the operator.
build-bench: toolchain
	$(CARGO) build --release -p nasop -p nasop-bench --bins

# Headless Chromium and chromedriver (Debian's packages) for the UI's browser tests.
browser:
	scripts/chromium.sh >/dev/null

# The Python helper for custom trainers (python/nasop_trial.py), with pytest from PyPI; the
# Python client's tests that need no nasop binary (its environment is made here, once). The
# rest of the client's tests and the notebook run in `cargo test` (tests/python.rs,
# tests/operator/python.rs), beside the binaries and the test control plane.
pytest:
	scripts/pytest.sh
	scripts/pyclient.sh python/tests/test_client_api.py

# Every test of the Python client and the notebook (needs a release build and `make data`).
pyclient:
	scripts/pyclient.sh

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(TORCH) $(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(TORCH) $(CARGO) clippy --release --no-default-features -p nasop -p nasop-trainer --bins -- -D warnings

# Every test: unit and property tests of core, strategies and engine, the CRD drift check,
# the strategy benchmark on the NAS-Bench-201 tables, the trainer on Fashion-MNIST, the local
# runner, and the integration tests against a real control plane (started once for the
# suite, stopped afterwards). The Go-built test tools build beside the lint and the images.
test: toolchain
	CARGO=$(CARGO) scripts/test.sh

# The test control plane (kube-apiserver, etcd, controller-manager, scheduler, KWOK, helm)
# built from published Go modules, cached in ~/.cache/nasop.
testenv-build:
	tools/testenv/build.sh >/dev/null

# Leaves it running; the last line is the `export KUBECONFIG=...` to paste.
testenv-up: testenv-build
	@tools/testenv/up.sh

testenv-down:
	@tools/testenv/down.sh

# Copies python/nasop_trial.py into examples/k8s/custom-trainer.yaml (a test fails on drift).
examples:
	scripts/examples.sh

# Regenerates crds/ from src/api (a test fails when they drift).
crds: build
	$(NASOP) crds --out crds

# The figures of BENCHMARKS.md (about 10 minutes on 2 cores).
bench: build
	scripts/benchmarks.sh 500

# A real architecture search on this machine: NAS-Bench-201-style cells trained on
# Fashion-MNIST (examples/quickstart.yaml). Running it again resumes the run in nasop-runs/.
demo: build-demo data
	$(NASOP) run examples/quickstart.yaml

# The operator at scale on a fresh test control plane with simulated GPU nodes: 2,000 trials
# at parallelism 200, a 10,000-trial experiment, 120 experiments x 30 trials (about 15 minutes).
bench-operator: build-bench testenv-build
	tools/testenv/with.sh target/release/nasop-bench operator

# nasop and Kubeflow Katib side by side on one fresh test control plane: the same random
# searches on simulated GPU nodes, 3 runs of each shape (see BENCHMARKS.md for its time).
# Katib v0.19.0 is built from its Go module, its database is Debian's PostgreSQL, its Python
# services come from its module with their requirements from PyPI (tools/katib/).
# Each control plane in turn: `tuned`, the controller manager at a managed cluster's client
# limit (100 requests/s, burst 200), and `defaults` (client-go's 20/30), both with
# --use-service-account-credentials so that its controllers' requests are audited. Every run
# is appended to $(KATIB_BENCH_SAVE); the table at the end is of all of them.
KATIB_BENCH_ARGS ?=
KATIB_CONTROL_PLANES ?= tuned defaults
KATIB_BENCH_SAVE ?= benchmarks/operators-vs-katib.jsonl
bench-katib: build-bench testenv-build
	tools/katib/build.sh >/dev/null
	for plane in $(KATIB_CONTROL_PLANES); do \
	  case $$plane in \
	    tuned) flags="--kube-api-qps=100 --kube-api-burst=200 --use-service-account-credentials" ;; \
	    defaults) flags="--use-service-account-credentials" ;; \
	    *) echo "KATIB_CONTROL_PLANES: $$plane is neither tuned nor defaults" >&2; exit 1 ;; \
	  esac; \
	  NASOP_TESTENV_CM_FLAGS="$$flags" tools/testenv/with.sh tools/katib/with.sh \
	    target/release/nasop-bench operators --save $(KATIB_BENCH_SAVE) $(KATIB_BENCH_ARGS) || exit 1; \
	done
	target/release/nasop-bench operators --from $(KATIB_BENCH_SAVE) $(KATIB_BENCH_ARGS)

# `nasop ui`'s server time on an experiment of 10,000 trials.
bench-ui: build
	$(NASOP) bench ui

# The README's pictures of `nasop ui`, from the browser tests' screenshots.
ui-screenshots: browser
	CARGO_TARGET_DIR="$${CARGO_TARGET_DIR:-target}" $(CARGO) test --release -p nasop --test ui
	cp "$${CARGO_TARGET_DIR:-target}"/ui-screenshots/{experiments,experiment,experiment-dark,trial}.png docs/ui/

# nasop-trainer against PyTorch eager on the same network (installs a Python torch once).
bench-trainer: build data
	scripts/bench-trainer.sh cpu

# nasop-trainer on several ranks against one process, on this machine's cores (~4 minutes).
bench-data-parallel: build data
	scripts/bench-data-parallel.sh

# The operator as a static binary, the way the Dockerfile builds it (no container engine needed).
static: toolchain
	scripts/static.sh

# The operator and trainer images from the Dockerfiles (Docker, or Debian's podman or buildah
# as root), and pushing them to $(REGISTRY). TRAINER_VARIANTS: cuda (GPU nodes), cpu (small,
# CPU-only nodes). IMAGE_BASES=local builds the base images from Debian's packages first.
TRAINER_VARIANTS ?= cuda cpu
images:
	scripts/images.sh build $(REGISTRY) $(VERSION) "$(TRAINER_VARIANTS)"

push: images
	scripts/images.sh push $(REGISTRY) $(VERSION) "$(TRAINER_VARIANTS)"

# What the end-to-end test installs: the operator, the cpu trainer and a plain Python image
# (for a wrapped, unmodified script), on local bases.
test-images:
	IMAGE_BASES=local scripts/images.sh build localhost/nasop $(VERSION) "cpu python"
