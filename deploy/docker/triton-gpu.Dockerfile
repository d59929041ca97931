# syntax=docker/dockerfile:1
# NVIDIA's official Triton image (onnxruntime + TensorRT backends, GPU metrics) plus `tokenizers`, which the
# python tokenizer step of the GPU ensemble imports (export/triton_python/tokenizer.py, export/specs.py).
# Built by docker-compose (service `triton`) and for Kubernetes (overlay `gpu`). Unchecked here (no GPU/engine).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
# numpy<2: the python backend stub of these releases is built against numpy 1.x
RUN pip install --no-cache-dir "tokenizers>=0.20,<1" "numpy>=1.26,<2"
# the image's own non-root user (uid 1000); the server needs no privileges
USER triton-server
