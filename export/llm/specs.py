"""The Triton model an LLM export writes: a decoupled python-backend model streaming generated text.

The model runs the ONNX decoder on ONNX Runtime inside `generation.py`, with continuous batching in a scheduler
thread; see that file for the inputs and outputs. The CPU target (the pip-installed Triton has only the python
backend) runs it on the CPU; the GPU target runs the fp16 graph on ONNX Runtime's CUDA provider, one instance per
GPU (`KIND_GPU`), its KV cache in GPU memory.
`max_batch_size` is 0: the model batches internally, iteration by iteration, not through Triton's batcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.config import ModelSpec, Tensor, render_spec
from export.repository import ModelFiles

TRITON_PYTHON = Path(__file__).resolve().parents[2] / "triton_models"
MODEL_CODE = ("llm_engine.py", "llm_prefix.py", "llm_text.py", "llm_logprobs.py", "llm_requests.py",
              "llm_scheduler.py", "llm_runtime.py", "llm_decode_mode.py", "model_support.py")

GENERATION_INPUTS = (
    Tensor("messages", "TYPE_STRING", (1,), optional=True),
    Tensor("prompt", "TYPE_STRING", (1,), optional=True),
    Tensor("max_tokens", "TYPE_INT32", (1,), optional=True),
    Tensor("min_tokens", "TYPE_INT32", (1,), optional=True),
    Tensor("temperature", "TYPE_FP32", (1,), optional=True),
    Tensor("top_p", "TYPE_FP32", (1,), optional=True),
    Tensor("seed", "TYPE_INT64", (1,), optional=True),
    Tensor("stop", "TYPE_STRING", (1,), optional=True),
    Tensor("max_stream_interval", "TYPE_INT32", (1,), optional=True),
    Tensor("presence_penalty", "TYPE_FP32", (1,), optional=True),
    Tensor("frequency_penalty", "TYPE_FP32", (1,), optional=True),
    Tensor("logprobs", "TYPE_INT32", (1,), optional=True),
)
GENERATION_OUTPUTS = (
    Tensor("text", "TYPE_STRING", (1,)),
    Tensor("finish_reason", "TYPE_STRING", (1,)),
    Tensor("prompt_tokens", "TYPE_INT32", (1,)),
    Tensor("completion_tokens", "TYPE_INT32", (1,)),
    Tensor("step", "TYPE_INT64", (1,)),
    Tensor("batch_size", "TYPE_INT32", (1,)),
    Tensor("logprobs", "TYPE_STRING", (1,)),
)


@dataclass(frozen=True)
class GenerationServing:
    """Config knobs of a generation model (flags of `tritonstack export smollm2`)."""

    max_batch_rows: int = 8
    max_kv_tokens: int = 16384
    max_context: int = 2048
    prefix_cache_tokens: int = 4096
    prefill_chunk_tokens: int = 256
    # under load a response carries up to this many tokens (k = rows // 2): each response costs host CPU that the
    # decode step then lacks (llm_scheduler; the cost is in docs/LLM.md)
    max_stream_interval: int = 4
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # off: on a shared machine spin-waiting ORT threads fight other processes for the cores and generation slows
    # down; on a machine the model has to itself spinning is faster (the A/B figures are in docs/LLM.md)
    ort_spinning: bool = False
    version_policy: str = "latest:1"


def text_generation(name: str, onnx_file: Path, assets: dict[str, Path], opts: GenerationServing,
                    weights: str = "fp32", single_row_file: Path | None = None, target: str = "cpu", *,
                    decode: str = "exact", decode_file: Path | None = None,
                    gate: dict[str, str] | None = None) -> ModelFiles:
    """The decoupled generation model: model.py + its helper modules + ONNX decoder + tokenizer assets. `decode`
    (with its graph for decode steps, `decode_file`) and its `gate` (`export.llm.agreement.Int8Gate.parameters`) are
    recorded for the model to read and log."""
    spec = ModelSpec(
        name=name,
        backend="python",
        max_batch_size=0,
        inputs=list(GENERATION_INPUTS),
        outputs=list(GENERATION_OUTPUTS),
        batching=None,
        instance_count=1,
        instance_kind="KIND_GPU" if target == "gpu" else "KIND_CPU",
        version_policy=opts.version_policy,
        decoupled=True,
        parameters={
            "onnx_file": "model.onnx",
            "execution_provider": "cuda" if target == "gpu" else "cpu",
            "tokenizer_file": "tokenizer.json",
            "chat_template_file": "chat_template.jinja",
            "generation_file": "generation.json",
            "max_batch_rows": str(opts.max_batch_rows),
            "max_kv_tokens": str(opts.max_kv_tokens),
            "max_context": str(opts.max_context),
            "prefix_cache_tokens": str(opts.prefix_cache_tokens),
            "prefill_chunk_tokens": str(opts.prefill_chunk_tokens),
            "max_stream_interval": str(opts.max_stream_interval),
            "intra_op_num_threads": str(opts.intra_op_threads),
            "inter_op_num_threads": str(opts.inter_op_threads),
            "allow_spinning": "1" if opts.ort_spinning else "0",
            "weights": weights,  # informational: fp32, packed, mixed, fp16 or int8 (export.llm.pipeline)
            "single_row_onnx_file": "model.packed.onnx" if single_row_file is not None else "",
        },
    )
    if decode != "exact":  # int8: int8 activations, greedy tokens within the recorded gate (absent: exact)
        spec.parameters.update({"decode": decode, "decode_onnx_file": "model.int8.onnx", **(gate or {})})
    files = {"model.py": TRITON_PYTHON / "generation.py", "model.onnx": onnx_file, **assets}
    files.update({module: TRITON_PYTHON / module for module in MODEL_CODE})
    if single_row_file is not None:
        files["model.packed.onnx"] = single_row_file
    if decode_file is not None:
        files["model.int8.onnx"] = decode_file
    return ModelFiles(name=name, config_text=render_spec(spec), files=files)
