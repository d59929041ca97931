"""The model configs an export writes, per target: what `--target cpu|gpu` and `--format` turn into.

- CPU text embedding (pip-installed Triton, python backend only): one python model, text in.
- GPU text embedding (official Triton image): ensemble `<name>` = `<name>_tokenizer` (python, CPU) →
  `<name>_encoder` (`onnxruntime_onnx` with the TensorRT accelerator, or `tensorrt_plan`), same inputs and
  outputs as the CPU model so clients do not change.
- Generic ONNX model: python backend + ONNX Runtime on CPU; `onnxruntime_onnx` on GPU.

Every function returns `ModelFiles` whose `config_text` is already validated against Triton's schema.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.config import (
    NUMPY_TO_TRITON,
    Batching,
    ModelSpec,
    Tensor,
    WarmupSample,
    add_ensemble_steps,
    build,
    render,
    render_spec,
    validate,
)
from export.repository import ModelFiles

TRITON_PYTHON = Path(__file__).resolve().parents[2] / "triton_models"
SUPPORT = {"model_support.py": TRITON_PYTHON / "model_support.py"}  # imported by each model.py
TRITON_TO_NUMPY = {v: k for k, v in NUMPY_TO_TRITON.items() if k not in ("bytes", "object")}
WARMUP_TEXT = "Triton warms this model up with a short sentence before serving traffic."
TEXT_INPUT = Tensor("text", "TYPE_STRING", (1,))
TOKEN_COUNT = Tensor("token_count", "TYPE_INT32", (1,))


@dataclass(frozen=True)
class ServingOptions:
    """The config knobs every export exposes as flags."""

    max_batch_size: int = 64
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    # 0 = no default_queue_policy. Measured on the bundled Triton 2.51: with a queue policy the dynamic
    # batcher sleeps ~500 ms between batches under load (46 vs 191 req/s at c=32, one instance); the gateway's
    # in-flight bound sheds load instead. Opt in with --max-queue-size N (docs/BENCHMARKS.md, tuning table).
    max_queue_size: int = 0
    instances: int = 1
    version_policy: str = "latest:1"
    warmup: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    ort_spinning: bool = False

    def batching(self) -> Batching:
        return Batching(
            enabled=self.dynamic_batching,
            max_queue_delay_us=self.max_queue_delay_us,
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_size=self.max_queue_size,
        )


@dataclass(frozen=True)
class EmbeddingModel:
    """What the text-embedding configs need to know about the exported model."""

    onnx_file: Path
    tokenizer_file: Path
    max_seq_length: int
    dim: int
    precision: str
    extra_parameters: dict[str, str] = field(default_factory=dict)


def string_warmup(texts: Sequence[str]) -> bytes:
    """TYPE_STRING warmup data: each element as a 4-byte little-endian length + UTF-8 bytes."""
    return b"".join(struct.pack("<I", len(t.encode("utf-8"))) + t.encode("utf-8") for t in texts)


def tensor_warmup(data_type: str, dims: Sequence[int], fill: float = 0) -> bytes:
    """Row-major warmup data for one batch item of a numeric input."""
    return np.full(tuple(dims), fill, dtype=TRITON_TO_NUMPY[data_type]).tobytes()


def _text_warmup(opts: ServingOptions) -> tuple[list[WarmupSample], dict[str, bytes]]:
    if not opts.warmup:
        return [], {}
    samples = [WarmupSample("single_text", 1, {"text": "text"})]
    if opts.max_batch_size > 1:
        samples.append(WarmupSample("full_batch", opts.max_batch_size, {"text": "text"}))
    return samples, {"text": string_warmup([WARMUP_TEXT])}


def text_embedding_cpu(name: str, model: EmbeddingModel, opts: ServingOptions) -> ModelFiles:
    """The CPU target: python backend running ONNX Runtime, text in, embedding + token_count out."""
    samples, warmup = _text_warmup(opts)
    spec = ModelSpec(
        name=name,
        backend="python",
        max_batch_size=opts.max_batch_size,
        inputs=[TEXT_INPUT],
        outputs=[Tensor("embedding", "TYPE_FP32", (model.dim,)), TOKEN_COUNT],
        batching=opts.batching(),
        instance_count=opts.instances,
        instance_kind="KIND_CPU",
        version_policy=opts.version_policy,
        warmup=samples,
        parameters={
            "max_seq_length": str(model.max_seq_length),
            "ort_batch_size": str(opts.max_batch_size),
            "intra_op_num_threads": str(opts.intra_op_threads),
            "inter_op_num_threads": str(opts.inter_op_threads),
            "allow_spinning": "1" if opts.ort_spinning else "0",
            "onnx_file": "model.onnx",
            "tokenizer_file": "tokenizer.json",
            "precision": model.precision,
            **model.extra_parameters,
        },
    )
    return ModelFiles(
        name=name,
        config_text=render_spec(spec),
        files={
            "model.py": TRITON_PYTHON / "text_embedding.py",
            **SUPPORT,
            "model.onnx": model.onnx_file,
            "tokenizer.json": model.tokenizer_file,
        },
        warmup=warmup,
    )


def _ensemble(name: str, model: EmbeddingModel, opts: ServingOptions) -> ModelFiles:
    spec = ModelSpec(
        name=name,
        platform="ensemble",
        max_batch_size=opts.max_batch_size,
        inputs=[TEXT_INPUT],
        outputs=[Tensor("embedding", "TYPE_FP32", (model.dim,)), TOKEN_COUNT],
        batching=None,
        version_policy=opts.version_policy,
        parameters=dict(model.extra_parameters),  # the drift reference: clients (the gateway) read this config
    )
    cfg = build(spec)
    add_ensemble_steps(
        cfg,
        [
            (
                f"{name}_tokenizer",
                {"text": "text"},
                {"input_ids": "input_ids", "attention_mask": "attention_mask", "token_count": "token_count"},
            ),
            (
                f"{name}_encoder",
                {"input_ids": "input_ids", "attention_mask": "attention_mask"},
                {"sentence_embedding": "embedding"},
            ),
        ],
    )
    text = render(cfg)
    validate(text)
    return ModelFiles(name=name, config_text=text)  # an ensemble's version directory stays empty


def _tokenizer(
    name: str, model: EmbeddingModel, opts: ServingOptions, id_type: str, pad_to_multiple_of: int
) -> ModelFiles:
    samples, warmup = _text_warmup(opts)
    spec = ModelSpec(
        name=name,
        backend="python",
        max_batch_size=opts.max_batch_size,
        inputs=[TEXT_INPUT],
        outputs=[Tensor("input_ids", id_type, (-1,)), Tensor("attention_mask", id_type, (-1,)), TOKEN_COUNT],
        batching=opts.batching(),
        instance_count=opts.instances,
        instance_kind="KIND_CPU",
        version_policy=opts.version_policy,
        warmup=samples,
        parameters={
            "max_seq_length": str(model.max_seq_length),
            "pad_to_multiple_of": str(pad_to_multiple_of),
            "tokenizer_file": "tokenizer.json",
        },
    )
    files = {"model.py": TRITON_PYTHON / "tokenizer.py", **SUPPORT, "tokenizer.json": model.tokenizer_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)


def _encoder_warmup(
    inputs: Sequence[Tensor], opts: ServingOptions, width: int
) -> tuple[list[WarmupSample], dict[str, bytes]]:
    if not opts.warmup:
        return [], {}
    files = {t.name: t.name for t in inputs}
    dims = {t.name: (width,) for t in inputs}
    data = {t.name: tensor_warmup(t.data_type, (width,), fill=1) for t in inputs}
    samples = [WarmupSample("single", 1, files, dims=dims)]
    if opts.max_batch_size > 1:
        samples.append(WarmupSample("full_batch", opts.max_batch_size, files, dims=dims))
    return samples, data


def _encoder(
    name: str,
    model: EmbeddingModel,
    opts: ServingOptions,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    plan_file: Path | None,
    pad_to_multiple_of: int,
) -> ModelFiles:
    samples, warmup = _encoder_warmup(inputs, opts, min(pad_to_multiple_of, model.max_seq_length))
    accelerator = None
    if plan_file is None and model.precision != "int8":  # TensorRT does not run ORT's dynamic-int8 ops
        accelerator = "FP16" if model.precision == "fp16" else "FP32"
    spec = ModelSpec(
        name=name,
        platform="tensorrt_plan" if plan_file else "onnxruntime_onnx",
        max_batch_size=opts.max_batch_size,
        inputs=list(inputs),
        outputs=list(outputs),
        batching=opts.batching(),
        instance_count=opts.instances,
        instance_kind="KIND_GPU",
        version_policy=opts.version_policy,
        warmup=samples,
        tensorrt_accelerator_precision=accelerator,
        parameters={"precision": model.precision},
    )
    files = {"model.plan": plan_file} if plan_file else {"model.onnx": model.onnx_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)


def text_embedding_gpu(
    name: str,
    model: EmbeddingModel,
    opts: ServingOptions,
    encoder_inputs: Sequence[Tensor],
    encoder_outputs: Sequence[Tensor],
    *,
    plan_file: Path | None = None,
    pad_to_multiple_of: int = 16,
) -> list[ModelFiles]:
    """The GPU target: [encoder, tokenizer, ensemble] (the order they are committed in)."""
    id_types = {t.data_type for t in encoder_inputs}
    if len(id_types) != 1:
        raise ValueError(f"encoder inputs must share one integer type, got {sorted(id_types)}")
    id_type = id_types.pop()
    return [
        _encoder(f"{name}_encoder", model, opts, encoder_inputs, encoder_outputs, plan_file, pad_to_multiple_of),
        _tokenizer(f"{name}_tokenizer", model, opts, id_type, pad_to_multiple_of),
        _ensemble(name, model, opts),
    ]


def _generic_warmup(inputs: Sequence[Tensor], opts: ServingOptions) -> tuple[list[WarmupSample], dict[str, bytes]]:
    if not opts.warmup:
        return [], {}
    dims = {t.name: tuple(d if d > 0 else 1 for d in t.dims) for t in inputs}
    data = {t.name: tensor_warmup(t.data_type, dims[t.name]) for t in inputs}
    return [WarmupSample("zeros", 1, {t.name: t.name for t in inputs}, dims=dims)], data


def generic_onnx(
    name: str,
    onnx_file: Path,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    opts: ServingOptions,
    *,
    target: str,
    precision: str = "fp32",
) -> ModelFiles:
    """Any ONNX model: python backend + ONNX Runtime for `cpu`, `onnxruntime_onnx` (+ TensorRT) for `gpu`."""
    samples, warmup = _generic_warmup(inputs, opts)
    common = {
        "name": name,
        "max_batch_size": opts.max_batch_size,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "batching": opts.batching(),
        "instance_count": opts.instances,
        "version_policy": opts.version_policy,
        "warmup": samples,
    }
    if target == "cpu":
        spec = ModelSpec(
            backend="python",
            instance_kind="KIND_CPU",
            parameters={
                "onnx_file": "model.onnx",
                "intra_op_num_threads": str(opts.intra_op_threads),
                "inter_op_num_threads": str(opts.inter_op_threads),
                "allow_spinning": "1" if opts.ort_spinning else "0",
                "precision": precision,
            },
            **common,
        )
        files = {"model.py": TRITON_PYTHON / "onnx_runtime.py", **SUPPORT, "model.onnx": onnx_file}
    else:
        spec = ModelSpec(
            platform="onnxruntime_onnx",
            instance_kind="KIND_GPU",
            tensorrt_accelerator_precision="FP16" if precision == "fp16" else "FP32",
            parameters={"precision": precision},
            **common,
        )
        files = {"model.onnx": onnx_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)
