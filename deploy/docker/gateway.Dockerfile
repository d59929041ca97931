# syntax=docker/dockerfile:1
# Gateway image: the tritonstack package without torch (the gateway never imports export/ at runtime).
#   docker build -f deploy/docker/gateway.Dockerfile -t tritonstack/gateway .
# Configuration is environment only (TRITONSTACK_GATEWAY_*, see gateway/config.py); routes come from a mounted
# file (TRITONSTACK_GATEWAY_ROUTES_FILE). Unchecked on the CPU-only development machine (no Docker engine there).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a self-contained virtualenv in /opt/venv (pip and wheels stay in this stage) ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first: this layer is reused until the requirements change
COPY deploy/docker/requirements-runtime.txt /tmp/requirements.txt
RUN pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/requirements.txt
# then our package, --no-deps: pyproject.toml also lists the export-time stack (torch, transformers, ...)
COPY pyproject.toml README.md ./
COPY export export
COPY gateway gateway
COPY jobs jobs
COPY loadtest loadtest
COPY stack stack
COPY triton_models triton_models
COPY tritonstack tritonstack
RUN pip install --no-deps . && pip uninstall -y pip setuptools wheel

# ---- runtime: no compiler, no pip, no sources; a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --user-group app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/app
USER 10001:10001
EXPOSE 8080
# /healthz = process alive (liveness); orchestrators use /readyz (Triton + Redis reachable) for readiness
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# started exactly as `tritonstack gateway` runs it (gateway/cli.py: uvicorn factory gateway.app:app_from_env, uvloop,
# the coalescing httptools protocol, no access log), so the deployed server is the tested and measured one.
# One process per container: scale with replicas, not workers (state is shared only through Redis). Requests in
# flight get 25 s to finish on SIGTERM; orchestrators' grace periods are longer (compose, deploy/k8s).
CMD ["tritonstack", "gateway", "--host", "0.0.0.0", "--port", "8080", "--workers", "1", \
     "--timeout-graceful-shutdown", "25"]
