"""The text-embedding configs an export writes, per target: what `--target cpu|gpu` and `--format` turn into.

- CPU (pip-installed Triton, python backend only): one python model, text in.
- GPU (official Triton image): ensemble `<name>` = `<name>_tokenizer` (python, CPU) → `<name>_encoder`
  (`onnxruntime_onnx` with the TensorRT accelerator, or `tensorrt_plan`), same inputs and outputs as the CPU model
  so clients do not change.

Every function returns `ModelFiles` whose `config_text` is already validated against Triton's schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from export.config import (
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
from export.serving import SUPPORT, TRITON_PYTHON, ServingOptions, string_warmup, tensor_warmup

WARMUP_TEXT = "Triton warms this model up with a short sentence before serving traffic."
TEXT_INPUT = Tensor("text", "TYPE_STRING", (1,))
TOKEN_COUNT = Tensor("token_count", "TYPE_INT32", (1,))


@dataclass(frozen=True)
class EmbeddingModel:
    """What the text-embedding configs need to know about the exported model."""

    onnx_file: Path
    tokenizer_file: Path
    max_seq_length: int
    dim: int
    precision: str
    extra_parameters: dict[str, str] = field(default_factory=dict)


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
            **opts.onnx_runtime_parameters(),
            "onnx_file": "model.onnx",
            "tokenizer_file": "tokenizer.json",
            "precision": model.precision,
            "tritonstack_task": "embed",  # the task the gateway routes by (docs/EXPORT.md, the model contract)
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
        # the task and the drift reference: clients (the gateway) read this config
        parameters={"tritonstack_task": "embed", **model.extra_parameters},
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
