"""The text-embedding configs an export writes, per target: what `--target cpu|gpu` and `--format` turn into.

- CPU (pip-installed Triton, python backend only): one python model, text in.
- GPU (official Triton image): ensemble `<name>` = `<name>_tokenizer` (python, CPU) → `<name>_encoder`
  (`onnxruntime_onnx` with the TensorRT accelerator, or `tensorrt_plan`), same inputs and outputs as the CPU model
  so clients do not change. The ensemble's steps name the version the export wrote (all three share it), not
  "the newest loaded": the ensemble runs the encoder it was exported with. The accelerator builds one engine for
  the whole shape range (an explicit optimization profile, from one token of one row to the largest batch), caches it
  on a volume (`export.config.TRT_ENGINE_CACHE`) and builds it during warmup at the largest shape, so no request
  waits for an engine build; a plan records the TensorRT version that built it (`tensorrt_version`), which the
  tokenizer step checks against the server's at load (`model_support.check_tensorrt`).

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
from export.serving import SUPPORT, TEXT_SUPPORT, TRITON_PYTHON, ServingOptions, string_warmup, tensor_warmup

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


ORT_MAX_BATCH_TOKENS = 4096  # rows × padded width of one ONNX Runtime run on the CPU target (its peak memory)


def _text_warmup(opts: ServingOptions, max_seq_length: int | None = None
                 ) -> tuple[list[WarmupSample], dict[str, bytes]]:
    """A short text, a full batch of it, and (with `max_seq_length`: the CPU target, where ONNX Runtime's arena
    keeps what the largest run needed) the largest run the model makes: `ORT_MAX_BATCH_TOKENS` of texts at the
    longest length, so memory reaches its plateau at load instead of when the first long batch arrives."""
    if not opts.warmup:
        return [], {}
    samples = [WarmupSample("single_text", 1, {"text": "text"})]
    files = {"text": string_warmup([WARMUP_TEXT])}
    if opts.max_batch_size > 1:
        samples.append(WarmupSample("full_batch", opts.max_batch_size, {"text": "text"}))
    if max_seq_length is not None:
        rows = max(1, min(opts.max_batch_size, ORT_MAX_BATCH_TOKENS // max_seq_length))
        samples.append(WarmupSample("longest_run", rows, {"text": "text_longest"}))
        files["text_longest"] = string_warmup([" ".join([WARMUP_TEXT] * max_seq_length)])  # truncated to the max
    return samples, files


def text_embedding_cpu(name: str, model: EmbeddingModel, opts: ServingOptions) -> ModelFiles:
    """The CPU target: python backend running ONNX Runtime, text in, embedding + token_count out."""
    samples, warmup = _text_warmup(opts, model.max_seq_length)
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
            "ort_max_batch_tokens": str(ORT_MAX_BATCH_TOKENS),
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


def _ensemble(name: str, model: EmbeddingModel, opts: ServingOptions, version: int) -> ModelFiles:
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
        version,
    )
    text = render(cfg)
    validate(text)
    return ModelFiles(name=name, config_text=text)  # an ensemble's version directory stays empty


def _tokenizer(
    name: str, model: EmbeddingModel, opts: ServingOptions, id_type: str, pad_to_multiple_of: int,
    tensorrt_version: str | None,
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
            **({"tensorrt_version": tensorrt_version} if tensorrt_version else {}),
        },
    )
    files = {"model.py": TRITON_PYTHON / "tokenizer.py", **TEXT_SUPPORT, "tokenizer.json": model.tokenizer_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)


def _encoder_warmup(
    inputs: Sequence[Tensor], opts: ServingOptions, width: int, longest: int
) -> tuple[list[WarmupSample], dict[str, bytes]]:
    """One short request, then the largest shape (max_batch_size × max_seq_length): TensorRT builds (or loads) its
    engine and every buffer reaches its largest size before the model reports ready."""
    if not opts.warmup:
        return [], {}
    files = {t.name: t.name for t in inputs}
    dims = {t.name: (width,) for t in inputs}
    data = {t.name: tensor_warmup(t.data_type, (width,), fill=1) for t in inputs}
    samples = [WarmupSample("single", 1, files, dims=dims)]
    longest_files = {t.name: f"{t.name}.longest" for t in inputs}
    data |= {f"{t.name}.longest": tensor_warmup(t.data_type, (longest,), fill=1) for t in inputs}
    longest_dims = {t.name: (longest,) for t in inputs}
    samples.append(WarmupSample("largest", opts.max_batch_size, longest_files, dims=longest_dims))
    return samples, data


def tensorrt_profiles(inputs: Sequence[Tensor], max_batch_size: int, max_seq_length: int,
                      opt_seq_length: int = 128) -> dict[str, str]:
    """The TensorRT accelerator's optimization profile over every [batch, sequence] input, in ONNX Runtime's
    `name:AxB,…` form: batch 1..max_batch_size and sequence 1..max_seq_length (the plan builder's range,
    `export.encoder.tensorrt`), tuned for max_batch_size × min(128, max_seq_length). Without it, ONNX Runtime
    builds an engine for the shapes it has seen and rebuilds it for each new range."""
    def shapes(batch: int, seq: int) -> str:
        return ",".join(f"{t.name}:{batch}x{seq}" for t in inputs)

    return {
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(max_batch_size, min(opt_seq_length, max_seq_length)),
        "trt_profile_max_shapes": shapes(max_batch_size, max_seq_length),
    }


def _encoder(
    name: str,
    model: EmbeddingModel,
    opts: ServingOptions,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    plan_file: Path | None,
    pad_to_multiple_of: int,
    tensorrt_version: str | None,
) -> ModelFiles:
    samples, warmup = _encoder_warmup(inputs, opts, min(pad_to_multiple_of, model.max_seq_length),
                                      model.max_seq_length)
    accelerator = None
    if plan_file is None and model.precision != "int8":  # TensorRT does not run ORT's dynamic-int8 ops
        accelerator = "FP16" if model.precision == "fp16" else "FP32"
    if plan_file is not None and not tensorrt_version:
        raise ValueError(f"{name}: a plan runs only on the TensorRT version that built it: pass tensorrt_version")
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
        tensorrt_accelerator_parameters=tensorrt_profiles(inputs, opts.max_batch_size, model.max_seq_length),
        parameters={"precision": model.precision,
                    **({"tensorrt_version": tensorrt_version} if plan_file is not None else {})},
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
    version: int = -1,
    plan_file: Path | None = None,
    tensorrt_version: str | None = None,
    pad_to_multiple_of: int = 16,
) -> list[ModelFiles]:
    """The GPU target: [encoder, tokenizer, ensemble] (the order they are committed in). `version`: the version the
    export writes, which the ensemble's steps name (-1: whichever is newest); `tensorrt_version`: the TensorRT that
    built `plan_file`."""
    id_types = {t.data_type for t in encoder_inputs}
    if len(id_types) != 1:
        raise ValueError(f"encoder inputs must share one integer type, got {sorted(id_types)}")
    id_type = id_types.pop()
    return [
        _encoder(f"{name}_encoder", model, opts, encoder_inputs, encoder_outputs, plan_file, pad_to_multiple_of,
                 tensorrt_version),
        _tokenizer(f"{name}_tokenizer", model, opts, id_type, pad_to_multiple_of, tensorrt_version),
        _ensemble(name, model, opts, version),
    ]
