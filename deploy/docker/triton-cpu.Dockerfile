# syntax=docker/dockerfile:1
# CPU Triton image for machines without a GPU: the tritonserver binary bundled in the nvidia-pytriton wheel,
# run by `tritonstack triton` (stack/triton.py assembles the python backend for this interpreter).
# That binary has only the python backend: serve a repository exported with `--target cpu`.
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t tritonstack/triton-cpu .
# Unchecked on the CPU-only development machine (no Docker engine there); `tritonstack triton` itself is tested.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# the runtime set plus the server and what the python-backend models import, all from requirements.lock
COPY deploy/docker/requirements-triton-cpu.txt /tmp/requirements.txt
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
# the server links libstdc++ and zlib from the system (everything else ships in nvidia_pytriton.libs);
# curl is not needed: the healthcheck uses python
RUN apt-get update && apt-get install -y --no-install-recommends libstdc++6 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group triton \
    && mkdir -p /models /var/lib/tritonstack && chown 10001:10001 /var/lib/tritonstack
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/tritonstack
VOLUME ["/models"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=2s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
# `tritonstack triton` supervises tritonserver and stops it on SIGTERM (Triton unloads models, ending their stubs);
# the server's own log is /var/lib/tritonstack/triton.log (an emptyDir in Kubernetes), not stdout;
# extra flags after the image name replace these (e.g. `--model minilm` to load one model only)
ENTRYPOINT ["tritonstack", "triton", "--host", "0.0.0.0", "--repository", "/models", "--state-dir", "/var/lib/tritonstack"]
CMD ["--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
