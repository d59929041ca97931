# syntax=docker/dockerfile:1
# NVIDIA's official Triton image (onnxruntime + TensorRT backends, GPU metrics) plus what the python-backend models
# import: `tokenizers` (the GPU ensemble's tokenizer step, triton_models/tokenizer.py) and, for the generation
# model (`tritonstack export smollm2`), ONNX Runtime, CuPy and `jinja2`. 24.12 is the first release on Ubuntu 24.04
# with Python 3.12 (24.10 has 3.10, where pip stops at onnxruntime 1.23).
#   LLM_RUNTIME=cpu (default): onnxruntime 1.32 (CPU), for a `--target cpu` export (its graph needs >= 1.32, the CPU
#     image's pin) running on the host's CPU;
#   LLM_RUNTIME=gpu: onnxruntime-gpu + CuPy, for a `--target gpu` export (fp16 graph, KV cache on the GPU). PyPI has
#     no onnxruntime-gpu 1.32 yet, so a `--target cpu` export does not load in this variant (the model says so).
#   TRITONSTACK_LLM_RUNTIME=gpu docker compose --profile gpu build   (compose passes it as LLM_RUNTIME)
# Built by docker-compose (service `triton`) and for Kubernetes (overlay `gpu`). Unchecked here (no GPU/engine).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}
ARG LLM_RUNTIME=cpu
# numpy<2: the python backend stub of these releases is built against numpy 1.x
RUN pip install --no-cache-dir "tokenizers>=0.20,<1" "numpy>=1.26,<2" "jinja2==3.1.6" \
    && if [ "$LLM_RUNTIME" = gpu ]; then \
         pip install --no-cache-dir "onnxruntime-gpu==1.31.1" "cupy-cuda12x==14.2.0"; \
       else \
         pip install --no-cache-dir "onnxruntime==1.32.0"; \
       fi
# the image's own non-root user (uid 1000); the server needs no privileges
USER triton-server
