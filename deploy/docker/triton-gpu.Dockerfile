# syntax=docker/dockerfile:1
# NVIDIA's official Triton image (onnxruntime + TensorRT backends, GPU metrics) plus what the python-backend models
# import: `tokenizers` (the GPU ensemble's tokenizer step, export/triton_python/tokenizer.py) and, for the generation
# model (`tritonstack export smollm2`, which runs ONNX Runtime on the CPU inside the python backend), `onnxruntime`
# and `jinja2`. The generation graph needs onnxruntime >= 1.32 (GroupQueryAttention's `query_seqlens`), whose wheels
# start at Python 3.11: 24.12 is the first release on Ubuntu 24.04 with Python 3.12 (24.10 has 3.10, where pip stops
# at onnxruntime 1.23 and the model would fail to load). Same pins as deploy/docker/requirements-triton-cpu.txt.
# Built by docker-compose (service `triton`) and for Kubernetes (overlay `gpu`). Unchecked here (no GPU/engine).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}
# numpy<2: the python backend stub of these releases is built against numpy 1.x
RUN pip install --no-cache-dir "tokenizers>=0.20,<1" "numpy>=1.26,<2" "onnxruntime==1.32.0" "jinja2==3.1.6"
# the image's own non-root user (uid 1000); the server needs no privileges
USER triton-server
