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

.PHONY: demo test lint build venv packages emulator emulator-stop clean-run

## demo: start the emulator, run the controller, create and delete a cluster with the aws CLI
demo: venv build
	deploy/local/demo.sh

## test: every test: unit, emulator integration and end-to-end, plus the linters
test: venv packages lint
	$(CARGO) test --workspace --all-targets --locked

## lint: rustfmt, clippy, cfn-lint (template), parliament (IAM policies), shellcheck (scripts)
lint: venv packages
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/cfn-lint templates/*.yaml
	policies/check.sh
	shellcheck deploy/local/*.sh policies/*.sh customizer/default/configure.d/*.sh .ci/run

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
