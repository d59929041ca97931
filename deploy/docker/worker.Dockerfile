# syntax=docker/dockerfile:1
# Worker image: same base and dependencies as the gateway image, running `tritonstack worker` (arq).
#   docker build -f deploy/docker/worker.Dockerfile -t tritonstack/worker .
# Configuration: TRITONSTACK_WORKER_* (jobs/config.py WorkerConfig); chat jobs also read TRITONSTACK_GATEWAY_*
# (routes file, key budgets). Unchecked on the CPU-only development machine (no Docker engine there).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY deploy/docker/requirements-runtime.txt /tmp/requirements.txt
RUN pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY export export
COPY gateway gateway
COPY jobs jobs
COPY loadtest loadtest
COPY stack stack
COPY triton_models triton_models
COPY tritonstack tritonstack
RUN pip install --no-deps . && pip uninstall -y pip setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --user-group app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # metrics must be reachable from Prometheus, not only from loopback
    TRITONSTACK_WORKER_METRICS_HOST=0.0.0.0 \
    TRITONSTACK_WORKER_METRICS_PORT=9500 \
    # token chunking reads <model>/<version>/tokenizer.json from here (mount the repository read-only)
    TRITONSTACK_WORKER_MODEL_REPOSITORY=/models
WORKDIR /home/app
USER 10001:10001
EXPOSE 9500
# the worker has no HTTP API: its metrics endpoint answering means the process and its event loop are alive
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9500/metrics', timeout=3).status != 200)"]
# SIGTERM: arq stops taking jobs and waits for running ones (leases free the rest for another worker)
STOPSIGNAL SIGTERM
CMD ["tritonstack", "worker"]
