"""The configs `export hf` writes, per task and target (the model contract in docs/EXPORT.md).

CPU (the pip-installed Triton: python backend only), one text-in python model:
- embed: `triton_models/text_embedding.py`, the same model and config as `export minilm` (`export.encoder.specs`),
  with the `prefix` parameter when one is set;
- rerank, classify: `triton_models/sequence_classification.py`.

GPU (NVIDIA's Triton image): ensemble `<name>` = `<name>_tokenizer` (python, CPU) → `<name>_encoder`
(`onnxruntime_onnx` with the TensorRT accelerator, `export.encoder.specs`' encoder step), the same inputs and outputs
as the CPU model. Embed without a prefix is exactly MiniLM's ensemble; otherwise the tokenizer step is
`triton_models/tokenizer.py` (prefix, pairs, segment ids).

Every config carries `tritonstack_task`; classify's also `labels` (JSON array, id order) and `problem_type`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from export.config import ModelSpec, Tensor, WarmupSample, add_ensemble_steps, build, render, render_spec, validate
from export.encoder import specs as encoder_specs
from export.repository import ModelFiles
from export.serving import TEXT_SUPPORT, TRITON_PYTHON, ServingOptions, string_warmup

TOKEN_COUNT = Tensor("token_count", "TYPE_INT32", (1,))
PAIR_INPUTS = [Tensor("query", "TYPE_STRING", (1,)), Tensor("document", "TYPE_STRING", (1,))]
WARMUP_QUERY = "What does Triton do with concurrent requests?"


@dataclass(frozen=True)
class HfModel:
    """What the configs need to know about one exported model."""

    task: str
    onnx_file: Path
    tokenizer_file: Path
    max_seq_length: int
    precision: str
    width: int  # embedding dimension, or number of labels
    parameters: dict[str, str] = field(default_factory=dict)  # task parameters: prefix / labels, problem_type / drift
    prefix: str = ""


def task_parameters(task: str, labels: Sequence[str] = (), problem_type: str = "", prefix: str = ""
                    ) -> dict[str, str]:
    """The contract's parameters of a task (besides the serving knobs)."""
    parameters = {"tritonstack_task": task}
    if task == "classify":
        parameters |= {"labels": json.dumps(list(labels), ensure_ascii=False), "problem_type": problem_type}
    if prefix:
        parameters["prefix"] = prefix
    return parameters


def contract(task: str, width: int) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs clients see for `task` (both targets)."""
    if task == "embed":
        return [encoder_specs.TEXT_INPUT], [Tensor("embedding", "TYPE_FP32", (width,)), TOKEN_COUNT]
    if task == "rerank":
        return PAIR_INPUTS, [Tensor("score", "TYPE_FP32", (1,)), Tensor("logit", "TYPE_FP32", (1,)), TOKEN_COUNT]
    return [encoder_specs.TEXT_INPUT], [Tensor("scores", "TYPE_FP32", (width,)), TOKEN_COUNT]


def _warmup(task: str, opts: ServingOptions) -> tuple[list[WarmupSample], dict[str, bytes]]:
    if not opts.warmup:
        return [], {}
    if task == "rerank":
        files = {"query": "query", "document": "document"}
        data = {"query": string_warmup([WARMUP_QUERY]), "document": string_warmup([encoder_specs.WARMUP_TEXT])}
    else:
        files, data = {"text": "text"}, {"text": string_warmup([encoder_specs.WARMUP_TEXT])}
    samples = [WarmupSample("single", 1, files)]
    if opts.max_batch_size > 1:
        samples.append(WarmupSample("full_batch", opts.max_batch_size, files))
    return samples, data


def _embedding_model(model: HfModel) -> encoder_specs.EmbeddingModel:
    return encoder_specs.EmbeddingModel(onnx_file=model.onnx_file, tokenizer_file=model.tokenizer_file,
                                        max_seq_length=model.max_seq_length, dim=model.width,
                                        precision=model.precision, extra_parameters=dict(model.parameters))


def cpu_files(name: str, model: HfModel, opts: ServingOptions) -> list[ModelFiles]:
    """The CPU target: one python model."""
    if model.task == "embed":
        return [encoder_specs.text_embedding_cpu(name, _embedding_model(model), opts)]
    inputs, outputs = contract(model.task, model.width)
    samples, warmup = _warmup(model.task, opts)
    spec = ModelSpec(
        name=name, backend="python", max_batch_size=opts.max_batch_size, inputs=inputs, outputs=outputs,
        batching=opts.batching(), instance_count=opts.instances, instance_kind="KIND_CPU",
        version_policy=opts.version_policy, warmup=samples,
        parameters={
            "max_seq_length": str(model.max_seq_length),
            "ort_batch_size": str(opts.max_batch_size),
            **opts.onnx_runtime_parameters(),
            "onnx_file": "model.onnx",
            "tokenizer_file": "tokenizer.json",
            "precision": model.precision,
            **model.parameters,
        },
    )
    files = {"model.py": TRITON_PYTHON / "sequence_classification.py", **TEXT_SUPPORT, "model.onnx": model.onnx_file,
             "tokenizer.json": model.tokenizer_file}
    return [ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)]


def _tokenizer(name: str, model: HfModel, opts: ServingOptions, encoder_inputs: Sequence[Tensor],
               pad_to_multiple_of: int) -> ModelFiles:
    inputs, _ = contract(model.task, model.width)
    samples, warmup = _warmup(model.task, opts)
    ids = [Tensor(t.name, t.data_type, (-1,)) for t in encoder_inputs]
    spec = ModelSpec(
        name=name, backend="python", max_batch_size=opts.max_batch_size, inputs=inputs, outputs=[*ids, TOKEN_COUNT],
        batching=opts.batching(), instance_count=opts.instances, instance_kind="KIND_CPU",
        version_policy=opts.version_policy, warmup=samples,
        parameters={
            "pairs": "1" if model.task == "rerank" else "0",
            **({"prefix": model.prefix} if model.prefix else {}),
            "max_seq_length": str(model.max_seq_length),
            "pad_to_multiple_of": str(pad_to_multiple_of),
            "tokenizer_file": "tokenizer.json",
        },
    )
    files = {"model.py": TRITON_PYTHON / "tokenizer.py", **TEXT_SUPPORT, "tokenizer.json": model.tokenizer_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)


def _ensemble(name: str, model: HfModel, opts: ServingOptions, encoder_inputs: Sequence[Tensor]) -> ModelFiles:
    inputs, outputs = contract(model.task, model.width)
    spec = ModelSpec(name=name, platform="ensemble", max_batch_size=opts.max_batch_size, inputs=inputs,
                     outputs=outputs, batching=None, version_policy=opts.version_policy,
                     parameters=dict(model.parameters))  # clients (the gateway) read the task from this config
    cfg = build(spec)
    results = {"embed": {"sentence_embedding": "embedding"}, "rerank": {"scores": "score", "logits": "logit"},
               "classify": {"scores": "scores"}}[model.task]
    ids = {t.name: t.name for t in encoder_inputs}
    add_ensemble_steps(cfg, [
        (f"{name}_tokenizer", {t.name: t.name for t in inputs}, {**ids, "token_count": "token_count"}),
        (f"{name}_encoder", ids, results),
    ])
    text = render(cfg)
    validate(text)
    return ModelFiles(name=name, config_text=text)  # an ensemble's version directory stays empty


def gpu_files(name: str, model: HfModel, opts: ServingOptions, encoder_inputs: Sequence[Tensor],
              encoder_outputs: Sequence[Tensor], *, pad_to_multiple_of: int) -> list[ModelFiles]:
    """The GPU target: [encoder, tokenizer, ensemble] (the order they are committed in)."""
    minilm_like = encoder_specs.text_embedding_gpu(name, _embedding_model(model), opts, encoder_inputs,
                                                   encoder_outputs, pad_to_multiple_of=pad_to_multiple_of)
    if model.task == "embed" and not model.prefix:
        return minilm_like
    return [minilm_like[0], _tokenizer(f"{name}_tokenizer", model, opts, encoder_inputs, pad_to_multiple_of),
            _ensemble(name, model, opts, encoder_inputs)]
