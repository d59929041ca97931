# syntax=docker/dockerfile:1
# NVIDIA's official Triton image (onnxruntime + TensorRT backends, GPU metrics) plus what the python-backend models
# import: `tokenizers` (the GPU ensemble's tokenizer step, triton_models/tokenizer.py) and, for the generation
# model (`tritonstack export smollm2`), ONNX Runtime, CuPy and `jinja2`. 24.12 is the first release on Ubuntu 24.04
# with Python 3.12 (24.10 has 3.10, where pip stops at onnxruntime 1.23); it ships CUDA 12.6, cuDNN 9 and
# TensorRT 10.7 (a `--format tensorrt` plan must be built with TensorRT 10.7: export/encoder/tensorrt.py).
#   LLM_RUNTIME=cpu (default): requirements-triton-gpu-cpu.txt, onnxruntime 1.32 (CPU), for a `--target cpu` export
#     (its graph needs >= 1.32) running on the host's CPU;
#   LLM_RUNTIME=gpu: requirements-triton-gpu.txt, onnxruntime-gpu 1.24.4 (a CUDA 12 build) + CuPy
#     for CUDA 12, for a `--target gpu` export (fp16 graph, KV cache on the GPU). A `--target cpu` export does not
#     load in this variant (the model says so).
#   TRITONSTACK_LLM_RUNTIME=gpu docker compose --profile gpu build   (compose passes it as LLM_RUNTIME)
# Each variant's packages were resolved together for this image's Python and platform (`make lock`,
# tritonstack/image_lock.py): installed with --no-deps from hashed pins, nothing can move numpy past 2 (the python
# backend stub of this release is built against numpy 1.x).
# Built by docker-compose (service `triton`) and for Kubernetes (overlay `gpu`). Unchecked here (no GPU/engine).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}
ARG LLM_RUNTIME=cpu
COPY requirements-triton-gpu.txt requirements-triton-gpu-cpu.txt /tmp/requirements/
RUN set -e; case "$LLM_RUNTIME" in gpu) set=gpu ;; cpu) set=gpu-cpu ;; \
      *) echo "LLM_RUNTIME must be gpu or cpu, not $LLM_RUNTIME" >&2; exit 1 ;; esac; \
    pip install --no-cache-dir --no-deps --require-hashes -r /tmp/requirements/requirements-triton-$set.txt \
    && python3 -c "import numpy; assert numpy.__version__ < '2', numpy.__version__" \
    && rm -r /tmp/requirements \
    && mkdir -p /var/cache/tritonstack/trt-engines && chown -R triton-server /var/cache/tritonstack
# ONNX Runtime's TensorRT engines (`trt_engine_cache_path` of the encoder's config): a volume in compose and
# Kubernetes, so a restart reuses them instead of building again; the directory exists here so that a new named
# volume takes its owner. CuPy's kernel cache goes under /tmp (read-only root filesystem in Kubernetes).
ENV CUPY_CACHE_DIR=/tmp/cupy
# the image's own non-root user (uid 1000); the server needs no privileges
USER triton-server
