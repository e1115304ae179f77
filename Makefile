# flightdeck: `make demo` runs the main job on the local AWS emulator; `make test` runs
# every test. Both install what they need (a Python venv for the emulator and linters,
# Debian packages where missing) and reuse one Cargo target directory outside the clone.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
export VENV
export FLIGHTDECK_VENV ?= $(abspath $(VENV))
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flightdeck/target
CARGO ?= cargo
PYTHON ?= python3
BIN := $(CARGO_TARGET_DIR)/debug/flightdeck

.PHONY: demo test lint deny deny-advisories advisory-db build venv packages emulator emulator-stop monitoring-tools monitoring-lint monitoring-live bench-hints bench-http bench-scale bench-plan image image-setup image-test k8s-lint lambda-test aws-smoke emulator-test cluster-test box-rootfs

## demo: start the emulator, run the controller, create and delete a cluster with the aws CLI
demo: venv build
	deploy/local/demo.sh

## test: every test: unit, emulator integration and end-to-end, plus the linters, the
## dependency checks and the monitoring checked live on a real Prometheus
test: venv packages emulator-test lint deny monitoring-lint k8s-lint lambda-test aws-smoke
	$(CARGO) test --workspace --all-targets --locked
	$(MAKE) monitoring-live
	$(MAKE) cluster-test

## cluster-test: the template booted as a real Slurm cluster in local test hosts (the box:
## network namespaces running Debian 12 under systemd-nspawn) on the emulator; see
## tests/box/README.md. The first run on a machine builds the root filesystem.
cluster-test: venv packages build
	tests/box/cluster-test.sh

## box-rootfs: the Debian 12 root filesystem of the box's hosts (built once, then reused; ~2 min)
box-rootfs: packages
	tests/box/rootfs.sh

## lint: rustfmt, clippy, cfn-lint (templates), parliament (IAM policies), the install
## template's policies against policies/*.json, shellcheck (scripts)
lint: venv packages
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/cfn-lint templates/*.yaml deploy/aws/*.yaml
	$(VENV)/bin/python deploy/aws/check_policies.py
	$(VENV)/bin/python templates/bootstrap-body.py templates/cluster.yaml | shellcheck -s bash -
	policies/check.sh
	shellcheck deploy/local/*.sh deploy/*.sh deploy/grafana/check/check.sh deploy/image/*.sh deploy/k8s/*.sh deploy/aws/*.sh \
	  policies/*.sh customizer/default/configure.d/*.sh customizer/default/configure.d/lib/*.sh \
	  customizer/default/configure.d/slurm/* tests/box/*.sh .ci/run

## deny: cargo-deny (deny.toml): banned and duplicate crates, licenses, sources; RustSec
## advisories too when a current advisory database is on this machine, else a loud
## "ADVISORIES NOT CHECKED" banner (see README.md, "Supply chain")
deny: venv
	deploy/deny-check.sh

## deny-advisories: like deny, but fails when the advisories cannot be checked
deny-advisories: venv
	deploy/deny-check.sh --require-advisories

## advisory-db: fetch or update the RustSec advisory database (needs access to its git repository)
advisory-db: venv
	$(VENV)/bin/cargo-deny fetch db

build:
	$(CARGO) build --workspace --locked

## venv: the Python tools, pinned in deploy/local/requirements.txt
venv: $(VENV)/.installed

$(VENV)/.installed: deploy/local/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r deploy/local/requirements.txt
	touch $@

## packages: Debian packages the scripts and tests use
packages:
	@missing=""; \
	for p in curl shellcheck; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## emulator: start and bootstrap the local AWS emulator in the background; prints its endpoint
emulator: venv packages
	deploy/local/emulator.sh start

emulator-stop:
	deploy/local/emulator.sh stop

## emulator-test: the emulator's extension to moto (wait conditions, secrets in stacks)
emulator-test: venv
	$(VENV)/bin/python -m unittest deploy/local/test_emulator_ext.py

## monitoring-tools: prometheus and promtool (Debian), without the Debian service left running
monitoring-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  echo "installing Debian package: prometheus"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  if command -v systemctl >/dev/null; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  pkill -x prometheus || true; \
	fi

## monitoring-lint: alert rules (check and unit tests), the dashboard's type check against
## @grafana/schema, and every query on a real Prometheus fed a recorded scrape
monitoring-lint: monitoring-tools
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	deploy/grafana/check/check.sh
	deploy/monitoring-check.sh --expect-per-user --metrics-file deploy/prometheus/testdata/healthy-small-run.prom

## monitoring-live: the controller on the emulator with a few clusters, scraped by a real
## Prometheus; promtool checks the scrape, every dashboard query and alert runs on it
monitoring-live: venv packages monitoring-tools build
	deploy/local/monitoring-live.sh

## bench-hints: hint-to-CreateStack latency over 50 requests, the controller on the emulator
bench-hints: venv build
	$(CARGO) run --quiet --locked -p flightdeck-tests --bin hint_latency

## bench-plan: one full look in memory on one core: snapshot of 100k and 1M keys (10k
## clusters among them; and 100k keys with 1k clusters, the mix of 1M), then every
## cluster planned; the aim is 50 ms and 500 ms
bench-plan:
	taskset -c 0 $(CARGO) bench --locked -p flightdeck-core --bench snapshot_plan

## bench-scale: the controller at 10,000 clusters of 5,000 users among 1,000,000 data files,
## in one process (a debug build) on in-process stand-ins for S3 and CloudFormation: a quiet pass's calls,
## CPU and peak RSS; stack calls while 1,000 clusters create at once; hint to CreateStack.
## Sizes: make bench-scale SCALE="USERS CLUSTERS DATA CREATING". See docs/performance.md.
SCALE ?= 5000 10000 1000000 1000
bench-scale:
	$(CARGO) run --quiet --locked -p flightdeck-tests --bin scale -- $(SCALE)

## bench-http: 1,000 slow connections against the HTTP endpoint in-process: its memory, and
## /healthz meanwhile; once dribbling headers, once with 256 KiB of unfinished header each.
## Both ends of every connection are on this machine, so the recipe raises `ulimit -n`.
bench-http:
	ulimit -n 4096; \
	for mode in dribble fill; do \
	  $(CARGO) run --quiet --locked -p flightdeck-tests --bin slow_connections -- $$mode; \
	done

## image: the container image localhost/flightdeck:dev (static binary on scratch; installs podman if missing)
image: image-setup
	deploy/image/build.sh

image-setup:
	deploy/image/setup.sh

## image-test: the image against the local emulator: probes, hints, a cluster created and deleted, SIGTERM
image-test: venv packages image
	deploy/image/test.sh

## k8s-lint: the Kubernetes manifests, strictly (kubernetes-validate) and against each other
k8s-lint: venv
	deploy/k8s/check.sh

## lambda-test: the hint forwarder's and the bucket notification function's unit tests and
## the forwarder's CloudFormation template
lambda-test: venv
	$(PYTHON) -m unittest deploy/lambda/test_forward.py deploy/aws/test_bucket_notification.py
	$(VENV)/bin/cfn-lint deploy/lambda/forwarder.yaml

## aws-smoke: the install stack (deploy/aws/flightdeck.yaml) created with the aws CLI on the
## emulator and checked; the controller checks the task's environment as its configuration
aws-smoke: venv packages build
	FLIGHTDECK_BIN=$(BIN) deploy/aws/smoke.sh
